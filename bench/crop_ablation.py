"""Crop ablation: "it matters where you look", reproduced at CPU scale with croptune's own stages.

The paper's finding (Nulli et al., 2026): targeted crops let a small student read what a
downscaled photo hides. Here, on the synthetic certification-mark catalog
(croptune.synthetic.marks.make_marks_catalog: 448x448 photos, 1-4 per item, one carrying a
~40x28 px sticker with a ~14 px mark of CE / UKCA / FCC / RoHS), the same stages a user runs:

    reference teacher label -> crop (enclosing squares) -> dataset build, per strategy
    (originals, crops, originals+crops) -> train (tiny-scratch: ~1M-parameter random-init
    Gemma 3, every weight trained) -> evaluate (greedy generation, parsed, scored)

for several training seeds, through the Python entry points behind the CLI
(croptune.pipeline.run_label / run_crop / run_dataset / run_evaluate, finetune.train.train).
The student sees 112x112 images: the mark is ~3.5 px in a downscaled photo and ~30 px in
the crop (a ~53 px square: the sticker box, its 10% margin, min_side 48). A label-schema
file holding only regulatory_safety.certification_marks keeps the prompt shorter (the
answer is the same field of the compliance schema). Seeds vary the training data order;
every run starts from the same cached random initialisation of tiny-scratch.

Printed in one run: per strategy, test accuracy and field F1 on the mark (mean +- spread over
seeds), images and image tokens per example, train seconds; validation accuracy during
training is plotted against steps (docs/img/crop_ablation.png). Validation accuracy is
teacher-forced: which of the four mark tokens the model ranks first at the answer's mark
position (one forward pass); the test numbers come from real generation.

    python bench/crop_ablation.py                          # the documented run, ~17 min
    python bench/crop_ablation.py --items 200 --steps 100 --seeds 0   # a quick look
    python bench/crop_ablation.py --jobs 1                 # one training at a time
    python bench/crop_ablation.py --steps 1200 --strategies originals+crops   # longer

Trainings run in --jobs worker processes (default 2), each with one torch thread: on 2
cores two 1-thread runs side by side finish sooner than one 2-thread run after another.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import statistics
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STRATEGIES = ("originals", "crops", "originals+crops")
MARK_FIELD = "regulatory_safety.certification_marks"
STUDENT = "tiny-scratch"
# The compliance schema's certification_marks field alone (see the module docstring).
MARKS_SCHEMA = """\
name: marks
description: Certification marks on product photos (the crop ablation's task).
groups:
  regulatory_safety:
    certification_marks: {type: list, description: "Certification marks visible, e.g. CE, UKCA, FCC, RoHS"}
"""


@dataclass
class Settings:
    """One ablation run: data, training and evaluation settings."""

    workdir: Path
    items: int = 1000
    catalog_seed: int = 0
    validation_ratio: float = 0.1
    test_ratio: float = 0.2
    # CropConfig.min_side: 48 lets the square hug the ~44x32 px sticker box plus its 10%
    # margin (~53 px, as the smallest square around the sticker + ~6 px); croptune's default
    # 64 would pad it with background.
    crop_min_side: int = 48
    steps: int = 500
    seeds: tuple[int, ...] = (0, 1, 2)
    strategies: tuple[str, ...] = STRATEGIES
    batch_size: int = 8
    learning_rate: float = 1e-3
    scheduler: str = "cosine"
    # AdamW's second-moment decay. Transformers' default 0.999 remembers the large gradients of
    # the first ~100 steps (learning the constant JSON around the mark) for ~1000 steps, which
    # damps the small mark gradients after them. Crops, 400 steps, seed 0: validation accuracy
    # 0.53 with 0.999, 0.72 with 0.99, 1.00 with 0.95 (from-scratch LMs often use 0.95).
    adam_beta2: float = 0.95
    warmup_steps: int = 30
    eval_every: int = 50
    validation_limit: int | None = 64  # validation examples scored during training
    jobs: int = 2


@dataclass
class RunResult:
    """One (strategy, seed) training and its test evaluation."""

    strategy: str
    seed: int
    accuracy: float
    f1: float | None
    json_valid: float
    train_seconds: float
    eval_seconds: float
    curve: list[tuple[int, float, float]] = field(default_factory=list)  # step, accuracy, loss
    model_dir: str = ""


def log(message: str) -> None:
    """Progress of the bench on stderr, with a clock."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _quiet() -> None:
    """Offline, no progress bars, no third-party chatter (the bench prints its own lines)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING)
    for name in ("toolkit", "finetune", "teacher_labeling"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in ("transformers", "datasets", "bitsandbytes", "trl", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def _init_worker(threads: int) -> None:
    """A training worker: quiet, with its own share of the cores."""
    _quiet()
    import torch

    torch.set_num_threads(threads)


# ---------------------------------------------------------------- data


def prepare(settings: Settings) -> dict[str, Any]:
    """Catalog -> label (reference teacher) -> crop -> one dataset per strategy."""
    from croptune.pipeline import run_crop, run_dataset, run_label
    from croptune.synthetic.marks import make_marks_catalog
    from finetune.students import load_preset
    from teacher_labeling.teachers import LabelConfig
    from toolkit.crops import CropConfig
    from toolkit.dataset import DatasetConfig

    work = Path(settings.workdir)
    work.mkdir(parents=True, exist_ok=True)
    facts: dict[str, Any] = {"seconds": {}, "datasets": {}, "stats": {}}
    clock = time.perf_counter()
    catalog = make_marks_catalog(work / "catalog", settings.items, settings.catalog_seed)
    facts["seconds"]["catalog"] = time.perf_counter() - clock
    schema_file = work / "marks_schema.yaml"
    schema_file.write_text(MARKS_SCHEMA, encoding="utf-8")
    label_config = LabelConfig.model_validate(
        {
            "teachers": [
                {"name": "reference", "role": "both", "kind": "reference", "coords": "pixels"}
            ],
            "schema": str(schema_file),
        }
    )
    run_dir = work / "run"
    clock = time.perf_counter()
    ingest, labels = run_label(catalog, label_config, run_dir)
    facts["seconds"]["label"] = time.perf_counter() - clock
    if ingest.errors or labels.failed:
        raise RuntimeError(f"labeling failed: {ingest.errors} / {labels.failed} failed")
    clock = time.perf_counter()
    crops = run_crop(run_dir, CropConfig(min_side=settings.crop_min_side))
    facts["seconds"]["crop"] = time.perf_counter() - clock
    facts["crops"] = {"made": crops.made + crops.existing, "uncovered": crops.uncovered}
    image_tokens = load_preset(STUDENT).image_tokens
    for strategy in settings.strategies:
        out = work / f"dataset-{strategy.replace('+', '_')}"
        clock = time.perf_counter()
        summary = run_dataset(
            run_dir,
            out,
            DatasetConfig(
                strategy=strategy,
                validation_ratio=settings.validation_ratio,
                test_ratio=settings.test_ratio,
                image_tokens=image_tokens,
            ),
        )
        facts["seconds"][f"dataset {strategy}"] = time.perf_counter() - clock
        facts["datasets"][strategy] = str(out)
        facts["stats"][strategy] = {
            "examples": summary.examples,
            "images_per_example": statistics.fmean(summary.images_per_example),
            "image_tokens_per_example": statistics.fmean(summary.images_per_example) * image_tokens,
        }
    return facts


# ---------------------------------------------------------------- training


def mark_token_ids(processor: Any) -> dict[int, str]:
    """Token id -> mark, for the marks the student's vocabulary holds as one token each."""
    from croptune.synthetic.marks import MARK_CLASSES

    ids = {}
    for mark in MARK_CLASSES:
        encoded = processor.tokenizer(mark, add_special_tokens=False).input_ids
        if len(encoded) != 1:
            raise RuntimeError(f"{mark!r} is not one token of the student's vocabulary")
        ids[encoded[0]] = mark
    return ids


def mark_accuracy_callback(dataset_dir: Path, every: int, limit: int | None) -> Any:
    """A TrainerCallback scoring the validation split every `every` steps (and at 0 and the end).

    Accuracy: at the answer's mark token, whether the model ranks the right mark first among
    the four (teacher-forced, the exact training collation); loss: the answer's mean loss.
    """
    import torch
    from datasets import load_from_disk
    from transformers import TrainerCallback

    rows = load_from_disk(str(dataset_dir))["validation"]
    if limit is not None:
        rows = rows.select(range(min(limit, len(rows))))
    examples = [rows[i] for i in range(len(rows))]

    class MarkAccuracy(TrainerCallback):
        def __init__(self) -> None:
            self.curve: list[tuple[int, float, float]] = []
            self.collate = None
            self.ids: dict[int, str] = {}

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.collate = kwargs["train_dataloader"].collate_fn  # the trainer's own collator
            self.ids = mark_token_ids(kwargs["processing_class"])
            self.score(kwargs["model"], 0)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step % every == 0 or state.global_step >= state.max_steps:
                self.score(kwargs["model"], state.global_step)

        def score(self, model: Any, step: int) -> None:
            if self.curve and self.curve[-1][0] == step:
                return
            was_training = model.training
            model.eval()
            candidates = torch.tensor(sorted(self.ids))
            right = total = 0
            losses = []
            with torch.inference_mode():
                for start in range(0, len(examples), 16):
                    # The collator rewrites the messages it is given: fresh copies each time.
                    batch = self.collate(
                        [
                            {
                                **e,
                                "prompt": copy.deepcopy(e["prompt"]),
                                "completion": copy.deepcopy(e["completion"]),
                            }
                            for e in examples[start : start + 16]
                        ]
                    )
                    out = model(**batch)
                    losses.append(float(out.loss))
                    labels = batch["labels"]
                    for row in range(labels.shape[0]):
                        hits = torch.isin(labels[row], candidates).nonzero()
                        if len(hits) == 0:
                            continue
                        pos = int(hits[0])
                        logits = out.logits[row, pos - 1, candidates]
                        right += int(candidates[int(logits.argmax())] == labels[row, pos])
                        total += 1
            model.train(was_training)
            self.curve.append((step, right / max(1, total), statistics.fmean(losses)))

    return MarkAccuracy()


def train_and_evaluate(settings: Settings, strategy: str, seed: int, dataset_dir: str) -> RunResult:
    """Train tiny-scratch on one strategy's dataset with one seed, then score the test split."""
    from croptune.pipeline import run_evaluate
    from finetune.train import TrainConfig, save_train_config, train
    from toolkit.metrics import field_values

    out = Path(settings.workdir) / "runs" / f"{strategy.replace('+', '_')}-seed{seed}"
    out.mkdir(parents=True, exist_ok=True)
    config = TrainConfig(
        student=STUDENT,
        dataset=Path(dataset_dir),
        output_dir=out,
        tuning="full",
        max_steps=settings.steps,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=1,
        learning_rate=settings.learning_rate,
        lr_scheduler_type=settings.scheduler,
        warmup_ratio=min(0.5, settings.warmup_steps / settings.steps),
        logging_steps=settings.eval_every,
        eval_steps=None,  # the callback scores the validation split itself
        gradient_checkpointing=False,
        bf16=False,
        save_steps=settings.steps + 1,  # none on the way (the Trainer still saves the last)
        seed=seed,
        sft_args={"adam_beta2": settings.adam_beta2},
    )
    save_train_config(config, out / "train_config.yaml")
    callback = mark_accuracy_callback(
        Path(dataset_dir), settings.eval_every, settings.validation_limit
    )
    trained = train(config, callbacks=[callback])
    clock = time.perf_counter()
    [result] = run_evaluate(
        [str(trained.adapter_dir)],
        Path(dataset_dir),
        out / "eval",
        split="test",
        batch_size=16,
        max_new_tokens=32,
    )
    eval_seconds = time.perf_counter() - clock
    right = 0
    for answer in result.answers:
        predicted = field_values(answer["parsed"]).get(MARK_FIELD)
        right += int(
            predicted is not None and predicted == field_values(answer["reference"])[MARK_FIELD]
        )
    scores = result.as_dict()
    return RunResult(
        strategy=strategy,
        seed=seed,
        accuracy=right / len(result.answers),
        f1=scores["fields"].get(MARK_FIELD, {}).get("f1"),
        json_valid=scores["json_valid_rate"],
        train_seconds=trained.seconds,
        eval_seconds=round(eval_seconds, 2),
        curve=callback.curve,
        model_dir=str(trained.adapter_dir),
    )


def majority_rate(dataset_dir: str, split: str = "test") -> tuple[float, str]:
    """Share of the split's most common mark (what always answering it would score)."""
    from finetune.evaluate.data import load_split, split_references

    _, references = split_references(load_split(Path(dataset_dir), split))
    marks = [r["regulatory_safety"]["certification_marks"][0] for r in references]
    top = max(set(marks), key=marks.count)
    return marks.count(top) / len(marks), top


def run_ablation(settings: Settings) -> dict[str, Any]:
    """The whole ablation; returns data facts, per-run results and the summary rows."""
    _quiet()
    from finetune.students import load_preset, resolve_student

    started = time.perf_counter()
    resolve_student(load_preset(STUDENT).model)  # built once here, not by racing workers
    log(f"preparing {settings.items} items in {settings.workdir}")
    facts = prepare(settings)
    log(
        "data ready: "
        + ", ".join(f"{k} {v:.1f}s" for k, v in facts["seconds"].items())
        + f"; examples {facts['stats'][settings.strategies[0]]['examples']}"
    )
    tasks = [
        (strategy, seed, facts["datasets"][strategy])
        for seed in settings.seeds
        for strategy in settings.strategies
    ]
    results: list[RunResult] = []
    if settings.jobs <= 1:
        _init_worker(1)
        for strategy, seed, dataset_dir in tasks:
            results.append(train_and_evaluate(settings, strategy, seed, dataset_dir))
            log(_one_line(results[-1]))
    else:
        import multiprocessing

        with ProcessPoolExecutor(
            settings.jobs,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(1,),
        ) as pool:
            futures = [pool.submit(train_and_evaluate, settings, *task) for task in tasks]
            for future in futures:
                results.append(future.result())
                log(_one_line(results[-1]))
    majority, top = majority_rate(facts["datasets"][settings.strategies[0]])
    summary = {
        "settings": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()
        },
        "data": facts,
        "majority_rate": majority,
        "majority_mark": top,
        "runs": [asdict(r) for r in results],
        "rows": summary_rows(results, facts, settings.strategies),
        "total_seconds": time.perf_counter() - started,
    }
    (Path(settings.workdir) / "crop_ablation.json").write_text(json.dumps(summary, indent=2))
    return summary


