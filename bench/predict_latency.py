"""Predict latency: time per item and stage, images and image tokens per item, by box source,
and the detector's boxes against the teacher's reference boxes.

Setup (timed apart, not part of the table): the bundled example catalog (30 items) labeled
offline by the reference teacher, cropped (enclosing squares, pHash, budget 9), built into a
dataset, the tiny student trained on it (LoRA), a detector trained on its boxes (yolo11n from
random weights, small: see --epochs/--imgsz, or --detector DIR to reuse one), exported as a
bundle with the detector. A NEW catalog (other items, another seed) is then predicted, in
process, with the bundle's student:
  - detector: the bundle's detector proposes the boxes (what `croptune predict` does);
  - none: the originals only (a bundle without a detector);
  - teacher: the catalog's reference boxes through the reference box teacher: the boxes a
    perfect detector would give (the training-time box source), as the upper bound.
Each run starts from an empty work folder; batch size 1 so each item is timed alone.

Per item: decode (the photos, oriented), boxes, crop (plan, cut, PNG, pHash, select, read
back: croptune's crop and dataset code), generate (the student, greedy, --max-new-tokens),
from predict_stats.json. Ingest (decode + hash once) and model loading are reported apart.

Recall: the detector's boxes (at its serving conf, i.e. what predict cut crops from) against
the new catalog's reference boxes, at IoU 0.5 (supervision's Recall, micro), and the same
for every proposal above conf 0.001 (what a lower conf could reach).

    python bench/predict_latency.py                         # ~7 minutes on 2 cores
    python bench/predict_latency.py --epochs 3 --items 10   # a quick look
    python bench/predict_latency.py --workdir /tmp/plat     # keeps the bundle, reuses it
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GEMMA3_IMAGE_TOKENS = 256  # what every image costs a real Gemma 3 student
MIN_CONF = 0.001


def setup_bundle(work: Path, args: argparse.Namespace) -> tuple[Path, dict[str, float]]:
    """Train catalog -> label -> crop -> dataset -> student + detector -> bundle (reused)."""
    from croptune.pipeline import run_crop, run_dataset, run_label
    from croptune.synthetic.catalog import make_example_catalog
    from finetune.detector import DetectorConfig, train_detector
    from finetune.export.writer import export_bundle
    from finetune.train import TrainConfig, train
    from teacher_labeling.teachers import LabelConfig, TeacherConfig
    from toolkit.crops import CropConfig
    from toolkit.dataset import DatasetConfig

    seconds: dict[str, float] = {}
    bundle = work / "bundle"
    if (bundle / "croptune.yaml").is_file():
        return bundle, seconds
    clock = time.perf_counter()
    catalog = make_example_catalog(work / "train-catalog", n_items=30, seed=0)
    teacher = TeacherConfig(name="reference", role="both", kind="reference", coords="pixels")
    run_label(catalog, LabelConfig(teachers=[teacher]), work / "run")
    run_crop(work / "run", CropConfig())
    run_dataset(work / "run", work / "dataset", DatasetConfig())
    seconds["label+crop+dataset"] = time.perf_counter() - clock

    clock = time.perf_counter()
    result = train(
        TrainConfig(
            student="tiny",
            dataset=str(work / "dataset"),
            output_dir=str(work / "train"),
            max_steps=args.steps,
            per_device_train_batch_size=2,
            gradient_accumulation_steps=1,
            learning_rate=2e-3,
            warmup_ratio=0.0,
            logging_steps=10,
            gradient_checkpointing=False,
            seed=0,
        )
    )
    seconds["train student"] = time.perf_counter() - clock

    detector = Path(args.detector) if args.detector else work / "detector"
    if not args.detector:
        clock = time.perf_counter()
        config = DetectorConfig(
            epochs=args.epochs,
            imgsz=args.imgsz,
            batch=16,
            workers=0,
            validation_ratio=0.0,
            test_ratio=0.0,
            device="cpu",
        )
        train_detector(work / "run", detector, config, verbose=False)
        seconds["train detector"] = time.perf_counter() - clock
    export_bundle(result.adapter_dir, bundle, detector_dir=detector)
    return bundle, seconds


def run(
    bundle_dir: Path, catalog: Path, work: Path, source: str, args: argparse.Namespace
) -> dict[str, Any]:
    """One predict run from an empty work folder; its predict_stats.json."""
    from finetune.models import open_student
    from finetune.predict import DetectorBoxes, NoBoxes, load_bundle, predict_catalog
    from teacher_labeling.box_source import TeacherBoxes
    from teacher_labeling.teachers import TeacherConfig

    bundle = load_bundle(bundle_dir)
    if source == "detector":
        boxes: Any = DetectorBoxes(bundle.detector_dir)
    elif source == "teacher":
        boxes = TeacherBoxes(
            TeacherConfig(name="reference", role="boxes", kind="reference", coords="pixels")
        )
    else:
        boxes = NoBoxes()
    out = work / f"preds-{source}.jsonl"
    shutil.rmtree(work / f"preds-{source}.work", ignore_errors=True)
    backend = open_student(
        bundle.path,
        name=bundle.lora_name,
        batch_size=1,
        max_new_tokens=args.max_new_tokens or bundle.max_new_tokens,
    )
    try:
        summary = predict_catalog(bundle, catalog, out, backend, boxes, batch_size=1)
    finally:
        backend.close()
    stats = dict(summary.stats)
    stats["workdir"] = str(summary.workdir)
    return stats


def recall(workdir: Path, bundle_dir: Path) -> dict[str, Any]:
    """The detector's boxes (served, and all above MIN_CONF) vs the reference boxes."""
    import numpy as np
    import supervision as sv
    from supervision.metrics import AveragingMethod, Recall

    from finetune.detector import load_detector, predict_boxes
    from toolkit.catalog import load_ingested_image
    from toolkit.store import RunStore

    def detections(xyxys: list[Any]) -> Any:
        if not xyxys:
            return sv.Detections.empty()
        return sv.Detections(
            xyxy=np.asarray(xyxys, dtype=np.float64),
            class_id=np.zeros(len(xyxys), dtype=np.int64),
            confidence=np.ones(len(xyxys)),
        )

    detector = load_detector(bundle_dir / "detector")
    served, every, targets = [], [], []
    with RunStore(workdir, create=False) as store:
        for item in store.items():
            boxes = [b for _, b in store.boxes(item.item_id) if b.source == "detector"]
            for row in store.images(item.item_id):
                if not row.usable:
                    continue
                truth = [b["xyxy"] for b in item.reference_boxes if b["image"] == row.index]
                targets.append(detections(truth))
                served.append(detections([b.xyxy for b in boxes if b.image == row.index]))
                image = load_ingested_image(row)
                proposed = predict_boxes(detector, [image], conf=MIN_CONF)[0]
                every.append(detections([b.xyxy for b in proposed]))
    micro = AveragingMethod.MICRO
    return {
        "photos": len(targets),
        "reference boxes": sum(len(t) for t in targets),
        "served boxes": sum(len(s) for s in served),
        "conf": detector.conf,
        "recall@0.5 served": float(
            Recall(averaging_method=micro).update(served, targets).compute().recall_at_50
        ),
        "recall@0.5 conf 0.001": float(
            Recall(averaging_method=micro).update(every, targets).compute().recall_at_50
        ),
    }


