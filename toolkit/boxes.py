"""The one box type of croptune: pixel xyxy on the oriented original image."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any


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


def clean_boxes(
    boxes: list[Box], image_sizes: dict[int, tuple[int, int]]
) -> tuple[list[Box], list[str]]:
    """Boxes clipped to their image, with empty/NaN/unknown-image ones dropped and said why."""
    kept: list[Box] = []
    problems: list[str] = []
    for box in boxes:
        if box.image not in image_sizes:
            problems.append(
                f"box {list(box.xyxy)} refers to image {box.image}, which is not usable"
            )
            continue
        if not all(math.isfinite(v) for v in box.xyxy):
            problems.append(f"box on image {box.image} has a non-finite coordinate; dropped")
            continue
        if box.x2 < box.x1 or box.y2 < box.y1:
            problems.append(
                f"box {list(box.xyxy)} on image {box.image} has x2<x1 or y2<y1; dropped"
            )
            continue
        width, height = image_sizes[box.image]
        clipped = box.clip(width, height)
        if not clipped.is_valid():
            problems.append(
                f"box {list(box.xyxy)} on image {box.image} ({width}x{height}) is empty "
                "or outside the image; dropped"
            )
            continue
        kept.append(clipped)
    return kept, problems
