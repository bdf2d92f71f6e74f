"""`croptune export`: lint an adapter for vLLM and write the serving bundle."""

from __future__ import annotations

from pathlib import Path

import typer

from croptune.cli.common import table
from toolkit.errors import CroptuneError


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
    table(
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
