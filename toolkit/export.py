"""Label export: one JSON line per item, or the boxes as a COCO / YOLO detection dataset.

Every box is in pixels of the oriented original image. The detection datasets therefore
ship the ORIENTED originals (re-encoded as JPEG without EXIF), so the boxes line up in
any viewer or trainer, whatever orientation the source files carried.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.boxes import Box
from toolkit.config import dump_yaml
from toolkit.dataset import DatasetConfig
from toolkit.dataset.splits import SPLIT_KEYS, SPLITS, item_splits
from toolkit.errors import CroptuneError
from toolkit.files import atomic_write
from toolkit.images import ImageLoadError, LoadedImage, encode_jpeg, load_image
from toolkit.store import ImageRow, RunStore

EMPTY_LABEL_CLASS = "text"  # the class of a box without a label
MANIFEST = "croptune_export.json"  # marks a folder as a croptune export, lists its images
JPEG_QUALITY = 95

BoxSelector = Callable[[list[Box]], list[Box]]
# The YOLO export splits as `dataset build` does, with the same defaults.
_SPLIT_DEFAULTS = {k: DatasetConfig.model_fields[k].default for k in SPLIT_KEYS}


def label_record(store: RunStore, item_id: str) -> dict[str, Any]:
    """One item's export line (DESIGN's label export) as a dict."""
    crop_hash = store.get_meta("crop_config_hash")
    crops = store.crops(item_id, crop_hash) if crop_hash else store.crops(item_id)
    return {
        "item_id": item_id,
        "attributes": store.final_attributes(item_id),
        "labels": store.labels(item_id),
        "boxes": [_box_dict(box) for _, box in store.boxes(item_id)],
        "crops": [{"image": c.image, "xyxy": list(c.region), "path": c.path} for c in crops],
        "errors": [
            {
                "stage": e["stage"],
                "teacher": e["teacher"],
                "image": e["image"],
                "message": e["message"],
            }
            for e in store.errors(item_id)
        ],
    }


def _box_dict(box: Box) -> dict[str, Any]:
    record = box.to_dict()
    if record["score"] is not None and not math.isfinite(record["score"]):
        record["score"] = None  # JSON has no NaN
    return record


def export_labels_jsonl(store: RunStore, out: Path) -> int:
    """Write one JSON line per item (DESIGN's label export); returns the number of items."""
    count = 0
    with atomic_write(Path(out)) as handle:
        for item in store.items():
            record = label_record(store, item.item_id)
            handle.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
            count += 1
    return count


YOLO_SPLITS = {"train": "train", "validation": "val", "test": "test"}  # dataset -> YOLO names


@dataclass
class ExportedPhoto:
    """One photo of a detection export: written once, however many items show it."""

    sha256: str
    owners: list[tuple[str, int]]  # (item_id, image index) of every item showing it
    rows: list[ImageRow]  # the owners' image rows, in the same order
    boxes: list[Box] = field(default_factory=list)  # the union of the owners' boxes
    file: str = ""  # relative to the export folder
    split: str | None = None  # YOLO only: train | validation | test

    @property
    def item_id(self) -> str:
        """The first item showing the photo (the file is named after it)."""
        return self.owners[0][0]

    @property
    def index(self) -> int:
        """The photo's image index in its first item."""
        return self.owners[0][1]


@dataclass
class DetectionExport:
    """What a COCO / YOLO export wrote, and the images it had to leave out (with why)."""

    images: int = 0
    boxes: int = 0
    classes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    shared_photos: int = 0  # photos shown by 2+ items, each written once with all their boxes
    merged_boxes: int = 0  # identical boxes of a photo's items written once
    photos: list[ExportedPhoto] = field(default_factory=list)
    item_splits: dict[str, str] = field(default_factory=dict)  # YOLO only: item_id -> split
    split_settings: dict[str, float | int] = field(default_factory=dict)  # YOLO only
    # YOLO only: "new" (split now and recorded in the run), "recorded" (the run's recorded
    # split, whatever settings were asked) or "resplit" (see
    # toolkit.dataset.splits.item_splits).
    split_status: str | None = None

    def split_counts(self) -> dict[str, dict[str, int]]:
        """YOLO only: items, images and boxes per non-empty split (dataset split names)."""
        counts: dict[str, dict[str, int]] = {}
        for photo in self.photos:
            if photo.split is None:
                continue
            entry = counts.setdefault(photo.split, {"items": 0, "images": 0, "boxes": 0})
            entry["images"] += 1
            entry["boxes"] += len(photo.boxes)
        exported = {item_id for photo in self.photos for item_id, _ in photo.owners}
        for item_id in exported:
            split = self.item_splits.get(item_id)
            if split in counts:
                counts[split]["items"] += 1
        return {name: counts[name] for name in SPLITS if name in counts}


def safe_stem(item_id: str) -> str:
    """A file-name-safe form of an item id, unique per id (a hash is added when it changed)."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "_", item_id)[:80] or "item"
    if cleaned != item_id:
        cleaned += "-" + hashlib.sha256(item_id.encode("utf-8")).hexdigest()[:8]
    return cleaned


def box_class(box: Box) -> str:
    """The detection class of a box: its label, or "text" when it has none."""
    return box.label.strip() or EMPTY_LABEL_CLASS


def export_labels_coco(
    store: RunStore, out_dir: Path, select: BoxSelector | None = None
) -> DetectionExport:
    """Write the run's boxes as a COCO detection dataset: out_dir/images/, out_dir/annotations.json.

    select maps one image's stored boxes (all teachers) to the boxes to export, e.g. fused ones.
    Each photo is written once, with the boxes of every item showing it.
    """
    return _export_detection(store, Path(out_dir), "coco", select, None)


def export_labels_yolo(
    store: RunStore,
    out_dir: Path,
    select: BoxSelector | None = None,
    validation_ratio: float = _SPLIT_DEFAULTS["validation_ratio"],
    test_ratio: float = _SPLIT_DEFAULTS["test_ratio"],
    seed: int = _SPLIT_DEFAULTS["seed"],
) -> DetectionExport:
    """Write the run's boxes as a YOLO dataset split by item: images/, labels/, data.yaml.

    The items follow the run's one split (`toolkit.dataset.splits.item_splits`): the split
    recorded in the run store, or, when none is recorded yet, a split by these ratios and
    seed, which is then recorded; so they land where `dataset build` puts them. select maps
    one image's stored boxes (all teachers) to the boxes to export. Each photo is written once, with the
    boxes of every item showing it.
    """
    split = {"validation_ratio": validation_ratio, "test_ratio": test_ratio, "seed": seed}
    return _export_detection(store, Path(out_dir), "yolo", select, split)


def collect_photos(
    store: RunStore, select: BoxSelector | None = None
) -> tuple[list[ExportedPhoto], int]:
    """The run's usable photos, one per pixel hash, each with the union of its items' boxes.

    Returns the photos (in catalog order of their first item) and how many identical
    boxes (same class, same pixels to 0.01) were merged.
    """
    photos: dict[str, ExportedPhoto] = {}
    for item in store.items():
        boxes_by_image: dict[int, list[Box]] = {}
        for _, box in store.boxes(item.item_id):
            boxes_by_image.setdefault(box.image, []).append(box)
        for row in store.images(item.item_id):
            if not row.usable or row.sha256 is None:
                continue
            boxes = boxes_by_image.get(row.index, [])
            if select is not None:
                boxes = select(boxes)
            photo = photos.setdefault(row.sha256, ExportedPhoto(row.sha256, [], []))
            photo.owners.append((item.item_id, row.index))
            photo.rows.append(row)
            photo.boxes += [b for b in boxes if b.is_valid()]
    merged = 0
    for photo in photos.values():
        unique: dict[tuple[Any, ...], Box] = {}
        for box in photo.boxes:
            unique.setdefault((box_class(box), *(round(v, 2) for v in box.xyxy)), box)
        merged += len(photo.boxes) - len(unique)
        photo.boxes = list(unique.values())
    return list(photos.values()), merged


def _export_detection(
    store: RunStore,
    out_dir: Path,
    fmt: str,
    select: BoxSelector | None,
    split: dict[str, Any] | None,
) -> DetectionExport:
    _check_target(out_dir)
    summary = DetectionExport()
    photos, summary.merged_boxes = collect_photos(store, select)
    if split is not None:
        _assign_photo_splits(store, photos, split, summary)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)  # left by a killed export of this process id
    work.mkdir()
    try:
        _write_detection(store, work, fmt, photos, summary)
        _swap_in(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return summary


def _assign_photo_splits(
    store: RunStore, photos: list[ExportedPhoto], split: dict[str, Any], summary: DetectionExport
) -> None:
    """Each photo's split: its items' (the most held-out one when they differ, never train)."""
    recorded = item_splits(store, split["validation_ratio"], split["test_ratio"], split["seed"])
    summary.split_settings = {key: recorded.settings[key] for key in SPLIT_KEYS}
    summary.split_status = recorded.status
    summary.item_splits = recorded.splits
    for photo in photos:
        owners = {summary.item_splits[item_id] for item_id, _ in photo.owners}
        photo.split = max(owners, key=SPLITS.index)  # SPLITS runs from train to most held out
    if photos and not any(p.split == "train" for p in photos):
        held = {s: sum(1 for p in photos if p.split == s) for s in ("validation", "test")}
        raise CroptuneError(
            f"no photo of run {store.run_dir} is left for train (validation {held['validation']},"
            f" test {held['test']} photos): the split holds out every item of "
            f"{len(summary.item_splits)} (items sharing a photo stay in one split). Lower "
            "validation_ratio/test_ratio"
            + (
                " (this is the split recorded in the run: `croptune dataset build --resplit` "
                "splits it again)"
                if recorded.status == "recorded"
                else ""
            )
            + "; nothing was written"
        )
    recorded.record(store)


def _write_detection(
    store: RunStore, work: Path, fmt: str, photos: list[ExportedPhoto], summary: DetectionExport
) -> None:
    import numpy as np
    import supervision as sv

    images_dir = work / "images"
    images_dir.mkdir()
    written: list[ExportedPhoto] = []
    for photo in photos:
        loaded, problem = _load_photo(photo)
        if loaded is None:
            summary.skipped.append(problem)
            continue
        folder = images_dir / YOLO_SPLITS[photo.split] if photo.split else images_dir
        folder.mkdir(exist_ok=True)
        path = folder / f"{safe_stem(photo.item_id)}_{photo.index}.jpg"
        path.write_bytes(encode_jpeg(loaded.image, quality=JPEG_QUALITY))
        photo.file = path.relative_to(work).as_posix()
        written.append(photo)

    classes = sorted({box_class(b) for photo in written for b in photo.boxes})
    class_ids = {name: i for i, name in enumerate(classes)}

    def dataset(chosen: list[ExportedPhoto]) -> Any:
        annotations = {}
        for photo in chosen:
            if photo.boxes:
                detections = sv.Detections(
                    xyxy=np.array([b.xyxy for b in photo.boxes], dtype=np.float64),
                    class_id=np.array([class_ids[box_class(b)] for b in photo.boxes], np.int64),
                )
            else:
                detections = sv.Detections.empty()  # a negative: an image with nothing to find
            annotations[str(work / photo.file)] = detections
        images = [str(work / p.file) for p in chosen]
        return sv.DetectionDataset(classes=classes, images=images, annotations=annotations)

    # The images are written already, in the folder supervision copies them to: it leaves them.
    if fmt == "coco":
        dataset(written).as_coco(
            images_directory_path=str(images_dir),
            annotations_path=str(work / "annotations.json"),
        )
        _tidy_coco(work / "annotations.json")
    else:
        data: dict[str, Any] = {}
        for name, yolo_split in YOLO_SPLITS.items():
            chosen = [p for p in written if p.split == name]
            if not chosen:
                continue  # ultralytics reads a split key as "these images": name none that is empty
            dataset(chosen).as_yolo(
                images_directory_path=str(images_dir / yolo_split),
                annotations_directory_path=str(work / "labels" / yolo_split),
            )
            data[yolo_split] = f"images/{yolo_split}"
        # No `path`: ultralytics resolves the splits against this file's folder, so the
        # export can be moved.
        data.update(nc=len(classes), names=classes)
        (work / "data.yaml").write_text(dump_yaml(data), encoding="utf-8")

    summary.photos = written
    summary.images = len(written)
    summary.boxes = sum(len(p.boxes) for p in written)
    summary.shared_photos = sum(1 for p in written if len(p.owners) > 1)
    summary.classes = classes
    manifest = {
        "format": fmt,
        "run": str(store.run_dir),
        "classes": classes,
        "split": summary.split_settings or None,
        "images": [_manifest_entry(p) for p in written],
        "shared_photos": summary.shared_photos,
        "merged_boxes": summary.merged_boxes,
        "skipped": summary.skipped,
    }
    (work / MANIFEST).write_text(
        json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )


def _manifest_entry(photo: ExportedPhoto) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "file": photo.file,
        "item_id": photo.item_id,
        "image": photo.index,
        "boxes": len(photo.boxes),
        "items": [{"item_id": item_id, "image": index} for item_id, index in photo.owners],
    }
    if photo.split is not None:
        entry["split"] = photo.split
    return entry


def _load_photo(photo: ExportedPhoto) -> tuple[LoadedImage | None, str]:
    """The photo's pixels from the first owner whose file still holds them, else why not."""
    problems = []
    for (item_id, index), row in zip(photo.owners, photo.rows, strict=True):
        where = f"item {item_id} image {index}"
        try:
            loaded = load_image(row.uri)
        except ImageLoadError as exc:
            problems.append(f"{where}: {exc}")
            continue
        if loaded.sha256 != photo.sha256:
            problems.append(f"{where}: changed since ingest, its boxes may not fit")
            continue
        return loaded, ""
    return None, "; ".join(problems)


def _tidy_coco(path: Path) -> None:
    """Drop the CC BY 4.0 licence supervision stamps on every image: the catalog's owner decides."""
    coco = json.loads(path.read_text(encoding="utf-8"))
    coco["info"] = {"description": "croptune label export (boxes in oriented-image pixels)"}
    coco["licenses"] = []
    for image in coco["images"]:
        image.pop("license", None)
    path.write_text(json.dumps(coco, ensure_ascii=False), encoding="utf-8")


def _check_target(out_dir: Path) -> None:
    """Refuse to replace a folder that is not empty and not a previous croptune export."""
    if out_dir.exists() and (
        not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file())
    ):
        raise CroptuneError(
            f"{out_dir} exists and is not an earlier croptune export; "
            "choose a new folder for --out (or remove it)"
        )


def _swap_in(work: Path, out_dir: Path) -> None:
    """Put the finished export in place of out_dir (an empty folder or an earlier export)."""
    if not out_dir.exists():
        os.replace(work, out_dir)
        return
    if not any(out_dir.iterdir()):
        out_dir.rmdir()
        os.replace(work, out_dir)
        return
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    os.replace(out_dir, old)
    os.replace(work, out_dir)
    shutil.rmtree(old, ignore_errors=True)
