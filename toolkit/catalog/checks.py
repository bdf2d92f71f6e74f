"""Checks that need pixels or a schema: inspect_item, check_reference_box, attribute_problems."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from toolkit.boxes import CONVENTION_RANGE, Box, BoxConvention, fit_to_image, to_pixels
from toolkit.catalog.items import Catalog, CatalogBox, CatalogItem, Problem
from toolkit.images import DEFAULT_MAX_PIXELS, ImageLoadError, file_stat, load_image
from toolkit.schema import AttributeSchema
from toolkit.store import ImageRow


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
