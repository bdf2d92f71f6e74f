"""The `croptune` command line: one entry point, one sub-command per stage."""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from toolkit.errors import CroptuneError

if TYPE_CHECKING:
    from collections.abc import Callable

    from pydantic import BaseModel

    from teacher_labeling.labeling import LabelSummary, PendingRequests

app = typer.Typer(
    name="croptune",
    help="Label a product catalog with teacher VLMs, crop what they box, fine-tune a small "
    "student (Gemma 3, Qwen2.5-VL) with LoRA, and export it for vLLM.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
catalog_app = typer.Typer(help="Check a catalog before labeling it.", no_args_is_help=True)
labels_app = typer.Typer(help="Export a run's labels, boxes and crops.", no_args_is_help=True)
dataset_app = typer.Typer(help="Build training datasets from a run.", no_args_is_help=True)
detector_app = typer.Typer(
    help="The region-proposal detector used at inference.", no_args_is_help=True
)
app.add_typer(catalog_app, name="catalog")
app.add_typer(labels_app, name="labels")
app.add_typer(dataset_app, name="dataset")
app.add_typer(detector_app, name="detector")

logger = logging.getLogger("croptune")

# Commands that read a stage config take `key=value` (or `--key=value`) overrides after it.
_OVERRIDABLE = {"ignore_unknown_options": True}


_OVERRIDE_EXAMPLES = {
    "label": "fusion.policy=union teachers.0.max_concurrency=8",
    "crop": "margin=0.2 fill=[0,0,0]",
    "dataset": "test_ratio=0.1 image_tokens=16",
    "train": "max_steps=200 sft_args.weight_decay=0.1",
    "detector": "epochs=5 conf=0.3",
}


def _overrides_argument(stage: str) -> Any:
    """The trailing KEY=VALUE arguments of a command that reads a stage config."""
    return typer.Argument(
        None,
        metavar="KEY=VALUE",
        help=f"Overrides of the {stage} config, e.g. {_OVERRIDE_EXAMPLES[stage]} (dotted keys "
        f"reach nested ones; --key=value works too). `croptune config show {stage}` lists "
        "every key.",
        show_default=False,
    )


def _overrides_epilog(stage: str) -> str:
    return (
        f"Overrides: KEY=VALUE arguments override the {stage} config's keys (YAML values; a "
        f"misspelt key is named with the closest one, exit 1). Every key with its type, default "
        f"and help: croptune config show {stage}. Relative paths in a config file are resolved "
        f"against the file's folder, those in overrides against the current directory."
    )


class _State:
    verbose = False
    progress = True


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("croptune")
    except PackageNotFoundError:
        return "(source)"


def _console():  # noqa: ANN202 - rich is imported lazily to keep --help fast
    from rich.console import Console

    return Console()


def _table(title: str, rows: list[tuple[str, str]]) -> None:
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, value)
    _console().print(table)


def _print_version(value: bool) -> None:
    """--version: print and exit before any command is looked for."""
    if value:
        typer.echo(f"croptune {_version()}")
        raise typer.Exit(0)


@app.callback()
def _options(
    verbose: bool = typer.Option(
        False,
        "--verbose",
        "-v",
        help="Debug logs, full tracebacks, and the third-party output croptune hides "
        "(warnings, ultralytics' banner and tables).",
    ),
    progress: bool = typer.Option(
        True,
        "--progress/--no-progress",
        help="A progress bar per long stage on a terminal (stderr); --no-progress, or no "
        "terminal: plain lines instead.",
    ),
    show_version: bool = typer.Option(
        False,
        "--version",
        help="Print croptune's version and exit.",
        is_eager=True,
        callback=_print_version,
    ),
) -> None:
    from toolkit.noise import configure_output

    _State.verbose = verbose
    _State.progress = True  # every long stage reports: a bar on a terminal, else plain lines
    configure_output(verbose=verbose, bars=progress and sys.stderr.isatty())


@app.command()
def demo(
    workdir: Path = typer.Option(
        Path("croptune-demo"), "--workdir", help="Folder for the catalog, run, dataset, adapter."
    ),
    items: int = typer.Option(30, "--items", min=4, help="Items in the synthetic catalog."),
    steps: int = typer.Option(60, "--steps", min=1, help="LoRA training steps."),
    seed: int = typer.Option(0, "--seed", help="Seed of the catalog, split and training."),
) -> None:
    """Run the whole pipeline offline on the bundled example catalog."""
    from croptune.pipeline import run_demo

    summary = run_demo(workdir, n_items=items, max_steps=steps, seed=seed, progress=_State.progress)
    _table(f"croptune demo ({workdir})", summary.rows())
    _comparison(f"base vs student on the test split ({workdir}/eval)", summary.evaluation)


