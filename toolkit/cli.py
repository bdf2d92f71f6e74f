"""The `croptune` command line: one entry point, one sub-command per stage."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import typer

from toolkit.errors import CroptuneError

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
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logs and full tracebacks."),
    progress: bool = typer.Option(
        True, "--progress/--no-progress", help="Progress bars on long work (on stderr)."
    ),
    show_version: bool = typer.Option(
        False,
        "--version",
        help="Print croptune's version and exit.",
        is_eager=True,
        callback=_print_version,
    ),
) -> None:
    _State.verbose = verbose
    _State.progress = progress and sys.stderr.isatty()
    if not _State.progress:
        # Read by huggingface_hub/transformers and datasets when they are (lazily) imported.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    logging.basicConfig(
        level=logging.WARNING,  # third-party debug logs may carry request headers: never shown
        format="%(levelname)s %(name)s: %(message)s" if verbose else "%(message)s",
    )
    for package in ("toolkit", "teacher_labeling", "finetune"):
        logging.getLogger(package).setLevel(logging.DEBUG if verbose else logging.INFO)


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
    from toolkit.pipeline import run_demo

    summary = run_demo(workdir, n_items=items, max_steps=steps, seed=seed, progress=_State.progress)
    _table(f"croptune demo ({workdir})", summary.rows())
    _comparison(f"base vs student on the test split ({workdir}/eval)", summary.evaluation)


@catalog_app.command("validate")
def catalog_validate(
    catalog: Path = typer.Argument(..., help="JSONL, CSV, Parquet or a save_to_disk folder."),
    allow_outside_paths: bool = typer.Option(
        False, "--allow-outside-paths", help="Accept image paths that leave the catalog folder."
    ),
) -> None:
    """Report every problem of a catalog (exit 1 if any)."""
    from toolkit.catalog import inspect_item, load_catalog
    from toolkit.progress import track

    loaded = load_catalog(catalog, allow_outside=allow_outside_paths)
    problems = list(loaded.problems)
    images = 0
    for item in track(loaded.items, "validate", _State.progress):
        inspected = inspect_item(loaded, item)
        problems += inspected.problems
        images += len(inspected.images)
    for problem in problems:
        typer.echo(str(problem))
    if problems:
        typer.echo(f"{len(problems)} problem(s) in {catalog}", err=True)
        raise typer.Exit(1)
    typer.echo(f"{catalog}: {len(loaded.items)} items, {images} images, no problems")


@app.command()
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
) -> None:
    """Ingest a catalog and label it with teacher models (resumable)."""
    from teacher_labeling.teachers import load_label_config
    from toolkit.pipeline import run_label

    label_config = load_label_config(config)
    if allow_outside_paths:
        label_config = label_config.model_copy(update={"allow_outside_paths": True})
    ingest, result = run_label(catalog, label_config, run, limit, dry_run, _State.progress, batch)
    for problem in ingest.problems:
        typer.echo(str(problem), err=True)
    rows = [
        ("items ingested", f"{ingest.stored} new/changed, {ingest.unchanged} unchanged"),
        ("items dropped", str(ingest.dropped)),
    ]
    if dry_run:
        _table(f"croptune label --dry-run ({run})", rows + _pending_rows(result))
        return
    _table(f"croptune label ({run})", rows + _label_rows(result))
    _report_label_run(result, run, "label")


def _print_by_cause(what: str, by_cause: dict[str, list[str]], run: Path) -> None:
    """One line per cause (of failures, or of what was dropped, moved or clipped): count, ids."""
    if not by_cause:
        return
    total = sum(len(ids) for ids in by_cause.values())
    typer.echo(f"{total} {what}, by cause (each one is in {run}/run.sqlite, events):", err=True)
    for cause, ids in sorted(by_cause.items(), key=lambda kv: -len(kv[1])):
        unique = sorted(set(ids))
        shown = ", ".join(unique[:3]) + (", ..." if len(unique) > 3 else "")
        typer.echo(f"  {len(ids)} x {cause} ({len(unique)} item(s): {shown})", err=True)


def _pending_rows(pending: Any) -> list[tuple[str, str]]:
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


def _label_rows(result: Any) -> list[tuple[str, str]]:
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


def _report_label_run(result: Any, run: Path, stage: str) -> None:
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


@app.command()
def crop(
    run: Path = typer.Option(..., "--run", help="A labeled run folder."),
    config: Path | None = typer.Option(None, "--config", help="Crop config YAML."),
    workers: int = typer.Option(1, "--workers", min=1, help="Threads cutting crops."),
    overrides: list[str] = typer.Argument(None, help="key=value overrides of the crop config."),
) -> None:
    """Cut targeted crops of each image's boxes (the paper's enclosing squares by default)."""
    from toolkit.config import load_stage_config
    from toolkit.crops import CropConfig
    from toolkit.pipeline import distribution, run_crop

    crop_config = load_stage_config(CropConfig, config, overrides or [])
    summary = run_crop(run, crop_config, _State.progress, workers)
    for error in summary.errors:
        typer.echo(error, err=True)

    def dist(values: list[int]) -> str:
        d = distribution(values)
        return f"median {d['median']}, p90 {d['p90']}, max {d['max']}"

    uncovered = str(summary.uncovered)
    if summary.cut_by_budget:
        uncovered += (
            f" ({summary.cut_by_budget} only because the image budget of "
            f"{crop_config.max_images_per_item} cut their crop)"
        )
    _table(
        f"croptune crop ({run}, {crop_config.strategy})",
        [
            ("items", str(summary.items)),
            ("crops made (already there)", f"{summary.made} ({summary.existing})"),
            ("images per item, one crop per box", dist(summary.images_per_box_crop)),
            ("images per item, after", dist(summary.images_after)),
            (
                "duplicates removed (pHash)",
                f"{summary.duplicates} ({summary.duplicate_originals} photos, "
                f"{summary.duplicate_crops} crops)",
            ),
            ("boxes not covered by a kept crop", uncovered),
        ],
    )


@app.command()
def relabel(
    run: Path = typer.Option(..., "--run", help="A labeled and cropped run folder."),
    config: Path = typer.Option(..., "--config", help="Label config YAML."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Estimate requests, tokens and cost; send nothing."
    ),
) -> None:
    """Better labels: ask the attributes teachers again with originals + crops."""
    from teacher_labeling.teachers import load_label_config
    from toolkit.pipeline import run_relabel

    result = run_relabel(run, load_label_config(config), dry_run, _State.progress)
    if dry_run:
        _table(f"croptune relabel --dry-run ({run})", _pending_rows(result))
        return
    _table(f"croptune relabel ({run})", _label_rows(result))
    _report_label_run(result, run, "relabel")


@labels_app.command("export")
def labels_export(
    run: Path = typer.Option(..., "--run", help="A labeled run folder."),
    format: str = typer.Option("jsonl", "--format", help="jsonl | coco | yolo"),
    out: Path = typer.Option(..., "--out", help="Output file (jsonl) or folder (coco, yolo)."),
) -> None:
    """Write labels, boxes and crops as JSONL, or boxes as a COCO/YOLO dataset."""
    from toolkit import export
    from toolkit.store import RunStore

    writers = {
        "jsonl": export.export_labels_jsonl,
        "coco": export.export_labels_coco,
        "yolo": export.export_labels_yolo,
    }
    if format not in writers:
        raise CroptuneError(f"unknown export format {format!r}; use jsonl, coco or yolo")
    with RunStore(run, create=False) as store:
        result = writers[format](store, out)
    if isinstance(result, int):
        typer.echo(f"{result} items written to {out}")
        return
    for reason in result.skipped:
        typer.echo(reason, err=True)
    typer.echo(
        f"{result.images} images, {result.boxes} boxes, {len(result.classes)} classes "
        f"written to {out} ({format})"
    )


@app.command()
def report(
    run: Path = typer.Option(..., "--run", help="A labeled run folder."),
    out: Path | None = typer.Option(None, "--out", help="Default: RUN/report.html"),
    page_size: int = typer.Option(50, "--page-size", min=1, help="Items per page of the page."),
) -> None:
    """Write a self-contained HTML page to review boxes, crops and labels."""
    from toolkit.report import write_report
    from toolkit.store import RunStore

    with RunStore(run, create=False) as store:
        path = write_report(store, out or run / "report.html", page_size=page_size)
    typer.echo(f"review page written to {path}")


@dataset_app.command("build")
def dataset_build(
    run: Path = typer.Option(..., "--run", help="A labeled (and cropped) run folder."),
    out: Path = typer.Option(..., "--out", help="Folder for the DatasetDict (save_to_disk)."),
    strategy: str = typer.Option(
        "originals+crops", "--strategy", help="originals | crops | originals+crops"
    ),
    config: Path | None = typer.Option(None, "--config", help="Dataset config YAML."),
    overrides: list[str] = typer.Argument(None, help="key=value overrides of the dataset config."),
) -> None:
    """Build a train/validation/test DatasetDict of multi-image examples."""
    from toolkit.config import load_stage_config
    from toolkit.dataset import DatasetConfig
    from toolkit.pipeline import run_dataset

    dataset_config = load_stage_config(
        DatasetConfig, config, [f"strategy={strategy}", *(overrides or [])]
    )
    summary = run_dataset(run, out, dataset_config, _State.progress)
    stats = summary.stats()
    rows = [(f"{k} examples", str(v)) for k, v in summary.examples.items()]
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
            f"median {images['median']}, mean {images['mean']}, max {images['max']}",
        ),
        (
            "image tokens per example",
            f"median {tokens['median']}, max {tokens['max']} (assuming image_tokens="
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


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(
    ctx: typer.Context,
    config: Path | None = typer.Option(None, "--config", help="Train config YAML."),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue from the newest checkpoint in output_dir: same step, optimizer and data order.",
    ),
) -> None:
    """LoRA-fine-tune a student with TRL (extra key=value arguments override the config)."""
    from finetune.train import load_train_config, save_train_config
    from finetune.train import train as run_training

    overrides = list(ctx.args) + (["resume_from_checkpoint=true"] if resume else [])
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
    from toolkit.pipeline import run_evaluate

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
    if len(models) == 1 and not models[0].lower().endswith((".yaml", ".yml")):
        path = Path(models[0])
        if (path / "adapter_config.json").is_file() or (path / "croptune.yaml").is_file():
            return path / "eval"
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
    from finetune.export import export_bundle, lint_adapter, read_metrics

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


@detector_app.command(
    "train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def detector_train(
    run: Path = typer.Option(..., "--run", help="A labeled run folder."),
    out: Path = typer.Option(..., "--out", help="Folder for the detector."),
    config: Path | None = typer.Option(None, "--config", help="Detector config YAML."),
    overrides: list[str] = typer.Argument(
        None, help="key=value (or --key=value) overrides of the detector config."
    ),
) -> None:
    """Distil the teachers' boxes into a small ultralytics detector."""
    from finetune.detector import DetectorConfig, train_detector
    from toolkit.config import load_stage_config

    detector_config = load_stage_config(DetectorConfig, config, overrides or [])
    summary = train_detector(run, out, detector_config, verbose=_State.verbose)
    for reason in summary.skipped:
        typer.echo(reason, err=True)
    m = summary.metrics

    def rate(key: str) -> str:
        return "n/a" if m.get(key) is None else f"{m[key]:.3f}"

    outputs = [summary.weights, summary.onnx, summary.config_file, summary.metrics_file]
    _table(
        f"croptune detector train ({out})",
        [
            (
                "items train / held out",
                f"{len(summary.train_items)} / {len(summary.held_out_items)}",
            ),
            (
                "photos train / held out",
                f"{summary.images['train']} / {summary.images['held_out']}",
            ),
            (
                f"boxes train / held out ({summary.box_source})",
                f"{summary.boxes['train']} / {summary.boxes['held_out']}",
            ),
            ("classes", ", ".join(summary.classes)),
            ("epochs, image size", f"{summary.epochs}, {detector_config.imgsz}"),
            ("train seconds", f"{summary.seconds['train']:.1f}"),
            (
                f"held-out precision / recall (conf {detector_config.conf})",
                f"{rate('precision')} / {rate('recall')}",
            ),
            ("held-out mAP50", rate("map50")),
            ("written (in --out)", ", ".join(p.name for p in outputs if p is not None)),
        ],
    )


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
) -> None:
    """Boxes -> the training-time crops -> student -> one JSON per item (resumable)."""
    from toolkit.pipeline import run_predict

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
    if summary.failed:
        typer.echo(
            f"croptune: {summary.failed} of {summary.items} item(s) failed; their error "
            f"records are in {out}",
            err=True,
        )
        raise typer.Exit(1)


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


if __name__ == "__main__":  # `python -m toolkit.cli`, as `accelerate launch -m` runs it
    main()
