"""Catalog ingest: JSONL, CSV, Parquet or a `datasets` folder into validated items."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from toolkit.boxes import Box, clean_boxes
from toolkit.errors import CroptuneError
from toolkit.images import (
    DEFAULT_MAX_PIXELS,
    ImageLoadError,
    decode_image,
    file_stat,
    is_url,
    load_image,
    read_image_bytes,
)
from toolkit.store import ImageRow, ItemRow, RunStore

logger = logging.getLogger(__name__)

CSV_IMAGE_SEPARATOR = "|"


class CatalogBox(BaseModel):
    """A reference box: image index and pixel xyxy of the oriented image."""

    model_config = ConfigDict(extra="ignore")

    image: int = Field(ge=0, description="Index into the item's images")
    xyxy: tuple[float, float, float, float] = Field(description="x1, y1, x2, y2 in pixels")
    label: str = Field("", description="What the region holds, e.g. 'barcode'")


class CatalogItem(BaseModel):
    """One listing: an id, its photos, optional text, reference attributes and boxes."""

    model_config = ConfigDict(extra="ignore")

    item_id: str = Field(min_length=1, description="Unique id of the listing")
    images: list[str] = Field(min_length=1, description="Paths relative to the catalog, or URLs")
    title: str | None = None
    category: str | None = None
    text: str | None = None
    attributes: dict[str, Any] | None = None
    boxes: list[CatalogBox] = Field(default_factory=list)

    @field_validator("item_id", mode="before")
    @classmethod
    def _id_as_text(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        return value.strip() if isinstance(value, str) else value

    @field_validator("images", mode="before")
    @classmethod
    def _split_images(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [p.strip() for p in value.split(CSV_IMAGE_SEPARATOR) if p.strip()]
        return value

    @field_validator("attributes", mode="before")
    @classmethod
    def _parse_attributes(cls, value: Any) -> Any:
        if isinstance(value, str):
            return _json_field(value) if value.strip() else None
        return value

    @field_validator("boxes", mode="before")
    @classmethod
    def _parse_boxes(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, str):
            return _json_field(value) if value.strip() else []
        return value


def _json_field(text: str) -> Any:
    """A JSON-encoded column (CSV attributes/boxes); a bad one says so plainly."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        # A plain ValueError would surface as pydantic's "Value error, Expecting value: ...".
        raise PydanticCustomError(
            "json_invalid", "not valid JSON: {error}", {"error": f"{exc.msg} at column {exc.colno}"}
        ) from exc


@dataclass(frozen=True)
class Problem:
    """Something wrong with one catalog item (or row, when it has no usable id)."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class Catalog:
    """The items of a catalog that parsed, and the problems found on the way."""

    path: Path
    root: Path
    items: list[CatalogItem]
    problems: list[Problem] = field(default_factory=list)
    refused: int = 0  # records left out while loading: invalid, duplicate id, escaping path

    def resolve(self, item: CatalogItem, reference: str) -> str:
        """An absolute path (or the URL) for one of an item's image references."""
        if is_url(reference):
            return reference
        return str((self.root / reference).resolve())


def catalog_root(path: Path) -> Path:
    """The folder image paths are relative to: the catalog file's folder, or the dataset folder."""
    return path.resolve() if path.is_dir() else path.resolve().parent


def load_catalog(path: Path | str, allow_outside: bool = False) -> Catalog:
    """Parse and validate a catalog; bad rows become Problems, the rest load."""
    path = Path(path)
    if not path.exists():
        raise CroptuneError(f"catalog {path} does not exist")
    root = catalog_root(path)
    catalog = Catalog(path=path, root=root, items=[])
    seen: set[str] = set()
    for where, record in _records(path):
        item = _validate_record(where, record, catalog.problems)
        if item is None:
            catalog.refused += 1
            continue
        if item.item_id in seen:
            catalog.problems.append(
                Problem(
                    f"item {item.item_id}", f"duplicate item_id ({where}); this copy is skipped"
                )
            )
            catalog.refused += 1
            continue
        seen.add(item.item_id)
        if not _check_item(item, root, allow_outside, catalog.problems):
            catalog.refused += 1
            continue
        catalog.items.append(item)
    return catalog


def _validate_record(where: str, record: Any, problems: list[Problem]) -> CatalogItem | None:
    if isinstance(record, _BadRecord):
        problems.append(Problem(where, str(record)))
        return None
    if not isinstance(record, dict):
        problems.append(Problem(where, f"expected an object, got {type(record).__name__}"))
        return None
    item_id = record.get("item_id")
    label = f"item {item_id}" if isinstance(item_id, str | int) and str(item_id).strip() else where
    try:
        return CatalogItem.model_validate(record)
    except ValidationError as exc:
        for error in exc.errors():
            loc = ".".join(str(p) for p in error["loc"]) or "record"
            problems.append(Problem(label, f"{loc}: {_plain_message(error)}"))
    return None


