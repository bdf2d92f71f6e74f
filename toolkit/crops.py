"""Targeted crops: pure square geometry first, pixels second.

Gemma 3 spends the same 256 tokens on every image whatever its size, so the paper
cuts ONE square per image: the smallest square that covers all of that image's boxes.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from toolkit.boxes import Box
from toolkit.catalog import load_ingested_image
from toolkit.images import ImageLoadError, pixel_hash
from toolkit.store import CropRow, ImageRow, RunStore

XYXY = tuple[float, float, float, float]
FUSED_SOURCE = "fused"  # the source name of boxes fused across several box teachers
Region = tuple[int, int, int, int]


class CropConfig(BaseModel):
    """How crops are cut from an item's boxes."""

    model_config = ConfigDict(extra="forbid")

    strategy: Literal["enclosing-square"] = Field(
        "enclosing-square",
        description="enclosing-square: per image the smallest square covering all its boxes "
        "(the paper's choice, one crop per image).",
    )
    margin: float = Field(
        0.1,
        ge=0,
        le=2,
        description="Margin added around each box, as a fraction of its longer side.",
    )
    min_margin_px: int = Field(4, ge=0, description="Margin in pixels added at least.")
    min_side: int = Field(
        64,
        ge=1,
        description="Smallest crop side in pixels (capped at the image's shorter side): "
        "a crop of a few pixels says nothing once resized to the student's input.",
    )
    fill: tuple[int, int, int] = Field(
        (255, 255, 255),
        description="RGB colour padding a square that cannot fit inside the image.",
    )
    image_format: Literal["png", "jpeg"] = Field(
        "png",
        description="png keeps crops pixel-exact, so training and serving see the same pixels; "
        "jpeg is smaller.",
    )
    jpeg_quality: int = Field(92, ge=1, le=100, description="Quality when image_format is jpeg.")
    max_images_per_item: int = Field(
        9, ge=1, description="Image budget per item, originals first (the paper's maximum is 9)."
    )

    def config_hash(self) -> str:
        """A short hash of the settings that change which pixels a crop holds."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def expand_box(xyxy: XYXY, margin: float, min_margin_px: float) -> XYXY:
    """A box grown on every side by margin * its longer side, at least min_margin_px."""
    x1, y1, x2, y2 = xyxy
    pad = max(margin * max(x2 - x1, y2 - y1), min_margin_px)
    return (x1 - pad, y1 - pad, x2 + pad, y2 + pad)


def union_box(boxes: Sequence[XYXY]) -> XYXY:
    """The smallest box covering all the given boxes."""
    if not boxes:
        raise ValueError("union_box needs at least one box")
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


def enclosing_square(boxes: Sequence[XYXY], image_wh: tuple[int, int], min_side: int = 1) -> Region:
    """The smallest integer square covering the boxes, shifted to stay inside the image.

    Only when the boxes span more than the image's shorter side does the square leave
    the image; it is then centred on the image along that axis and padded when cut.
    """
    width, height = image_wh
    ux1, uy1, ux2, uy2 = union_box(boxes)
    # Whole pixels that the (clipped) boxes touch.
    ix1, iy1 = max(math.floor(ux1), 0), max(math.floor(uy1), 0)
    ix2, iy2 = min(math.ceil(ux2), width), min(math.ceil(uy2), height)
    side = max(ix2 - ix1, iy2 - iy1, min(min_side, width, height), 1)
    x1 = _place(ix1, ix2, side, width)
    y1 = _place(iy1, iy2, side, height)
    return (x1, y1, x1 + side, y1 + side)


def _place(low: int, high: int, side: int, limit: int) -> int:
    """Start of a span of `side` pixels covering [low, high), inside [0, limit) when it fits."""
    if side > limit:
        return -((side - limit) // 2)  # cannot fit: centre on the image, pad both sides
    start = low - (side - (high - low)) // 2
    return min(max(start, 0), limit - side)


def crop_region(image: Image.Image, region: Region, fill: tuple[int, int, int]) -> Image.Image:
    """The pixels of region; parts outside the image are filled with `fill`."""
    x1, y1, x2, y2 = region
    if x1 >= 0 and y1 >= 0 and x2 <= image.width and y2 <= image.height:
        return image.crop(region)
    canvas = Image.new("RGB", (x2 - x1, y2 - y1), fill)
    inside = (max(x1, 0), max(y1, 0), min(x2, image.width), min(y2, image.height))
    if inside[2] > inside[0] and inside[3] > inside[1]:
        canvas.paste(image.crop(inside), (inside[0] - x1, inside[1] - y1))
    return canvas


@dataclass(frozen=True)
class CropPlan:
    """One crop to cut: which image, which square, and which boxes it covers."""

    image: int
    region: Region
    boxes: tuple[Box, ...]


def plan_crops(
    boxes: Sequence[Box], image_sizes: dict[int, tuple[int, int]], config: CropConfig
) -> list[CropPlan]:
    """The crops of one item: one enclosing square per image that has boxes."""
    by_image: dict[int, list[Box]] = {}
    for box in boxes:
        if box.image in image_sizes and box.is_valid():
            by_image.setdefault(box.image, []).append(box)
    plans = []
    for index in sorted(by_image):
        group = by_image[index]
        grown = [expand_box(b.xyxy, config.margin, config.min_margin_px) for b in group]
        region = enclosing_square(grown, image_sizes[index], config.min_side)
        plans.append(CropPlan(image=index, region=region, boxes=tuple(group)))
    return plans


def encode_crop(image: Image.Image, config: CropConfig) -> tuple[bytes, str]:
    """Encoded crop bytes and the file suffix, in the configured format."""
    buffer = io.BytesIO()
    if config.image_format == "png":
        image.save(buffer, format="PNG", optimize=False)
        return buffer.getvalue(), ".png"
    image.save(buffer, format="JPEG", quality=config.jpeg_quality)
    return buffer.getvalue(), ".jpg"


@dataclass
class CropSummary:
    """What the crop stage did, and images per item before (one crop per box) and after."""

    items: int = 0
    made: int = 0
    existing: int = 0
    boxes: int = 0
    uncovered: int = 0
    images_per_box_crop: list[int] = field(default_factory=list)
    images_after: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def budgeted_order(
    originals: list[int], crops: list[int], budget: int
) -> tuple[list[int], list[int]]:
    """The originals and crops kept under an image budget.

    Priority: the first original (the listing's main photo), then every crop (they hold
    what a downscaled photo hides), then the other originals in catalog order.
    """
    ranked = [("o", i) for i in originals[:1]] + [("c", i) for i in crops]
    ranked += [("o", i) for i in originals[1:]]
    kept = ranked[:budget]
    return [i for k, i in kept if k == "o"], [i for k, i in kept if k == "c"]


def crop_boxes(boxes: list[tuple[int, Box]]) -> list[tuple[int, Box]]:
    """The boxes crops are cut from: the fused ones when teachers were fused, else all."""
    fused = [(i, b) for i, b in boxes if b.source == FUSED_SOURCE]
    return fused or boxes


def crop_run(store: RunStore, config: CropConfig, progress: bool = False) -> CropSummary:
    """Cut and store the crops of every labeled item (crops already made are kept as is)."""
    from toolkit.progress import track

    summary = CropSummary()
    crops_dir = store.run_dir / "crops"
    crops_dir.mkdir(exist_ok=True)
    config_hash = config.config_hash()
    store.set_meta("crop_config_hash", config_hash)
    store.set_meta("crop_config", config.model_dump_json())
    for item in track(store.items(), "crop", progress):
        summary.items += 1
        rows = {r.index: r for r in store.images(item.item_id) if r.usable}
        boxed = crop_boxes(store.boxes(item.item_id))
        summary.boxes += len(boxed)
        plans = plan_crops(
            [b for _, b in boxed], {i: (r.width, r.height) for i, r in rows.items()}, config
        )
        existing = {c.image for c in store.crops(item.item_id, config_hash)}
        for plan in plans:
            if plan.image in existing:
                summary.existing += 1
                continue
            try:
                _cut_and_store(
                    store, item.item_id, plan, rows[plan.image], boxed, config, crops_dir
                )
            except ImageLoadError as exc:
                message = (
                    str(exc) if str(exc).startswith("image ") else f"image {plan.image}: {exc}"
                )
                summary.errors.append(f"item {item.item_id}: {message}")
                store.log_event("crop", message, item_id=item.item_id, image=plan.image)
                continue
            summary.made += 1
        crops = store.crops(item.item_id, config_hash)
        originals, kept = budgeted_order(
            sorted(rows), list(range(len(crops))), config.max_images_per_item
        )
        covered = {box_id for index in kept for box_id in crops[index].box_ids}
        summary.uncovered += sum(1 for box_id, _ in boxed if box_id not in covered)
        summary.images_per_box_crop.append(len(rows) + len(boxed))
        summary.images_after.append(len(originals) + len(kept))
    return summary


def _cut_and_store(
    store: RunStore,
    item_id: str,
    plan: CropPlan,
    row: ImageRow,
    boxed: list[tuple[int, Box]],
    config: CropConfig,
    crops_dir: Path,
) -> None:
    pixels = crop_region(load_ingested_image(row), plan.region, config.fill)
    data, suffix = encode_crop(pixels, config)
    name = hashlib.sha256(data).hexdigest()[:24] + suffix
    target = crops_dir / name
    if not target.exists():
        partial = target.with_suffix(".partial")
        partial.write_bytes(data)
        os.replace(partial, target)  # a killed run never leaves half a crop under its final name
    ids = [box_id for box_id, box in boxed if box in plan.boxes]
    store.add_crop(
        CropRow(
            item_id=item_id,
            image=plan.image,
            region=plan.region,
            path=f"crops/{name}",
            sha256=pixel_hash(pixels),
            strategy=config.strategy,
            config_hash=config.config_hash(),
            box_ids=ids,
        )
    )
