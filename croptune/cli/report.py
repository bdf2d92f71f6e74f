"""`croptune report`: a self-contained HTML review page of a run or a predict work folder."""

from __future__ import annotations

from pathlib import Path

import typer


def report(
    run: Path = typer.Option(
        ..., "--run", help="A labeled run folder, or a predict work folder (preds.work)."
    ),
    out: Path | None = typer.Option(None, "--out", help="Default: RUN/report.html"),
    page_size: int = typer.Option(50, "--page-size", min=1, help="Items per page of the page."),
    # None: write_report's default (toolkit.report.DEFAULT_MAX_ITEMS; importing it here
    # would cost `croptune --help` the report's imports).
    max_items: int | None = typer.Option(
        None,
        "--max-items",
        min=1,
        help="Item sections the page holds at most, the first ones in order (default 2000; "
        "the header counts every item). Each carries its photos: more makes a larger file.",
    ),
) -> None:
    """Write a self-contained HTML page to review boxes, crops, labels or predictions."""
    from toolkit.report import write_report
    from toolkit.store import RunStore

    with RunStore(run, create=False) as store:
        path = write_report(
            store, out or run / "report.html", page_size=page_size, max_items=max_items
        )
    typer.echo(f"review page written to {path}")