@catalog_app.command("validate")
def catalog_validate(
    catalog: Path = typer.Argument(..., help="JSONL, CSV, Parquet or a save_to_disk folder."),
    allow_outside_paths: bool = typer.Option(
        False, "--allow-outside-paths", help="Accept image paths that leave the catalog folder."
    ),
    box_convention: str | None = typer.Option(
        None,
        "--box-convention",
        help="How the reference boxes are given: pixels (default), norm1 (0..1 fractions of "
        "the image) or norm1000 (0..1000 per axis); the label config's box_convention.",
    ),
    column: list[str] = typer.Option(
        None,
        "--column",
        metavar="FIELD=COLUMN",
        help="Read croptune's FIELD from the catalog's COLUMN, e.g. --column item_id=id "
        "(repeatable); the label config's columns.",
    ),
    schema: str | None = typer.Option(
        None,
        "--schema",
        help="Schema to check reference attributes against: a built-in name or a YAML/JSON "
        "file (default: the --config's, else compliance).",
    ),
    config: Path | None = typer.Option(
        None,
        "--config",
        help="A label config: validate with its schema, box_convention, columns and "
        "allow_outside_paths, as `croptune label` will (the flags above override it).",
    ),
) -> None:
    """Report every problem of a catalog (exit 1 if anything would be left out)."""
    from toolkit.catalog import (
        attribute_problems,
        inspect_item,
        load_catalog,
        parse_column_mapping,
    )
    from toolkit.progress import track
    from toolkit.schema import load_schema

    options: dict[str, Any] = {"allow_outside": False, "box_convention": "pixels", "columns": {}}
    schema_name = "compliance"
    if config is not None:
        from teacher_labeling.teachers import load_label_config

        label_config = load_label_config(config)
        options = {
            "allow_outside": label_config.allow_outside_paths,
            "box_convention": label_config.box_convention,
            "columns": dict(label_config.columns),
        }
        schema_name = label_config.schema_
    options["allow_outside"] |= allow_outside_paths
    options["box_convention"] = box_convention or options["box_convention"]
    options["columns"].update(parse_column_mapping(column or []))
    attribute_schema = load_schema(schema or schema_name)
    loaded = load_catalog(catalog, **options)
    problems = list(loaded.problems)
    images = converted = 0
    for item in track(loaded.items, "validate", _State.progress):
        inspected = inspect_item(loaded, item)
        problems += inspected.problems + attribute_problems(item, attribute_schema)
        images += len(inspected.images)
        converted += inspected.converted
    for problem in problems:
        typer.echo(str(problem))
    errors = sum(1 for p in problems if p.level == "error")
    warnings = len(problems) - errors
    found = f"{len(loaded.items)} items, {images} images"
    if loaded.box_convention != "pixels":
        found += f", {converted} reference box(es) converted from {loaded.box_convention} to pixels"
    if errors:
        also = f" and {warnings} warning(s)" if warnings else ""
        typer.echo(f"{errors} problem(s){also} in {catalog} ({found})", err=True)
        raise typer.Exit(1)
    kept = f", {warnings} warning(s) above (kept, changed as said)" if warnings else ""
    typer.echo(f"{catalog}: {found}, no problems{kept}")


@app.command(context_settings=_OVERRIDABLE, epilog=_overrides_epilog("label"))
def label(
    catalog: Path = typer.Argument(..., help="The catalog to label."),
    config: Path = typer.Option(..., "--config", help="Label config YAML (teachers, schema)."),
    run: Path = typer.Option(..., "--run", help="Run folder (created if missing)."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Estimate requests, tokens and cost; send nothing."
    ),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Only the first N items."),
    batch: bool = typer.Option(
        False, "--batch", help="Attributes through OpenAI's Batch API (half price, up to 24 h)."
    ),
    allow_outside_paths: bool = typer.Option(
        False,
        "--allow-outside-paths",
        help="Accept image paths that leave the catalog folder (the config's "
        "allow_outside_paths: true).",
    ),
    overrides: list[str] = _overrides_argument("label"),
) -> None:
    """Ingest a catalog and label it with teacher models (resumable)."""
    from croptune.pipeline import run_label
    from teacher_labeling.labeling import PendingRequests
    from teacher_labeling.teachers import load_label_config

    label_config = load_label_config(config, overrides or [])
    if allow_outside_paths:
        label_config = label_config.model_copy(update={"allow_outside_paths": True})
    ingest, result = run_label(catalog, label_config, run, limit, dry_run, _State.progress, batch)
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
    if isinstance(result, PendingRequests):
        _table(f"croptune label --dry-run ({run})", rows + _pending_rows(result))
        return
    _table(f"croptune label ({run})", rows + _label_rows(result))
    _report_label_run(result, run, "label")


# Up to this many catalog problems are printed one a line; more are grouped by cause.
CATALOG_PROBLEMS_SHOWN = 20


def _print_catalog_problems(problems: list[Any], run: Path) -> None:
    """Each catalog problem on its own line, or grouped by cause when there are many."""
    if len(problems) <= CATALOG_PROBLEMS_SHOWN:
        for problem in problems:
            typer.echo(str(problem), err=True)
        return
    from toolkit.messages import group_by_cause

    pairs = [(p.where.removeprefix("item "), p.message) for p in problems]
    _print_by_cause("catalog problem(s)", group_by_cause(pairs), run)