# Catalog fields every item needs; the others are optional (DESIGN's catalog format).
REQUIRED_FIELDS = ("item_id", "images")
OPTIONAL_FIELDS = ("title", "category", "text", "attributes", "boxes")


def _plain_message(error: Any) -> str:
    """A pydantic error in a catalog author's words (no 'List should have at least 1 item')."""
    kind, field = error.get("type", ""), str(error["loc"][0]) if error.get("loc") else ""
    if kind == "missing":
        hint = " (the listing's photos: a list of paths or URLs)" if field == "images" else ""
        return f"missing; every item needs {' and '.join(REQUIRED_FIELDS)}{hint}"
    if kind == "too_short" and field == "images":
        return "no images: an item needs at least one photo"
    if kind == "string_too_short" and field == "item_id":
        return "empty: an item_id must be a non-blank text"
    if kind in _WANTED:
        got = _JSON_TYPES.get(type(error.get("input")).__name__, type(error.get("input")).__name__)
        return f"must be {_WANTED[kind]}, not {got}"
    return str(error["msg"])


_WANTED = {
    "string_type": "text",
    "list_type": "a list",
    "dict_type": "a JSON object",
    "int_type": "a whole number",
    "int_from_float": "a whole number",
    "int_parsing": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "tuple_type": "a list of 4 numbers",
}
_JSON_TYPES = {
    "str": "text",
    "list": "a list",
    "dict": "an object",
    "int": "a number",
    "float": "a number",
    "bool": "true/false",
    "NoneType": "null",
}


def _check_item(
    item: CatalogItem, root: Path, allow_outside: bool, problems: list[Problem]
) -> bool:
    """Path and box checks that need no pixels; False drops the item."""
    ok = True
    for index, reference in enumerate(item.images):
        if is_url(reference):
            continue
        resolved = (root / reference).resolve()
        if not allow_outside and not resolved.is_relative_to(root):
            problems.append(
                Problem(
                    f"item {item.item_id}",
                    f"image {index} path {reference!r} leaves the catalog folder {root} "
                    "(refused; pass --allow-outside-paths if this is intended)",
                )
            )
            ok = False
    for box in item.boxes:
        if box.image >= len(item.images):
            problems.append(
                Problem(
                    f"item {item.item_id}",
                    f"box {list(box.xyxy)} refers to image {box.image} but the item has "
                    f"{len(item.images)} images",
                )
            )
    return ok


