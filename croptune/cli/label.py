"""`croptune label`, `croptune relabel` and `croptune labels export`: the teachers' labels
of a run, asked for, asked again with crops, and written out."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from croptune.cli.common import (
    Engine,
    State,
    dry_run_option,
    engine_option,
    limit_option,
    overrides_argument,
    print_by_cause,
    ray_address_option,
    table,
)
from toolkit.errors import CroptuneError

if TYPE_CHECKING:
    from collections.abc import Callable

    from croptune.pipeline import EngineName
    from teacher_labeling.labeling import LabelSummary, PendingRequests
    from teacher_labeling.teachers import LabelConfig
    from toolkit.catalog import IngestSummary, Problem
    from toolkit.export import DetectionExport


def label(
    catalog: Path = typer.Argument(..., help="The catalog to label."),
    config: Path = typer.Option(..., "--config", help="Label config YAML (teachers, schema)."),
    run: Path = typer.Option(..., "--run", help="Run folder (created if missing)."),
    dry_run: bool = dry_run_option(),
    limit: int | None = limit_option("items"),
    batch: bool = typer.Option(
        False, "--batch", help="Attributes through OpenAI's Batch API (half price, up to 24 h)."
    ),
    engine: Engine = engine_option(),
    ray_address: str | None = ray_address_option(),
    allow_outside_paths: bool = typer.Option(
        False,
        "--allow-outside-paths",
        help="Accept image paths that leave the catalog folder (the config's "
        "allow_outside_paths: true).",
    ),
    overrides: list[str] = overrides_argument("label"),
) -> None:
    """Ingest a catalog and label it with teacher models (resumable)."""
    from croptune.pipeline import estimate_label, run_label
    from teacher_labeling.teachers import load_label_config

    label_config = _with_ray_address(
        load_label_config(config, overrides or []), ray_address, engine
    )
    if allow_outside_paths:
        label_config = label_config.model_copy(update={"allow_outside_paths": True})
    if batch and engine is Engine.ray:
        raise CroptuneError("--batch and --engine ray are two ways to send the requests: pick one")
    if dry_run:
        ingest, pending = estimate_label(
            catalog, label_config, run, limit, State.progress, _engine(engine)
        )
        table(
            f"croptune label --dry-run ({run})", _ingest_rows(ingest, run) + _pending_rows(pending)
        )
        return
    ingest, result = run_label(
        catalog, label_config, run, limit, State.progress, batch, _engine(engine)
    )
    table(f"croptune label ({run})", _ingest_rows(ingest, run) + _label_rows(result))
    _report_label_run(result, run, "label")


def relabel(
    run: Path = typer.Option(..., "--run", help="A labeled and cropped run folder."),
    config: Path = typer.Option(..., "--config", help="Label config YAML."),
    dry_run: bool = dry_run_option(),
    engine: Engine = engine_option(),
    ray_address: str | None = ray_address_option(),
    overrides: list[str] = overrides_argument("label"),
) -> None:
    """Better labels: ask the attributes teachers again with originals + crops."""
    from croptune.pipeline import estimate_relabel, run_relabel
    from teacher_labeling.teachers import load_label_config

    label_config = _with_ray_address(
        load_label_config(config, overrides or []), ray_address, engine
    )
    if dry_run:
        pending = estimate_relabel(run, label_config, _engine(engine))
        table(f"croptune relabel --dry-run ({run})", _pending_rows(pending))
        return
    result = run_relabel(run, label_config, State.progress, _engine(engine))
    table(f"croptune relabel ({run})", _label_rows(result))
    _report_label_run(result, run, "relabel")


def _engine(engine: Engine) -> EngineName:
    return "ray" if engine is Engine.ray else "async"


def _with_ray_address(config: LabelConfig, address: str | None, engine: Engine) -> LabelConfig:
    """The config with --ray-address as its ray.address."""
    if address is None:
        return config
    if engine is not Engine.ray:
        raise CroptuneError("--ray-address goes with --engine ray")
    ray = config.ray.model_copy(update={"address": address})
    return config.model_copy(update={"ray": ray})


def _ingest_rows(ingest: IngestSummary, run: Path) -> list[tuple[str, str]]:
    """The catalog's problems printed, and the rows of what was ingested."""
    _print_catalog_problems(ingest.problems, run)
    rows = [
        ("items ingested", f"{ingest.stored} new/changed, {ingest.unchanged} unchanged"),
        ("items dropped", str(ingest.dropped)),
    ]
    if ingest.box_convention != "pixels":
        rows.append(
            (
                f"reference boxes converted ({ingest.box_convention} -> pixels)",
                str(ingest.converted),
            )
        )
    return rows


# Up to this many catalog problems are printed one a line; more are grouped by cause.
CATALOG_PROBLEMS_SHOWN = 20


def _print_catalog_problems(problems: list[Problem], run: Path) -> None:
    """Each catalog problem on its own line, or grouped by cause when there are many."""
    if len(problems) <= CATALOG_PROBLEMS_SHOWN:
        for problem in problems:
            typer.echo(str(problem), err=True)
        return
    from toolkit.messages import group_by_cause

    pairs = [(p.where.removeprefix("item "), p.message) for p in problems]
    print_by_cause("catalog problem(s)", group_by_cause(pairs), run)


