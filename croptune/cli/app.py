"""The `croptune` typer app: its global options, every command registered in one place, and
`main`, which turns a CroptuneError into one line and exit 1."""

from __future__ import annotations

import sys
import traceback

import typer

from croptune.cli import (
    catalog,
    config,
    crop,
    dataset,
    demo,
    detector,
    evaluate,
    export,
    label,
    predict,
    report,
    train,
)
from croptune.cli.common import OVERRIDABLE, State, overrides_epilog
from toolkit.errors import CroptuneError

app = typer.Typer(
    name="croptune",
    help="Label a product catalog with teacher VLMs, crop what they box, fine-tune a small "
    "student (Gemma 3, Qwen2.5-VL) with LoRA, and export it for vLLM.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
catalog_app = typer.Typer(help="Check a catalog before labeling it.", no_args_is_help=True)
labels_app = typer.Typer(help="Export a run's labels, boxes and crops.", no_args_is_help=True)
dataset_app = typer.Typer(help="Build training datasets from a run.", no_args_is_help=True)
detector_app = typer.Typer(
    help="The region-proposal detector used at inference.", no_args_is_help=True
)
config_app = typer.Typer(
    help="The keys of each stage's config: type, default, help.", no_args_is_help=True
)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("croptune")
    except PackageNotFoundError:
        return "(source)"


def _print_version(value: bool) -> None:
    """--version: print and exit before any command is looked for."""
    if value:
        typer.echo(f"croptune {_version()}")
        raise typer.Exit(0)


@app.callback()
def _options(
    verbose: bool = typer.Option(
        False,
        "--verbose",
        "-v",
        help="Debug logs, full tracebacks, and the third-party output croptune hides "
        "(warnings, ultralytics' banner and tables).",
    ),
    progress: bool = typer.Option(
        True,
        "--progress/--no-progress",
        help="A progress bar per long stage on a terminal (stderr); --no-progress, or no "
        "terminal: plain lines instead.",
    ),
    show_version: bool = typer.Option(
        False,
        "--version",
        help="Print croptune's version and exit.",
        is_eager=True,
        callback=_print_version,
    ),
) -> None:
    from toolkit.noise import configure_output

    State.verbose = verbose
    State.progress = True  # every long stage reports: a bar on a terminal, else plain lines
    configure_output(verbose=verbose, bars=progress and sys.stderr.isatty())


# Every command, in the order `croptune --help` lists them. A command that reads a stage
# config takes key=value overrides after its options (OVERRIDABLE), as its epilog says.
app.command("demo")(demo.demo)
catalog_app.command("validate")(catalog.validate)
app.command("label", context_settings=OVERRIDABLE, epilog=overrides_epilog("label"))(label.label)
app.command("crop", context_settings=OVERRIDABLE, epilog=overrides_epilog("crop"))(crop.crop)
app.command("relabel", context_settings=OVERRIDABLE, epilog=overrides_epilog("label"))(
    label.relabel
)
labels_app.command("export")(label.labels_export)
app.command("report")(report.report)
dataset_app.command("build", context_settings=OVERRIDABLE, epilog=overrides_epilog("dataset"))(
    dataset.build
)
app.command("train", context_settings=OVERRIDABLE, epilog=overrides_epilog("train"))(train.train)
app.command("evaluate")(evaluate.evaluate)
app.command("export")(export.export)
detector_app.command("train", context_settings=OVERRIDABLE, epilog=overrides_epilog("detector"))(
    detector.train
)
app.command("predict")(predict.predict)
config_app.command("show")(config.show)
app.command("init")(config.init)
app.add_typer(catalog_app, name="catalog")
app.add_typer(labels_app, name="labels")
app.add_typer(dataset_app, name="dataset")
app.add_typer(detector_app, name="detector")
app.add_typer(config_app, name="config")


def main() -> None:
    """Entry point of the `croptune` console script."""
    try:
        app()
    except CroptuneError as exc:
        if State.verbose:
            traceback.print_exc()
        typer.echo(f"croptune: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo(
            "croptune: interrupted; finished work is saved, run the command again to resume",
            err=True,
        )
        sys.exit(130)
