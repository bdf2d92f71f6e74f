"""Catalog ingest: JSONL, CSV, Parquet or a `datasets` folder into validated items."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from toolkit.boxes import (
    BOX_CONVENTIONS,
    CONVENTION_RANGE,
    Box,
    BoxConvention,
    fit_to_image,
    to_pixels,
)
from toolkit.errors import CroptuneError
from toolkit.images import (
    DEFAULT_MAX_PIXELS,
    ImageChangedError,
    ImageLoadError,
    decode_image,
    file_stat,
    is_url,
    load_image,
    read_image_bytes,
)
from toolkit.schema import AttributeSchema
from toolkit.store import INGEST_STAGE, ImageRow, ItemRow, RunStore

logger = logging.getLogger(__name__)

CSV_IMAGE_SEPARATOR = "|"


class CatalogBox(BaseModel):
    """A reference box: image index and xyxy in the catalog's box_convention (default pixels)."""

    model_config = ConfigDict(extra="ignore")

    image: int = Field(ge=0, description="Index into the item's images")
    xyxy: tuple[float, float, float, float] = Field(
        description="x1, y1, x2, y2 of the oriented image, in the catalog's box_convention"
    )
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
    """Something wrong with one catalog item (or row, when it has no usable id).

    level: "error" when something is left out (an item, image, box or field) or is probably
    wrong (a box in another convention); "warning" when it is kept but changed (a box
    clipped to its image, a flat attribute placed in its group).
    """

    where: str
    message: str
    level: Literal["error", "warning"] = "error"

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
    box_convention: BoxConvention = "pixels"  # of the reference boxes; converted at inspect

    def resolve(self, item: CatalogItem, reference: str) -> str:
        """An absolute path (or the URL) for one of an item's image references."""
        if is_url(reference):
            return reference
        return str((self.root / reference).resolve())


def catalog_root(path: Path) -> Path:
    """The folder image paths are relative to: the catalog file's folder, or the dataset folder."""
    return path.resolve() if path.is_dir() else path.resolve().parent


def load_catalog(
    path: Path | str,
    allow_outside: bool = False,
    box_convention: BoxConvention = "pixels",
    columns: dict[str, str] | None = None,
) -> Catalog:
    """Parse and validate a catalog; bad rows become Problems, the rest load.

    box_convention: how the reference boxes are given (pixels, norm1, norm1000).
    columns: catalog field -> the catalog's own column/field name, e.g. {"item_id": "id"}.
    """
    path = Path(path)
    if not path.exists():
        raise CroptuneError(f"catalog {path} does not exist")
    if box_convention not in BOX_CONVENTIONS:
        raise CroptuneError(
            f"unknown box convention {box_convention!r}; use one of {', '.join(BOX_CONVENTIONS)}"
        )
    columns = _checked_mapping(columns or {})
    root = catalog_root(path)
    catalog = Catalog(path=path, root=root, items=[], box_convention=box_convention)
    seen: set[str] = set()
    fields_seen: set[str] = set()  # JSON Lines: every field name any record has
    for where, raw in _records(path, columns):
        if isinstance(raw, dict):
            fields_seen.update(raw)
        record = _renamed(raw, columns)
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
    if _is_json_lines(path) and fields_seen:
        # Fields no record has are a naming matter: said once, not once per line.
        _check_fields(path, sorted(fields_seen), columns, "fields")
    return catalog


def parse_column_mapping(pairs: list[str]) -> dict[str, str]:
    """FIELD=COLUMN pairs (`--column item_id=id`) as {catalog field: the catalog's column}."""
    mapping: dict[str, str] = {}
    for pair in pairs:
        target, sep, source = pair.partition("=")
        if not sep or not target.strip() or not source.strip():
            raise CroptuneError(
                f"--column {pair!r}: give FIELD=COLUMN, e.g. --column item_id=id "
                "(FIELD is croptune's name, COLUMN the catalog's)"
            )
        mapping[target.strip()] = source.strip()
    return _checked_mapping(mapping)


