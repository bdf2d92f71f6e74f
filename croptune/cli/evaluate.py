"""`croptune evaluate`: score models (and teachers) on a dataset split, or predict's output
files against a catalog or a run."""

from __future__ import annotations

from pathlib import Path

import typer

from croptune.cli.common import (
    State,
    batch_size_option,
    column_option,
    comparison,
    limit_option,
    max_new_tokens_option,
)
from toolkit.errors import CroptuneError


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
    dataset: Path | None = typer.Option(
        None, "--dataset", help="Dataset folder from `dataset build` (with --model)."
    ),
    split: str | None = typer.Option(
        None,
        "--split",
        help="Split to score (default: test). With --predictions: only the items of this "
        "split of the --reference run's recorded split (default: every item).",
    ),
    predictions: list[Path] = typer.Option(
        None,
        "--predictions",
        metavar="FILE",
        help="Instead of --model: a `croptune predict` output file (JSON lines) to score "
        "against --reference; repeat to compare several, one row each (named by the file's "
        "stem, or --name). Missing items and error records cost recall; extra items, "
        "duplicate ids and unreadable lines are counted. See docs/evaluation.md.",
    ),
    reference: Path | None = typer.Option(
        None,
        "--reference",
        metavar="CATALOG_OR_RUN",
        help="With --predictions: a catalog file (its items' `attributes`) or a run folder "
        "(each item's final labels) to score against.",
    ),
    name: list[str] = typer.Option(
        None,
        "--name",
        metavar="NAME",
        help="With --predictions: the row name of each file, in order (default: its stem).",
    ),
    column: list[str] = column_option(", for a --reference catalog"),
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
    limit: int | None = limit_option("examples"),
    batch_size: int = batch_size_option("Examples per generate call (in-process models)."),
    max_new_tokens: int = max_new_tokens_option(256, "Answer length limit, for every model."),
) -> None:
    """Field-level precision/recall/F1, JSON validity and speed of models on a dataset split,
    or of `croptune predict` output files (--predictions) against a catalog or a run."""
    from croptune.pipeline import run_evaluate

    models = list(model or [])
    if predictions or reference is not None:
        _check_predictions_flags(
            models, dataset, teacher_labels, judge, limit, predictions or [], reference
        )
        _score_predictions(predictions, reference, out, name or [], split, column or [])
        return
    if name or column:
        raise CroptuneError("--name and --column go with --predictions and --reference")
    if dataset is None:
        raise CroptuneError(
            "pass --dataset DIR (with --model) or --predictions FILE --reference CATALOG_OR_RUN"
        )
    split = split or "test"
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
        progress=State.progress,
    )
    comparison(f"croptune evaluate ({split}) -> {target}", results)


def _check_predictions_flags(
    models: list[str],
    dataset: Path | None,
    teacher_labels: Path | None,
    judge: Path | None,
    limit: int | None,
    predictions: list[Path],
    reference: Path | None,
) -> None:
    """--predictions mode: its two flags given, none of the dataset mode's."""
    if not predictions or reference is None:
        raise CroptuneError(
            "--predictions FILE and --reference CATALOG_OR_RUN go together: pass both"
        )
    mixed = [
        flag
        for flag, given in (
            ("--model", bool(models)),
            ("--dataset", dataset is not None),
            ("--teacher-labels", teacher_labels is not None),
            ("--judge", judge is not None),
            ("--limit", limit is not None),
        )
        if given
    ]
    if mixed:
        raise CroptuneError(
            f"--predictions scores predict's output files against --reference; it does not "
            f"combine with {', '.join(mixed)} (those score models on a dataset split): run "
            "`croptune evaluate` once for each"
        )


def _score_predictions(
    predictions: list[Path],
    reference: Path | None,
    out: Path | None,
    names: list[str],
    split: str | None,
    column: list[str],
) -> None:
    """Score the files, print the table and each file's match with the reference."""
    from croptune.pipeline import run_score_predictions
    from finetune.evaluate.predictions import coverage_text
    from toolkit.catalog import parse_column_mapping

    assert reference is not None
    target = out or Path("eval")
    results = run_score_predictions(
        predictions,
        reference,
        target,
        names=names,
        split=split,
        columns=parse_column_mapping(column),
    )
    comparison(f"croptune evaluate --predictions ({split or 'all items'}) -> {target}", results)
    for result in results:
        if result.coverage is not None:
            typer.echo(f"{result.model}: {coverage_text(result.coverage)}")


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
