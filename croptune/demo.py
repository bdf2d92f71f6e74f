"""`croptune demo`: the recipe offline, through the stages a user runs, with a student that learns.

The story of the paper at toy scale, on the synthetic certification-mark catalog
(croptune.synthetic.marks, with the product's colour as a second field):

1. a base that "reads a little" (the tiny-reader preset: a ~1M-parameter Gemma 3 pretrained
   on a generic describe-the-picture task, built offline once) answers 0-shot;
2. LoRA fine-tuning on the reference teacher's labels of the originals + crops makes it
   answer the schema;
3. the same fine-tuning on the originals only shows what the crops add on the small print
   (the mark is ~3.5 px in a photo shrunk to the student's 112 px, ~30 px in its crop);
4. the default student's adapter is exported and served by `predict` on the held-out items,
   with the bundle's box source (the box teacher), and scored like the dataset.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from croptune.figures import distribution, format_distribution
from croptune.pipeline import (
    run_crop,
    run_dataset,
    run_evaluate,
    run_label,
    run_predict,
    run_score_predictions,
)
from toolkit.crops import CropConfig
from toolkit.dataset import DatasetConfig
from toolkit.store import RunStore

if TYPE_CHECKING:
    from finetune.evaluate import EvaluationResult
    from finetune.train.trainer import TrainResult
    from toolkit.boxes import Box

logger = logging.getLogger(__name__)

STUDENT = "tiny-reader"
# The demo's label schema: one field large enough to read in any photo, one small print.
DEMO_SCHEMA = """\
name: demo
description: The demo's two fields, the product's colour and its certification mark.
groups:
  attributes:
    color: {type: string, description: "Main colour of the product"}
  regulatory_safety:
    certification_marks: {type: list, description: "Certification marks visible, e.g. CE, UKCA, FCC, RoHS"}
