"""Predict latency: time per item and stage, images and image tokens per item, by box source;
the coverage of the teacher's boxes by the crops served and the student's field F1, by box
source; and the detector's boxes against the teacher's reference boxes.

Setup (timed apart, not part of the table): the bundled example catalog (30 items) labeled
offline by the reference teacher, cropped (enclosing squares, pHash, budget 9), built into a
dataset, the tiny student trained on it (LoRA; train_student is the one place to swap it), a
detector (yolo11n from random weights: see --epochs/--imgsz/--detector-items/--conf, or
--detector DIR to reuse one), exported as a bundle with the detector. A NEW catalog (other items, another seed) is then predicted, in
process, with the bundle's student:
  - detector: the bundle's detector proposes the boxes (what `croptune predict` does);
  - none: the originals only (a bundle without a detector);
  - teacher: the catalog's reference boxes through the reference box teacher: the boxes a
    perfect detector would give (the training-time box source), as the upper bound.
Each run starts from an empty work folder; batch size 1 so each item is timed alone.

Per item: decode (the photos, oriented), boxes, crop (plan, cut, PNG, pHash, select, read
back: croptune's crop and dataset code), generate (the student, greedy, --max-new-tokens),
from predict_stats.json. Ingest (decode + hash once) and model loading are reported apart.

Coverage, per box source: the share of the new catalog's reference (teacher) boxes that lie
inside a crop predict cut for the same photo (toolkit.crops.coverage: contained, 2 px of
tolerance), with the crops' mean area as a share of their photo (a crop as large as the
photo covers everything and shows nothing closer). F1, per box source: predict's output
scored against the new catalog's reference attributes, as `croptune evaluate --predictions
FILE --reference CATALOG` scores it (finetune.evaluate.predictions).

Recall: the detector's boxes (at its serving conf, i.e. what predict cut crops from) against
the new catalog's reference boxes, at IoU 0.5 (supervision's Recall, micro), and the same
for every proposal above conf 0.001 (what a lower conf could reach).

The detector trains on its own, larger generated catalog (--detector-items, seed 0: its
first 30 items are the student's) with the default item split, so its held-out coverage is
measured and shipped in croptune.yaml; the new catalog (seed 7) is never trained or tuned on.

    python bench/predict_latency.py                         # ~5 minutes on 2 cores
    python bench/predict_latency.py --epochs 3 --items 10   # a quick look
    python bench/predict_latency.py --workdir /tmp/plat     # keeps the bundle, reuses it

--catalog marks: the same question with a student that learns (croptune.demo's). The
training catalog is the synthetic certification-mark catalog (make_marks_catalog, colour
on: --train-items, seed 0), labeled by the reference teacher with the demo schema, cropped
as the demo crops (min_side 48), built into the originals + crops dataset, the tiny-reader
student trained by croptune.demo.train_demo_student (--steps, default 150), and the
detector trained on THAT run's boxes (one sticker per item) with the recorded item split
(the student's), exported with the detector (and the demo's box teacher recorded). A NEW
marks catalog (seed 7, --items, default 100) is predicted per box source; the F1 table adds
the small-print field (regulatory_safety.certification_marks) and the colour.

    python bench/predict_latency.py --catalog marks         # ~8 minutes on 2 cores
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
# The detector's bench settings (docs/detector.md, "Coverage"): reach >= 0.9 coverage of
# held-out teacher boxes in minutes on 2 CPU cores.
EPOCHS = 10
IMGSZ = 256
DETECTOR_ITEMS = 100
DETECTOR_BATCH = 8
# --catalog marks: the demo's catalog and student (croptune.demo), predicted on a new seed.
MARKS_TRAIN_ITEMS = 300
MARKS_NEW_ITEMS = 100
MARKS_STEPS = 150
MARKS_FIELDS = ("regulatory_safety.certification_marks", "attributes.color")
NEW_SEED = 7


def setup_bundle(work: Path, args: argparse.Namespace) -> tuple[Path, dict[str, float]]:
    """Train catalog -> label -> crop -> dataset -> student + detector -> bundle (reused)."""
    from croptune.pipeline import run_crop, run_dataset
    from croptune.synthetic.catalog import make_example_catalog
    from finetune.export.writer import export_bundle
    from toolkit.crops import CropConfig
    from toolkit.dataset import DatasetConfig

    seconds: dict[str, float] = {}
    bundle = work / "bundle"
    if (bundle / "croptune.yaml").is_file():
        return bundle, seconds
    if args.catalog == "marks":
        return setup_marks_bundle(work, bundle, args), seconds_of(work)
    clock = time.perf_counter()
    catalog = make_example_catalog(work / "train-catalog", n_items=30, seed=0)
    label_reference(catalog, work / "run")
    run_crop(work / "run", CropConfig())
    run_dataset(work / "run", work / "dataset", DatasetConfig())
    seconds["label+crop+dataset"] = time.perf_counter() - clock

    clock = time.perf_counter()
    adapter = train_student(work / "dataset", work / "train", args)
    seconds["train student"] = time.perf_counter() - clock

    detector = Path(args.detector) if args.detector else work / "detector"
    if not args.detector:
        clock = time.perf_counter()
        train_bench_detector(work, detector, args)
        seconds["train detector"] = time.perf_counter() - clock
    export_bundle(adapter, bundle, detector_dir=detector)
    return bundle, seconds


def setup_marks_bundle(work: Path, bundle: Path, args: argparse.Namespace) -> Path:
    """Marks catalog -> label (demo schema) -> crop -> dataset -> demo student + detector on
    the same run -> bundle; each stage's seconds in setup_seconds.json (reused with it)."""
    from croptune.demo import BOX_TEACHER, STUDENT, train_demo_student
    from croptune.pipeline import run_crop, run_dataset
    from croptune.synthetic.marks import make_marks_catalog
    from finetune.export.writer import export_bundle
    from finetune.students import load_preset
    from toolkit.crops import CropConfig
    from toolkit.dataset import DatasetConfig

    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    catalog = make_marks_catalog(work / "train-catalog", args.train_items, seed=0, colour=True)
    label_reference(catalog, work / "run", schema=marks_schema(work))
    run_crop(work / "run", CropConfig(min_side=48))  # as the demo: the square hugs the sticker
    strategy = DatasetConfig(
        strategy="originals+crops", seed=0, image_tokens=load_preset(STUDENT).image_tokens
    )
    built = run_dataset(work / "run", work / "dataset", strategy)
    print(f"marks dataset: {built.examples} examples (train/validation/test)")
    seconds["label+crop+dataset"] = time.perf_counter() - clock

    clock = time.perf_counter()
    result = train_demo_student(work / "dataset", work / "train", args.steps, seed=0)
    print(f"student: {result.steps} steps, loss {result.first_loss} -> {result.last_loss}")
    seconds["train student"] = time.perf_counter() - clock

    detector = Path(args.detector) if args.detector else work / "detector"
    if not args.detector:
        clock = time.perf_counter()
        fit_detector(work / "run", detector, args)
        seconds["train detector"] = time.perf_counter() - clock
    export_bundle(
        result.adapter_dir,
        bundle,
        dataset_dir=work / "dataset",
        detector_dir=detector,
        box_teacher=BOX_TEACHER,
    )
    (work / "setup_seconds.json").write_text(json.dumps(seconds, indent=2))
    return bundle


