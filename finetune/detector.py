"""The region-proposal detector: the teachers' boxes distilled into a small ultralytics YOLO.

At inference there is no teacher to box the text on a product, so a detector trained on
the run's boxes proposes the regions and `predict` cuts crops from them with the same crop
code as training. Boxes go in and come out in croptune's one convention: pixels of the
image AFTER EXIF orientation (toolkit.images).
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from toolkit.boxes import Box
from toolkit.catalog import load_ingested_image
from toolkit.config import ConfigPath, config_data, dump_yaml
from toolkit.crops import FUSED_SOURCE
from toolkit.dataset import SPLIT_KEYS, DatasetConfig
from toolkit.errors import CroptuneError
from toolkit.export import (
    YOLO_SPLITS,
    DetectionExport,
    ExportedPhoto,
    box_class,
    export_labels_yolo,
)
from toolkit.files import atomic_write
from toolkit.images import ImageLoadError
from toolkit.store import RunStore

logger = logging.getLogger(__name__)

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
PREDICT_CHUNK = 16  # images per forward pass when predicting


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
        0.25,
        gt=0,
        lt=1,
        description="Confidence a proposal needs at inference; stored in detector.yaml, "
        "where `predict` reads it, and the threshold of the held-out precision/recall.",
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


@dataclass
class Detector:
    """A trained detector with the settings it was trained and is served with."""

    model: Any  # ultralytics.YOLO
    imgsz: int = 640
    conf: float = 0.25
    iou: float = 0.7
    classes: list[str] = field(default_factory=lambda: [REGION_CLASS])
    device: str | None = None


@dataclass
class DetectorSummary:
    """What `detector train` did, with the held-out metrics of the weights it kept."""

    out_dir: Path
    box_source: str = ""
    classes: list[str] = field(default_factory=list)
    train_items: list[str] = field(default_factory=list)
    held_out_items: list[str] = field(default_factory=list)  # validation + test items
    splits: dict[str, dict[str, int]] = field(default_factory=dict)  # items/images/boxes
    images: dict[str, int] = field(default_factory=dict)  # train / held_out
    boxes: dict[str, int] = field(default_factory=dict)  # train / held_out
    shared_photos: int = 0  # photos several items show, exported once with all their boxes
    merged_boxes: int = 0  # identical boxes of such photos kept once
    # The settings that made the run's split the detector followed (the recorded ones when the
    # run was split before, whatever the config says) and its status (toolkit.dataset.ItemSplit).
    split: dict[str, float | int] = field(default_factory=dict)
    split_status: str | None = None
    epochs: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float | int | None] = field(default_factory=dict)
    measured: dict[str, Any] = field(default_factory=dict)  # weights file, conf, photos
    weights: Path | None = None
    onnx: Path | None = None
    config_file: Path | None = None
    metrics_file: Path | None = None
    skipped: list[str] = field(default_factory=list)


# --------------------------------------------------------------------- ultralytics, offline


def prepare_ultralytics() -> Path:
    """Set ultralytics up to run offline and outside the home folder; returns its config dir.

    Call before importing ultralytics: its config folder is fixed at import time.
    """
    if "ultralytics" not in sys.modules:
        scratch: Path | None = None
        for name in ("YOLO_CONFIG_DIR", "MPLCONFIGDIR"):
            if not os.environ.get(name):
                if scratch is None:
                    scratch = Path(tempfile.mkdtemp(prefix="croptune-ultralytics-"))
                    atexit.register(shutil.rmtree, scratch, True)
                os.environ[name] = str(scratch / name.lower())
        # Offline: no hub/analytics calls, no pip installs of missing optional packages.
        os.environ["YOLO_OFFLINE"] = "1"
        os.environ["YOLO_AUTOINSTALL"] = "0"
    from ultralytics.utils import SETTINGS, USER_CONFIG_DIR

    if SETTINGS.get("sync", True):
        SETTINGS.update(sync=False)
    _place_fonts(Path(USER_CONFIG_DIR))
    _restore_pil_open()
    return Path(USER_CONFIG_DIR)


def _restore_pil_open() -> None:
    """Undo ultralytics' process-wide patch of PIL.Image.open.

    On a file PIL cannot identify, the patched open pip-installs pi-heif (or raises
    ModuleNotFoundError offline) instead of raising UnidentifiedImageError, which would turn
    croptune's "corrupt image" message for one item into a crash or an install.
    """
    from PIL import Image

    try:
        from ultralytics.utils import patches
    except ImportError:  # an ultralytics without the patch
        return
    original = getattr(patches, "_image_open", None)
    if original is not None and Image.open is getattr(patches, "image_open", None):
        Image.open = original


def _place_fonts(config_dir: Path) -> None:
    """Put the fonts ultralytics' check_font would otherwise download (matplotlib's serve)."""
    import matplotlib

    source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    config_dir.mkdir(parents=True, exist_ok=True)
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        target = config_dir / name
        if not target.exists() and source.is_file():
            shutil.copyfile(source, target)


def _require_onnx() -> None:
    """Fail before training when ONNX export is asked for and the onnx package is missing."""
    if importlib.util.find_spec("onnx") is None:
        raise CroptuneError(
            "export_onnx=true needs the `onnx` package, which is not installed; install it "
            "with `pip install onnx` (croptune never installs packages by itself), or train "
            "without export_onnx"
        )


def _model_source(model: str) -> str:
    """The model argument for ultralytics, checked so that nothing gets downloaded."""
    path = Path(model).expanduser()
    if path.suffix in (".yaml", ".yml"):
        return str(path) if path.is_file() else model  # else a built-in architecture name
    if path.suffix == ".pt":
        if not path.is_file():
            raise CroptuneError(
                f"detector model {model} is not a file; croptune does not download weights: "
                "download pretrained .pt weights yourself and give their path, or use an "
                "architecture YAML such as yolo11n.yaml (random init)"
            )
        return str(path)
    raise CroptuneError(
        f"detector model {model!r} is neither an architecture .yaml (e.g. yolo11n.yaml) nor a "
        ".pt weights file"
    )


def _device(device: str) -> str | None:
    return None if device in ("", "auto") else device


# --------------------------------------------------------------------------- pure pieces


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
        box = Box(
            image=image,
            x1=x1,
            y1=y1,
            x2=x2,
            y2=y2,
            label=str(names[int(class_id)]),
            source=DETECTOR_SOURCE,
            score=float(score),
        ).clip(width, height)
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


# --------------------------------------------------------------------------------- train


BoxSelector = Callable[[list[Box]], list[Box]]


def box_selector(store: RunStore, config: DetectorConfig) -> tuple[BoxSelector, str]:
    """The function picking one image's training boxes from all its stored boxes, and a
    description of the source used."""
    sources = {box.source for item in store.items() for _, box in store.boxes(item.item_id)}
    if not sources:
        raise CroptuneError(
            f"run {store.run_dir} has no boxes to train a detector on; label it with a box "
            "teacher (role: boxes or both) first"
        )
    teachers = sorted(sources - {FUSED_SOURCE})
    if config.boxes == FUSED_SOURCE:
        # The same boxes crops are cut from (toolkit.crops.crop_boxes): fused when fused.
        keep = {FUSED_SOURCE} if FUSED_SOURCE in sources else set(teachers)
        described = FUSED_SOURCE if FUSED_SOURCE in sources else ", ".join(teachers)
    elif config.boxes in teachers:
        keep, described = {config.boxes}, config.boxes
    else:
        raise CroptuneError(
            f"run {store.run_dir} has no boxes from {config.boxes!r}; its box sources are "
            f"{sorted(sources)} (use boxes=fused or one of these)"
        )

    def select(boxes: list[Box]) -> list[Box]:
        chosen = [b for b in boxes if b.source in keep and b.is_valid()]
        if config.classes == REGION_CLASS:
            return [replace(b, label=REGION_CLASS) for b in chosen]
        return chosen

    return select, described


def detector_dataset(
    store: RunStore, out_dir: Path, config: DetectorConfig, summary: DetectorSummary
) -> DetectionExport:
    """Export the boxes to learn as a YOLO dataset split by the run's one item split.

    The split is the run store's recorded one (`toolkit.dataset.item_splits`), so no item the
    student is validated or tested on is trained on; config's validation_ratio, test_ratio
    and seed make it only when the run has none recorded yet. Fills summary's box source,
    classes, split and items.
    """
    select, summary.box_source = box_selector(store, config)
    export = export_labels_yolo(
        store, out_dir, select=select, **{key: getattr(config, key) for key in SPLIT_KEYS}
    )
    summary.skipped = export.skipped
    summary.classes = export.classes
    summary.shared_photos, summary.merged_boxes = export.shared_photos, export.merged_boxes
    summary.split, summary.split_status = export.split_settings, export.split_status
    summary.splits = export.split_counts()
    exported = {item_id for photo in export.photos for item_id, _ in photo.owners}
    summary.train_items = sorted(i for i in exported if export.item_splits[i] == "train")
    summary.held_out_items = sorted(i for i in exported if export.item_splits[i] in HELD_OUT)
    return export


def train_detector(
    run_dir: Path, out_dir: Path, config: DetectorConfig, verbose: bool = True
) -> DetectorSummary:
    """Train the region-proposal detector on a run's boxes; write weights, yaml and metrics.

    Items follow the run's one split, the one `dataset build` uses (recorded in the run
    store; see detector_dataset): the detector trains on train items only; validation and
    test items measure it.
    """
    out_dir = Path(out_dir)
    model_source = _model_source(config.model)
    if config.export_onnx:
        _require_onnx()
    summary = DetectorSummary(out_dir=out_dir, epochs=config.epochs)
    started = time.perf_counter()
    with RunStore(run_dir, create=False) as store:
        export = detector_dataset(store, out_dir / "dataset", config, summary)
    train = [p for p in export.photos if p.split == "train"]
    held = [p for p in export.photos if p.split in HELD_OUT]
    summary.images = {"train": len(train), "held_out": len(held)}
    summary.boxes = {
        "train": sum(len(p.boxes) for p in train),
        "held_out": sum(len(p.boxes) for p in held),
    }
    if summary.boxes["train"] == 0:
        raise CroptuneError(
            f"the {len(summary.train_items)} training items of run {run_dir} have no "
            f"{summary.box_source} boxes on usable photos; nothing to learn"
        )
    data_yaml = _write_fit_yaml(out_dir / "dataset", export.classes)
    summary.seconds["dataset"] = time.perf_counter() - started

    for stale in (WEIGHTS_FILE, CONFIG_FILE, METRICS_FILE, ONNX_FILE):
        # An earlier detector must not be left beside (or mistaken for) the new one.
        (out_dir / stale).unlink(missing_ok=True)
    clock = time.perf_counter()
    summary.weights = _fit(model_source, data_yaml, out_dir, config, verbose)
    summary.seconds["train"] = time.perf_counter() - clock

    # Measured as served: the kept file and detector.yaml, loaded by predict's own loader.
    _write_outputs(summary, config, run_dir)  # detector.yaml: what load_detector reads
    detector = load_detector(out_dir, device=_device(config.device))
    clock = time.perf_counter()
    summary.metrics = evaluate_detector(detector, held)
    summary.measured = {
        "weights": WEIGHTS_FILE,
        "conf": detector.conf,
        "iou_match": MATCH_IOU,
        "map_conf": MAP_CONF,
        "splits": [s for s in HELD_OUT if s in summary.splits],
        "photos": summary.metrics["images"],
    }
    summary.seconds["evaluate"] = time.perf_counter() - clock

    if config.export_onnx:
        clock = time.perf_counter()
        summary.onnx = _export_onnx(summary.weights, config)
        summary.seconds["onnx"] = time.perf_counter() - clock
    summary.seconds["total"] = time.perf_counter() - started
    _write_outputs(summary, config, run_dir)
    return summary


def _write_fit_yaml(dataset_dir: Path, classes: list[str]) -> Path:
    """The data file ultralytics trains with: train = the train split, val = the held-out.

    ultralytics requires a val key and validates on it once at the end (numbers croptune
    does not report); with nothing held out that is the train split.
    """
    present = {path.name for path in (dataset_dir / "images").iterdir() if path.is_dir()}
    held = [f"images/{YOLO_SPLITS[s]}" for s in HELD_OUT if YOLO_SPLITS[s] in present]
    data = {
        "path": str(dataset_dir.resolve()),
        "train": f"images/{YOLO_SPLITS['train']}",
        "val": held or f"images/{YOLO_SPLITS['train']}",
        "nc": len(classes),
        "names": list(classes),
    }
    fit_yaml = dataset_dir / FIT_FILE
    fit_yaml.write_text(dump_yaml(data), "utf-8")
    return fit_yaml


def _fit(
    model_source: str, data_yaml: Path, out_dir: Path, config: DetectorConfig, verbose: bool
) -> Path:
    """Train with ultralytics; returns out_dir/detector.pt (the last epoch's weights)."""
    prepare_ultralytics()
    from ultralytics import YOLO

    try:
        model = YOLO(model_source, task="detect")
    except (FileNotFoundError, OSError, ValueError) as exc:
        raise CroptuneError(f"cannot build detector model {config.model!r}: {exc}") from exc
    from toolkit.progress import ultralytics_callbacks  # --verbose: ultralytics' own output

    for event, callback in ultralytics_callbacks("detector train", not verbose).items():
        model.add_callback(event, callback)
    # Absolute: ultralytics puts a relative project under its own runs_dir setting.
    train_dir = out_dir.resolve() / "train"
    model.train(
        data=str(data_yaml),
        epochs=config.epochs,
        imgsz=config.imgsz,
        batch=config.batch,
        device=_device(config.device),
        workers=config.workers,
        seed=config.seed,
        deterministic=True,
        project=str(train_dir.parent),
        name=train_dir.name,
        exist_ok=True,
        amp=False,  # ultralytics' AMP check downloads yolo weights (CUDA only)
        plots=False,  # plotting would fetch fonts and costs time; the metrics are in metrics.json
        val=False,  # croptune measures the held-out items itself (ultralytics still validates once)
        verbose=verbose,
    )
    # The last epoch, not ultralytics' "best": picking by held-out score would leak it.
    train_dir = Path(getattr(model.trainer, "save_dir", train_dir))
    last = train_dir / "weights" / "last.pt"
    if not last.is_file():
        raise CroptuneError(f"ultralytics finished without writing {last}")
    weights = out_dir / WEIGHTS_FILE
    shutil.copyfile(last, weights)
    shutil.rmtree(train_dir / "weights", ignore_errors=True)  # copies of detector.pt
    return weights


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


def _export_onnx(weights: Path, config: DetectorConfig) -> Path:
    """detector.onnx next to detector.pt, at the training image size."""
    prepare_ultralytics()
    from ultralytics import YOLO

    # simplify needs onnxslim, which ultralytics would try to pip-install
    written = YOLO(str(weights), task="detect").export(
        format="onnx", imgsz=config.imgsz, simplify=False, device="cpu"
    )
    path = Path(written)
    target = weights.with_name(ONNX_FILE)
    if path != target:
        shutil.move(path, target)
    return target


def _write_outputs(summary: DetectorSummary, config: DetectorConfig, run_dir: Path) -> None:
    """detector.yaml (resolved config, classes, imgsz, split, metrics) and metrics.json."""
    out_dir = summary.out_dir
    measured = summary.measured
    metrics = {
        "metrics": summary.metrics,
        "weights": measured.get("weights"),
        "conf": measured.get("conf"),
        "measured_by": (
            f"supervision metrics of {measured['weights']} (loaded as predict loads it) on "
            f"the {measured['photos']} photos of the {'+'.join(measured['splits'])} items: "
            f"precision/recall of predict's proposals (conf >= {measured['conf']}) at IoU "
            f"{MATCH_IOU}; mAP over proposals with conf >= {MAP_CONF}"
            if measured.get("splits")
            else "nothing: no item is held out (validation_ratio and test_ratio give none)"
        ),
        "split": dict(summary.split),
        "items": {"train": len(summary.train_items), "held_out": len(summary.held_out_items)},
        "splits": summary.splits,
        "images": summary.images,
        "boxes": summary.boxes,
        "shared_photos": summary.shared_photos,
        "merged_boxes": summary.merged_boxes,
        "seconds": {k: round(v, 2) for k, v in summary.seconds.items()},
    }
    settings = {
        "weights": WEIGHTS_FILE,
        "onnx": ONNX_FILE if summary.onnx else None,
        "classes": summary.classes,
        "imgsz": config.imgsz,
        "box_convention": "pixels of the image after EXIF orientation (xyxy)",
        "run": str(Path(run_dir).resolve()),
        "box_source": summary.box_source,
        "config": config_data(config),  # saved configs hold absolute paths
        "split": {
            **summary.split,
            "train": summary.train_items,
            "held_out": summary.held_out_items,
        },
        "metrics": summary.metrics,
    }
    summary.config_file = out_dir / CONFIG_FILE
    with atomic_write(summary.config_file) as handle:
        handle.write(dump_yaml(settings))
    if summary.measured:
        summary.metrics_file = out_dir / METRICS_FILE
        with atomic_write(summary.metrics_file) as handle:
            handle.write(json.dumps(metrics, indent=2) + "\n")
