"""Targeted crops: pure square geometry first, pixels second.

Gemma 3 spends the same 256 tokens on every image whatever its size, so the paper
cuts ONE square per image: the smallest square that covers all of that image's boxes.
croptune also offers `clustered` (one square per group of nearby boxes, so a label at one
corner and a barcode at the other become two tight crops instead of one as large as the
photo) and `per-box` (one square per box: the naive baseline).

After cutting, an item's originals and crops are de-duplicated by perceptual hash (pHash) in
the budget's priority order, then the image budget applies.
"""

from __future__ import annotations

import hashlib
import heapq
import io
import json
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from toolkit.boxes import Box
from toolkit.catalog import load_ingested_image
from toolkit.files import atomic_write
from toolkit.images import ImageLoadError, load_image, pixel_hash
from toolkit.store import CropRow, ImageRow, RunStore

XYXY = tuple[float, float, float, float]
FUSED_SOURCE = "fused"  # the source name of boxes fused across several box teachers
Region = tuple[int, int, int, int]
Strategy = Literal["enclosing-square", "clustered", "per-box"]
# Threads: Pillow releases the GIL while decoding, resizing and encoding (measured against
# processes in bench/crop_throughput.py).
_POOL: Callable[..., Executor] = ThreadPoolExecutor
PHASH_WORK_SIDE = 128  # pHash input is brought near this shorter side first (see image_phash)


class CropConfig(BaseModel):
    """How crops are cut from an item's boxes."""

    model_config = ConfigDict(extra="forbid")

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
    max_images_per_item: int = Field(
        9,
        ge=1,
        description="Image budget per item after de-duplication (the paper's maximum is 9): "
        "the main photo, then the crops, then the other photos.",
    )

    def config_hash(self) -> str:
        """A short hash of the settings: crops, their duplicates and budget are kept per hash."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


# Pure geometry


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


# Pure selection: de-duplication and budget


def phash_distance(a: str, b: str) -> int:
    """Hamming distance between two hex pHashes."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


def mark_duplicates(phashes: Sequence[str | None], threshold: int) -> list[int | None]:
    """For each image in priority order, the position of the earlier KEPT image it repeats.

    An image is a duplicate when its pHash is within `threshold` bits of a kept image (the
    closest one, the earliest on ties); None for a kept image, an image without a pHash, or
    when threshold < 0 (de-duplication off).
    """
    kept: list[tuple[int, str]] = []
    out: list[int | None] = []
    for position, value in enumerate(phashes):
        if value is None or threshold < 0:
            out.append(None)
            if value is not None:
                kept.append((position, value))
            continue
        best: tuple[int, int] | None = None
        for other, other_value in kept:
            distance = phash_distance(value, other_value)
            if distance <= threshold and (best is None or distance < best[0]):
                best = (distance, other)
        out.append(None if best is None else best[1])
        if best is None:
            kept.append((position, value))
    return out


def priority_order(originals: list[int], crops: list[int]) -> list[tuple[str, int]]:
    """Images in budget priority: ("o", index) the main photo, ("c", i) every crop, then the
    other photos in catalog order."""
    ranked = [("o", i) for i in originals[:1]] + [("c", i) for i in crops]
    return ranked + [("o", i) for i in originals[1:]]


def budgeted_order(
    originals: list[int], crops: list[int], budget: int
) -> tuple[list[int], list[int]]:
    """The originals and crops kept under an image budget.

    Priority: the first original (the listing's main photo), then every crop (they hold
    what a downscaled photo hides), then the other originals in catalog order.
    """
    kept = priority_order(originals, crops)[:budget]
    return [i for k, i in kept if k == "o"], [i for k, i in kept if k == "c"]


def original_key(index: int) -> str:
    """How an original is named in `duplicate_of`."""
    return f"image:{index}"


def select_images(
    originals: list[int],
    crops: Sequence[CropRow],
    original_duplicates: Mapping[int, str | None],
    budget: int,
) -> tuple[list[int], list[int]]:
    """Originals (indices) and crops (positions) used: duplicates out, then the budget.

    An image is left out as a duplicate only when the image it repeats is itself among
    those given (a crop repeating a photo the example does not use stays).
    """
    used = {original_key(i) for i in originals} | {c.path for c in crops}
    fresh_originals = [i for i in originals if original_duplicates.get(i) not in used]
    fresh_crops = [n for n, c in enumerate(crops) if c.duplicate_of not in used]
    return budgeted_order(fresh_originals, fresh_crops, budget)


# Pixels


def encode_crop(image: Image.Image, config: CropConfig) -> tuple[bytes, str]:
    """Encoded crop bytes and the file suffix, in the configured format."""
    buffer = io.BytesIO()
    if config.image_format == "png":
        image.save(buffer, format="PNG", optimize=False)
        return buffer.getvalue(), ".png"
    image.save(buffer, format="JPEG", quality=config.jpeg_quality)
    return buffer.getvalue(), ".jpg"