def _pending_rows(pending: PendingRequests) -> list[tuple[str, str]]:
    """The rows of a --dry-run: requests, tokens and cost per teacher."""
    from teacher_labeling.cost import format_usd

    rows = []
    for name, count in pending.per_teacher.items():
        tokens_in, tokens_out = pending.tokens[name]
        rows.append(
            (
                f"{name}: requests to send",
                f"{count} (~{tokens_in:,} input + {tokens_out:,} output tokens, "
                f"{'~' if pending.usd[name] is not None else ''}"
                f"{format_usd(pending.usd[name])})",
            )
        )
    rows.append(("requests already answered", str(pending.cached)))
    return rows


def _label_rows(result: LabelSummary) -> list[tuple[str, str]]:
    """The rows of a labeling run: requests, what was stored, tokens and cost."""
    from teacher_labeling.cost import format_usd

    rows = [
        ("requests sent", str(result.asked)),
        ("answered from the store (cache)", str(result.cached)),
        ("failed (asked again on the next run)", str(result.failed)),
        *[
            (f"teacher {name} stopped", "its remaining requests were not sent")
            for name in result.stopped
        ],
        ("labels stored", str(result.labels)),
        ("boxes stored", str(result.boxes)),
    ]
    for name, spend in result.spend.items():
        if spend.prompt_tokens or spend.completion_tokens:
            rows.append(
                (
                    f"{name}: tokens, cost",
                    f"{spend.prompt_tokens:,} in + {spend.completion_tokens:,} out, "
                    f"{format_usd(spend.usd if spend.priced else None)}",
                )
            )
    for name, replicas in result.replicas.items():
        rows += [(f"{name}: replica {r.where}", r.describe()) for r in replicas]
    if result.agreement:
        rows += [(f"box agreement: {k}", str(v)) for k, v in result.agreement.items()]
    return rows


def _report_label_run(result: LabelSummary, run: Path, stage: str) -> None:
    """Failures and warnings by cause; exit 1 when a teacher was stopped or nothing came back."""
    print_by_cause("failed request(s)", result.failures, run)
    print_by_cause("warning(s)", result.warnings, run)
    if result.stopped:
        raise CroptuneError(" ".join(result.stopped.values()))
    if result.produced_nothing:
        raise CroptuneError(
            f"{stage} produced nothing: all {result.failed} request(s) failed (causes above); "
            f"run `croptune {stage}` again once the cause is fixed, finished work is kept"
        )


def labels_export(
    run: Path = typer.Option(..., "--run", help="A labeled run folder."),
    format: str = typer.Option("jsonl", "--format", help="jsonl | coco | yolo"),
    out: Path = typer.Option(..., "--out", help="Output file (jsonl) or folder (coco, yolo)."),
    dataset_config: Path | None = typer.Option(
        None,
        "--dataset-config",
        help="yolo: the dataset config of `dataset build` (e.g. DATASET/dataset_config.yaml); "
        "its validation_ratio, test_ratio and seed split the items as the dataset does.",
    ),
    overrides: list[str] = typer.Argument(
        None, help="yolo: key=value overrides of the split (validation_ratio, test_ratio, seed)."
    ),
) -> None:
    """Write labels, boxes and crops as JSONL, or boxes as a COCO/YOLO dataset."""
    from toolkit import export
    from toolkit.config import load_stage_config
    from toolkit.dataset import SPLIT_KEYS, DatasetConfig
    from toolkit.store import RunStore

    writers: dict[str, Callable[..., int | export.DetectionExport]] = {
        "jsonl": export.export_labels_jsonl,
        "coco": export.export_labels_coco,
        "yolo": export.export_labels_yolo,
    }
    if format not in writers:
        raise CroptuneError(f"unknown export format {format!r}; use jsonl, coco or yolo")
    options: dict[str, Any] = {}
    if format == "yolo":
        split = load_stage_config(DatasetConfig, dataset_config, overrides or [], "dataset")
        options = {key: getattr(split, key) for key in SPLIT_KEYS}
    elif dataset_config is not None or overrides:
        raise CroptuneError(
            f"--dataset-config and key=value split settings apply to --format yolo only "
            f"(a {format} export is not split)"
        )
    with RunStore(run, create=False) as store:
        result = writers[format](store, out, **options)
    if isinstance(result, int):
        typer.echo(f"{result} items written to {out}")
        return
    for reason in result.skipped:
        typer.echo(reason, err=True)
    typer.echo(
        f"{result.images} images, {result.boxes} boxes, {len(result.classes)} classes "
        f"written to {out} ({format})"
    )
    for line in _detection_export_lines(result):
        typer.echo(line)


def _detection_export_lines(result: DetectionExport) -> list[str]:
    """What a COCO/YOLO export merged and how it split the items, as lines to print."""
    lines = []
    if result.shared_photos:
        lines.append(
            f"{result.shared_photos} photos are shown by several items: each written once, "
            "with the boxes of all its items"
        )
    if result.merged_boxes:
        lines.append(f"{result.merged_boxes} identical boxes on the same photo written once")
    if not result.split_settings:
        return lines
    settings = ", ".join(f"{k} {v}" for k, v in result.split_settings.items())
    counts = result.split_counts()
    parts = [
        f"{name} {c['items']} items, {c['images']} images, {c['boxes']} boxes"
        for name, c in counts.items()
    ]
    lines.append(f"split by item as `dataset build` splits ({settings}): " + "; ".join(parts))
    if result.split_status == "recorded":
        lines.append(
            "the split is the one recorded in the run (`croptune dataset build --resplit` "
            "splits it again)"
        )
    if "validation" not in counts:
        lines.append(
            "no validation split (too few items or validation_ratio 0): data.yaml has no "
            "val, which ultralytics needs to train; raise validation_ratio or add items"
        )
    return lines
