"""Coverage: how many of the teacher's boxes lie inside the crops a box source's boxes gave.

A region-proposal detector earns its place when the crops cut from ITS boxes show what the
teacher marked: a teacher box counts as covered when it lies inside some crop of the same
photo (the student then sees that text in a close-up). Box recall at IoU 0.5 asks more (a
proposal the teacher box's own shape); coverage asks what crops need. Pure geometry, no
pixels: give it the crop plans (toolkit.crops.plan.plan_crops) or the store's crop rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from toolkit.boxes import Box
from toolkit.crops.geometry import XYXY, Region

# Pixels a teacher box may stick out of a crop on each side and still count as inside it:
# crops are whole-pixel squares around boxes grown by a margin, so a box that leaves its crop
# by a pixel or two of rounding (or of a detector's box edge) still shows its text.
COVERAGE_TOLERANCE_PX = 2.0


class CropArea(Protocol):
    """A crop's photo and rectangle: a CropPlan or a store CropRow."""

    @property
    def image(self) -> int: ...

    @property
    def region(self) -> Region: ...


def box_inside(box: XYXY, region: Region, tolerance: float = COVERAGE_TOLERANCE_PX) -> bool:
    """Whether the box lies inside the region, each edge at most `tolerance` pixels out."""
    x1, y1, x2, y2 = box
    rx1, ry1, rx2, ry2 = region
    return (
        x1 >= rx1 - tolerance
        and y1 >= ry1 - tolerance
        and x2 <= rx2 + tolerance
        and y2 <= ry2 + tolerance
    )


def covered_boxes(
    teacher_boxes: Sequence[Box],
    crops: Iterable[CropArea],
    tolerance: float = COVERAGE_TOLERANCE_PX,
) -> list[bool]:
    """Per teacher box: whether it lies inside some crop of its own photo (Box.image)."""
    by_image: dict[int, list[Region]] = {}
    for crop in crops:
        by_image.setdefault(crop.image, []).append(crop.region)
    return [
        any(box_inside(box.xyxy, region, tolerance) for region in by_image.get(box.image, []))
        for box in teacher_boxes
    ]


def coverage(
    teacher_boxes: Sequence[Box],
    crops: Iterable[CropArea],
    tolerance: float = COVERAGE_TOLERANCE_PX,
) -> float | None:
    """The fraction of teacher boxes inside some crop of the same photo; None without boxes.

    None, not 0, when there is no teacher box: nothing was there to cover, so the crops
    neither succeeded nor failed (an average over items must skip it, not count a miss).
    """
    inside = covered_boxes(teacher_boxes, crops, tolerance)
    return sum(inside) / len(inside) if inside else None
