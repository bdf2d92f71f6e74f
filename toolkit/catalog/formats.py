"""Readers of the catalog formats (JSON Lines, CSV, Parquet, a datasets folder) into raw records."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from toolkit.catalog.columns import check_fields
from toolkit.errors import CroptuneError
from toolkit.files import json_lines


def is_json_lines(path: Path) -> bool:
    """Whether a catalog path is read as JSON Lines (.jsonl, .ndjson, .json)."""
    return not path.is_dir() and path.suffix.lower() in {".jsonl", ".ndjson", ".json"}


def records(path: Path, columns: dict[str, str]) -> Iterator[tuple[str, Any]]:
    """(where, raw record) pairs from any supported catalog format, in its own field names.

    Formats with a header (CSV, Parquet, datasets) have it checked against `columns` first.
    """
    if path.is_dir():
        yield from _dataset_records(path, columns)
        return
    suffix = path.suffix.lower()
    if is_json_lines(path):
        yield from _jsonl_records(path)
    elif suffix == ".csv":
        yield from _csv_records(path, columns)
    elif suffix in {".parquet", ".pq"}:
        yield from _parquet_records(path, columns)
    else:
        raise CroptuneError(
            f"catalog {path}: unknown format {suffix!r}; use .jsonl, .csv, .parquet "
            "or a folder written by datasets' save_to_disk"
        )


def _jsonl_records(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open(encoding="utf-8", errors="replace") as handle:
        head = handle.read(4096).lstrip("\ufeff \t\r\n")
        handle.seek(0)
        if head.startswith("[") and _is_json_array(handle):  # not a per-line matter
            raise CroptuneError(
                f"catalog {path} is a JSON array; croptune reads JSON Lines: one item object "
                'per line. Convert it with: python -c "import json,sys; '
                '[print(json.dumps(i)) for i in json.load(open(sys.argv[1]))]" '
                f"{path.name} > {path.stem}.jsonl"
            )
        for number, value in json_lines(handle):
            if isinstance(value, json.JSONDecodeError):
                value = BadRecord(f"not valid JSON: {value.msg} at column {value.colno}")
            yield f"line {number}", value


def _is_json_array(handle: Any) -> bool:
    """Whether a whole file is one JSON array (a first line holding a list is not)."""
    try:
        whole = json.load(handle)
    except json.JSONDecodeError:
        return False
    finally:
        handle.seek(0)
    return isinstance(whole, list)


def _csv_records(path: Path, columns: dict[str, str]) -> Iterator[tuple[str, Any]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        # A header problem, said once rather than once per row.
        check_fields(path, [c for c in reader.fieldnames or [] if c], columns, "columns")
        for number, row in enumerate(reader, start=2):
            yield f"row {number}", {k: v for k, v in row.items() if k is not None and v != ""}


def _parquet_records(path: Path, columns: dict[str, str]) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise CroptuneError(f"catalog {path} is not a readable Parquet file: {exc}") from exc
    check_fields(path, list(table.column_names), columns, "columns")
    for number, row in enumerate(table.to_pylist(), start=1):
        yield f"row {number}", _drop_nulls(row)


def _dataset_records(path: Path, columns: dict[str, str]) -> Iterator[tuple[str, Any]]:
    from datasets import Dataset, DatasetDict

    from toolkit.saved_dataset import load_saved_dataset

    loaded = load_saved_dataset(
        path, f"catalog folder {path} is not a dataset saved with save_to_disk"
    )
    splits = loaded.items() if isinstance(loaded, DatasetDict) else [("", loaded)]
    for split, dataset in splits:
        assert isinstance(dataset, Dataset)
        check_fields(path, list(dataset.column_names), columns, "columns")
        for number, row in enumerate(dataset, start=1):
            where = f"{split} row {number}" if split else f"row {number}"
            yield where, _drop_nulls(dict(row))


def _drop_nulls(value: Any) -> Any:
    """Drop null-valued keys at every depth: Arrow struct columns give each row every key
    any row has, so a box without a label would read as label=None (and fail validation)."""
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


class BadRecord(str):
    """A line that could not be parsed; load_catalog reports its text."""
