"""`croptune demo`: the recipe offline, with a student that learns, on a synthetic catalog."""

from __future__ import annotations

from pathlib import Path

import typer

from croptune.cli.common import State, grid, table


def demo(
    workdir: Path = typer.Option(
        Path("croptune-demo"), "--workdir", help="Folder for the catalog, run, datasets, bundle."
    ),
    items: int = typer.Option(300, "--items", min=10, help="Items in the synthetic catalog."),
    steps: int = typer.Option(250, "--steps", min=1, help="LoRA training steps per student."),
    seed: int = typer.Option(0, "--seed", help="Seed of the catalog, split and training."),
) -> None:
    """Run the recipe offline: a base, two LoRA students (originals / + crops), the bundle served."""
    from croptune.demo import run_demo

    summary = run_demo(workdir, n_items=items, max_steps=steps, seed=seed, progress=State.progress)
    table(f"croptune demo ({workdir})", summary.rows())
    header, rows = summary.learning_rows()
    held_out = summary.examples.get("test", 0)
    grid(f"what the student learned: F1 on the {held_out} held-out items", header, rows)