def _one_line(result: RunResult) -> str:
    return (
        f"{result.strategy} seed {result.seed}: accuracy {result.accuracy:.3f}, "
        f"F1 {result.f1}, train {result.train_seconds:.0f}s, eval {result.eval_seconds:.0f}s"
    )


def _spread(values: list[float]) -> tuple[float, float]:
    """Mean and half the range (max - min) / 2 of the values."""
    return statistics.fmean(values), (max(values) - min(values)) / 2


def summary_rows(
    results: list[RunResult], facts: dict[str, Any], strategies: tuple[str, ...]
) -> list[dict[str, Any]]:
    """One row per strategy: means and spreads over the seeds."""
    rows = []
    for strategy in strategies:
        runs = [r for r in results if r.strategy == strategy]
        accuracy = _spread([r.accuracy for r in runs])
        f1 = _spread([r.f1 or 0.0 for r in runs])
        stats = facts["stats"][strategy]
        rows.append(
            {
                "strategy": strategy,
                "seeds": len(runs),
                "accuracy": accuracy[0],
                "accuracy_spread": accuracy[1],
                "accuracy_per_seed": [round(r.accuracy, 3) for r in runs],
                "f1": f1[0],
                "f1_spread": f1[1],
                "images_per_example": stats["images_per_example"],
                "image_tokens_per_example": stats["image_tokens_per_example"],
                "train_seconds": statistics.fmean(r.train_seconds for r in runs),
            }
        )
    return rows


