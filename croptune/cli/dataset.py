"""`croptune dataset build`: a train/validation/test DatasetDict from a run."""

from __future__ import annotations

from pathlib import Path

import typer

from croptune.cli.common import State, overrides_argument, table


def build(
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
    workers: int | None = typer.Option(
        None,
        "--workers",
        min=1,
        help="Processes building examples (1: in this process). Default: in this process, "
        "moving to up to 4 processes (one per CPU core) once the build proves longer than "
        "10 s. The dataset is the same whatever the number. An interrupted build run again "
        "with the same settings reuses the items it finished.",
    ),
    overrides: list[str] = overrides_argument("dataset"),
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
    summary = run_dataset(
        run,
        out,
        dataset_config,
        State.progress,
        resplit=resplit,
        workers=workers,
    )
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
    stored = stats["images_stored"]
    because = ", ".join(f"{k.replace('_', '-')} {v}" for k, v in stored["png_because"].items())
    rows.append(
        (
            "images stored",
            f"{stored['source_bytes']} as their files' bytes, {stored['png']} as PNG"
            + (f" ({because}: pixels croptune changed)" if because else ""),
        )
    )
    if summary.chunks_reused:
        rows.append(
            (
                "resumed",
                f"{summary.chunks_reused} chunk(s) reused from an interrupted build, "
                f"{summary.chunks_built} built",
            )
        )
    if summary.processes > 1:
        rows.append(("built by", f"{summary.processes} processes"))
    table(f"croptune dataset build ({out})", rows)
