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
) -> None:
    """Write a self-contained HTML page to review boxes, crops, labels or predictions."""
    from toolkit.report import write_report
    from toolkit.store import RunStore

    with RunStore(run, create=False) as store:
        path = write_report(store, out or run / "report.html", page_size=page_size)
    typer.echo(f"review page written to {path}")
