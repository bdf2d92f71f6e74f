"""Pure crop geometry: boxes grown by margins, merged, clustered; squares that enclose them."""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Sequence
from typing import Any, Literal

XYXY = tuple[float, float, float, float]
Region = tuple[int, int, int, int]


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


def _float_box(box: XYXY) -> XYXY:
    """The box with each coordinate a float (ints and numpy scalars come in too)."""
    x1, y1, x2, y2 = box
    return float(x1), float(y1), float(x2), float(y2)


def merge_groups(boxes: Sequence[XYXY], iou: float) -> list[list[int]]:
    """Indices of the boxes merged together: every pair with IoU >= iou ends in one group.

    Connected components of the "IoU >= iou" graph (supervision's box_iou_batch), then the
    same on the components' union boxes, until no two unions overlap that much. Unlike a
    greedy non-max merge this does not depend on box order or scores. Groups are sorted
    and ordered by their first index.
    """
    groups = [[i] for i in range(len(boxes))]
    unions = [_float_box(b) for b in boxes]
    if len(boxes) < 2:
        return groups
    import numpy as np
    import supervision as sv

    while len(unions) > 1:
        array = np.asarray(unions, dtype=float)
        overlapping = sv.box_iou_batch(array, array) >= iou
        pairs_above = np.nonzero(np.triu(overlapping, k=1))
        components = _components(len(unions), zip(*pairs_above, strict=True))
        if len(components) == len(unions):
            break
        pairs = sorted(
            (sorted(i for g in part for i in groups[g]), union_box([unions[g] for g in part]))
            for part in components
        )
        groups, unions = [g for g, _ in pairs], [u for _, u in pairs]
    return groups


def _components(n: int, edges: Iterable[tuple[Any, Any]]) -> list[list[int]]:
    """Connected components (union-find) of n nodes, each sorted, ordered by first node."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(int(a)), find(int(b))
        parent[max(ra, rb)] = min(ra, rb)
    parts: dict[int, list[int]] = {}
    for node in range(n):
        parts.setdefault(find(node), []).append(node)
    return sorted(parts.values())


def merge_boxes(boxes: Sequence[XYXY], iou: float) -> list[XYXY]:
    """The boxes with every overlapping group (IoU >= iou) replaced by its union box."""
    return [union_box([boxes[i] for i in group]) for group in merge_groups(boxes, iou)]


def _pixel_span(box: XYXY, image_wh: tuple[int, int]) -> tuple[int, int, int, int]:
    """The whole pixels a box touches, clipped to the image."""
    width, height = image_wh
    return (
        max(math.floor(box[0]), 0),
        max(math.floor(box[1]), 0),
        min(math.ceil(box[2]), width),
        min(math.ceil(box[3]), height),
    )


def enclosing_square(
    boxes: Sequence[XYXY],
    image_wh: tuple[int, int],
    min_side: int = 1,
    overflow: Literal["pad", "image"] = "pad",
) -> Region:
    """The smallest integer square covering the boxes, shifted to stay inside the image.

    Only when the boxes span more than the image's shorter side does the square leave
    the image: with overflow "pad" it is then centred on the image along that axis (and
    padded when cut); with "image" it is clipped to the image, a rectangle.
    """
    width, height = image_wh
    ix1, iy1, ix2, iy2 = _pixel_span(union_box(boxes), image_wh)
    side = max(ix2 - ix1, iy2 - iy1, min(min_side, width, height), 1)
    x1 = _place(ix1, ix2, side, width)
    y1 = _place(iy1, iy2, side, height)
    if overflow == "image":
        return (max(x1, 0), max(y1, 0), min(x1 + side, width), min(y1 + side, height))
    return (x1, y1, x1 + side, y1 + side)


def _place(low: int, high: int, side: int, limit: int) -> int:
    """Start of a span of `side` pixels covering [low, high), inside [0, limit) when it fits."""
    if side > limit:
        return -((side - limit) // 2)  # cannot fit: centre on the image, pad both sides
    start = low - (side - (high - low)) // 2
    return min(max(start, 0), limit - side)


def _square_side(box: XYXY, image_wh: tuple[int, int]) -> int:
    """Side of the enclosing square of a box (whole pixels inside the image, no min_side)."""
    x1, y1, x2, y2 = _pixel_span(box, image_wh)
    return max(x2 - x1, y2 - y1, 1)


def _gap(a: XYXY, b: XYXY) -> float:
    """Distance between two boxes (0 when they touch or overlap)."""
    dx = max(0.0, b[0] - a[2], a[0] - b[2])
    dy = max(0.0, b[1] - a[3], a[1] - b[3])
    return math.hypot(dx, dy)


def cluster_boxes(
    boxes_xyxy: Sequence[XYXY], image_wh: tuple[int, int], max_fraction: float
) -> list[list[int]]:
    """Groups of an image's boxes whose enclosing squares stay within max_fraction of its
    longer side.

    Greedy agglomerative: one group per box, then repeatedly merge the closest pair of
    groups (gap between their union boxes; ties: the smaller merged square, then the
    earliest boxes) whose merged enclosing square still fits. A box larger than the limit
    stays alone. Groups are sorted and ordered by their first index (deterministic).
    """
    limit = max_fraction * max(image_wh)
    members: dict[int, list[int]] = {i: [i] for i in range(len(boxes_xyxy))}
    unions: dict[int, XYXY] = {i: _float_box(b) for i, b in enumerate(boxes_xyxy)}
    heap: list[tuple[float, int, int, int, int, int]] = []

    def push(a: int, b: int) -> None:
        side = _square_side(union_box([unions[a], unions[b]]), image_wh)
        if side <= limit:
            first, second = sorted((a, b), key=lambda g: members[g][0])
            key = (_gap(unions[a], unions[b]), side, members[first][0], members[second][0])
            heapq.heappush(heap, (*key, first, second))

    ids = sorted(members)
    for n, a in enumerate(ids):
        for b in ids[n + 1 :]:
            push(a, b)
    next_id = len(boxes_xyxy)
    while heap:
        *_, a, b = heapq.heappop(heap)
        if a not in members or b not in members:
            continue  # one of them was merged already
        merged = sorted(members.pop(a) + members.pop(b))
        union = union_box([unions.pop(a), unions.pop(b)])
        members[next_id], unions[next_id] = merged, union
        for other in list(members):
            if other != next_id:
                push(other, next_id)
        next_id += 1
    return sorted(members.values())