def table(results: dict[str, dict[str, Any]]) -> str:
    stages = ("decode", "boxes", "crop", "generate")
    lines = [
        "| box source | items | "
        + " | ".join(f"{s} ms/item" for s in stages)
        + " | total ms/item | items/s | images/item (mean / max) | image tokens/item, tiny (mean) "
        "| Gemma 3 tokens/item (mean) | boxes/item (mean) |",
        "|---|" + "---|" * (len(stages) + 7),
    ]
    for source, stats in results.items():
        per = stats["seconds_per_item"]
        means = [per[s]["mean"] * 1000 if per[s] else 0.0 for s in stages]
        images = stats["images_per_item"] or {"mean": 0, "max": 0}
        tokens = stats["image_tokens_per_item"] or {"mean": 0}
        lines.append(
            f"| {source} | {stats['processed_this_run']} | "
            + " | ".join(f"{m:.1f}" for m in means)
            + f" | {sum(means):.1f} | {stats['items_per_second']:.2f} | {images['mean']:.2f} / "
            f"{images['max']:.0f} | {tokens['mean']:.1f} | "
            f"{images['mean'] * GEMMA3_IMAGE_TOKENS:.0f} | "
            f"{(stats['boxes_per_item'] or {'mean': 0})['mean']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=20, help="Items of the new catalog.")
    parser.add_argument("--steps", type=int, default=30, help="Student LoRA steps.")
    parser.add_argument("--epochs", type=int, default=30, help="Detector epochs.")
    parser.add_argument("--imgsz", type=int, default=320, help="Detector image size.")
    parser.add_argument("--detector", help="Reuse a `detector train` folder.")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="Answer length limit.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads.")
    parser.add_argument("--workdir", help="Keep everything here (the bundle is reused).")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(args.threads)
    from croptune.synthetic.catalog import make_example_catalog

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="predict-lat-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    bundle, setup = setup_bundle(work, args)
    for name, value in setup.items():
        print(f"setup: {name} {value:.1f} s")
    catalog = work / "new-catalog" / "catalog.jsonl"
    if not catalog.is_file():
        catalog = make_example_catalog(work / "new-catalog", n_items=args.items, seed=7)

    results: dict[str, dict[str, Any]] = {}
    for source in ("none", "detector", "teacher"):
        results[source] = run(bundle, catalog, work, source, args)
        print(
            f"{source}: {results[source]['processed_this_run']} items, load "
            f"{results[source]['seconds']['load']:.1f} s, ingest "
            f"{results[source]['seconds']['ingest']:.2f} s"
        )
    print()
    print(table(results))
    print()
    found = recall(Path(results["detector"]["workdir"]), bundle)
    print(
        f"detector vs reference boxes on {found['photos']} new photos "
        f"({found['reference boxes']} boxes): recall@IoU0.5 {found['recall@0.5 served']:.3f} at "
        f"its conf {found['conf']} ({found['served boxes']} boxes served); "
        f"{found['recall@0.5 conf 0.001']:.3f} over every proposal above conf {MIN_CONF}"
    )
    (work / "predict_latency.json").write_text(
        json.dumps({"setup": setup, "runs": results, "recall": found}, indent=2)
    )
    print(f"total {time.perf_counter() - started:.0f} s; results in {work}/predict_latency.json")


if __name__ == "__main__":
    main()