def image_phash(image: Image.Image) -> str:
    """The 64-bit pHash of an image, hex, computed on a small copy for speed.

    pHash keeps only the coarsest structure (8x8 DCT of a 32x32 grey image), so a large
    image is first made small: subsampled to about twice PHASH_WORK_SIDE on its shorter
    side (nearest: reads only the sampled pixels), turned grey, then box-reduced by 4. On
    photos, re-encoded (JPEG q70) and resized copies stay within a few bits of each other,
    as with imagehash.phash on the full image, at a twentieth of its cost.
    """
    import imagehash

    factor = min(image.size) // PHASH_WORK_SIDE
    if factor >= 4:
        width, height = image.size
        size = (max(4, 2 * width // factor), max(4, 2 * height // factor))
        image = image.resize(size, Image.Resampling.NEAREST).convert("L").reduce(4)
    elif factor >= 2:
        image = image.convert("L").reduce(factor)
    return str(imagehash.phash(image))


@dataclass
class CropSummary:
    """What the crop stage did, and images per item before (one crop per box) and after.

    uncovered: boxes not covered by any kept crop (no crop, crop failed, crop a duplicate,
    or cut by the budget); cut_by_budget: those covered by a non-duplicate crop that only
    the budget dropped. duplicates = duplicate_originals + duplicate_crops (pHash).
    """

    items: int = 0
    made: int = 0
    existing: int = 0
    boxes: int = 0
    uncovered: int = 0
    uncovered_items: list[str] = field(default_factory=list)  # the items those boxes are of
    cut_by_budget: int = 0
    duplicates: int = 0
    duplicate_originals: int = 0
    duplicate_crops: int = 0
    strategy: str = ""
    crops_per_item: list[int] = field(default_factory=list)  # crops planned, before dedupe
    images_per_box_crop: list[int] = field(default_factory=list)
    images_after: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def crop_boxes(boxes: list[tuple[int, Box]]) -> list[tuple[int, Box]]:
    """The boxes crops are cut from: the fused ones when teachers were fused, else all."""
    fused = [(i, b) for i, b in boxes if b.source == FUSED_SOURCE]
    return fused or boxes


@dataclass
class _ItemJob:
    """What cutting one item needs (picklable: plain rows and plans)."""

    item_id: str
    rows: dict[int, ImageRow]
    plans: list[CropPlan]  # to cut (new)
    box_ids: list[list[int]]  # per plan: the store ids of its boxes
    phash_originals: list[int]  # originals whose pHash is needed
    phash_crops: list[str]  # paths of existing crops without a pHash
    config: CropConfig
    run_dir: Path
    images: dict[int, Image.Image] | None = None  # decoded originals the caller already has


@dataclass
class _ItemResult:
    new_crops: list[CropRow] = field(default_factory=list)
    original_phashes: dict[int, str] = field(default_factory=dict)
    crop_phashes: dict[str, str] = field(default_factory=dict)
    errors: list[tuple[int, str]] = field(default_factory=list)  # (image, message)


def _cut_item(job: _ItemJob) -> _ItemResult:
    """Decode, cut, encode and write one item's new crops; pHash what dedupe needs."""
    result = _ItemResult()
    config = job.config
    dedupe = config.phash_threshold >= 0
    config_hash = config.config_hash()
    plans_by_image: dict[int, list[tuple[CropPlan, list[int]]]] = {}
    for plan, ids in zip(job.plans, job.box_ids, strict=True):
        plans_by_image.setdefault(plan.image, []).append((plan, ids))
    wanted = sorted(set(plans_by_image) | (set(job.phash_originals) if dedupe else set()))
    for index in wanted:
        try:
            image = (job.images or {}).get(index)
            if image is None:
                image = load_ingested_image(job.rows[index])
        except ImageLoadError as exc:
            message = str(exc) if str(exc).startswith("image ") else f"image {index}: {exc}"
            result.errors.append((index, message))
            continue
        if dedupe and index in job.phash_originals:
            result.original_phashes[index] = image_phash(image)
        for plan, ids in plans_by_image.get(index, []):
            pixels = crop_region(image, plan.region, config.fill)
            data, suffix = encode_crop(pixels, config)
            name = hashlib.sha256(data).hexdigest()[:24] + suffix
            _write_once(job.run_dir / "crops" / name, data)
            result.new_crops.append(
                CropRow(
                    item_id=job.item_id,
                    image=plan.image,
                    region=plan.region,
                    path=f"crops/{name}",
                    sha256=pixel_hash(pixels),
                    strategy=config.strategy,
                    config_hash=config_hash,
                    box_ids=ids,
                    phash=image_phash(pixels) if dedupe else None,
                )
            )
    for path in job.phash_crops if dedupe else []:
        try:
            result.crop_phashes[path] = image_phash(load_image(str(job.run_dir / path)).image)
        except ImageLoadError as exc:
            result.errors.append((-1, f"crop {path}: {exc}"))
    return result


def _write_once(target: Path, data: bytes) -> None:
    """Write a content-addressed file unless present; never leaves half a file under its name."""
    if target.exists():
        return
    with atomic_write(target, "wb") as handle:
        handle.write(data)


@dataclass
class _Pending:
    """One item between planning (main thread) and recording (main thread)."""

    item_id: str
    originals: list[int]
    boxed: list[tuple[int, Box]]
    existing: list[CropRow]  # the item's crops under this config already in the store
    planned: int
    found: int  # planned crops found in the store
    original_phashes: dict[int, tuple[str | None, str | None]]
    job: _ItemJob | None  # None: the item is complete in the store


def crop_run(
    store: RunStore, config: CropConfig, progress: bool = False, workers: int = 1
) -> CropSummary:
    """Cut, de-duplicate and store the crops of every labeled item under a crop config.

    Crops already made under this config are kept as is. With workers > 1, items are
    decoded, cut and encoded in that many threads (Pillow releases the GIL there); the
    store is read and written by the calling thread only.
    """
    from toolkit.progress import track

    summary = CropSummary(strategy=config.strategy)
    (store.run_dir / "crops").mkdir(exist_ok=True)
    config_hash = config.config_hash()
    store.set_meta("crop_config_hash", config_hash)
    store.set_meta("crop_config", config.model_dump_json())
    items = store.items()
    pending = (_prepare(store, item.item_id, config, config_hash) for item in items)
    finished = _run_jobs(pending, _cut_item, workers)
    for _ in track(items, "crop", progress):
        entry, result = next(finished)
        _record(store, entry, result, config, config_hash, summary)
    return summary


def crop_item(
    store: RunStore,
    item_id: str,
    config: CropConfig,
    images: dict[int, Image.Image] | None = None,
) -> CropSummary:
    """Cut, de-duplicate and store ONE item's crops: crop_run's work for one item.

    `predict` runs it item by item on its own run store. images: the item's decoded
    originals by index (oriented RGB, as load_ingested_image gives them), if at hand.
    """
    (store.run_dir / "crops").mkdir(exist_ok=True)
    config_hash = config.config_hash()
    summary = CropSummary(strategy=config.strategy)
    entry = _prepare(store, item_id, config, config_hash)
    if entry.job is not None:
        entry.job.images = images
    _record(store, entry, _cut_item(entry.job) if entry.job else None, config, config_hash, summary)
    return summary


def _prepare(store: RunStore, item_id: str, config: CropConfig, config_hash: str) -> _Pending:
    """Plan an item's crops and find what is missing in the store (main thread)."""
    rows = {r.index: r for r in store.images(item_id) if r.usable}
    boxed = crop_boxes(store.boxes(item_id))
    plans = plan_crops([b for _, b in boxed], {i: r.size for i, r in rows.items()}, config)
    existing = store.crops(item_id, config_hash)
    known = {(c.image, c.region) for c in existing}
    new = [p for p in plans if (p.image, p.region) not in known]
    phashes = store.image_phashes(item_id, config_hash)
    missing_originals = [i for i in sorted(rows) if i not in phashes]
    missing_crops = [c.path for c in existing if c.phash is None]
    job = None
    if new or missing_originals:
        job = _ItemJob(
            item_id=item_id,
            rows=rows,
            plans=new,
            box_ids=[[boxed[i][0] for i in p.indices] for p in new],
            phash_originals=missing_originals,
            phash_crops=missing_crops,
            config=config,
            run_dir=store.run_dir,
        )
    found = len(plans) - len(new)
    return _Pending(item_id, sorted(rows), boxed, existing, len(plans), found, phashes, job)


def _run_jobs(
    pending: Iterator[_Pending], work: Callable[[_ItemJob], _ItemResult], workers: int
) -> Iterator[tuple[_Pending, _ItemResult | None]]:
    """(entry, result) in item order; jobs run inline or in a bounded thread pool."""
    if workers <= 1:
        for entry in pending:
            yield entry, work(entry.job) if entry.job else None
        return
    window: deque[tuple[_Pending, Future[_ItemResult] | None]] = deque()
    with _POOL(max_workers=workers) as pool:
        for entry in pending:
            window.append((entry, _submit(pool, work, entry.job)))
            if len(window) >= 2 * workers:
                yield _resolve(window.popleft())
        while window:
            yield _resolve(window.popleft())


def _submit(
    pool: Executor, work: Callable[[_ItemJob], _ItemResult], job: _ItemJob | None
) -> Future[_ItemResult] | None:
    return pool.submit(work, job) if job else None


def _resolve(
    pair: tuple[_Pending, Future[_ItemResult] | None],
) -> tuple[_Pending, _ItemResult | None]:
    entry, future = pair
    return entry, future.result() if future else None


def _record(
    store: RunStore,
    entry: _Pending,
    result: _ItemResult | None,
    config: CropConfig,
    config_hash: str,
    summary: CropSummary,
) -> None:
    """Store an item's new crops and duplicates, and add it to the summary (main thread)."""
    summary.items += 1
    summary.boxes += len(entry.boxed)
    summary.existing += entry.found
    original_phashes = dict(entry.original_phashes)
    crops = list(entry.existing)
    if result is not None:
        for image, message in result.errors:
            summary.errors.append(f"item {entry.item_id}: {message}")
            store.log_event(
                "crop", message, item_id=entry.item_id, image=image if image >= 0 else None
            )
        summary.made += len(result.new_crops)
        # The store lists an item's crops by image, then insertion: existing before new.
        crops = sorted(
            [
                *(
                    replace(c, phash=result.crop_phashes.get(c.path, c.phash))
                    for c in entry.existing
                ),
                *result.new_crops,
            ],
            key=lambda c: c.image,
        )
        for index in entry.originals:
            if index in result.original_phashes or config.phash_threshold < 0:
                original_phashes[index] = (result.original_phashes.get(index), None)
        crops, original_phashes = _deduplicate(
            entry.originals, crops, original_phashes, config.phash_threshold
        )
        old = {(c.image, c.region): c for c in entry.existing}
        for crop in crops:
            before = old.get((crop.image, crop.region))
            if before is None:
                store.add_crop(crop)
            elif (before.duplicate_of, before.phash) != (crop.duplicate_of, crop.phash):
                store.set_crop_duplicate(
                    entry.item_id, crop.image, config_hash, crop.duplicate_of, crop.region,
                    crop.phash,
                )  # fmt: skip
        # Written last: the marker that the item is complete under this config.
        store.set_image_phashes(entry.item_id, config_hash, original_phashes)
    _summarise(entry, crops, original_phashes, config, summary)


def _deduplicate(
    originals: list[int],
    crops: list[CropRow],
    original_phashes: dict[int, tuple[str | None, str | None]],
    threshold: int,
) -> tuple[list[CropRow], dict[int, tuple[str | None, str | None]]]:
    """Mark duplicates among an item's originals and crops, in budget priority order."""
    present = [i for i in originals if i in original_phashes]
    ranked = priority_order(present, list(range(len(crops))))
    keys = [original_key(i) if kind == "o" else crops[i].path for kind, i in ranked]
    hashes = [original_phashes[i][0] if kind == "o" else crops[i].phash for kind, i in ranked]
    marks = mark_duplicates(hashes, threshold)
    new_crops = list(crops)
    new_originals = dict(original_phashes)
    for (kind, i), mark in zip(ranked, marks, strict=True):
        duplicate_of = None if mark is None else keys[mark]
        if kind == "o":
            new_originals[i] = (original_phashes[i][0], duplicate_of)
        else:
            new_crops[i] = replace(crops[i], duplicate_of=duplicate_of)
    return new_crops, new_originals


def _summarise(
    entry: _Pending,
    crops: list[CropRow],
    original_phashes: dict[int, tuple[str | None, str | None]],
    config: CropConfig,
    summary: CropSummary,
) -> None:
    duplicates = {i: dup for i, (_, dup) in original_phashes.items()}
    kept_originals, kept_crops = select_images(
        entry.originals, crops, duplicates, config.max_images_per_item
    )
    fresh = [c for c in crops if c.duplicate_of is None]
    covered = {box_id for n in kept_crops for box_id in crops[n].box_ids}
    coverable = {box_id for c in fresh for box_id in c.box_ids}
    box_ids = [box_id for box_id, _ in entry.boxed]
    uncovered = sum(1 for b in box_ids if b not in covered)
    summary.uncovered += uncovered
    if uncovered:
        summary.uncovered_items.append(entry.item_id)
    summary.cut_by_budget += sum(1 for b in box_ids if b not in covered and b in coverable)
    dup_originals = sum(1 for i in entry.originals if duplicates.get(i) is not None)
    summary.duplicate_originals += dup_originals
    summary.duplicate_crops += len(crops) - len(fresh)
    summary.duplicates += dup_originals + len(crops) - len(fresh)
    summary.crops_per_item.append(entry.planned)
    summary.images_per_box_crop.append(len(entry.originals) + len(entry.boxed))
    summary.images_after.append(len(kept_originals) + len(kept_crops))