def _checked_mapping(columns: dict[str, str]) -> dict[str, str]:
    known = (*REQUIRED_FIELDS, *OPTIONAL_FIELDS)
    unknown = [target for target in columns if target not in known]
    if unknown:
        raise CroptuneError(
            f"column mapping: {', '.join(map(repr, unknown))} is not a catalog field; "
            f"map onto {', '.join(known)}"
        )
    sources = list(columns.values())
    repeated = sorted({s for s in sources if sources.count(s) > 1})
    if repeated:
        raise CroptuneError(
            f"column mapping: column {', '.join(map(repr, repeated))} is mapped to two fields"
        )
    return dict(columns)


def _renamed(record: Any, columns: dict[str, str]) -> Any:
    """A record with its mapped columns under croptune's field names (the mapped one wins)."""
    if not columns or not isinstance(record, dict):
        return record
    sources = set(columns.values())
    renamed = {k: v for k, v in record.items() if k not in sources}
    for target, source in columns.items():
        if source in record:
            renamed[target] = record[source]
    return renamed


def _check_fields(path: Path, found: list[str], columns: dict[str, str], noun: str) -> None:
    """One error for a whole catalog whose columns lack a required field or a mapped column."""
    absent = [f"{target}={source}" for target, source in columns.items() if source not in found]
    named = {target for target, source in columns.items() if source in found}
    named |= {name for name in found if name not in columns.values()}
    missing = [name for name in REQUIRED_FIELDS if name not in named]
    if not missing and not absent:
        return
    shown = ",".join(found) or "(none)"
    if absent:
        raise CroptuneError(
            f"catalog {path}: column mapping {' '.join(absent)} names {noun} the catalog does "
            f"not have; found {noun} {shown}"
        )
    guesses = {name: _guess_column(name, found) or "COLUMN" for name in missing}
    flags = " ".join(f"--column {name}={column}" for name, column in guesses.items())
    mapping = ", ".join(f"{name}: {column}" for name, column in guesses.items())
    raise CroptuneError(
        f"catalog {path}: found {noun} {shown}; expected {','.join(REQUIRED_FIELDS)} "
        f"(missing: {', '.join(missing)}), optionally {','.join(OPTIONAL_FIELDS)}. "
        f"Rename them, or map yours: {flags} on `croptune catalog validate`, "
        f"columns: {{{mapping}}} in the label config (images: a list of photo paths, or "
        "paths joined by '|')"
    )


# Names catalogs commonly use for the two required fields, tried in order by _guess_column.
_COLUMN_HINTS = {
    "item_id": ("id", "sku", "item", "itemid", "product_id", "listing_id", "uid", "key"),
    "images": ("image_paths", "image", "image_urls", "photos", "photo", "pictures", "paths"),
}
_COLUMN_WORDS = {"item_id": ("id",), "images": ("image", "photo", "img", "picture")}


def _guess_column(target: str, found: list[str]) -> str | None:
    """The one found column that looks like `target`, for the message's example mapping."""
    lowered = {name.lower(): name for name in found}
    for hint in _COLUMN_HINTS.get(target, ()):
        if hint in lowered:
            return lowered[hint]
    likely = [n for n in found if any(w in n.lower() for w in _COLUMN_WORDS.get(target, ()))]
    return likely[0] if len(likely) == 1 else None


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


def item_fingerprint(
    item: CatalogItem, resolved_images: list[str], box_convention: str = "pixels"
) -> str:
    """A hash of everything ingest reads from an item (changes force a re-ingest)."""
    parts: list[Any] = [item.model_dump(mode="json"), resolved_images]
    if box_convention != "pixels":  # pixels leaves earlier runs' fingerprints as they were
        parts.append(box_convention)
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def _is_json_lines(path: Path) -> bool:
    return not path.is_dir() and path.suffix.lower() in {".jsonl", ".ndjson", ".json"}


def _records(path: Path, columns: dict[str, str]) -> Iterator[tuple[str, Any]]:
    """(where, raw record) pairs from any supported catalog format, in its own field names.

    Formats with a header (CSV, Parquet, datasets) have it checked against `columns` first.
    """
    if path.is_dir():
        yield from _dataset_records(path, columns)
        return
    suffix = path.suffix.lower()
    if _is_json_lines(path):
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


