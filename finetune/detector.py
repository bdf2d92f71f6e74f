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
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from toolkit.boxes import Box
from toolkit.catalog import load_ingested_image
from toolkit.config import dump_yaml
from toolkit.crops import FUSED_SOURCE
from toolkit.errors import CroptuneError
from toolkit.export import MANIFEST, box_class, export_labels_yolo
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
PREDICT_CHUNK = 16  # images per forward pass when predicting


class DetectorConfig(BaseModel):
    """How the region-proposal detector is trained from a run's boxes."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
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
    holdout: float = Field(
        0.2,
        ge=0,
        lt=1,
        description="Fraction of ITEMS held out to measure the detector (all photos of a "
        "held-out item stay out of training). 0 trains on everything and measures nothing.",
    )
    seed: int = Field(0, description="Seed of the held-out split and of training.")
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
        description="Confidence a proposal needs at inference (and for the held-out "
        "precision/recall); stored in detector.yaml for `predict`.",
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
    """What `detector train` did, with the held-out metrics."""

    out_dir: Path
    box_source: str = ""
    classes: list[str] = field(default_factory=list)
    train_items: list[str] = field(default_factory=list)
    held_out_items: list[str] = field(default_factory=list)
    images: dict[str, int] = field(default_factory=dict)
    boxes: dict[str, int] = field(default_factory=dict)
    epochs: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float | int | None] = field(default_factory=dict)
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


def split_items(item_ids: Sequence[str], holdout: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, held-out) item ids: a seeded shuffle, at least one item on each side.

    Depends only on the set of ids, the fraction and the seed (not on catalog order).
    """
    ids = sorted(set(item_ids))
    if holdout <= 0:
        return ids, []
    if len(ids) < 2:
        raise CroptuneError(
            f"a held-out split needs at least 2 items with usable photos, the run has "
            f"{len(ids)}; label more items or set holdout=0"
        )
    shuffled = list(ids)
    random.Random(seed).shuffle(shuffled)
    n_held = min(len(ids) - 1, max(1, round(holdout * len(ids))))
    held = set(shuffled[:n_held])
    return [i for i in ids if i not in held], [i for i in ids if i in held]


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


def train_detector(
    run_dir: Path, out_dir: Path, config: DetectorConfig, verbose: bool = True
) -> DetectorSummary:
    """Train the region-proposal detector on a run's boxes; write weights, yaml and metrics."""
    out_dir = Path(out_dir)
    model_source = _model_source(config.model)
    if config.export_onnx:
        _require_onnx()
    summary = DetectorSummary(out_dir=out_dir, epochs=config.epochs)
    started = time.perf_counter()
    with RunStore(run_dir, create=False) as store:
        select, summary.box_source = box_selector(store, config)
        export = export_labels_yolo(store, out_dir / "dataset", select=select)
        summary.skipped = export.skipped
        summary.classes = export.classes
        manifest = json.loads((out_dir / "dataset" / MANIFEST).read_text(encoding="utf-8"))
        images = manifest["images"]
        train_ids, held_ids = split_items(
            [i["item_id"] for i in images], config.holdout, config.seed
        )
        summary.train_items, summary.held_out_items = train_ids, held_ids
        data_yaml = _write_split(out_dir / "dataset", images, set(held_ids), export.classes)
        held = set(held_ids)
        summary.images = {
            "train": sum(1 for i in images if i["item_id"] not in held),
            "held_out": sum(1 for i in images if i["item_id"] in held),
        }
        summary.boxes = {
            "train": sum(i["boxes"] for i in images if i["item_id"] not in held),
            "held_out": sum(i["boxes"] for i in images if i["item_id"] in held),
        }
        if summary.boxes["train"] == 0:
            raise CroptuneError(
                f"the {len(train_ids)} training items of run {run_dir} have no "
                f"{summary.box_source} boxes on usable photos; nothing to learn"
            )
        summary.seconds["dataset"] = time.perf_counter() - started

        for stale in (WEIGHTS_FILE, CONFIG_FILE, METRICS_FILE, ONNX_FILE):
            # An earlier detector must not be left beside (or mistaken for) the new one.
            (out_dir / stale).unlink(missing_ok=True)
        clock = time.perf_counter()
        weights = _fit(model_source, data_yaml, out_dir, config, verbose)
        summary.seconds["train"] = time.perf_counter() - clock
        summary.weights = weights

        detector = _trained_detector(weights, config, summary.classes)
        clock = time.perf_counter()
        summary.metrics = evaluate_detector(detector, store, images, held, select)
        summary.seconds["evaluate"] = time.perf_counter() - clock

    if config.export_onnx:
        clock = time.perf_counter()
        summary.onnx = _export_onnx(weights, config)
        summary.seconds["onnx"] = time.perf_counter() - clock
    summary.seconds["total"] = time.perf_counter() - started
    _write_outputs(summary, config, run_dir)
    return summary