def markdown_table(summary: dict[str, Any]) -> str:
    """The summary rows as a GitHub markdown table."""
    lines = [
        "| strategy | test accuracy on the mark (mean +- half-range) | per seed | field F1 on the mark "
        "| images / example | image tokens / example | train s / run |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in summary["rows"]:
        lines.append(
            f"| {row['strategy']} | {row['accuracy']:.3f} +- {row['accuracy_spread']:.3f} "
            f"| {' / '.join(f'{a:.3f}' for a in row['accuracy_per_seed'])} "
            f"| {row['f1']:.3f} +- {row['f1_spread']:.3f} "
            f"| {row['images_per_example']:.2f} | {row['image_tokens_per_example']:.0f} "
            f"| {row['train_seconds']:.0f} |"
        )
    return "\n".join(lines)


def plot(summary: dict[str, Any], path: Path) -> Path:
    """Validation accuracy against steps, one colour per strategy (mean line, seed range band)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 5), dpi=120)
    for strategy, colour in zip(STRATEGIES, ("tab:red", "tab:green", "tab:blue"), strict=True):
        curves = [r["curve"] for r in summary["runs"] if r["strategy"] == strategy]
        if not curves:
            continue
        steps = [point[0] for point in curves[0]]
        values = [[point[1] for point in curve] for curve in curves]
        mean = [statistics.fmean(column) for column in zip(*values, strict=True)]
        seeds = f"mean of {len(curves)} seeds, band: their range" if len(curves) > 1 else "1 seed"
        axis.plot(steps, mean, color=colour, label=f"{strategy} ({seeds})")
        if len(curves) > 1:
            low = [min(column) for column in zip(*values, strict=True)]
            high = [max(column) for column in zip(*values, strict=True)]
            axis.fill_between(steps, low, high, color=colour, alpha=0.15)
    axis.axhline(0.25, color="grey", linestyle=":", label="chance (4 marks)")
    axis.axhline(
        summary["majority_rate"], color="grey", linestyle="--", label="majority mark (test)"
    )
    axis.set_xlabel("training step (batch 8)")
    axis.set_ylabel("validation accuracy on the mark (teacher-forced)")
    axis.set_ylim(0, 1.02)
    axis.set_title("tiny-scratch student: where it looks decides what it reads")
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def main() -> None:
    """Run the ablation, print the table, save the plot."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/croptune-crop-ablation"))
    parser.add_argument("--items", type=int, default=Settings.items)
    parser.add_argument("--steps", type=int, default=Settings.steps)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(Settings.seeds))
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--eval-every", type=int, default=Settings.eval_every)
    parser.add_argument("--crop-min-side", type=int, default=Settings.crop_min_side)
    parser.add_argument("--adam-beta2", type=float, default=Settings.adam_beta2)
    parser.add_argument("--jobs", type=int, default=Settings.jobs, help="parallel trainings")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "img" / "crop_ablation.png")
    args = parser.parse_args()
    settings = Settings(
        workdir=args.workdir,
        items=args.items,
        steps=args.steps,
        seeds=tuple(args.seeds),
        strategies=tuple(args.strategies),
        eval_every=args.eval_every,
        adam_beta2=args.adam_beta2,
        crop_min_side=args.crop_min_side,
        jobs=args.jobs,
    )
    summary = run_ablation(settings)
    plot(summary, args.plot)
    examples = summary["data"]["stats"][settings.strategies[0]]["examples"]
    print(
        f"\nCrop ablation: {settings.items} items ({examples['train']} train / "
        f"{examples['validation']} validation / {examples['test']} test), student {STUDENT}, "
        f"{settings.steps} steps at batch {settings.batch_size}, seeds {list(settings.seeds)}, "
        f"{settings.jobs} parallel 1-thread trainings"
    )
    print(
        f"majority mark on test: {summary['majority_mark']} "
        f"({summary['majority_rate']:.3f}); chance 0.25\n"
    )
    print(markdown_table(summary))
    data_seconds = sum(summary["data"]["seconds"].values())
    print(
        f"\ndata preparation {data_seconds:.0f}s; whole bench {summary['total_seconds']:.0f}s; "
        f"plot: {args.plot}; details: {settings.workdir / 'crop_ablation.json'}"
    )


if __name__ == "__main__":
    main()
