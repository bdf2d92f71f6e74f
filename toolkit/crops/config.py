"""CropConfig: how crops are cut from an item's boxes, and the hash crops are stored under."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

Strategy = Literal["enclosing-square", "clustered", "per-box"]
# The image budget was a crop setting (default 9) before it moved to the dataset config. Every
# hash keeps it at that old default, so crops cut before the move are still found (the budget
# never changed a crop's pixels); frozen forever, whatever the dataset's default becomes.
_LEGACY_HASHED = {"max_images_per_item": 9}


class CropConfig(BaseModel):
    """How crops are cut from an item's boxes."""

    model_config = ConfigDict(extra="forbid")

    # Keys this config no longer has, and where they went (the config loader says so).
    moved_keys: ClassVar[dict[str, str]] = {
        "max_images_per_item": "the image budget moved to the dataset config: set "
        "max_images_per_item in dataset.yaml or `croptune dataset build ... "
        "max_images_per_item=N`; the crop stage only cuts and de-duplicates",
    }

    strategy: Strategy = Field(
        "enclosing-square",
        description="enclosing-square: per image the smallest square covering all its boxes "
        "(the paper's choice: one crop per image, fewest images, but boxes far apart give a "
        "crop nearly as large as the photo, where small print stays small); clustered: one "
        "square per group of nearby boxes, each under max_cluster_fraction of the image "
        "(tighter crops, sometimes more images); per-box: one square per (merged) box (the "
        "naive baseline: the sharpest crops, the most images and tokens).",
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
    merge_iou: float = Field(
        0.1,
        gt=0,
        le=1,
        description="Boxes of one image whose expanded boxes overlap with an IoU at or above "
        "this are merged into their union before planning (supervision's non-max merge, "
        "repeated until stable). Lower merges more (fewer, larger crops for per-box and "
        "clustered); 1 merges only identical boxes. No effect on enclosing-square's pixels.",
    )
    overflow: Literal["pad", "image"] = Field(
        "pad",
        description="When the square cannot fit in the image (boxes span more than its "
        "shorter side): pad keeps a square, centred on the image and padded with `fill` "
        "(the student sees the true aspect ratio, some pixels are wasted on padding); image "
        "uses the square clipped to the image's own extent, a rectangle (no padding, but "
        "the student's square resize stretches it).",
    )
    max_cluster_fraction: float = Field(
        0.5,
        gt=0,
        le=1,
        description="clustered: each group's enclosing square side stays at most this "
        "fraction of the image's longer side (a single box larger than that stays alone). "
        "Smaller gives tighter, sharper crops but more images per item; 1 gives back "
        "enclosing-square.",
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
    phash_threshold: int = Field(
        6,
        ge=-1,
        le=64,
        description="An item's original or crop whose 64-bit pHash is within this Hamming "
        "distance of an image kept before it (budget priority order) is a duplicate: kept on "
        "disk, not used. Higher drops more near-repeats (re-encoded or resized copies, a crop "
        "covering its whole photo) but risks dropping a different close-up of the same "
        "label; -1 disables de-duplication.",
    )

    @classmethod
    def from_saved(cls, data: Mapping[str, Any]) -> CropConfig:
        """A crop config recorded by a run, dataset or bundle, this croptune's or an older one's.

        Older ones also recorded the image budget, which is the dataset config's now.
        """
        return cls.model_validate({k: v for k, v in data.items() if k not in cls.moved_keys})

    def config_hash(self) -> str:
        """A short hash of the settings: crops and their duplicates are kept per hash."""
        settings = {**self.model_dump(mode="json"), **_LEGACY_HASHED}
        blob = json.dumps(settings, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]
