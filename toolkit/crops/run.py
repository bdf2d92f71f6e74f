"""The crop stage over a run store: plan, cut and write crop files, de-duplicate, record.

Crops are content-addressed files under RUN/crops/ and rows in the store, kept per crop
config hash; an item is complete once its originals' pHashes are recorded under that hash.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image

from toolkit.boxes import Box
from toolkit.catalog import load_ingested_image
from toolkit.crops.config import CropConfig
from toolkit.crops.pixels import crop_region, encode_crop
from toolkit.crops.plan import CropPlan, plan_crops
from toolkit.crops.selection import (
    DEFAULT_IMAGE_BUDGET,
    image_phash,
    mark_duplicates,
    original_key,
    priority_order,
    select_images,
)
from toolkit.files import write_once
from toolkit.images import ImageLoadError, load_image, pixel_hash
from toolkit.store import CropRow, ImageRow, RunStore

FUSED_SOURCE = "fused"  # the source name of boxes fused across several box teachers
# Threads: Pillow releases the GIL while decoding, resizing and encoding (measured against
# processes in bench/crop_throughput.py).
_POOL: Callable[..., Executor] = ThreadPoolExecutor


@dataclass
class CropSummary:
    """What the crop stage did, and images per item before (one crop per box) and after.

    "After" counts the images an originals+crops example would use under image_budget (the
    dataset config's max_images_per_item, given to crop_run). uncovered: boxes not covered
    by any kept crop (no crop, crop failed, crop a duplicate, or cut by the budget);
    cut_by_budget: those covered by a non-duplicate crop that only the budget dropped.
    duplicates = duplicate_originals + duplicate_crops (pHash).
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
    image_budget: int = DEFAULT_IMAGE_BUDGET
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
            result.errors.append((index, f"image {index}: {exc}"))
            continue
        if dedupe and index in job.phash_originals:
            result.original_phashes[index] = image_phash(image)
        for plan, ids in plans_by_image.get(index, []):
            pixels = crop_region(image, plan.region, config.fill)
            data, suffix = encode_crop(pixels, config)
            name = hashlib.sha256(data).hexdigest()[:24] + suffix
            write_once(job.run_dir / "crops" / name, data)
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
    store: RunStore,
    config: CropConfig,
    progress: bool = False,
    workers: int = 1,
    image_budget: int = DEFAULT_IMAGE_BUDGET,
) -> CropSummary:
    """Cut, de-duplicate and store the crops of every labeled item under a crop config.

    Crops already made under this config are kept as is. With workers > 1, items are
    decoded, cut and encoded in that many threads (Pillow releases the GIL there); the
    store is read and written by the calling thread only. image_budget (the dataset
    config's max_images_per_item) only shapes the summary: no crop depends on it.
    """
    from toolkit.progress import ProgressBar

    summary = CropSummary(strategy=config.strategy, image_budget=image_budget)
    (store.run_dir / "crops").mkdir(exist_ok=True)
    config_hash = config.config_hash()
    store.set_meta("crop_config_hash", config_hash)
    store.set_meta("crop_config", config.model_dump_json())
    # The items stream in pages (no list of the run); _record writes between them.
    pending = (_prepare(store, item_id, config, config_hash) for item_id in store.item_ids())
    with ProgressBar("crop", store.count_items(), progress) as bar:
        for entry, result in _run_jobs(pending, _cut_item, workers):
            _record(store, entry, result, config, config_hash, summary)
            bar.advance()
    return summary


def crop_item(
    store: RunStore,
    item_id: str,
    config: CropConfig,
    images: dict[int, Image.Image] | None = None,
    image_budget: int = DEFAULT_IMAGE_BUDGET,
) -> CropSummary:
    """Cut, de-duplicate and store ONE item's crops: crop_run's work for one item.

    `predict` runs it item by item on its own run store. images: the item's decoded
    originals by index (oriented RGB, as load_ingested_image gives them), if at hand.
    """
    (store.run_dir / "crops").mkdir(exist_ok=True)
    config_hash = config.config_hash()
    summary = CropSummary(strategy=config.strategy, image_budget=image_budget)
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
    _summarise(entry, crops, original_phashes, summary)


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
    summary: CropSummary,
) -> None:
    """Add one item to the summary: what is covered, duplicated and kept under its budget."""
    duplicates = {i: dup for i, (_, dup) in original_phashes.items()}
    kept_originals, kept_crops = select_images(
        entry.originals, crops, duplicates, summary.image_budget
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