"""
SMALL_PRINT = ("regulatory_safety.certification_marks",)
# The reference teacher stands in for the box teacher (a Qwen-VL) at serving time too.
BOX_TEACHER = {"name": "reference", "role": "boxes", "kind": "reference", "coords": "pixels"}
STRATEGIES = {"originals": "originals", "originals+crops": "originals_crops"}  # -> folder names
STUDENT_NAMES = {
    "originals": "student, originals only",
    "originals+crops": "student, originals + crops",
}
DEMO_GROUPS = ("attributes", "regulatory_safety")  # DEMO_SCHEMA's groups, in its order


@dataclass
class DemoRow:
    """One line of the learning table: a model on the held-out items."""

    name: str
    f1: float | None
    groups: dict[str, float | None]
    small_print: float | None
    json_valid: float
    images_per_example: float | None = None
    image_tokens_per_example: float | None = None
    train_seconds: float | None = None


@dataclass
class DemoSummary:
    """The demo's headline numbers, one per stage, and the learning table."""

    workdir: Path
    items: int = 0
    labeled: int = 0
    boxes: int = 0
    crops: int = 0
    errors: int = 0
    images_before: dict[str, float] = field(default_factory=dict)
    images_after: dict[str, float] = field(default_factory=dict)
    examples: dict[str, int] = field(default_factory=dict)
    losses: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    train_steps: int = 0
    table: list[DemoRow] = field(default_factory=list)  # base, originals, originals+crops
    served: DemoRow | None = None  # predict through the bundle on the held-out items
    served_coverage: float | None = None  # teacher boxes inside a served crop
    evaluation: list[EvaluationResult] = field(default_factory=list)
    adapter: Path | None = None
    bundle: Path | None = None
    report: Path | None = None
    predictions: Path | None = None
    predictions_report: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def f1(self) -> float | None:
        """The default student's (originals + crops) micro F1 on the held-out items."""
        return self.table[-1].f1 if self.table else None

    @property
    def base_f1(self) -> float | None:
        """The base's 0-shot micro F1 on the held-out items."""
        return self.table[0].f1 if self.table else None

    def rows(self) -> list[tuple[str, str]]:
        """(what, value) rows of the summary table."""
        losses = ", ".join(
            f"{name} {_number(first)} -> {_number(last)}"
            for name, (first, last) in self.losses.items()
        )
        served = "n/a"
        if self.served is not None:
            served = f"F1 {_number(self.served.f1)} (dataset {_number(self.f1)})"
            if self.served_coverage is not None:
                served += f", teacher boxes inside served crops {self.served_coverage:.2f}"
        return [
            ("items labeled", f"{self.labeled} of {self.items} ({self.errors} errors)"),
            ("teacher boxes", str(self.boxes)),
            ("crops", str(self.crops)),
            ("images per item, one crop per box", format_distribution(self.images_before)),
            ("images per item, enclosing squares", format_distribution(self.images_after)),
            ("examples train/validation/test", "/".join(str(v) for v in self.examples.values())),
            (f"train loss first -> last ({self.train_steps} steps)", losses or "n/a"),
            ("served (predict through the bundle)", served),
            ("review page", str(self.report)),
            ("held-out predictions", f"{self.predictions} (review: {self.predictions_report})"),
            ("bundle (originals + crops student)", str(self.bundle)),
            ("time per stage (s)", ", ".join(f"{k} {v:.1f}" for k, v in self.seconds.items())),
        ]

    def learning_rows(self) -> tuple[list[str], list[list[str]]]:
        """Header and rows of the learning table (the held-out items, per model)."""
        groups = DEMO_GROUPS
        header = ["model", "F1", *groups, "small print", "JSON valid"]
        header += ["images/ex", "tokens/ex", "train s"]
        rows = []
        for row in [*self.table, *([self.served] if self.served else [])]:
            rows.append(
                [
                    row.name,
                    _number(row.f1),
                    *(_number(row.groups.get(g)) for g in groups),
                    _number(row.small_print),
                    f"{row.json_valid:.2f}",
                    _number(row.images_per_example, 2),
                    _number(row.image_tokens_per_example, 0),
                    _number(row.train_seconds, 0),
                ]
            )
        return header, rows

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (demo_summary.json)."""
        header, rows = self.learning_rows()
        return {
            "summary": dict(self.rows()),
            "learning": [dict(zip(header, row, strict=True)) for row in rows],
            "seconds": self.seconds,
        }


def _number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def demo_row(
    name: str, result: EvaluationResult, images: list[float] | None, image_tokens: int
) -> DemoRow:
    """A learning-table line from an evaluation result (and the dataset's images per example)."""
    scores = result.as_dict()
    fields = scores["fields"]
    small = [fields[k] for k in SMALL_PRINT if k in fields]
    tp = sum(f["tp"] for f in small)
    predicted = sum(f["predicted"] for f in small)
    reference = sum(f["reference"] for f in small)
    small_f1 = 2 * tp / (predicted + reference) if predicted + reference else None
    mean_images = statistics.fmean(images) if images else None
    return DemoRow(
        name=name,
        f1=scores["micro"]["f1"],
        groups={g: v["f1"] for g, v in scores["groups"].items()},
        small_print=small_f1,
        json_valid=scores["json_valid_rate"],
        images_per_example=mean_images,
        image_tokens_per_example=None if mean_images is None else mean_images * image_tokens,
    )


def run_demo(
    workdir: Path,
    n_items: int = 300,
    max_steps: int = 250,
    seed: int = 0,
    progress: bool = False,
    learning_rate: float = 2e-3,
    strategies: Sequence[str] = tuple(STRATEGIES),
    serve: bool = True,
    change_catalog: Callable[[Path], None] | None = None,
) -> DemoSummary:
    """The recipe offline on the synthetic mark catalog: base, two students, bundle, served.

    strategies: the students to train (the last one is exported); serve: export the last
    and predict the held-out items through the bundle; change_catalog: applied to the
    catalog file before labeling (the tests break the teacher's boxes with it).
    """
    from croptune.synthetic.marks import make_marks_catalog
    from finetune.export.writer import export_bundle
    from finetune.infer import TransformersBackend
    from finetune.students import load_preset, resolve_student
    from teacher_labeling.teachers import LabelConfig, TeacherConfig

    workdir = Path(workdir).resolve()
    summary = DemoSummary(workdir=workdir)
    clock = _Clock(summary.seconds)
    run_dir = workdir / "run"
    preset = load_preset(STUDENT)

    with clock("base (built once, cached)"):
        base = resolve_student(preset.model)
    with clock("catalog"):
        catalog_path = make_marks_catalog(workdir / "catalog", n_items, seed, colour=True)
        if change_catalog is not None:
            change_catalog(catalog_path)
    schema_file = workdir / "demo_schema.yaml"
    schema_file.write_text(DEMO_SCHEMA, encoding="utf-8")
    label_config = LabelConfig(
        teachers=[TeacherConfig(name="reference", role="both", kind="reference", coords="pixels")],
        schema=str(schema_file),
    )
    with clock("label"):
        ingest, labels = run_label(catalog_path, label_config, run_dir, progress=progress)
    summary.items = ingest.stored + ingest.unchanged + ingest.dropped
    summary.errors = len(ingest.errors) + labels.failed
    # min_side 48: the square hugs the ~44x32 px sticker and its margin (see the crop ablation).
    crop_config = CropConfig(min_side=48)
    with clock("crop"):
        crops = run_crop(run_dir, crop_config, progress)
    summary.boxes, summary.crops = crops.boxes, crops.made + crops.existing
    summary.images_before = distribution(crops.images_per_box_crop)
    summary.images_after = distribution(crops.images_after)

    images: dict[str, list[float]] = {}
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or not strategies:
        raise ValueError(f"strategies must be among {list(STRATEGIES)}, not {list(strategies)}")
    with clock("dataset"):
        for strategy in strategies:
            folder = STRATEGIES[strategy]
            built = run_dataset(
                run_dir,
                workdir / f"dataset-{folder}",
                DatasetConfig(strategy=strategy, seed=seed, image_tokens=preset.image_tokens),
                progress,
            )
            images[strategy] = [float(n) for n in built.images_per_example]
            summary.examples = built.examples
    with RunStore(run_dir, create=False) as store, clock("report"):
        from toolkit.report import write_report

        summary.labeled = sum(1 for item_id in store.item_ids() if store.final_attributes(item_id))
        summary.report = write_report(store, run_dir / "report.html")

    adapters: dict[str, Path] = {}
    train_seconds: dict[str, float] = {}
    for strategy in strategies:
        folder = STRATEGIES[strategy]
        out = workdir / f"train-{folder}"
        with clock(f"train {strategy}"):
            result = train_demo_student(
                workdir / f"dataset-{folder}", out, max_steps, seed, learning_rate, progress
            )
        adapters[strategy] = result.adapter_dir
        train_seconds[strategy] = result.seconds
        summary.losses[strategy] = (result.first_loss, result.last_loss)
        summary.train_steps = result.steps
    last = strategies[-1]
    summary.adapter = adapters[last]
    tokens = preset.image_tokens
    with clock("evaluate"):
        for strategy in strategies:
            dataset = workdir / f"dataset-{STRATEGIES[strategy]}"
            models = [TransformersBackend(base, adapters[strategy], name=STUDENT_NAMES[strategy])]
            if strategy == last:  # the base 0-shot, on the default student's held-out examples
                models.insert(0, TransformersBackend(base, name=f"base 0-shot ({STUDENT})"))
            results = run_evaluate(
                models,
                dataset,
                workdir / f"eval-{STRATEGIES[strategy]}",
                batch_size=8,
                max_new_tokens=48,
                progress=progress,
            )
            if strategy == last:
                summary.table.insert(0, demo_row("base 0-shot", results[0], images[last], tokens))
            row = demo_row(STUDENT_NAMES[strategy], results[-1], images[strategy], tokens)
            row.train_seconds = train_seconds[strategy]
            summary.table.append(row)
            summary.evaluation += results
    default = workdir / f"dataset-{STRATEGIES[last]}"
    if serve:
        with clock("export"):
            summary.bundle = export_bundle(
                adapters[last],
                workdir / "bundle",
                metrics=summary.evaluation[-1].as_dict(),
                dataset_dir=default,
                box_teacher=BOX_TEACHER,
            )
        with clock("predict held-out"):
            _serve(summary, catalog_path, run_dir, tokens, progress)
    (workdir / "demo_summary.json").write_text(
        json.dumps(summary.as_dict(), indent=2), encoding="utf-8"
    )
    return summary


def train_demo_student(
    dataset: Path,
    out: Path,
    max_steps: int = 250,
    seed: int = 0,
    learning_rate: float = 2e-3,
    progress: bool = False,
) -> TrainResult:
    """LoRA-fine-tune the tiny-reader base on a dataset as the demo does (its config saved)."""
    from finetune.train import TrainConfig, save_train_config, train

    config = TrainConfig(
        student=STUDENT,
        dataset=dataset,
        output_dir=out,
        max_steps=max_steps,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=1,
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        warmup_ratio=0.1,
        lora_r=16,
        lora_alpha=32,
        logging_steps=10,
        eval_steps=None,
        save_steps=max_steps + 1,  # none on the way (the Trainer still saves the last)
        gradient_checkpointing=False,  # nothing to save at this size, and 2x faster
        seed=seed,
        sft_args={"adam_beta2": 0.95},  # as the crop ablation (bench/crop_ablation.py)
    )
    out.mkdir(parents=True, exist_ok=True)
    save_train_config(config, out / "train_config.yaml")
    return train(config, progress=progress)


def held_out_catalog(catalog_path: Path, run_dir: Path, split: str = "test") -> Path:
    """A catalog file of the run's held-out items (the recorded split), beside the catalog."""
    with RunStore(run_dir, create=False) as store:
        held_out = {i for i, s in store.recorded_splits().items() if s == split}
    out = catalog_path.with_name(f"{split}-items.jsonl")
    lines = [
        line
        for line in catalog_path.read_text(encoding="utf-8").splitlines()
        if line.strip() and json.loads(line)["item_id"] in held_out
    ]
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def _serve(
    summary: DemoSummary, catalog_path: Path, run_dir: Path, image_tokens: int, progress: bool
) -> None:
    """Predict the held-out items through the bundle and score them like the dataset."""
    from toolkit.crops.coverage import covered_boxes
    from toolkit.report import write_report

    assert summary.bundle is not None
    held_out = held_out_catalog(catalog_path, run_dir)
    predictions = summary.workdir / "predict" / "held-out.jsonl"
    predicted = run_predict(held_out, summary.bundle, predictions, batch_size=8, progress=progress)
    [served] = run_score_predictions(
        [predictions], run_dir, summary.workdir / "eval-served", ["served"], split="test"
    )
    summary.evaluation.append(served)
    workdir = predictions.with_suffix(".work")
    covered: list[bool] = []
    with RunStore(workdir, create=False) as store:
        for item in store.items():
            crops = store.crops(item.item_id)
            teacher = [_box(b) for b in item.reference_boxes]
            covered += covered_boxes(teacher, crops)
        summary.predictions_report = write_report(store, workdir / "report.html")
    mean_images = (predicted.stats.get("images_per_item") or {}).get("mean")
    summary.served = demo_row(
        "served: predict via the bundle",
        served,
        [mean_images] if mean_images is not None else None,
        image_tokens,
    )
    summary.predictions = predicted.out
    summary.served_coverage = sum(covered) / len(covered) if covered else None


def _box(reference: dict[str, Any]) -> Box:
    """A catalog's reference box as a Box."""
    from toolkit.boxes import Box

    x1, y1, x2, y2 = (float(v) for v in reference["xyxy"])
    return Box(int(reference["image"]), x1, y1, x2, y2, label=str(reference.get("label", "")))


class _Clock:
    """Context manager factory recording wall time per stage name."""

    def __init__(self, record: dict[str, float]) -> None:
        self.record = record

    def __call__(self, name: str) -> _Clock:
        self.name = name
        return self

    def __enter__(self) -> None:
        self.started = time.perf_counter()
        logger.info("demo: %s", self.name)

    def __exit__(self, *exc: object) -> None:
        self.record[self.name] = time.perf_counter() - self.started
