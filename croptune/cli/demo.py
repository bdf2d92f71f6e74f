"""`croptune demo`: the whole pipeline offline on the bundled example catalog."""

from __future__ import annotations

from pathlib import Path

import typer

from croptune.cli.common import State, comparison, table


def demo(
    workdir: Path = typer.Option(
        Path("croptune-demo"), "--workdir", help="Folder for the catalog, run, dataset, adapter."
    ),
    items: int = typer.Option(30, "--items", min=4, help="Items in the synthetic catalog."),
    steps: int = typer.Option(60, "--steps", min=1, help="LoRA training steps."),
    seed: int = typer.Option(0, "--seed", help="Seed of the catalog, split and training."),
) -> None:
    """Run the whole pipeline offline on the bundled example catalog."""
    from croptune.demo import run_demo

    summary = run_demo(workdir, n_items=items, max_steps=steps, seed=seed, progress=State.progress)
    table(f"croptune demo ({workdir})", summary.rows())
    comparison(f"base vs student on the test split ({workdir}/eval)", summary.evaluation)