def _csv_records(path: Path, columns: dict[str, str]) -> Iterator[tuple[str, Any]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        # A header problem, said once rather than once per row.
        _check_fields(path, [c for c in reader.fieldnames or [] if c], columns, "columns")
        for number, row in enumerate(reader, start=2):
            yield f"row {number}", {k: v for k, v in row.items() if k is not None and v != ""}


def _parquet_records(path: Path, columns: dict[str, str]) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise CroptuneError(f"catalog {path} is not a readable Parquet file: {exc}") from exc
    _check_fields(path, list(table.column_names), columns, "columns")
    for number, row in enumerate(table.to_pylist(), start=1):
        yield f"row {number}", _drop_nulls(row)


def _dataset_records(path: Path, columns: dict[str, str]) -> Iterator[tuple[str, Any]]:
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
        _check_fields(path, list(dataset.column_names), columns, "columns")
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
    converted: int = 0  # reference boxes converted from the catalog's box_convention to pixels

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
        # Kept, but the pixels used are not the file's: said once per image (a warning).
        problems += [
            Problem(where, f"image {index} ({reference}): {change}", "warning")
            for change in loaded.conversions
        ]
    sizes = {r.index: r.size for r in rows if r.usable}
    # Boxes whose index is past the item's images were already reported by load_catalog.
    boxes: list[Box] = []
    converted = 0
    for box in item.boxes:
        if box.image >= len(item.images):
            continue
        kept, message, level = check_reference_box(box, sizes, catalog.box_convention)
        if message is not None:
            problems.append(Problem(where, message, level))
        if kept is not None:
            boxes.append(kept)
            converted += catalog.box_convention != "pixels"
    if not sizes:
        problems.append(Problem(where, "no usable image; the item is skipped"))
    return InspectedItem(item, rows, boxes, problems, converted)


# An image at least this large (in square pixels) cannot hold a meaningful box of under
# one square pixel: such a box is a convention mistake (0..1 fractions read as pixels).
TINY_BOX_MIN_IMAGE_AREA = 32 * 32
# A box sticking out of its image by more than this fraction of the image's side, that
# another convention would fit, is probably in that convention: an error, not a clip.
SUSPECT_OVERSHOOT = 0.02
_CONVENTION_WORDS = {
    "pixels": "pixels of the oriented image",
    "norm1": "0..1 fractions of the image",
    "norm1000": "0..1000 per axis, Qwen style",
}


def check_reference_box(
    box: CatalogBox, image_sizes: dict[int, tuple[int, int]], convention: BoxConvention
) -> tuple[Box | None, str | None, Literal["error", "warning"]]:
    """A reference box in pixels (None if dropped), what is implausible about it, its level.

    The one check of reference boxes: `catalog validate` and ingest (`label`) both run it.
    It converts from the catalog's convention, drops boxes that are non-finite, misordered,
    empty, under one pixel or outside their image, and clips (and reports) boxes partly
    outside; a box that another convention would fit says which (an error).
    """
    named = f"reference box {list(box.xyxy)}"
    if box.image not in image_sizes:
        return None, f"{named} refers to image {box.image}, which is not usable", "error"
    width, height = image_sizes[box.image]
    raw = Box(box.image, *box.xyxy, label=box.label, source="reference")
    pixels = raw
    if convention != "pixels" and all(math.isfinite(v) for v in raw.xyxy):
        # Rounded to 1e-4 px: 0.1 * 600 is 60.00000000000001, a float artefact, not a position.
        x1, y1, x2, y2 = (
            round(v, 4) for v in to_pixels(raw.xyxy, convention, (width, height), (width, height))
        )
        pixels = Box(box.image, x1, y1, x2, y2, label=box.label, source="reference")
        named += f" ({convention}; {[round(v, 2) for v in pixels.xyxy]} in pixels)"
    named += f" on image {box.image} ({width}x{height})"
    if pixels.is_valid() and pixels.area < 1.0 and width * height >= TINY_BOX_MIN_IMAGE_AREA:
        what = (
            "has every coordinate <= 1: as pixels, a box under one pixel in size; dropped"
            if convention == "pixels" and max(raw.xyxy) <= 1.0
            else f"is under one pixel in size as {convention}; dropped"
        )
        return None, f"{named} {what}{_convention_hint(raw, convention, width, height)}", "error"
    fitted, reason = fit_to_image(pixels, width, height)
    if reason is None:
        return fitted, None, "warning"
    overshoot = max(
        -pixels.x1 / width,
        -pixels.y1 / height,
        (pixels.x2 - width) / width,
        (pixels.y2 - height) / height,
    )
    suspect = fitted is None or overshoot > SUSPECT_OVERSHOOT
    hint = _convention_hint(raw, convention, width, height) if suspect else ""
    level: Literal["error", "warning"] = "error" if fitted is None or hint else "warning"
    return fitted, f"{named} {reason}{hint}", level


def _convention_hint(raw: Box, declared: str, width: int, height: int) -> str:
    """'. It fits the image read as ...' naming the other conventions that fit the box."""
    if not raw.is_valid():
        return ""
    fits = []
    for candidate in ("norm1", "pixels", "norm1000"):  # the likelier reading first
        if candidate == declared:
            continue
        limit_x = CONVENTION_RANGE.get(candidate, float(width))
        limit_y = CONVENTION_RANGE.get(candidate, float(height))
        if raw.x1 < 0 or raw.y1 < 0 or raw.x2 > limit_x or raw.y2 > limit_y:
            continue
        size = (width, height)
        pixels = to_pixels(raw.xyxy, candidate, size, size)
        if (pixels[2] - pixels[0]) * (pixels[3] - pixels[1]) >= 1.0:
            fits.append(candidate)
    if not fits:
        return ""
    readings = " or as ".join(f"{c} ({_CONVENTION_WORDS[c]})" for c in fits)
    return (
        f". It fits the image read as {readings}: if that is the catalog's convention, declare "
        f"it: box_convention: {fits[0]} in the label config, --box-convention {fits[0]} on "
        "`croptune catalog validate`"
    )


def attribute_problems(item: CatalogItem, schema: AttributeSchema) -> list[Problem]:
    """What labeling would change in an item's reference attributes under a schema."""
    if not item.attributes:
        return []
    moved, dropped = schema.check(item.attributes)
    where = f"item {item.item_id}"
    return [
        *(Problem(where, f"reference attributes: {note}", "warning") for note in moved),
        *(Problem(where, f"reference attributes: {note}") for note in dropped),
    ]


@dataclass
class IngestSummary:
    """What ingest did: items stored, skipped as unchanged, dropped, and the problems."""

    stored: int = 0
    unchanged: int = 0
    dropped: int = 0
    problems: list[Problem] = field(default_factory=list)
    box_convention: BoxConvention = "pixels"
    converted: int = 0  # reference boxes converted from box_convention to pixels

    @property
    def errors(self) -> list[Problem]:
        """The problems that left something out (not the warnings: kept, changed as said)."""
        return [p for p in self.problems if p.level == "error"]


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
    summary = IngestSummary(
        dropped=catalog.refused,
        problems=list(catalog.problems),
        box_convention=catalog.box_convention,
    )
    for problem in catalog.problems:
        # A catalog problem is met again on every re-run; record it once.
        store.log_event(
            INGEST_STAGE, str(problem), problem.level, item_id=_problem_item(problem), once=True
        )
    items = catalog.items[:limit] if limit is not None else catalog.items
    for position, item in enumerate(track(items, "ingest", progress)):
        resolved = [catalog.resolve(item, ref) for ref in item.images]
        fingerprint = item_fingerprint(item, resolved, catalog.box_convention)
        if store.item_fingerprint(item.item_id) == fingerprint:
            summary.unchanged += 1
            continue
        inspected = inspect_item(catalog, item, max_pixels)
        summary.problems += inspected.problems
        summary.converted += inspected.converted
        for problem in inspected.problems:
            store.log_event(
                INGEST_STAGE, problem.message, problem.level, item_id=item.item_id, once=True
            )
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
        raise ImageChangedError("changed since ingest; run `croptune label` again to re-ingest")
    return loaded.image
