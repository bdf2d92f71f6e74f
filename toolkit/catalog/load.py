"""load_catalog: a catalog's records -> validated CatalogItems, and Problems in plain words."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from toolkit.boxes import BOX_CONVENTIONS, BoxConvention
from toolkit.catalog.columns import check_fields, checked_mapping, renamed
from toolkit.catalog.formats import BadRecord, is_json_lines, records
from toolkit.catalog.items import REQUIRED_FIELDS, Catalog, CatalogItem, Problem, catalog_root
from toolkit.errors import CroptuneError
from toolkit.images import is_url


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
    columns = checked_mapping(columns or {})
    root = catalog_root(path)
    catalog = Catalog(path=path, root=root, items=[], box_convention=box_convention)
    seen: set[str] = set()
    fields_seen: set[str] = set()  # JSON Lines: every field name any record has
    for where, raw in records(path, columns):
        if isinstance(raw, dict):
            fields_seen.update(raw)
        record = renamed(raw, columns)
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
    if is_json_lines(path) and fields_seen:
        # Fields no record has are a naming matter: said once, not once per line.
        check_fields(path, sorted(fields_seen), columns, "fields")
    return catalog


def _validate_record(where: str, record: Any, problems: list[Problem]) -> CatalogItem | None:
    if isinstance(record, BadRecord):
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