def _trained_detector(weights: Path, config: DetectorConfig, classes: list[str]) -> Detector:
    """The just-trained weights with the settings of this training run."""
    prepare_ultralytics()
    from ultralytics import YOLO

    return Detector(
        model=YOLO(str(weights), task="detect"),
        imgsz=config.imgsz,
        conf=config.conf,
        iou=config.iou,
        classes=list(classes),
        device=_device(config.device),
    )


def _write_split(
    dataset_dir: Path, images: list[dict[str, Any]], held: set[str], classes: list[str]
) -> Path:
    """Write train.txt / val.txt (by item) and a data.yaml pointing ultralytics at them."""
    train = [f"./{i['file']}" for i in images if i["item_id"] not in held]
    val = [f"./{i['file']}" for i in images if i["item_id"] in held] or train
    (dataset_dir / "train.txt").write_text("\n".join(train) + "\n", encoding="utf-8")
    (dataset_dir / "val.txt").write_text("\n".join(val) + "\n", encoding="utf-8")
    data = {
        "path": str(dataset_dir.resolve()),
        "train": "train.txt",
        "val": "val.txt",
        "nc": len(classes),
        "names": list(classes),
    }
    data_yaml = dataset_dir / "data.yaml"
    data_yaml.write_text(dump_yaml(data), "utf-8")
    return data_yaml


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
    detector: Detector,
    store: RunStore,
    images: list[dict[str, Any]],
    held: set[str],
    select: BoxSelector,
) -> dict[str, float | int | None]:
    """Precision/recall (at the detector's conf, IoU 0.5) and mAP50 on the held-out photos.

    Measured with supervision's metrics against the held-out teacher boxes, on photos loaded
    exactly as `predict` loads them. Precision is 0 when nothing is proposed; recall and
    mAP are None when the held-out photos have no teacher boxes. Also counts the held-out
    images, teacher boxes and served proposals.
    """
    from supervision.metrics import AveragingMethod, MeanAveragePrecision, Precision, Recall

    class_ids = {name: i for i, name in enumerate(detector.classes)}
    rows = {}
    for item_id in sorted(held):
        for row in store.images(item_id):
            rows[(item_id, row.index)] = row
    predictions, served, targets = [], [], []
    for entry in images:
        if entry["item_id"] not in held:
            continue
        row = rows.get((entry["item_id"], entry["image"]))
        if row is None:
            continue
        try:
            image = load_ingested_image(row)
        except ImageLoadError as exc:
            logger.warning("held-out item %s image %s: %s", row.item_id, row.index, exc)
            continue
        truth = [b for _, b in store.boxes(row.item_id) if b.image == row.index]
        targets.append(_detections(select(truth), class_ids))
        proposed = predict_boxes(detector, [image], conf=MAP_CONF)[0]
        predictions.append(_detections(proposed, class_ids))
        served.append(
            _detections([b for b in proposed if (b.score or 0) >= detector.conf], class_ids)
        )
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
    result = MeanAveragePrecision().update(predictions, targets).compute()
    # supervision's -1 means "nothing proposed": with boxes to find, that is an AP of 0.
    metrics["map50"] = max(0.0, float(result.map50))
    metrics["map50_95"] = max(0.0, float(result.map50_95))
    return metrics


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
    metrics = {
        "metrics": summary.metrics,
        "measured_by": f"supervision metrics on held-out items: precision/recall at conf "
        f">= {config.conf} and IoU {MATCH_IOU}; mAP over proposals with conf >= {MAP_CONF}",
        "items": {"train": len(summary.train_items), "held_out": len(summary.held_out_items)},
        "images": summary.images,
        "boxes": summary.boxes,
        "seconds": {k: round(v, 2) for k, v in summary.seconds.items()},
    }
    summary.metrics_file = out_dir / METRICS_FILE
    with atomic_write(summary.metrics_file) as handle:
        handle.write(json.dumps(metrics, indent=2) + "\n")
    settings = {
        "weights": WEIGHTS_FILE,
        "onnx": ONNX_FILE if summary.onnx else None,
        "classes": summary.classes,
        "imgsz": config.imgsz,
        "box_convention": "pixels of the image after EXIF orientation (xyxy)",
        "run": str(Path(run_dir).resolve()),
        "box_source": summary.box_source,
        "config": config.model_dump(mode="json"),
        "split": {
            "seed": config.seed,
            "train": summary.train_items,
            "held_out": summary.held_out_items,
        },
        "metrics": summary.metrics,
    }
    summary.config_file = out_dir / CONFIG_FILE
    with atomic_write(summary.config_file) as handle:
        handle.write(dump_yaml(settings))
