"""`croptune predict`: a catalog through a bundle, one JSON per item."""

from __future__ import annotations

from pathlib import Path

import typer

from croptune.cli.common import (
    Engine,
    State,
    allow_outside_option,
    batch_size_option,
    column_option,
    engine_option,
    limit_option,
    max_new_tokens_option,
    print_by_cause,
    ray_address_option,
    table,
)


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
    batch_size: int = batch_size_option("Items per generate call."),
    max_new_tokens: int | None = max_new_tokens_option(
        None, "Answer length limit (default: the bundle's)."
    ),
    limit: int | None = limit_option("items"),
    allow_outside_paths: bool = allow_outside_option(),
    column: list[str] = column_option(", as on `croptune catalog validate`"),
    engine: Engine = engine_option(),
    ray_address: str | None = ray_address_option(),
    replicas: int = typer.Option(
        1, "--replicas", min=1, help="With --engine ray: copies of the student, one per actor."
    ),
    gpus_per_replica: float = typer.Option(
        1.0,
        "--gpus-per-replica",
        min=0,
        help="With --engine ray: GPUs each replica holds (0: on CPUs).",
    ),
    prepare_actors: int = typer.Option(
        0,
        "--prepare-actors",
        min=0,
        help="With --engine ray: at most this many actors decode, box and crop the items, "
        "each with the detector loaded once (0: one per CPU of the cluster; Ray Data starts "
        "one and adds more while CPUs are free).",
    ),
    prepare_cpus: float = typer.Option(
        1.0,
        "--prepare-cpus",
        min=0.1,
        help="With --engine ray: CPUs each preparation actor holds.",
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
        progress=State.progress,
        engine="ray" if engine is Engine.ray else "async",
        replicas=replicas,
        gpus_per_replica=gpus_per_replica,
        ray_address=ray_address,
        prepare_actors=prepare_actors,
        prepare_cpus=prepare_cpus,
    )
    stats = summary.stats
    per_stage = stats["seconds_per_item"]
    table(
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
    print_by_cause("failed item(s)", group_by_cause(failures), summary.workdir, str(out))
    print_by_cause("warning(s) and note(s)", summary.warnings, summary.workdir, str(out))
    if summary.failed:
        typer.echo(
            f"croptune: {summary.failed} of {summary.items} item(s) failed; their error "
            f"records are in {out}",
            err=True,
        )
        raise typer.Exit(1)
