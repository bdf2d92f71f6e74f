"""The region-proposal detector: the teachers' boxes distilled into a small ultralytics YOLO.

At inference there is no teacher to box the text on a product, so a detector trained on
the run's boxes proposes the regions and `predict` cuts crops from them with the same crop
code as training. Boxes go in and come out in croptune's one convention: pixels of the
image AFTER EXIF orientation (toolkit.images).

config.py DetectorConfig and a detector folder's files; offline.py ultralytics set up to
run offline (no downloads, no installs, PIL.Image.open restored); data.py the YOLO export
of the run's boxes under its recorded split; train.py training and the files it writes;
metrics.py the held-out figures of the kept weights; load.py loading and predicting boxes.
"""

from finetune.detector.config import (
    CONFIG_FILE,
    DETECTOR_SOURCE,
    METRICS_FILE,
    ONNX_FILE,
    WEIGHTS_FILE,
    DetectorConfig,
)
from finetune.detector.load import Detector, load_detector, predict_boxes
from finetune.detector.offline import prepare_ultralytics
from finetune.detector.train import DetectorSummary, train_detector

__all__ = [
    "CONFIG_FILE",
    "DETECTOR_SOURCE",
    "METRICS_FILE",
    "ONNX_FILE",
    "WEIGHTS_FILE",
    "Detector",
    "DetectorConfig",
    "DetectorSummary",
    "load_detector",
    "predict_boxes",
    "prepare_ultralytics",
    "train_detector",
]