def seconds_of(work: Path) -> dict[str, float]:
    """The setup's recorded seconds (setup_seconds.json), empty when there are none."""
    path = work / "setup_seconds.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def marks_schema(work: Path) -> Path:
    """The demo's label schema as a file in the work folder (as run_demo writes it)."""
    from croptune.demo import DEMO_SCHEMA

    path = work / "demo_schema.yaml"
    path.write_text(DEMO_SCHEMA, encoding="utf-8")
    return path


def label_reference(catalog: Path, run_dir: Path, schema: Path | None = None) -> None:
    """The catalog labeled offline by the reference teacher (attributes and boxes)."""
    from croptune.pipeline import run_label
    from teacher_labeling.teachers import LabelConfig, TeacherConfig

    teacher = TeacherConfig(name="reference", role="both", kind="reference", coords="pixels")
    config = LabelConfig(teachers=[teacher])
    if schema is not None:
        config = LabelConfig(teachers=[teacher], schema=str(schema))
    run_label(catalog, config, run_dir)


def train_student(dataset: Path, out: Path, args: argparse.Namespace) -> Path:
    """The bench's student, trained on the dataset; its adapter folder (swap the student here)."""
    from finetune.train import TrainConfig, train

    result = train(
        TrainConfig(
            student="tiny",
            dataset=str(dataset),
            output_dir=str(out),
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
    return Path(result.adapter_dir)


def train_bench_detector(work: Path, out: Path, args: argparse.Namespace) -> None:
    """The detector on its own labeled catalog, the default item split (coverage measured)."""
    from croptune.pipeline import run_crop
    from croptune.synthetic.catalog import make_example_catalog
    from toolkit.crops import CropConfig

    catalog = make_example_catalog(work / "detector-catalog", n_items=args.detector_items, seed=0)
    run = work / "detector-run"
    label_reference(catalog, run)
    run_crop(run, CropConfig())  # records the crop config coverage is measured with
    fit_detector(run, out, args)


def fit_detector(run: Path, out: Path, args: argparse.Namespace) -> None:
    """yolo11n on a run's boxes, its recorded item split, the bench's settings."""
    from finetune.detector import DetectorConfig, train_detector

    config = DetectorConfig(
        epochs=args.epochs,
        imgsz=args.imgsz,
        batch=DETECTOR_BATCH,
        workers=0,
        device="cpu",
        **({"conf": args.conf} if args.conf is not None else {}),
    )
    summary = train_detector(run, out, config, verbose=False)
    print(
        f"detector: {summary.images['train']} train photos, {summary.seconds['train']:.0f} s; "
        f"held-out coverage {summary.metrics.get('coverage')} (crop area "
        f"{summary.metrics.get('crop_area')}), recall {summary.metrics.get('recall')}"
    )


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
        assert bundle.detector_dir is not None, "the bench's bundle ships its detector"
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
    crop_hash = bundle.crop.config_hash() if bundle.crop is not None else None
    stats["coverage"] = crop_coverage(summary.workdir, crop_hash)
    schema = work / "demo_schema.yaml" if args.catalog == "marks" else None
    stats["f1"] = field_f1(out, catalog, source, schema)
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


def crop_coverage(workdir: Path, crop_hash: str | None) -> dict[str, Any]:
    """The reference boxes inside the crops predict cut (per photo), and the crops' size."""
    from toolkit.boxes import Box
    from toolkit.crops.coverage import covered_boxes
    from toolkit.store import RunStore

    inside: list[bool] = []
    areas: list[float] = []
    with RunStore(workdir, create=False) as store:
        for item in store.items():
            sizes = {r.index: r.size for r in store.images(item.item_id) if r.usable}
            truth = [
                Box(b["image"], *b["xyxy"]) for b in item.reference_boxes if b["image"] in sizes
            ]
            crops = store.crops(item.item_id, crop_hash) if crop_hash else []
            inside += covered_boxes(truth, crops)
            for crop in crops:
                x1, y1, x2, y2 = crop.region
                width, height = sizes[crop.image]
                areas.append((x2 - x1) * (y2 - y1) / (width * height))
    return {
        "boxes": len(inside),
        "coverage": sum(inside) / len(inside) if inside else None,
        "crops": len(areas),
        "crop_area": sum(areas) / len(areas) if areas else None,
    }


def field_f1(
    predictions: Path, catalog: Path, name: str, schema: Path | None = None
) -> dict[str, Any]:
    """Predict's output scored against the catalog's reference attributes (`croptune
    evaluate --predictions FILE --reference CATALOG`); with schema (the file it was labeled
    with) its fields are compared as the run's, and each field's scores come with it."""
    from finetune.evaluate.predictions import (
        evaluate_predictions,
        load_references,
        read_predictions,
    )
    from toolkit.schema import load_schema

    references = load_references(catalog)
    if schema is not None:  # a catalog file records no schema; the run's is the demo's
        references.schema = load_schema(schema)
    result = evaluate_predictions(name, read_predictions(predictions), references)
    micro = result.scores.micro
    scores: dict[str, Any] = {"precision": micro.precision, "recall": micro.recall, "f1": micro.f1}
    if schema is not None:
        scores["fields"] = result.scores.as_dict()["fields"]
        scores["json_valid_rate"] = result.scores.as_dict()["json_valid_rate"]
    return scores


def quality_table(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| box source | reference boxes | inside a crop (coverage) | crops | crop area / photo "
        "(mean) | field P / R / F1 |",
        "|---|---|---|---|---|---|",
    ]
    for source, stats in results.items():
        cover, score = stats["coverage"], stats["f1"]

        def rate(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.3f}"

        lines.append(
            f"| {source} | {cover['boxes']} | {rate(cover['coverage'])} | {cover['crops']} | "
            f"{rate(cover['crop_area'])} | {score['precision']:.3f} / {score['recall']:.3f} / "
            f"{score['f1']:.3f} |"
        )
    return "\n".join(lines)


def marks_table(results: dict[str, dict[str, Any]]) -> str:
    """--catalog marks: what each box source's crops show and what the student read."""
    lines = [
        "| box source | coverage of teacher boxes | crop area / photo (mean) | micro P / R / F1 | "
        "marks F1 (small print) | colour F1 | JSON valid | images/item (mean) | ms/item |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for source, stats in results.items():
        cover, score = stats["coverage"], stats["f1"]
        fields = score.get("fields", {})
        marks, colour = (fields.get(k, {}).get("f1") for k in MARKS_FIELDS)
        per = stats["seconds_per_item"]
        ms = sum(per[s]["mean"] * 1000 for s in ("decode", "boxes", "crop", "generate") if per[s])
        images = (stats["images_per_item"] or {"mean": 0})["mean"]
        lines.append(
            f"| {source} | {rate(cover['coverage'])} | {rate(cover['crop_area'])} | "
            f"{score['precision']:.3f} / {score['recall']:.3f} / {score['f1']:.3f} | "
            f"{rate(marks)} | {rate(colour)} | {rate(score.get('json_valid_rate'), 2)} | "
            f"{images:.2f} | {ms:.1f} |"
        )
    return "\n".join(lines)


def rate(value: float | None, digits: int = 3) -> str:
    """A share as the tables print it ("n/a" for None)."""
    return "n/a" if value is None else f"{value:.{digits}f}"


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
    parser.add_argument(
        "--catalog",
        choices=("example", "marks"),
        default="example",
        help="example: the example catalog and the tiny student (learns nothing); marks: the "
        "certification-mark catalog and the demo's student (croptune.demo).",
    )
    parser.add_argument(
        "--items",
        type=int,
        help=f"Items of the new catalog (default 20; marks: {MARKS_NEW_ITEMS}).",
    )
    parser.add_argument(
        "--train-items",
        type=int,
        default=MARKS_TRAIN_ITEMS,
        help="marks: items of the training catalog (student and detector).",
    )
    parser.add_argument(
        "--steps", type=int, help=f"Student LoRA steps (default 30; marks: {MARKS_STEPS})."
    )
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="Detector epochs.")
    parser.add_argument("--imgsz", type=int, default=IMGSZ, help="Detector image size.")
    parser.add_argument(
        "--detector-items", type=int, default=DETECTOR_ITEMS, help="Detector catalog items."
    )
    parser.add_argument("--conf", type=float, help="Detector conf (default: DetectorConfig's).")
    parser.add_argument("--detector", help="Reuse a `detector train` folder.")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="Answer length limit.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads.")
    parser.add_argument("--workdir", help="Keep everything here (the bundle is reused).")
    args = parser.parse_args()
    marks = args.catalog == "marks"
    if args.items is None:
        args.items = MARKS_NEW_ITEMS if marks else 20
    if args.steps is None:
        args.steps = MARKS_STEPS if marks else 30

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(args.threads)
    from croptune.synthetic.catalog import make_example_catalog
    from croptune.synthetic.marks import make_marks_catalog

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="predict-lat-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    bundle, setup = setup_bundle(work, args)
    for name, value in setup.items():
        print(f"setup: {name} {value:.1f} s")
    catalog = work / "new-catalog" / "catalog.jsonl"
    if not catalog.is_file() and marks:
        catalog = make_marks_catalog(work / "new-catalog", args.items, NEW_SEED, colour=True)
    elif not catalog.is_file():
        catalog = make_example_catalog(work / "new-catalog", n_items=args.items, seed=NEW_SEED)

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
    print(marks_table(results) if marks else quality_table(results))
    print()
    found = recall(Path(results["detector"]["workdir"]), bundle)
    print(
        f"detector vs reference boxes on {found['photos']} new photos "
        f"({found['reference boxes']} boxes): recall@IoU0.5 {found['recall@0.5 served']:.3f} at "
        f"its conf {found['conf']} ({found['served boxes']} boxes served); "
        f"{found['recall@0.5 conf 0.001']:.3f} over every proposal above conf {MIN_CONF}"
    )
    report: dict[str, Any] = {"setup": setup, "runs": results, "recall": found}
    if marks:
        report = {"catalog": "marks", "args": vars(args), "table": marks_table(results), **report}
    (work / "predict_latency.json").write_text(json.dumps(report, indent=2))
    print(f"total {time.perf_counter() - started:.0f} s; results in {work}/predict_latency.json")


if __name__ == "__main__":
    main()
