"""`croptune catalog validate`: every problem of a catalog, before labeling it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from croptune.cli.common import State, allow_outside_option, column_option


def validate(
    catalog: Path = typer.Argument(..., help="JSONL, CSV, Parquet or a save_to_disk folder."),
    allow_outside_paths: bool = allow_outside_option(),
    box_convention: str | None = typer.Option(
        None,
        "--box-convention",
        help="How the reference boxes are given: pixels (default), norm1 (0..1 fractions of "
        "the image) or norm1000 (0..1000 per axis); the label config's box_convention.",
    ),
    column: list[str] = column_option("; the label config's columns"),
    schema: str | None = typer.Option(
        None,
        "--schema",
        help="Schema to check reference attributes against: a built-in name or a YAML/JSON "
        "file (default: the --config's, else compliance).",
    ),
    config: Path | None = typer.Option(
        None,
        "--config",
        help="A label config: validate with its schema, box_convention, columns and "
        "allow_outside_paths, as `croptune label` will (the flags above override it).",
    ),
) -> None:
    """Report every problem of a catalog (exit 1 if anything would be left out)."""
    from toolkit.catalog import (
        attribute_problems,
        inspect_item,
        load_catalog,
        parse_column_mapping,
    )
    from toolkit.progress import track
    from toolkit.schema import load_schema

    options: dict[str, Any] = {"allow_outside": False, "box_convention": "pixels", "columns": {}}
    schema_name = "compliance"
    if config is not None:
        from teacher_labeling.teachers import load_label_config

        label_config = load_label_config(config)
        options = {
            "allow_outside": label_config.allow_outside_paths,
            "box_convention": label_config.box_convention,
            "columns": dict(label_config.columns),
        }
        schema_name = label_config.schema_
    options["allow_outside"] |= allow_outside_paths
    options["box_convention"] = box_convention or options["box_convention"]
    options["columns"].update(parse_column_mapping(column or []))
    attribute_schema = load_schema(schema or schema_name)
    loaded = load_catalog(catalog, **options)
    problems = list(loaded.problems)
    images = converted = 0
    for item in track(loaded.items, "validate", State.progress):
        inspected = inspect_item(loaded, item)
        problems += inspected.problems + attribute_problems(item, attribute_schema)
        images += len(inspected.images)
        converted += inspected.converted
    for problem in problems:
        typer.echo(str(problem))
    errors = sum(1 for p in problems if p.level == "error")
    warnings = len(problems) - errors
    found = f"{len(loaded.items)} items, {images} images"
    if loaded.box_convention != "pixels":
        found += f", {converted} reference box(es) converted from {loaded.box_convention} to pixels"
    if errors:
        also = f" and {warnings} warning(s)" if warnings else ""
        typer.echo(f"{errors} problem(s){also} in {catalog} ({found})", err=True)
        raise typer.Exit(1)
    kept = f", {warnings} warning(s) above (kept, changed as said)" if warnings else ""
    typer.echo(f"{catalog}: {found}, no problems{kept}")
