"""Crop planning: which squares one item gets from its boxes, by the configured strategy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from toolkit.boxes import Box
from toolkit.crops.config import CropConfig
from toolkit.crops.geometry import (
    Region,
    cluster_boxes,
    enclosing_square,
    expand_box,
    merge_groups,
    union_box,
)


@dataclass(frozen=True)
class CropPlan:
    """One crop to cut: which image, which region, and which boxes it covers.

    `indices` are the positions of those boxes in the list given to plan_crops.
    """

    image: int
    region: Region
    boxes: tuple[Box, ...]
    indices: tuple[int, ...] = ()


def plan_crops(
    boxes: Sequence[Box], image_sizes: dict[int, tuple[int, int]], config: CropConfig
) -> list[CropPlan]:
    """The crops of one item, by the configured strategy, in image order.

    Boxes are expanded by the margin and merged (merge_iou) per image, then: one enclosing
    square per image (enclosing-square), per cluster (clustered) or per merged box (per-box).
    Plans of one image with the same region are one plan.
    """
    by_image: dict[int, list[int]] = {}
    for position, box in enumerate(boxes):
        if box.image in image_sizes and box.is_valid():
            by_image.setdefault(box.image, []).append(position)
    plans = []
    for index in sorted(by_image):
        positions = by_image[index]
        size = image_sizes[index]
        grown = [expand_box(boxes[p].xyxy, config.margin, config.min_margin_px) for p in positions]
        units = merge_groups(grown, config.merge_iou)
        unit_boxes = [union_box([grown[i] for i in unit]) for unit in units]
        if config.strategy == "enclosing-square":
            groups = [list(range(len(units)))]
        elif config.strategy == "clustered":
            groups = cluster_boxes(unit_boxes, size, config.max_cluster_fraction)
        else:
            groups = [[u] for u in range(len(units))]
        by_region: dict[Region, list[int]] = {}
        for group in groups:
            region = enclosing_square(
                [unit_boxes[u] for u in group], size, config.min_side, config.overflow
            )
            by_region.setdefault(region, []).extend(i for u in group for i in units[u])
        for region, members in by_region.items():
            covered = sorted(positions[i] for i in members)
            plans.append(
                CropPlan(
                    image=index,
                    region=region,
                    boxes=tuple(boxes[p] for p in covered),
                    indices=tuple(covered),
                )
            )
    return plans
