"""The held-out figures of a detector: precision/recall at its serving settings and mAP,
on photos loaded as predict loads them (supervision's metrics), and the coverage of the
teacher boxes by the crops croptune cuts from its proposals."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from PIL import Image

from finetune.detector.config import MAP_CONF
from finetune.detector.load import Detector, predict_boxes
from toolkit.boxes import Box
from toolkit.catalog import load_ingested_image
from toolkit.crops import CropConfig
from toolkit.crops.coverage import covered_boxes
from toolkit.crops.plan import plan_crops
from toolkit.export import ExportedPhoto, box_class
from toolkit.images import ImageLoadError

logger = logging.getLogger(__name__)


def evaluate_detector(
    detector: Detector, photos: Sequence[ExportedPhoto], crop: CropConfig | None = None
) -> dict[str, float | int | None]:
    """Precision/recall (at the detector's conf, IoU 0.5), mAP50/mAP50-95 and coverage.

    The photos (the held-out ones) are loaded exactly as `predict` loads them and their
    targets are the exported boxes (all items' boxes of a photo). Precision and recall come
    from `predict_boxes` at the detector's own conf and iou, the call `predict` makes; mAP
    from the same weights' proposals down to conf 0.001 (mAP ranks every proposal). All
    with supervision's metrics. Coverage: the share of target boxes inside a crop that
    `crop` (the run's crop config; default CropConfig()) plans from the served proposals
    (toolkit.crops.coverage), what the student's crops will show; crop_area: the mean
    area of those crops over their photo's (1 would be crops as large as the photo, which
    cover everything and show nothing closer). Precision is 0 when nothing is proposed;
    recall, mAP and coverage are None when the photos have no boxes. Also counts photos,
    boxes and proposals.
    """
    from supervision.metrics import AveragingMethod, MeanAveragePrecision, Precision, Recall

    crop = crop or CropConfig()
    class_ids = {name: i for i, name in enumerate(detector.classes)}
    ranked, served, targets = [], [], []
    inside: list[bool] = []
    areas: list[float] = []
    for photo in photos:
        image = _load_photo(photo)
        if image is None:
            continue
        proposals = predict_boxes(detector, [image])[0]  # image 0, as the targets below
        targets.append(_detections(photo.boxes, class_ids))
        served.append(_detections(proposals, class_ids))
        ranked.append(_detections(predict_boxes(detector, [image], conf=MAP_CONF)[0], class_ids))
        plans = plan_crops(proposals, {0: image.size}, crop)
        inside += covered_boxes([replace(b, image=0) for b in photo.boxes], plans)
        areas += [_area(p.region) / (image.width * image.height) for p in plans]
    n_targets = sum(len(t) for t in targets)
    metrics: dict[str, float | int | None] = {
        "precision": None,
        "recall": None,
        "map50": None,
        "map50_95": None,
        "coverage": sum(inside) / len(inside) if inside else None,
        "crop_area": round(sum(areas) / len(areas), 4) if areas else None,
        "images": len(targets),
        "boxes": n_targets,
        "proposals": sum(len(p) for p in served),
    }
    if not targets:
        return metrics
    micro = AveragingMethod.MICRO
    precision = Precision(averaging_method=micro).update(served, targets).compute()
    metrics["precision"] = float(precision.precision_at_50)
    if n_targets == 0:
        return metrics
    recall = Recall(averaging_method=micro).update(served, targets).compute()
    metrics["recall"] = float(recall.recall_at_50)
    result = MeanAveragePrecision().update(ranked, targets).compute()
    # supervision's -1 means "nothing proposed": with boxes to find, that is an AP of 0.
    metrics["map50"] = max(0.0, float(result.map50))
    metrics["map50_95"] = max(0.0, float(result.map50_95))
    return metrics


def _area(region: tuple[int, int, int, int]) -> int:
    x1, y1, x2, y2 = region
    return (x2 - x1) * (y2 - y1)


def _load_photo(photo: ExportedPhoto) -> Image.Image | None:
    """The photo as `predict` loads it, from the first item whose file still holds it."""
    for (item_id, index), row in zip(photo.owners, photo.rows, strict=True):
        try:
            return load_ingested_image(row)
        except ImageLoadError as exc:
            logger.warning("held-out item %s image %s: %s", item_id, index, exc)
    return None


def _detections(boxes: list[Box], class_ids: dict[str, int]) -> Any:
    """supervision Detections of croptune Boxes (unknown labels map to class 0)."""
    import numpy as np
    import supervision as sv

    if not boxes:
        return sv.Detections.empty()
    return sv.Detections(
        xyxy=np.array([b.xyxy for b in boxes], dtype=np.float64),
        class_id=np.array([class_ids.get(box_class(b), 0) for b in boxes], dtype=np.int64),
        confidence=np.array([1.0 if b.score is None else b.score for b in boxes], dtype=np.float64),
    )
