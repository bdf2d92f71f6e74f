"""The held-out figures of a detector: precision/recall at its serving settings and mAP,
on photos loaded as predict loads them (supervision's metrics)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from PIL import Image

from finetune.detector.config import MAP_CONF
from finetune.detector.load import Detector, predict_boxes
from toolkit.boxes import Box
from toolkit.catalog import load_ingested_image
from toolkit.export import ExportedPhoto, box_class
from toolkit.images import ImageLoadError

logger = logging.getLogger(__name__)


def evaluate_detector(
    detector: Detector, photos: Sequence[ExportedPhoto]
) -> dict[str, float | int | None]:
    """Precision/recall (at the detector's conf, IoU 0.5) and mAP50/mAP50-95 on photos.

    The photos (the held-out ones) are loaded exactly as `predict` loads them and their
    targets are the exported boxes (all items' boxes of a photo). Precision and recall come
    from `predict_boxes` at the detector's own conf and iou, the call `predict` makes; mAP
    from the same weights' proposals down to conf 0.001 (mAP ranks every proposal). All
    with supervision's metrics. Precision is 0 when nothing is proposed; recall and mAP
    are None when the photos have no boxes. Also counts photos, boxes and proposals.
    """
    from supervision.metrics import AveragingMethod, MeanAveragePrecision, Precision, Recall

    class_ids = {name: i for i, name in enumerate(detector.classes)}
    ranked, served, targets = [], [], []
    for photo in photos:
        image = _load_photo(photo)
        if image is None:
            continue
        targets.append(_detections(photo.boxes, class_ids))
        served.append(_detections(predict_boxes(detector, [image])[0], class_ids))
        ranked.append(_detections(predict_boxes(detector, [image], conf=MAP_CONF)[0], class_ids))
    n_targets = sum(len(t) for t in targets)
    metrics: dict[str, float | int | None] = {
        "precision": None,
        "recall": None,
        "map50": None,
        "map50_95": None,
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
