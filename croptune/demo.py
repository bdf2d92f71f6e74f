"""`croptune demo`: the whole recipe offline on the synthetic catalog, stage after stage."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from croptune.figures import distribution, format_distribution
from croptune.pipeline import run_crop, run_dataset, run_evaluate, run_label
from toolkit.crops import CropConfig
from toolkit.dataset import DatasetConfig
from toolkit.store import RunStore

if TYPE_CHECKING:
    from finetune.evaluate import EvaluationResult

logger = logging.getLogger(__name__)


@dataclass
class DemoSummary:
    """The demo's headline numbers, one per stage."""

    workdir: Path
    items: int = 0
    labeled: int = 0
    boxes: int = 0
    crops: int = 0
    images_before: dict[str, float] = field(default_factory=dict)
    images_after: dict[str, float] = field(default_factory=dict)
    examples: dict[str, int] = field(default_factory=dict)
    first_loss: float | None = None
    last_loss: float | None = None
    train_steps: int = 0
    f1: float | None = None
    base_f1: float | None = None
    json_valid: float | None = None
    evaluation: list[EvaluationResult] = field(default_factory=list)  # base and student results
    adapter: Path | None = None
    bundle: Path | None = None
    report: Path | None = None
    errors: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def rows(self) -> list[tuple[str, str]]:
        """(what, value) rows of the summary table."""

        loss = (
            f"{self.first_loss:.3f} -> {self.last_loss:.3f} ({self.train_steps} steps)"
            if self.first_loss is not None and self.last_loss is not None
            else "n/a"
        )
        return [
            ("items labeled", f"{self.labeled} of {self.items} ({self.errors} errors)"),
            ("teacher boxes", str(self.boxes)),
            ("crops", str(self.crops)),
            ("images per item, one crop per box", format_distribution(self.images_before)),
            ("images per item, enclosing squares", format_distribution(self.images_after)),
            ("examples train/validation/test", "/".join(str(v) for v in self.examples.values())),
            ("train loss first -> last", loss),
            (
                "field F1 on test (micro)",
                "n/a"
                if self.f1 is None
                else f"student {self.f1:.3f}, base "
                + ("n/a" if self.base_f1 is None else f"{self.base_f1:.3f}"),
            ),
            ("JSON valid on test", "n/a" if self.json_valid is None else f"{self.json_valid:.2f}"),
            ("review page", str(self.report)),
            ("adapter", str(self.adapter)),
            ("bundle", str(self.bundle)),
            ("time per stage (s)", ", ".join(f"{k} {v:.1f}" for k, v in self.seconds.items())),
        ]


def run_demo(
    workdir: Path,
    n_items: int = 30,
    max_steps: int = 60,
    seed: int = 0,
    progress: bool = False,
) -> DemoSummary:
    """The whole recipe offline on the synthetic example catalog, with the reference teacher."""
    from croptune.synthetic.catalog import make_example_catalog
    from finetune.export.writer import export_bundle
    from finetune.infer import TransformersBackend
    from finetune.models import base_model_of
    from finetune.train import TrainConfig, save_train_config, train
    from teacher_labeling.teachers import LabelConfig, TeacherConfig

    summary = DemoSummary(workdir=workdir)
    clock = _Clock(summary.seconds)
    run_dir, dataset_dir = workdir / "run", workdir / "dataset"

    with clock("catalog"):
        catalog_path = make_example_catalog(workdir / "catalog", n_items=n_items, seed=seed)
    label_config = LabelConfig(
        teachers=[TeacherConfig(name="reference", role="both", kind="reference", coords="pixels")]
    )
    with clock("label"):
        ingest, labels = run_label(catalog_path, label_config, run_dir, progress=progress)
    summary.items = ingest.stored + ingest.unchanged + ingest.dropped
    summary.errors = len(ingest.errors) + labels.failed
    with clock("crop"):
        crops = run_crop(run_dir, CropConfig(), progress)
    with RunStore(run_dir, create=False) as store, clock("report"):
        from toolkit.report import write_report

        summary.labeled = sum(1 for item in store.items() if store.final_attributes(item.item_id))
        summary.report = write_report(store, run_dir / "report.html")
    summary.boxes, summary.crops = crops.boxes, crops.made + crops.existing
    summary.images_before = distribution(crops.images_per_box_crop)
    summary.images_after = distribution(crops.images_after)
    with clock("dataset"):
        dataset = run_dataset(run_dir, dataset_dir, DatasetConfig(seed=seed), progress)
    summary.examples = dataset.examples

    train_config = TrainConfig(
        student="tiny",
        dataset=str(dataset_dir),
        output_dir=str(workdir / "train"),
        max_steps=max_steps,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        learning_rate=2e-3,  # a random-weight toy: a large rate shows the loss moving
        warmup_ratio=0.0,
        logging_steps=5,
        eval_steps=max(1, max_steps // 2),
        gradient_checkpointing=False,  # nothing to save at this size, and 2x faster
        seed=seed,
    )
    (workdir / "train").mkdir(parents=True, exist_ok=True)
    save_train_config(train_config, workdir / "train" / "train_config.yaml")
    with clock("train"):
        result = train(train_config, progress=progress)
    summary.first_loss, summary.last_loss = result.first_loss, result.last_loss
    summary.train_steps, summary.adapter = result.steps, result.adapter_dir

    with clock("evaluate"):
        base = base_model_of(result.adapter_dir)
        summary.evaluation = run_evaluate(
            [
                TransformersBackend(base, name=f"base ({base})"),
                TransformersBackend(base, result.adapter_dir, name="student (LoRA)"),
            ],
            dataset_dir,
            workdir / "eval",
            progress=progress,
        )
    summary.base_f1 = summary.evaluation[0].as_dict()["micro"]["f1"]
    metrics = summary.evaluation[1].as_dict()
    summary.f1, summary.json_valid = metrics["micro"]["f1"], metrics["json_valid_rate"]
    with clock("export"):
        summary.bundle = export_bundle(result.adapter_dir, workdir / "bundle", metrics=metrics)
    (workdir / "demo_summary.json").write_text(json.dumps(dict(summary.rows()), indent=2))
    return summary


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
