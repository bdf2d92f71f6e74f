"""Column mapping: croptune's catalog field names onto a catalog's own column names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from toolkit.catalog.items import OPTIONAL_FIELDS, REQUIRED_FIELDS
from toolkit.errors import CroptuneError


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
    return checked_mapping(mapping)


def checked_mapping(columns: dict[str, str]) -> dict[str, str]:
    """The mapping, refused when it names a field croptune lacks or maps a column twice."""
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


def renamed(record: Any, columns: dict[str, str]) -> Any:
    """A record with its mapped columns under croptune's field names (the mapped one wins)."""
    if not columns or not isinstance(record, dict):
        return record
    sources = set(columns.values())
    renamed = {k: v for k, v in record.items() if k not in sources}
    for target, source in columns.items():
        if source in record:
            renamed[target] = record[source]
    return renamed


def check_fields(path: Path, found: list[str], columns: dict[str, str], noun: str) -> None:
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