def _print_by_cause(
    what: str, by_cause: dict[str, list[str]], run: Path, kept_in: str | None = None
) -> None:
    """One line per cause (of failures, or of what was dropped, moved or clipped): count, ids."""
    if not by_cause:
        return
    total = sum(len(ids) for ids in by_cause.values())
    kept_in = kept_in or f"{run}/run.sqlite, events"
    typer.echo(f"{total} {what}, by cause (each one is in {kept_in}):", err=True)
    for cause, ids in sorted(by_cause.items(), key=lambda kv: -len(kv[1])):
        unique = sorted(set(ids))
        shown = ", ".join(unique[:3]) + (", ..." if len(unique) > 3 else "")
        typer.echo(f"  {len(ids)} x {cause} ({len(unique)} item(s): {shown})", err=True)


def _pending_rows(pending: PendingRequests) -> list[tuple[str, str]]:
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
    if result.agreement:
        rows += [(f"box agreement: {k}", str(v)) for k, v in result.agreement.items()]
    return rows


def _report_label_run(result: LabelSummary, run: Path, stage: str) -> None:
    """Failures and warnings by cause; exit 1 when a teacher was stopped or nothing came back."""
    _print_by_cause("failed request(s)", result.failures, run)
    _print_by_cause("warning(s)", result.warnings, run)
    if result.stopped:
        raise CroptuneError(" ".join(result.stopped.values()))
    if result.produced_nothing:
        raise CroptuneError(
            f"{stage} produced nothing: all {result.failed} request(s) failed (causes above); "
            f"run `croptune {stage}` again once the cause is fixed, finished work is kept"
        )


@app.command(context_settings=_OVERRIDABLE, epilog=_overrides_epilog("crop"))
def crop(
    run: Path = typer.Option(..., "--run", help="A labeled run folder."),
    config: Path | None = typer.Option(None, "--config", help="Crop config YAML."),
    workers: int = typer.Option(1, "--workers", min=1, help="Threads cutting crops."),
    overrides: list[str] = _overrides_argument("crop"),
) -> None:
    """Cut targeted crops of each image's boxes (the paper's enclosing squares by default)."""
    from croptune.pipeline import distribution, format_distribution, run_crop
    from toolkit.config import load_stage_config
    from toolkit.crops import CropConfig

    crop_config = load_stage_config(CropConfig, config, overrides or [], stage="crop")
    summary = run_crop(run, crop_config, _State.progress, workers)
    for error in summary.errors:
        typer.echo(error, err=True)

    def dist(values: list[int]) -> str:
        return format_distribution(distribution(values))

    uncovered = str(summary.uncovered)
    if summary.uncovered_items:
        shown = summary.uncovered_items[:3] + (["..."] if len(summary.uncovered_items) > 3 else [])
        uncovered += f" (item(s) {', '.join(shown)})"
    if summary.cut_by_budget:
        uncovered += (
            f" ({summary.cut_by_budget} only because the dataset's image budget of "
            f"{summary.image_budget} cut their crop)"
        )
    _table(
        f"croptune crop ({run}, {crop_config.strategy})",
        [
            ("items", str(summary.items)),
            ("crops made (already there)", f"{summary.made} ({summary.existing})"),
            ("images per item, one crop per box", dist(summary.images_per_box_crop)),
            (
                f"images per item, after (dataset budget {summary.image_budget})",
                dist(summary.images_after),
            ),
            (
                "duplicates removed (pHash)",
                f"{summary.duplicates} ({summary.duplicate_originals} photos, "
                f"{summary.duplicate_crops} crops)",
            ),
            ("boxes not covered by a kept crop", uncovered),
        ],
    )


@app.command(context_settings=_OVERRIDABLE, epilog=_overrides_epilog("label"))
def relabel(
    run: Path = typer.Option(..., "--run", help="A labeled and cropped run folder."),
    config: Path = typer.Option(..., "--config", help="Label config YAML."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Estimate requests, tokens and cost; send nothing."
    ),
    overrides: list[str] = _overrides_argument("label"),
) -> None:
    """Better labels: ask the attributes teachers again with originals + crops."""
    from croptune.pipeline import run_relabel
    from teacher_labeling.labeling import PendingRequests
    from teacher_labeling.teachers import load_label_config

    label_config = load_label_config(config, overrides or [])
    result = run_relabel(run, label_config, dry_run, _State.progress)
    if isinstance(result, PendingRequests):
        _table(f"croptune relabel --dry-run ({run})", _pending_rows(result))
        return
    _table(f"croptune relabel ({run})", _label_rows(result))
    _report_label_run(result, run, "relabel")


@labels_app.command("export")
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


def _detection_export_lines(result: Any) -> list[str]:
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


@app.command()
def report(
    run: Path = typer.Option(
        ..., "--run", help="A labeled run folder, or a predict work folder (preds.work)."
    ),
    out: Path | None = typer.Option(None, "--out", help="Default: RUN/report.html"),
    page_size: int = typer.Option(50, "--page-size", min=1, help="Items per page of the page."),
) -> None:
    """Write a self-contained HTML page to review boxes, crops, labels or predictions."""
    from toolkit.report import write_report
    from toolkit.store import RunStore

    with RunStore(run, create=False) as store:
        path = write_report(store, out or run / "report.html", page_size=page_size)
    typer.echo(f"review page written to {path}")


