"""The catalog's data types: CatalogItem and CatalogBox (one record), Problem, Catalog."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from toolkit.boxes import BoxConvention
from toolkit.images import is_url

CSV_IMAGE_SEPARATOR = "|"
# Catalog fields every item needs; the others are optional (DESIGN's catalog format).
REQUIRED_FIELDS = ("item_id", "images")
OPTIONAL_FIELDS = ("title", "category", "text", "attributes", "boxes")


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


def item_fingerprint(
    item: CatalogItem, resolved_images: list[str], box_convention: str = "pixels"
) -> str:
    """A hash of everything ingest reads from an item (changes force a re-ingest)."""
    parts: list[Any] = [item.model_dump(mode="json"), resolved_images]
    if box_convention != "pixels":  # pixels leaves earlier runs' fingerprints as they were
        parts.append(box_convention)
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()
