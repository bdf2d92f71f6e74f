"""`croptune evaluate`: score models (and teachers) on a dataset split."""

from __future__ import annotations

from pathlib import Path

import typer

from croptune.cli.common import (
    State,
    batch_size_option,
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
    limit: int | None = limit_option("examples"),
    batch_size: int = batch_size_option("Examples per generate call (in-process models)."),
    max_new_tokens: int = max_new_tokens_option(256, "Answer length limit, for every model."),
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
        progress=State.progress,
    )
    comparison(f"croptune evaluate ({split}) -> {target}", results)


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
