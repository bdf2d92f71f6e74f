"""`detector train`: the run's boxes -> ultralytics training -> detector.pt, detector.yaml
and metrics.json (the held-out figures of the weights kept)."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune.detector.config import (
    CONFIG_FILE,
    HELD_OUT,
    MAP_CONF,
    MATCH_IOU,
    METRICS_FILE,
    ONNX_FILE,
    WEIGHTS_FILE,
    DetectorConfig,
)
from finetune.detector.data import detector_dataset, write_fit_yaml
from finetune.detector.load import load_detector
from finetune.detector.metrics import evaluate_detector
from finetune.detector.offline import (
    checked_model_source,
    prepare_ultralytics,
    require_onnx,
    ultralytics_device,
)
from toolkit.config import dump_yaml
from toolkit.config.dump import config_data
from toolkit.crops import CropConfig
from toolkit.errors import CroptuneError
from toolkit.files import atomic_write
from toolkit.store import RunStore


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
    # run was split before, whatever the config says) and its status
    # (toolkit.dataset.splits.ItemSplit).
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


def train_detector(
    run_dir: Path, out_dir: Path, config: DetectorConfig, verbose: bool = True
) -> DetectorSummary:
    """Train the region-proposal detector on a run's boxes; write weights, yaml and metrics.

    Items follow the run's one split, the one `dataset build` uses (recorded in the run
    store; see detector_dataset): the detector trains on train items only; validation and
    test items measure it.
    """
    out_dir = Path(out_dir)
    model_source = checked_model_source(config.model)
    if config.export_onnx:
        require_onnx()
    summary = DetectorSummary(out_dir=out_dir, epochs=config.epochs)
    started = time.perf_counter()
    with RunStore(run_dir, create=False) as store:
        export = detector_dataset(store, out_dir / "dataset", config, summary)
        crop = _run_crop_config(store)
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
    data_yaml = write_fit_yaml(out_dir / "dataset", export.classes)
    summary.seconds["dataset"] = time.perf_counter() - started

    for stale in (WEIGHTS_FILE, CONFIG_FILE, METRICS_FILE, ONNX_FILE):
        # An earlier detector must not be left beside (or mistaken for) the new one.
        (out_dir / stale).unlink(missing_ok=True)
    clock = time.perf_counter()
    summary.weights = _fit(model_source, data_yaml, out_dir, config, verbose)
    summary.seconds["train"] = time.perf_counter() - clock

    # Measured as served: the kept file and detector.yaml, loaded by predict's own loader.
    _write_outputs(summary, config, run_dir)  # detector.yaml: what load_detector reads
    detector = load_detector(out_dir, device=ultralytics_device(config.device))
    clock = time.perf_counter()
    summary.metrics = evaluate_detector(detector, held, crop)
    summary.measured = {
        "weights": WEIGHTS_FILE,
        "conf": detector.conf,
        "iou_match": MATCH_IOU,
        "map_conf": MAP_CONF,
        "crop_config_hash": crop.config_hash(),  # the crops coverage was measured with
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


def _run_crop_config(store: RunStore) -> CropConfig:
    """The crop config the run's crops were cut with (the bundle's), else the default."""
    saved = store.get_meta("crop_config")
    return CropConfig.from_saved(json.loads(saved)) if saved else CropConfig()


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
        nbs=config.nominal_batch or config.batch,  # ultralytics' 64: few updates on few photos
        device=ultralytics_device(config.device),
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
        "crop_config_hash": measured.get("crop_config_hash"),
        "measured_by": (
            f"supervision metrics of {measured['weights']} (loaded as predict loads it) on "
            f"the {measured['photos']} photos of the {'+'.join(measured['splits'])} items: "
            f"precision/recall of predict's proposals (conf >= {measured['conf']}) at IoU "
            f"{MATCH_IOU}; mAP over proposals with conf >= {MAP_CONF}; coverage: the share "
            "of their boxes inside a crop planned from the proposals (crop config "
            f"{measured['crop_config_hash']})"
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
