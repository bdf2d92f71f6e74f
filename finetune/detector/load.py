"""A trained detector loaded with its settings, and the boxes it proposes (croptune Boxes in
oriented pixels)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from PIL import Image

from finetune.detector.config import CONFIG_FILE, DETECTOR_SOURCE, REGION_CLASS, WEIGHTS_FILE
from finetune.detector.offline import prepare_ultralytics
from toolkit.boxes import Box
from toolkit.errors import CroptuneError

PREDICT_CHUNK = 16  # images per forward pass when predicting


@dataclass
class Detector:
    """A trained detector with the settings it was trained and is served with."""

    model: Any  # ultralytics.YOLO
    imgsz: int = 640
    conf: float = 0.25
    iou: float = 0.7
    classes: list[str] = field(default_factory=lambda: [REGION_CLASS])
    device: str | None = None


def boxes_from_arrays(
    xyxy: Any,
    scores: Any,
    class_ids: Any,
    names: Sequence[str] | dict[int, str],
    image: int,
    size: tuple[int, int],
) -> list[Box]:
    """Detector outputs (pixels of the image the model was given) as croptune Boxes.

    The model is always given the oriented image, so its pixels are croptune's pixels; boxes
    are clipped to size (width, height) and empty ones dropped.
    """
    width, height = size
    boxes = []
    for coords, score, class_id in zip(xyxy, scores, class_ids, strict=True):
        x1, y1, x2, y2 = (float(v) for v in coords)
        label = str(names[int(class_id)])
        box = Box(image, x1, y1, x2, y2, label, DETECTOR_SOURCE, float(score))
        box = box.clip(width, height)
        if box.is_valid():
            boxes.append(box)
    return boxes


def boxes_from_result(result: Any, image: int) -> list[Box]:
    """The Boxes of one ultralytics Results (detection) for image index `image`."""
    height, width = result.orig_shape
    found = result.boxes
    if found is None or len(found) == 0:
        return []
    return boxes_from_arrays(
        found.xyxy.cpu().numpy(),
        found.conf.cpu().numpy(),
        found.cls.cpu().numpy(),
        result.names,
        image,
        (width, height),
    )


def model_input(image: Image.Image) -> Any:
    """The array the detector is given: the oriented RGB pixels as ultralytics' BGR HWC.

    An array (not a PIL image) so that no EXIF handling downstream can rotate it again.
    """
    import numpy as np

    rgb = np.asarray(image.convert("RGB"))
    return np.ascontiguousarray(rgb[:, :, ::-1])


# ------------------------------------------------------------------------------- predict


def load_detector(path: Path | str, device: str | None = None) -> Detector:
    """A detector from a `detector train` folder (or its detector.pt), with its settings."""
    path = Path(path)
    weights = path / WEIGHTS_FILE if path.is_dir() else path
    if not weights.is_file():
        raise CroptuneError(
            f"{weights} does not exist; train one with `croptune detector train --run RUN --out DIR`"
        )
    settings: dict[str, Any] = {}
    config_file = weights.parent / CONFIG_FILE
    if config_file.is_file():
        settings = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
    prepare_ultralytics()
    from ultralytics import YOLO

    model = YOLO(str(weights), task="detect")
    trained = settings.get("config", {})
    return Detector(
        model=model,
        imgsz=int(settings.get("imgsz", trained.get("imgsz", 640))),
        conf=float(trained.get("conf", 0.25)),
        iou=float(trained.get("iou", 0.7)),
        classes=list(settings.get("classes") or list(model.names.values())),
        device=device,  # None: ultralytics picks (the serving machine may differ from training)
    )


def predict_boxes(
    detector: Detector,
    images: Sequence[Image.Image],
    conf: float | None = None,
    iou: float | None = None,
) -> list[list[Box]]:
    """Proposed boxes per image, in pixels of each image as given (oriented, as loaded).

    Box.image is the image's position in `images`; conf and iou default to the detector's.
    """
    results: list[list[Box]] = []
    for start in range(0, len(images), PREDICT_CHUNK):
        chunk = images[start : start + PREDICT_CHUNK]
        outputs = detector.model.predict(
            [model_input(image) for image in chunk],
            imgsz=detector.imgsz,
            conf=detector.conf if conf is None else conf,
            iou=detector.iou if iou is None else iou,
            device=detector.device,
            verbose=False,
        )
        results += [boxes_from_result(out, start + i) for i, out in enumerate(outputs)]
    return results