def item_fingerprint(item: CatalogItem, resolved_images: list[str]) -> str:
    """A hash of everything ingest reads from an item (changes force a re-ingest)."""
    blob = json.dumps(
        [item.model_dump(mode="json"), resolved_images], sort_keys=True, ensure_ascii=False
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _records(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, raw record) pairs from any supported catalog format."""
    if path.is_dir():
        yield from _dataset_records(path)
        return
    suffix = path.suffix.lower()
    if suffix in {".jsonl", ".ndjson", ".json"}:
        yield from _jsonl_records(path)
    elif suffix == ".csv":
        yield from _csv_records(path)
    elif suffix in {".parquet", ".pq"}:
        yield from _parquet_records(path)
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
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield f"line {number}", json.loads(line)
            except json.JSONDecodeError as exc:
                yield (
                    f"line {number}",
                    _BadRecord(f"not valid JSON: {exc.msg} at column {exc.colno}"),
                )


def _is_json_array(handle: Any) -> bool:
    """Whether a whole file is one JSON array (a first line holding a list is not)."""
    try:
        whole = json.load(handle)
    except json.JSONDecodeError:
        return False
    finally:
        handle.seek(0)
    return isinstance(whole, list)


def _csv_records(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        columns = [c for c in reader.fieldnames or [] if c]
        missing = [name for name in REQUIRED_FIELDS if name not in columns]
        if missing:  # a header problem, said once rather than once per row
            raise CroptuneError(
                f"catalog {path}: found columns {','.join(columns) or '(none)'}; expected "
                f"{','.join(REQUIRED_FIELDS)} (missing: {', '.join(missing)}), optionally "
                f"{','.join(OPTIONAL_FIELDS)}. Rename the header's columns to these names "
                "(images: photo paths joined by '|')"
            )
        for number, row in enumerate(reader, start=2):
            yield f"row {number}", {k: v for k, v in row.items() if k is not None and v != ""}


def _parquet_records(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise CroptuneError(f"catalog {path} is not a readable Parquet file: {exc}") from exc
    for number, row in enumerate(table.to_pylist(), start=1):
        yield f"row {number}", _drop_nulls(row)


def _dataset_records(path: Path) -> Iterator[tuple[str, Any]]:
    from datasets import Dataset, DatasetDict, load_from_disk

    try:
        loaded = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise CroptuneError(
            f"catalog folder {path} is not a dataset saved with save_to_disk: {exc}"
        ) from exc
    splits = loaded.items() if isinstance(loaded, DatasetDict) else [("", loaded)]
    for split, dataset in splits:
        assert isinstance(dataset, Dataset)
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


class _BadRecord(str):
    """A line that could not be parsed; _validate_record reports its text."""


@dataclass
class InspectedItem:
    """An item after its images were decoded: image rows, clean reference boxes, problems."""

    item: CatalogItem
    images: list[ImageRow]
    boxes: list[Box]
    problems: list[Problem]

    @property
    def usable(self) -> bool:
        """At least one image decoded."""
        return any(image.usable for image in self.images)


def inspect_item(
    catalog: Catalog, item: CatalogItem, max_pixels: int = DEFAULT_MAX_PIXELS
) -> InspectedItem:
    """Decode every image of an item once and check its reference boxes against them."""
    rows: list[ImageRow] = []
    problems: list[Problem] = []
    where = f"item {item.item_id}"
    for index, reference in enumerate(item.images):
        uri = catalog.resolve(item, reference)
        stat = file_stat(uri)  # before reading: a file changed meanwhile then looks changed
        try:
            loaded = load_image(uri, max_pixels=max_pixels)
        except ImageLoadError as exc:
            problems.append(Problem(where, f"image {index} ({reference}): {exc}"))
            rows.append(ImageRow(item.item_id, index, uri, None, None, None, str(exc)))
            continue
        width, height = loaded.size
        rows.append(ImageRow(item.item_id, index, uri, loaded.sha256, width, height, None, stat))
    sizes = {r.index: (r.width, r.height) for r in rows if r.usable}
    # Boxes whose index is past the item's images were already reported by load_catalog.
    raw = [
        Box(b.image, *b.xyxy, label=b.label, source="reference")
        for b in item.boxes
        if b.image < len(item.images)
    ]
    boxes, box_problems = clean_boxes(raw, sizes)  # type: ignore[arg-type]
    problems += [Problem(where, f"reference {message}") for message in box_problems]
    if not sizes:
        problems.append(Problem(where, "no usable image; the item is skipped"))
    return InspectedItem(item=item, images=rows, boxes=boxes, problems=problems)


@dataclass
class IngestSummary:
    """What ingest did: items stored, skipped as unchanged, dropped, and the problems."""

    stored: int = 0
    unchanged: int = 0
    dropped: int = 0
    problems: list[Problem] = field(default_factory=list)


def ingest_catalog(
    catalog: Catalog,
    store: RunStore,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    limit: int | None = None,
    progress: bool = False,
) -> IngestSummary:
    """Copy a catalog's items into the run store, decoding each new or changed item once."""
    from toolkit.progress import track

    # Records the catalog refused count as dropped too: the summary covers every line read.
    summary = IngestSummary(dropped=catalog.refused, problems=list(catalog.problems))
    for problem in catalog.problems:
        # A catalog problem is met again on every re-run; record it once.
        store.log_event("ingest", str(problem), item_id=_problem_item(problem), once=True)
    items = catalog.items[:limit] if limit is not None else catalog.items
    for position, item in enumerate(track(items, "ingest", progress)):
        resolved = [catalog.resolve(item, ref) for ref in item.images]
        fingerprint = item_fingerprint(item, resolved)
        if store.item_fingerprint(item.item_id) == fingerprint:
            summary.unchanged += 1
            continue
        inspected = inspect_item(catalog, item, max_pixels)
        summary.problems += inspected.problems
        for problem in inspected.problems:
            store.log_event("ingest", problem.message, item_id=item.item_id, once=True)
        if not inspected.usable:
            summary.dropped += 1
            continue
        row = ItemRow(
            item_id=item.item_id,
            title=item.title,
            category=item.category,
            text=item.text,
            reference_attributes=item.attributes,
            reference_boxes=[
                {"image": b.image, "xyxy": list(b.xyxy), "label": b.label} for b in inspected.boxes
            ],
        )
        store.put_item(row, position, fingerprint, inspected.images)
        summary.stored += 1
    return summary


def _problem_item(problem: Problem) -> str | None:
    return problem.where[5:] if problem.where.startswith("item ") else None


def load_ingested_image(row: ImageRow) -> Image.Image:
    """The oriented RGB pixels of an ingested image; ImageLoadError if it changed since ingest.

    An unchanged local file (same size and mtime) is decoded without hashing it again.
    """
    stat = file_stat(row.uri)
    if stat is not None and stat == row.file_stat:
        return decode_image(read_image_bytes(row.uri))
    loaded = load_image(row.uri)
    if loaded.sha256 != row.sha256:
        raise ImageLoadError(
            f"image {row.index} changed since ingest; run `croptune label` again to re-ingest"
        )
    return loaded.image
