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
from toolkit.errors import CroptuneError
from toolkit.files import atomic_write
from toolkit.images import ImageLoadError, encode_jpeg, load_image
from toolkit.store import RunStore

EMPTY_LABEL_CLASS = "text"  # the class of a box without a label
MANIFEST = "croptune_export.json"  # marks a folder as a croptune export, lists its images
JPEG_QUALITY = 95

BoxSelector = Callable[[list[Box]], list[Box]]


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


@dataclass
class DetectionExport:
    """What a COCO / YOLO export wrote, and the images it had to leave out (with why)."""

    images: int = 0
    boxes: int = 0
    classes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def safe_stem(item_id: str) -> str:
    """A file-name-safe form of an item id, unique per id (a hash is added when it changed)."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "_", item_id)[:80] or "item"
    if cleaned != item_id:
        cleaned += "-" + hashlib.sha256(item_id.encode("utf-8")).hexdigest()[:8]
    return cleaned


def box_class(box: Box) -> str:
    """The detection class of a box: its label, or "text" when it has none."""
    return box.label.strip() or EMPTY_LABEL_CLASS


@dataclass
class _Image:
    path: Path
    item_id: str
    index: int
    boxes: list[Box]


def export_labels_coco(
    store: RunStore, out_dir: Path, select: BoxSelector | None = None
) -> DetectionExport:
    """Write the run's boxes as a COCO detection dataset: out_dir/images/, out_dir/annotations.json.

    select maps one image's stored boxes (all teachers) to the boxes to export, e.g. fused ones.
    """
    return _export_detection(store, Path(out_dir), "coco", select)


def export_labels_yolo(
    store: RunStore, out_dir: Path, select: BoxSelector | None = None
) -> DetectionExport:
    """Write the run's boxes as a YOLO detection dataset: images/, labels/, data.yaml.

    select maps one image's stored boxes (all teachers) to the boxes to export, e.g. fused ones.
    """
    return _export_detection(store, Path(out_dir), "yolo", select)


def _export_detection(
    store: RunStore, out_dir: Path, fmt: str, select: BoxSelector | None
) -> DetectionExport:
    _check_target(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)  # left by a killed export of this process id
    work.mkdir()
    try:
        summary = _write_detection(store, work, fmt, select)
        _swap_in(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return summary


def _write_detection(
    store: RunStore, work: Path, fmt: str, select: BoxSelector | None
) -> DetectionExport:
    import numpy as np
    import supervision as sv

    summary = DetectionExport()
    images_dir = work / "images"
    images_dir.mkdir()
    written: list[_Image] = []
    for item in store.items():
        boxes_by_image: dict[int, list[Box]] = {}
        for _, box in store.boxes(item.item_id):
            boxes_by_image.setdefault(box.image, []).append(box)
        for row in store.images(item.item_id):
            if not row.usable:
                continue
            where = f"item {item.item_id} image {row.index}"
            try:
                loaded = load_image(row.uri)
            except ImageLoadError as exc:
                summary.skipped.append(f"{where}: {exc}")
                continue
            if loaded.sha256 != row.sha256:
                summary.skipped.append(f"{where}: changed since ingest, its boxes may not fit")
                continue
            boxes = boxes_by_image.get(row.index, [])
            if select is not None:
                boxes = select(boxes)
            path = images_dir / f"{safe_stem(item.item_id)}_{row.index}.jpg"
            path.write_bytes(encode_jpeg(loaded.image, quality=JPEG_QUALITY))
            written.append(
                _Image(path, item.item_id, row.index, [b for b in boxes if b.is_valid()])
            )

    classes = sorted({box_class(b) for image in written for b in image.boxes})
    class_ids = {name: i for i, name in enumerate(classes)}
    annotations = {}
    for image in written:
        if image.boxes:
            detections = sv.Detections(
                xyxy=np.array([b.xyxy for b in image.boxes], dtype=np.float64),
                class_id=np.array([class_ids[box_class(b)] for b in image.boxes], dtype=np.int64),
            )
        else:
            detections = sv.Detections.empty()  # a negative: an image with nothing to find
        annotations[str(image.path)] = detections
    dataset = sv.DetectionDataset(
        classes=classes, images=[str(i.path) for i in written], annotations=annotations
    )
    # The images are written already, in the folder supervision copies them to: it leaves them.
    if fmt == "coco":
        dataset.as_coco(
            images_directory_path=str(images_dir),
            annotations_path=str(work / "annotations.json"),
        )
        _tidy_coco(work / "annotations.json")
    else:
        dataset.as_yolo(
            images_directory_path=str(images_dir),
            annotations_directory_path=str(work / "labels"),
            data_yaml_path=str(work / "data.yaml"),
        )
        _complete_data_yaml(work / "data.yaml")

    summary.images = len(written)
    summary.boxes = sum(len(i.boxes) for i in written)
    summary.classes = classes
    manifest = {
        "format": fmt,
        "run": str(store.run_dir),
        "classes": classes,
        "images": [
            {
                "file": f"images/{i.path.name}",
                "item_id": i.item_id,
                "image": i.index,
                "boxes": len(i.boxes),
            }
            for i in written
        ],
        "skipped": summary.skipped,
    }
    (work / MANIFEST).write_text(
        json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    return summary


def _tidy_coco(path: Path) -> None:
    """Drop the CC BY 4.0 licence supervision stamps on every image: the catalog's owner decides."""
    coco = json.loads(path.read_text(encoding="utf-8"))
    coco["info"] = {"description": "croptune label export (boxes in oriented-image pixels)"}
    coco["licenses"] = []
    for image in coco["images"]:
        image.pop("license", None)
    path.write_text(json.dumps(coco, ensure_ascii=False), encoding="utf-8")


def _complete_data_yaml(path: Path) -> None:
    """Add the split keys ultralytics needs (supervision writes only nc and names)."""
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    # Relative to the yaml's folder; every image is in one split, so train = val.
    data.update(train="images", val="images")
    path.write_text(dump_yaml(data), encoding="utf-8")


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