@dataset_app.command("build", context_settings=_OVERRIDABLE, epilog=_overrides_epilog("dataset"))
def dataset_build(
    run: Path = typer.Option(..., "--run", help="A labeled (and cropped) run folder."),
    out: Path = typer.Option(..., "--out", help="Folder for the DatasetDict (save_to_disk)."),
    strategy: str | None = typer.Option(
        None,
        "--strategy",
        help="originals | crops | originals+crops (default: the config's, else originals+crops).",
    ),
    config: Path | None = typer.Option(None, "--config", help="Dataset config YAML."),
    resplit: bool = typer.Option(
        False,
        "--resplit",
        help="Split the run's items again with this config's validation_ratio, test_ratio and "
        "seed, replacing the split recorded in the run (which the detector and label exports "
        "follow too: train and export them again afterwards).",
    ),
    overrides: list[str] = _overrides_argument("dataset"),
) -> None:
    """Build a train/validation/test DatasetDict of multi-image examples."""
    from croptune.pipeline import run_dataset
    from toolkit.config import load_stage_config
    from toolkit.dataset import DatasetConfig

    # --strategy only when given: its default must not override the config file's strategy.
    given = [f"strategy={strategy}"] if strategy is not None else []
    dataset_config = load_stage_config(
        DatasetConfig, config, [*given, *(overrides or [])], stage="dataset"
    )
    summary = run_dataset(run, out, dataset_config, _State.progress, resplit=resplit)
    stats = summary.stats()
    rows = [(f"{k} examples", str(v)) for k, v in summary.examples.items()]
    if summary.split is not None:
        rows.append(("split by item", summary.split.describe()))
    rows += [(f"left out: {k}", str(v)) for k, v in summary.left_out.items()]
    shared = stats["shared_photos"]
    if shared["items"]:
        rows.append(
            (
                "items sharing photos",
                f"{shared['items']} in {shared['groups']} group(s), the largest "
                f"{shared['largest']} ({', '.join(shared['largest_items'])}); each group is "
                "kept in one split",
            )
        )
    images, tokens = stats["images_per_example"], stats["image_tokens_per_example"]
    rows += [
        (
            "images per example",
            f"median {images['median']:g}, mean {images['mean']:g}, max {images['max']}",
        ),
        (
            "image tokens per example",
            f"median {tokens['median']:g}, max {tokens['max']} (assuming image_tokens="
            f"{dataset_config.image_tokens} per image"
            + (
                ", Gemma 3's; for the tiny students pass image_tokens=16)"
                if dataset_config.image_tokens == 256
                else ")"
            ),
        ),
    ]
    _table(f"croptune dataset build ({out})", rows)


def _loss(value: float | None) -> str:
    """A loss for a summary table: 4 decimals, or n/a."""
    return "n/a" if value is None else f"{value:.4f}"


