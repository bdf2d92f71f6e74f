"""What the commands share: the session's output options, summary tables, grouped messages,
the stage-override argument and the options several commands declare alike."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from finetune.evaluate import EvaluationResult

# Commands that read a stage config take `key=value` (or `--key=value`) overrides after it.
OVERRIDABLE = {"ignore_unknown_options": True}

_OVERRIDE_EXAMPLES = {
    "label": "fusion.policy=union teachers.0.max_concurrency=8",
    "crop": "margin=0.2 fill=[0,0,0]",
    "dataset": "test_ratio=0.1 image_tokens=16",
    "train": "max_steps=200 sft_args.weight_decay=0.1",
    "detector": "epochs=5 conf=0.3",
}


class State:
    """The global options of this invocation (set by the app's callback)."""

    verbose = False
    progress = True


def overrides_argument(stage: str) -> Any:
    """The trailing KEY=VALUE arguments of a command that reads a stage config."""
    return typer.Argument(
        None,
        metavar="KEY=VALUE",
        help=f"Overrides of the {stage} config, e.g. {_OVERRIDE_EXAMPLES[stage]} (dotted keys "
        f"reach nested ones; --key=value works too). `croptune config show {stage}` lists "
        "every key.",
        show_default=False,
    )


def overrides_epilog(stage: str) -> str:
    """The --help epilog of a command that reads a stage config: how overrides work."""
    return (
        f"Overrides: KEY=VALUE arguments override the {stage} config's keys (YAML values; a "
        f"misspelt key is named with the closest one, exit 1). Every key with its type, default "
        f"and help: croptune config show {stage}. Relative paths in a config file are resolved "
        f"against the file's folder, those in overrides against the current directory."
    )


# Options several commands declare with the same meaning (the help says where they differ).


def limit_option(what: str) -> Any:
    """--limit N: only the first N items (or examples)."""
    return typer.Option(None, "--limit", min=1, help=f"Only the first N {what}.")


def dry_run_option() -> Any:
    """--dry-run of the commands that ask teachers: an estimate, nothing sent."""
    return typer.Option(
        False, "--dry-run", help="Estimate requests, tokens and cost; send nothing."
    )


def allow_outside_option(
    help: str = "Accept image paths that leave the catalog folder.",
) -> Any:
    """--allow-outside-paths of the commands that read a catalog."""
    return typer.Option(False, "--allow-outside-paths", help=help)


def column_option(where: str) -> Any:
    """--column FIELD=COLUMN of the commands that read a catalog (where: where else it is set)."""
    return typer.Option(
        None,
        "--column",
        metavar="FIELD=COLUMN",
        help="Read croptune's FIELD from the catalog's COLUMN, e.g. --column item_id=id "
        f"(repeatable){where}.",
    )


def batch_size_option(help: str) -> Any:
    """--batch-size of the commands that generate answers."""
    return typer.Option(4, "--batch-size", min=1, help=help)


def max_new_tokens_option(default: int | None, help: str) -> Any:
    """--max-new-tokens of the commands that generate answers."""
    return typer.Option(default, "--max-new-tokens", min=1, help=help)


def console() -> Console:
    """A rich console (rich is imported here, lazily, to keep --help fast)."""
    from rich.console import Console

    return Console()


def table(title: str, rows: list[tuple[str, str]]) -> None:
    """Print a command's summary: a two-column table of (what, value) rows."""
    from rich.table import Table

    summary = Table(title=title, show_header=False, title_justify="left")
    summary.add_column(style="bold")
    summary.add_column()
    for key, value in rows:
        summary.add_row(key, value)
    console().print(summary)


def comparison(title: str, results: list[EvaluationResult]) -> None:
    """Print the comparison table of evaluated models (one row each)."""
    from finetune.evaluate.tables import comparison_table

    header, rows = comparison_table(results)
    grid(title, header, rows)


def grid(title: str, header: list[str], rows: list[list[str]]) -> None:
    """Print a table with a header row; the first column (names) left, numbers right."""
    from rich.table import Table

    compared = Table(title=title, title_justify="left")
    for index, name in enumerate(header):
        compared.add_column(name, justify="left" if index == 0 else "right")
    for row in rows:
        compared.add_row(*row)
    out = console()
    if not out.is_terminal:
        # A file or pipe: as wide as the table wants, so no cell (a model path) is cut.
        from rich.measure import Measurement

        out.width = 10_000
        out.width = Measurement.get(out, out.options, compared).maximum
    out.print(compared)


def print_by_cause(
    what: str, by_cause: dict[str, list[str]], run: Path, kept_in: str | None = None
) -> None:
    """One line per cause (of failures, or of what was dropped, moved or clipped): count, ids."""
    if not by_cause:
        return
    total = sum(len(ids) for ids in by_cause.values())
    kept_in = kept_in or f"{run}/run.sqlite, events"
    typer.echo(f"{total} {what}, by cause (each one is in {kept_in}):", err=True)
    for cause, ids in sorted(by_cause.items(), key=lambda kv: -len(kv[1])):
        unique = sorted(set(ids))
        shown = ", ".join(unique[:3]) + (", ..." if len(unique) > 3 else "")
        typer.echo(f"  {len(ids)} x {cause} ({len(unique)} item(s): {shown})", err=True)


class Engine(str, Enum):
    """Where label, relabel and predict run: this process, or a Ray cluster."""

    async_ = "async"
    ray = "ray"


def engine_option() -> Any:
    """--engine: where the work runs (this process, or a Ray cluster)."""
    return typer.Option(
        Engine.async_,
        "--engine",
        help="async: this process; ray: a Ray cluster (label/relabel: the config's ray: "
        "section; predict: --replicas of the student; docs/scale.md).",
    )


def ray_address_option() -> Any:
    """--ray-address: the Ray cluster to use (overrides ray.address)."""
    return typer.Option(
        None,
        "--ray-address",
        help="Ray cluster address (auto, ray://head:10001); default: the config's ray.address "
        "(label), else a local Ray on this machine. Needs --engine ray.",
    )
