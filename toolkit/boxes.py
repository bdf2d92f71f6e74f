"""The one box type of croptune: pixel xyxy on the oriented original image."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

# Coordinate conventions a box may come in; every one is converted to pixels at the edge.
# qwen2.5-vl: pixels of the smart-resized image a teacher was sent (teacher answers only).
Coords = Literal["qwen2.5-vl", "norm1000", "norm1", "pixels"]
# Those a catalog's reference boxes may declare (pixels of the oriented image by default).
BoxConvention = Literal["pixels", "norm1", "norm1000"]
BOX_CONVENTIONS: tuple[str, ...] = get_args(BoxConvention)
# The coordinate range each catalog convention allows (pixels: the image's own size).
CONVENTION_RANGE = {"norm1": 1.0, "norm1000": 1000.0}
XYXY = tuple[float, float, float, float]


def to_pixels(
    xyxy: XYXY, coords: Coords, sent_wh: tuple[int, int], original_wh: tuple[int, int]
) -> XYXY:
    """A box in `coords` mapped to pixels of the oriented original image."""
    x1, y1, x2, y2 = (float(v) for v in xyxy)
    width, height = original_wh
    if coords == "norm1000":
        sx, sy = width / 1000.0, height / 1000.0
    elif coords == "norm1":
        sx, sy = float(width), float(height)
    elif coords in ("qwen2.5-vl", "pixels"):
        sx, sy = width / sent_wh[0], height / sent_wh[1]
    else:
        raise ValueError(f"unknown coordinate convention {coords!r}")
    return (x1 * sx, y1 * sy, x2 * sx, y2 * sy)


def from_pixels(
    xyxy: XYXY, coords: Coords, sent_wh: tuple[int, int], original_wh: tuple[int, int]
) -> XYXY:
    """A box in original pixels expressed in `coords` (inverse of to_pixels)."""
    x1, y1, x2, y2 = xyxy
    width, height = original_wh
    if coords == "norm1000":
        sx, sy = 1000.0 / width, 1000.0 / height
    elif coords == "norm1":
        sx, sy = 1.0 / width, 1.0 / height
    elif coords in ("qwen2.5-vl", "pixels"):
        sx, sy = sent_wh[0] / width, sent_wh[1] / height
    else:
        raise ValueError(f"unknown coordinate convention {coords!r}")
    return (x1 * sx, y1 * sy, x2 * sx, y2 * sy)


@dataclass(frozen=True)
class Box:
    """A region of one image of an item, in pixels of the oriented original image."""

    image: int
    x1: float
    y1: float
    x2: float
    y2: float
    label: str = ""
    source: str = ""
    score: float | None = None

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        """(x1, y1, x2, y2) in pixels."""
        return (self.x1, self.y1, self.x2, self.y2)

    @property
    def width(self) -> float:
        """Width in pixels."""
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        """Height in pixels."""
        return self.y2 - self.y1

    @property
    def area(self) -> float:
        """Area in square pixels (0 for an empty box)."""
        return max(0.0, self.width) * max(0.0, self.height)

    def is_valid(self) -> bool:
        """Finite coordinates and a positive area."""
        return all(math.isfinite(v) for v in self.xyxy) and self.x2 > self.x1 and self.y2 > self.y1

    def clip(self, width: int, height: int) -> Box:
        """The part of the box inside a width x height image (may become empty)."""
        return replace(
            self,
            x1=min(max(self.x1, 0.0), float(width)),
            y1=min(max(self.y1, 0.0), float(height)),
            x2=min(max(self.x2, 0.0), float(width)),
            y2=min(max(self.y2, 0.0), float(height)),
        )

    def to_dict(self) -> dict[str, Any]:
        """The export shape of DESIGN: image, xyxy, label, source, score."""
        return {
            "image": self.image,
            "xyxy": [round(v, 2) for v in self.xyxy],
            "label": self.label,
            "source": self.source,
            "score": self.score,
        }


# A box may overshoot its image by this much (rounding, an inclusive x2 = width) and be
# clipped without a word; a larger overshoot is reported where the caller asks for it.
CLIP_TOLERANCE_PX = 0.5


def fit_to_image(box: Box, width: int, height: int) -> tuple[Box | None, str | None]:
    """The box clipped to a width x height image (None if dropped) and what was wrong with it.

    The reason reads after "box [...] on image N (WxH)" and ends in "dropped" for a dropped
    box; a clipped box comes with a reason too, an unremarkable one (inside, or off by
    rounding only) with None.
    """
    if not all(math.isfinite(v) for v in box.xyxy):
        return None, "has a non-finite coordinate; dropped"
    if box.x2 < box.x1 or box.y2 < box.y1:
        reason = "has x2<x1 or y2<y1; dropped"
        as_xywh = replace(box, x2=box.x1 + box.x2, y2=box.y1 + box.y2)
        if _inside(as_xywh, width, height) and as_xywh.is_valid():
            reason += (
                f". Read as [x, y, width, height] it is {_rounded(as_xywh.xyxy)} in xyxy: "
                "croptune's boxes are [x1, y1, x2, y2]"
            )
        return None, reason
    if box.x2 == box.x1 or box.y2 == box.y1:
        return None, "has zero area (x1 == x2 or y1 == y2); dropped"
    clipped = box.clip(width, height)
    if not clipped.is_valid():
        return None, "lies outside the image; dropped"
    overshoot = max(-box.x1, -box.y1, box.x2 - width, box.y2 - height)
    if overshoot <= CLIP_TOLERANCE_PX:
        return clipped, None
    outside = 1.0 - clipped.area / box.area
    return clipped, (
        f"is partly outside the image: clipped to {_rounded(clipped.xyxy)} "
        f"({outside:.0%} of its area was outside)"
    )


def _inside(box: Box, width: int, height: int) -> bool:
    return box.x1 >= 0 and box.y1 >= 0 and box.x2 <= width and box.y2 <= height


def _rounded(xyxy: tuple[float, ...]) -> list[float]:
    return [round(v, 2) for v in xyxy]


def clean_boxes(
    boxes: list[Box], image_sizes: dict[int, tuple[int, int]], report_clipped: bool = False
) -> tuple[list[Box], list[str]]:
    """Boxes clipped to their image, with empty/NaN/unknown-image ones dropped and said why.

    report_clipped: also say so for each box clipped by more than CLIP_TOLERANCE_PX.
    """
    kept: list[Box] = []
    problems: list[str] = []
    for box in boxes:
        if box.image not in image_sizes:
            problems.append(
                f"box {list(box.xyxy)} refers to image {box.image}, which is not usable"
            )
            continue
        width, height = image_sizes[box.image]
        fitted, reason = fit_to_image(box, width, height)
        prefix = f"box {list(box.xyxy)} on image {box.image} ({width}x{height})"
        if fitted is None:
            problems.append(f"{prefix} {reason}")
            continue
        if reason is not None and report_clipped:
            problems.append(f"{prefix} {reason}")
        kept.append(fitted)
    return kept, problems
