"""`croptune crop`: cut targeted crops of each image's boxes."""

from __future__ import annotations

from pathlib import Path

import typer

from croptune.cli.common import State, overrides_argument, table


def crop(
    run: Path = typer.Option(..., "--run", help="A labeled run folder."),
    config: Path | None = typer.Option(None, "--config", help="Crop config YAML."),
    workers: int = typer.Option(1, "--workers", min=1, help="Threads cutting crops."),
    overrides: list[str] = overrides_argument("crop"),
) -> None:
    """Cut targeted crops of each image's boxes (the paper's enclosing squares by default)."""
    from croptune.figures import distribution, format_distribution
    from croptune.pipeline import run_crop
    from toolkit.config import load_stage_config
    from toolkit.crops import CropConfig

    crop_config = load_stage_config(CropConfig, config, overrides or [], stage="crop")
    summary = run_crop(run, crop_config, State.progress, workers)
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
    table(
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
