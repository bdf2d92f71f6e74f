"""How the detector is trained (DetectorConfig) and the files of a detector folder."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from toolkit.config import ConfigPath
from toolkit.dataset import SPLIT_KEYS, DatasetConfig

REGION_CLASS = "region"  # the one class of a class-agnostic detector: "text or numbers here"
DETECTOR_SOURCE = "detector"  # the source name of boxes the detector proposes
WEIGHTS_FILE = "detector.pt"
ONNX_FILE = "detector.onnx"
CONFIG_FILE = "detector.yaml"
METRICS_FILE = "metrics.json"
MATCH_IOU = 0.5  # a proposal counts as found when it overlaps a teacher box this much
MAP_CONF = 0.001  # mAP ranks every proposal, so it is measured below the serving threshold
HELD_OUT = ("validation", "test")  # the splits that measure the detector (never trained on)
FIT_FILE = "fit.yaml"  # the data file ultralytics trains with (its val: the held-out photos)
_SPLIT_DEFAULTS = {k: DatasetConfig.model_fields[k].default for k in SPLIT_KEYS}


class DetectorConfig(BaseModel):
    """How the region-proposal detector is trained from a run's boxes."""

    model_config = ConfigDict(extra="forbid")

    model: Annotated[str, ConfigPath(suffixes=(".pt",))] = Field(
        "yolo11n.yaml",
        description="ultralytics model: an architecture YAML (yolo11n.yaml, yolo11s.yaml, ...: "
        "random init, nothing downloaded) or the path of pretrained .pt weights you downloaded "
        "yourself (fine-tuning from COCO weights needs far fewer boxes and epochs). croptune "
        "never downloads weights.",
    )
    epochs: int = Field(50, ge=1, description="Passes over the training images.")
    imgsz: int = Field(
        640,
        ge=32,
        description="Side the photos are letterboxed to (multiple of 32). Larger finds smaller "
        "print but costs time quadratically; the same size is used at inference.",
    )
    batch: int = Field(16, ge=1, description="Images per training step.")
    nominal_batch: int | None = Field(
        None,
        ge=1,
        description="Images per optimizer step (ultralytics' nbs: the gradients of "
        "ceil(nominal_batch / batch) steps are summed before each update). null: batch, one "
        "update per step. ultralytics' own 64 suits datasets of thousands of photos; on a "
        "run's few hundred it leaves a handful of updates per epoch (108 photos, 10 epochs at "
        "batch 16: 20 updates, and a detector that proposed nothing at conf 0.05; at "
        "nominal_batch 8 it covered 96% of the held-out boxes: docs/detector.md, Coverage).",
    )
    validation_ratio: float = Field(
        _SPLIT_DEFAULTS["validation_ratio"],
        ge=0,
        lt=1,
        description="Share of ITEMS in validation, as in `dataset build`. The run's split is "
        "recorded in its store by the first stage that splits it and obeyed by every later "
        "one (a differing value is warned about, not used; `dataset build --resplit` splits "
        "again), so no item the student is validated or tested on trains the detector. "
        "Validation and test items are held out of training and measure the detector.",
    )
    test_ratio: float = Field(
        _SPLIT_DEFAULTS["test_ratio"],
        ge=0,
        lt=1,
        description="Share of ITEMS in test, as in `dataset build` (used when the run has no "
        "recorded split yet). Both ratios 0 train on everything and measure nothing.",
    )
    seed: int = Field(
        _SPLIT_DEFAULTS["seed"],
        description="Seed of training, and of the item split when the run has no recorded "
        "split yet (as `dataset build`'s seed).",
    )
    device: str = Field(
        "auto",
        description="'auto' (first GPU if any, else CPU), 'cpu', or GPU ids as ultralytics takes "
        "them ('0', '0,1').",
    )
    workers: int = Field(2, ge=0, description="Data-loading worker processes (0: in-process).")
    classes: Literal["region", "labels"] = Field(
        "region",
        description="region: one class for every box (the detector proposes where text and "
        "numbers are; crops do not need to know what); labels: keep the teachers' box labels "
        "as classes (barcode, warning, ...; boxes without a label become 'text').",
    )
    boxes: str = Field(
        "fused",
        description="Which boxes to learn: 'fused' = the boxes crops are cut from (fused across "
        "box teachers when the run has several, else the one box teacher's), or a box "
        "teacher's name to learn that teacher's boxes alone.",
    )
    conf: float = Field(
        0.1,
        gt=0,
        lt=1,
        description="Confidence a proposal needs at inference; stored in detector.yaml, "
        "where `predict` reads it, and the threshold of the held-out precision/recall and "
        "coverage. Low, because the detector only proposes where to crop: a missed box is "
        "print the student never sees close up, an extra one only widens a crop (example "
        "catalog, held-out coverage 0.96 at 0.1 vs 0.91 at 0.25, crops 13% vs 12% of the "
        "photo: docs/detector.md, Coverage).",
    )
    iou: float = Field(
        0.7,
        gt=0,
        le=1,
        description="IoU above which overlapping proposals are suppressed (NMS) at inference.",
    )
    export_onnx: bool = Field(
        False,
        description="Also write detector.onnx (needs the `onnx` package: pip install onnx).",
    )