@app.command(context_settings=_OVERRIDABLE, epilog=_overrides_epilog("train"))
def train(
    config: Path | None = typer.Option(None, "--config", help="Train config YAML."),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue from the newest checkpoint in output_dir: same step, optimizer and data order.",
    ),
    overrides: list[str] = _overrides_argument("train"),
) -> None:
    """LoRA-fine-tune a student with TRL (extra key=value arguments override the config)."""
    from finetune.train import load_train_config, save_train_config
    from finetune.train import train as run_training

    overrides = list(overrides or []) + (["resume_from_checkpoint=true"] if resume else [])
    train_config = load_train_config(config, overrides)
    output_dir = Path(train_config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    save_train_config(train_config, output_dir / "train_config.yaml")
    result = run_training(train_config, progress=_State.progress)
    _table(
        "croptune train",
        [
            ("steps", str(result.steps)),
            (
                "train loss first -> last",
                f"{_loss(result.first_loss)} -> {_loss(result.last_loss)}",
            ),
            ("validation loss", "n/a" if result.eval_loss is None else f"{result.eval_loss:.4f}"),
            ("seconds", f"{result.seconds:.1f}"),
            (
                "model (full tuning)" if result.tuning == "full" else "adapter",
                str(result.adapter_dir),
            ),
        ],
    )


@app.command()
def evaluate(
    model: list[str] = typer.Option(
        None,
        "--model",
        metavar="MODEL",
        help="A model to score; repeat to compare several. An adapter folder (base + LoRA), a "
        "bundle (its merged/ model if exported with --merge, else base + adapter/), a base "
        "model (hub id, local folder, croptune:tiny), or an endpoint YAML (a *.yaml file with "
        "name, base_url, model, api_key_env, max_concurrency, ...: any OpenAI-compatible "
        "server, e.g. vLLM serving the base with --lora-modules croptune=BUNDLE/adapter and "
        "`model: croptune`). See docs/evaluation.md.",
    ),
    dataset: Path = typer.Option(..., "--dataset", help="Dataset folder from `dataset build`."),
    split: str = typer.Option("test", "--split", help="Split to score."),
    teacher_labels: Path | None = typer.Option(
        None,
        "--teacher-labels",
        help="A run folder or a `labels export --format jsonl` file: also score each "
        "teacher's own answers, as rows teacher:<name>.",
    ),
    judge: Path | None = typer.Option(
        None, "--judge", help="Judge config YAML: add the LLM judge's bucket rates."
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Folder for metrics.json, metrics.md, errors.jsonl, answers.jsonl (default: "
        "MODEL/eval for one adapter or bundle, else ./eval).",
    ),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Only the first N examples."),
    batch_size: int = typer.Option(
        4, "--batch-size", min=1, help="Examples per generate call (in-process models)."
    ),
    max_new_tokens: int = typer.Option(
        256, "--max-new-tokens", min=1, help="Answer length limit, for every model."
    ),
) -> None:
    """Field-level precision/recall/F1, JSON validity and speed of models on a dataset split."""
    from croptune.pipeline import run_evaluate

    models = list(model or [])
    target = out or _default_eval_dir(models)
    results = run_evaluate(
        models,
        dataset,
        target,
        split=split,
        teacher_labels_from=teacher_labels,
        judge=judge,
        limit=limit,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        progress=_State.progress,
    )
    _comparison(f"croptune evaluate ({split}) -> {target}", results)


def _comparison(title: str, results: list[Any]) -> None:
    """Print the comparison table of evaluated models (one row each)."""
    from rich.table import Table

    from finetune.evaluate import comparison_table

    header, rows = comparison_table(results)
    table = Table(title=title, title_justify="left")
    for name in header:
        table.add_column(name, justify="left" if name == "model" else "right")
    for row in rows:
        table.add_row(*row)
    console = _console()
    if not console.is_terminal:
        # A file or pipe: as wide as the table wants, so no cell (a model path) is cut.
        from rich.measure import Measurement

        console.width = 10_000
        console.width = Measurement.get(console, console.options, table).maximum
    console.print(table)


def _default_eval_dir(models: list[str]) -> Path:
    """MODEL/eval for one adapter folder or bundle, else ./eval."""
    from finetune.models import model_kind

    if len(models) == 1 and not models[0].lower().endswith((".yaml", ".yml")):
        try:
            kind = model_kind(models[0])
        except CroptuneError:
            return Path("eval")  # run_evaluate says what is wrong with it
        if kind in ("bundle", "adapter"):
            return Path(models[0]) / "eval"
    return Path("eval")


@app.command()
def export(
    adapter: Path = typer.Option(..., "--adapter", help="Adapter folder written by `train`."),
    out: Path | None = typer.Option(None, "--out", help="Bundle folder to write."),
    merge: bool = typer.Option(False, "--merge", help="Also write merged/ (adapter merged in)."),
    check: bool = typer.Option(
        False, "--check", help="Only lint the adapter against vLLM's LoRA rules; write nothing."
    ),
    force: bool = typer.Option(
        False, "--force", help="Write the bundle even if vLLM cannot serve the adapter."
    ),
    metrics: Path | None = typer.Option(
        None, "--metrics", help="evaluate's metrics.json (default: ADAPTER/eval/metrics.json)."
    ),
    base_model: str | None = typer.Option(
        None, "--base-model", help="Hub id of the base, when it was trained from a local folder."
    ),
    name: str | None = typer.Option(
        None, "--name", help="LoRA name the server and clients use (default: croptune-STUDENT)."
    ),
    dataset: Path | None = typer.Option(
        None, "--dataset", help="The training dataset folder, if it moved since training."
    ),
    detector: Path | None = typer.Option(
        None, "--detector", help="A `detector train` folder to ship as BUNDLE/detector."
    ),
) -> None:
    """Lint the adapter for vLLM, then write the serving bundle (exit 1 on lint errors)."""
    from finetune.export.lint import lint_adapter
    from finetune.export.manifest import read_metrics
    from finetune.export.writer import export_bundle

    problems = lint_adapter(adapter)
    for problem in problems:
        typer.echo(str(problem))
    errors = sum(1 for p in problems if p.level == "error")
    verdict = (
        f"{adapter}: {errors} error(s), {len(problems) - errors} warning(s) against vLLM's "
        "LoRA rules"
    )
    if check or (errors and not force):
        suffix = "" if check or not errors else "; bundle not written (--force writes it)"
        typer.echo(verdict + suffix, err=True)
        if errors:
            raise typer.Exit(1)
        return
    if out is None:
        raise CroptuneError("`croptune export` needs --out BUNDLE (or --check to only lint)")
    evaluations = read_metrics(metrics or adapter / "eval" / "metrics.json")
    if metrics is not None and evaluations is None:
        raise CroptuneError(f"metrics file {metrics} does not exist")
    bundle = export_bundle(
        adapter,
        out,
        merge=merge,
        metrics=evaluations,
        force=force,
        base_model=base_model,
        lora_name=name,
        dataset_dir=dataset,
        detector_dir=detector,
    )
    metrics_path = metrics or adapter / "eval" / "metrics.json"
    found = (
        f"metrics from {metrics_path} ({len(evaluations)} model(s))"
        if evaluations
        else f"no metrics ({metrics_path} does not exist): the model card says 'Not evaluated'; "
        f"run `croptune evaluate --model {adapter} --dataset DIR` first, or pass --metrics"
    )
    _table(
        f"croptune export ({bundle})",
        [
            ("vLLM lint", verdict.split(": ", 1)[1]),
            ("metrics", found),
            ("detector", str(detector) if detector else "none: clients bring their boxes"),
            ("merged model", "merged/" if merge else "no (--merge writes one)"),
        ],
    )
    if not evaluations:
        typer.echo(f"warning: {found}", err=True)
    typer.echo(f"bundle written to {bundle}")


@detector_app.command("train", context_settings=_OVERRIDABLE, epilog=_overrides_epilog("detector"))
def detector_train(
    run: Path = typer.Option(..., "--run", help="A labeled run folder."),
    out: Path = typer.Option(..., "--out", help="Folder for the detector."),
    config: Path | None = typer.Option(None, "--config", help="Detector config YAML."),
    overrides: list[str] = _overrides_argument("detector"),
) -> None:
    """Distil the teachers' boxes into a small ultralytics detector."""
    from finetune.detector import DetectorConfig, train_detector
    from toolkit.config import load_stage_config
    from toolkit.dataset import SPLIT_KEYS

    detector_config = load_stage_config(DetectorConfig, config, overrides or [], stage="detector")
    summary = train_detector(run, out, detector_config, verbose=_State.verbose)
    for reason in summary.skipped:
        typer.echo(reason, err=True)
    m = summary.metrics

    def rate(key: str) -> str:
        return "n/a" if m.get(key) is None else f"{m[key]:.3f}"

    outputs = [summary.weights, summary.onnx, summary.config_file, summary.metrics_file]
    measured = summary.measured
    split = ", ".join(
        f"{k} {summary.split.get(k, getattr(detector_config, k))}" for k in SPLIT_KEYS
    )
    rows = [
        ("split by item, as `dataset build`", split),
        ("items train / held out", f"{len(summary.train_items)} / {len(summary.held_out_items)}"),
        ("photos train / held out", f"{summary.images['train']} / {summary.images['held_out']}"),
        (
            f"boxes train / held out ({summary.box_source})",
            f"{summary.boxes['train']} / {summary.boxes['held_out']}",
        ),
    ]
    if summary.shared_photos or summary.merged_boxes:
        rows.append(
            (
                "shared photos",
                f"{summary.shared_photos} shown by several items, used once with all their "
                f"boxes; {summary.merged_boxes} identical boxes merged",
            )
        )
    rows += [
        ("classes", ", ".join(summary.classes)),
        ("epochs, image size", f"{summary.epochs}, {detector_config.imgsz}"),
        ("train seconds", f"{summary.seconds['train']:.1f}"),
    ]
    if measured.get("splits"):
        rows += [
            (
                "measured",
                f"{measured['weights']} (kept, loaded as predict loads it) on "
                f"{measured['photos']} held-out photos ({' + '.join(measured['splits'])})",
            ),
            (
                f"precision / recall (conf {measured['conf']}, predict's)",
                f"{rate('precision')} / {rate('recall')}",
            ),
            ("mAP50 / mAP50-95", f"{rate('map50')} / {rate('map50_95')}"),
        ]
    else:
        rows.append(("measured", "nothing: the split holds no item out (too few items?)"))
    rows.append(("written (in --out)", ", ".join(p.name for p in outputs if p is not None)))
    _table(f"croptune detector train ({out})", rows)


@app.command()
def predict(
    catalog: Path = typer.Argument(..., help="The catalog to predict."),
    bundle: Path = typer.Option(..., "--bundle", help="Bundle folder from `export`."),
    out: Path = typer.Option(..., "--out", help="Predictions JSONL."),
    workdir: Path | None = typer.Option(
        None,
        "--workdir",
        help="Work folder (a run store: resume, boxes, crops); default: beside --out "
        "(preds.jsonl -> preds.work).",
    ),
    box_source: str | None = typer.Option(
        None,
        "--box-source",
        help="detector | teacher | none (default: the bundle's box_source in croptune.yaml).",
    ),
    teacher_config: Path | None = typer.Option(
        None,
        "--teacher-config",
        help="With --box-source teacher: a teacher config YAML, or a label config with one "
        "box teacher (keys only from the variable its api_key_env names).",
    ),
    endpoint: str | None = typer.Option(
        None,
        "--endpoint",
        help="Ask an OpenAI-compatible server instead of loading the student: its base URL "
        "(e.g. http://127.0.0.1:8000/v1, vLLM serving the base with --lora-modules) or an "
        "endpoint YAML as for `evaluate`.",
    ),
    model: str | None = typer.Option(
        None, "--model", help="With --endpoint URL: the model name (default: the LoRA name)."
    ),
    api_key_env: str | None = typer.Option(
        None, "--api-key-env", help="With --endpoint URL: the NAME of the key variable."
    ),
    base_model: str | None = typer.Option(
        None,
        "--base-model",
        help="Load the base from here (local folder or hub id) instead of croptune.yaml's, "
        "with the bundle's adapter on top.",
    ),
    batch_size: int = typer.Option(4, "--batch-size", min=1, help="Items per generate call."),
    max_new_tokens: int | None = typer.Option(
        None, "--max-new-tokens", min=1, help="Answer length limit (default: the bundle's)."
    ),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Only the first N items."),
    allow_outside_paths: bool = typer.Option(
        False, "--allow-outside-paths", help="Accept image paths that leave the catalog folder."
    ),
    column: list[str] = typer.Option(
        None,
        "--column",
        metavar="FIELD=COLUMN",
        help="Read croptune's FIELD from the catalog's COLUMN, e.g. --column item_id=id "
        "(repeatable), as on `croptune catalog validate`.",
    ),
) -> None:
    """Boxes -> the training-time crops -> student -> one JSON per item (resumable)."""
    from croptune.pipeline import run_predict
    from toolkit.catalog import parse_column_mapping

    summary = run_predict(
        catalog,
        bundle,
        out,
        workdir=workdir,
        box_source=box_source,
        teacher_config=teacher_config,
        endpoint=endpoint,
        model=model,
        api_key_env=api_key_env,
        base_model=base_model,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        limit=limit,
        allow_outside=allow_outside_paths,
        columns=parse_column_mapping(column or []),
        progress=_State.progress,
    )
    stats = summary.stats
    per_stage = stats["seconds_per_item"]
    _table(
        f"croptune predict ({out})",
        [
            ("items", str(summary.items)),
            ("predicted (of them resumed)", f"{summary.predicted} ({summary.resumed})"),
            ("failed", str(summary.failed)),
            ("box source, student", f"{stats['box_source']}, {stats['student']}"),
            (
                "ms per item: " + ", ".join(per_stage),
                ", ".join(
                    "n/a" if d is None else f"{d['mean'] * 1000:.0f}" for d in per_stage.values()
                ),
            ),
            (
                "items/s",
                "n/a" if stats["items_per_second"] is None else str(stats["items_per_second"]),
            ),
            ("work folder, stats", f"{summary.workdir}, {summary.stats_file}"),
        ],
    )
    from toolkit.messages import group_by_cause

    failures = [(r.get("item_id"), f"{r.get('stage')}: {r['error']}") for r in summary.failures]
    _print_by_cause("failed item(s)", group_by_cause(failures), summary.workdir, str(out))
    _print_by_cause("warning(s) and note(s)", summary.warnings, summary.workdir, str(out))
    if summary.failed:
        typer.echo(
            f"croptune: {summary.failed} of {summary.items} item(s) failed; their error "
            f"records are in {out}",
            err=True,
        )
        raise typer.Exit(1)


config_app = typer.Typer(
    help="The keys of each stage's config: type, default, help.", no_args_is_help=True
)
app.add_typer(config_app, name="config")

# STAGE -> the configs it reads: (what reads it, module, class). `endpoint`, `judge` and
# `teacher` name one config each, for `--format yaml` of a stage that reads two.
_STAGE_CONFIGS: dict[str, list[tuple[str, str, str]]] = {
    "label": [
        ("--config of `croptune label` and `croptune relabel`", "teacher_labeling.teachers",
         "LabelConfig"),
    ],
    "crop": [("--config of `croptune crop`", "toolkit.crops", "CropConfig")],
    "dataset": [("--config of `croptune dataset build`", "toolkit.dataset", "DatasetConfig")],
    "train": [("--config of `croptune train`", "finetune.train", "TrainConfig")],
    "detector": [
        ("--config of `croptune detector train`", "finetune.detector", "DetectorConfig"),
    ],
    "evaluate": [
        ("an endpoint YAML: `croptune evaluate --model FILE.yaml`", "teacher_labeling.endpoint",
         "EndpointConfig"),
        ("--judge of `croptune evaluate`", "teacher_labeling.judge", "JudgeConfig"),
    ],
    "predict": [
        ("an endpoint YAML: `croptune predict --endpoint FILE.yaml`",
         "teacher_labeling.endpoint", "EndpointConfig"),
        ("--teacher-config of `croptune predict` (one teacher, or a label config with one box "
         "teacher)", "teacher_labeling.teachers", "TeacherConfig"),
    ],
}  # fmt: skip
_STAGE_CONFIGS["endpoint"] = _STAGE_CONFIGS["evaluate"][:1]
_STAGE_CONFIGS["judge"] = _STAGE_CONFIGS["evaluate"][1:]
_STAGE_CONFIGS["teacher"] = _STAGE_CONFIGS["predict"][1:]
_STAGES = ("label", "crop", "dataset", "train", "detector", "evaluate", "predict")


def _stage_configs(stage: str) -> list[tuple[str, Any]]:
    """(what reads it, config class) of each config of a stage; a misspelt stage is named."""
    import difflib
    import importlib

    if stage not in _STAGE_CONFIGS:
        close = difflib.get_close_matches(stage, list(_STAGE_CONFIGS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise CroptuneError(
            f"unknown stage {stage!r}{hint} (stages: {', '.join(_STAGES)}; also endpoint, "
            "judge, teacher)"
        )
    return [
        (reader, getattr(importlib.import_module(module), name))
        for reader, module, name in _STAGE_CONFIGS[stage]
    ]


@config_app.command("show")
def config_show(
    stage: str = typer.Argument(
        ...,
        metavar="STAGE",
        help="label | crop | dataset | train | detector | evaluate | predict (or endpoint, "
        "judge, teacher: one config of evaluate/predict).",
    ),
    format: str = typer.Option(
        "text",
        "--format",
        help="text: every key (nested ones dotted) with its type, default and help; yaml: a "
        "commented starter YAML holding every key at its default.",
    ),
) -> None:
    """Every key of a stage's config with its type, default and help text."""
    from toolkit.config import describe_config, starter_yaml

    if format not in ("text", "yaml"):
        raise CroptuneError(f"unknown --format {format!r}; use text or yaml")
    configs = _stage_configs(stage)
    blocks = []
    for reader, cls in configs:
        title = f"{cls.__name__} ({cls.__module__}): {reader}"
        if format == "yaml":
            blocks.append(f"# {title}\n# {cls.__doc__.splitlines()[0]}\n{starter_yaml(cls)}")
        else:
            blocks.append(f"{title}\n{cls.__doc__.splitlines()[0]}\n\n{describe_config(cls)}\n")
    typer.echo(("---\n" if format == "yaml" else "\n").join(blocks), nl=False)


def _init_files(items: int, seed: int) -> dict[Path, bytes]:
    """What `croptune init` writes: relative path -> content."""
    import tempfile

    from croptune.synthetic.catalog import make_example_catalog
    from finetune.detector import DetectorConfig
    from toolkit.config import packaged_configs, starter_yaml
    from toolkit.dataset import DatasetConfig

    files = {Path(name): text.encode() for name, text in packaged_configs().items()}
    generated: dict[str, tuple[type[BaseModel], str, str]] = {
        "dataset.yaml": (DatasetConfig, "dataset build --run RUN --out DATASET", "dataset"),
        "detector.yaml": (DetectorConfig, "detector train --run RUN --out DETECTOR", "detector"),
    }
    for name, (cls, command, stage) in generated.items():
        if not cls.__doc__:
            raise TypeError(f"{cls.__name__} has no docstring to head {name} with")
        header = (
            f"# {cls.__doc__.splitlines()[0]} Every key at its default.\n"
            f"#   croptune {command} --config {name} [key=value ...]\n"
            f"# Written by `croptune config show {stage} --format yaml`.\n"
        )
        files[Path(name)] = (header + starter_yaml(cls)).encode()
    quiet = logging.getLogger("croptune.synthetic")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # its "wrote ... to /tmp/..." names the scratch folder
    try:
        with tempfile.TemporaryDirectory() as tmp:
            make_example_catalog(Path(tmp) / "catalog", n_items=items, seed=seed)
            for path in sorted(Path(tmp).rglob("*")):
                if path.is_file():
                    files[path.relative_to(tmp)] = path.read_bytes()
    finally:
        quiet.setLevel(level)
    return files


@app.command()
def init(
    folder: Path = typer.Argument(..., metavar="DIR", help="Folder to write into (created)."),
    force: bool = typer.Option(False, "--force", help="Overwrite files that are already there."),
    items: int = typer.Option(12, "--items", min=4, help="Items in the example catalog."),
    seed: int = typer.Option(0, "--seed", help="Seed of the example catalog."),
) -> None:
    """Write the starter configs and an example catalog (with its photos) into DIR."""
    import shlex

    files = _init_files(items, seed)
    # Configs first, then the catalog: what a user most likely edited is named first.
    ordered = sorted(files, key=lambda rel: (len(rel.parts), rel))
    existing = [str(rel) for rel in ordered if (folder / rel).exists()]
    if existing and not force:
        shown = ", ".join(existing[:5]) + (", ..." if len(existing) > 5 else "")
        raise CroptuneError(
            f"{folder} already holds {len(existing)} of the files croptune init writes "
            f"({shown}); nothing was written. Pass --force to overwrite them, or give another "
            "folder"
        )
    for rel, content in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(content)
    configs = sorted(str(rel) for rel in files if rel.parent == Path("."))
    photos = sum(1 for rel in files if rel.parts[0] == "catalog" and rel.suffix != ".jsonl")
    replaced = f", {len(existing)} of them replaced (--force)" if existing else ""
    typer.echo(f"wrote {len(files)} files to {folder}{replaced}:")
    typer.echo(f"  configs: {', '.join(configs)}")
    typer.echo(f"  example catalog: catalog/catalog.jsonl ({items} items, {photos} photos)")

    def at(*parts: str) -> str:
        return shlex.quote(str(folder.joinpath(*parts)))

    run_dir, dataset = at("runs", "catalog"), at("runs", "catalog", "dataset")
    typer.echo(
        "next (relative paths inside the configs are resolved against their folder):\n"
        f"  croptune catalog validate {at('catalog', 'catalog.jsonl')}\n"
        f"  croptune label {at('catalog', 'catalog.jsonl')} --config "
        f"{at('label-reference.yaml')} --run {run_dir}\n"
        f"  croptune crop --run {run_dir} --config {at('crop.yaml')}\n"
        f"  croptune dataset build --run {run_dir} --out {dataset} --config "
        f"{at('dataset.yaml')} image_tokens=16\n"
        f"  croptune train --config {at('train-tiny.yaml')}\n"
        f"  croptune evaluate --model {at('runs', 'catalog', 'train-tiny', 'adapter')} "
        f"--dataset {dataset}\n"
        "  croptune config show STAGE   (every key of a stage's config)"
    )


def main() -> None:
    """Entry point of the `croptune` console script."""
    try:
        app()
    except CroptuneError as exc:
        if _State.verbose:
            traceback.print_exc()
        typer.echo(f"croptune: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo(
            "croptune: interrupted; finished work is saved, run the command again to resume",
            err=True,
        )
        sys.exit(130)


if __name__ == "__main__":  # `python -m croptune.cli`, as `accelerate launch -m` runs it
    main()
