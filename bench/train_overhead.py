"""Training overhead: `croptune train` vs a bare TRL SFTTrainer script, and tokens per strategy.

Setup (not timed): the bundled example catalog (30 items) labeled offline by the reference
teacher, cropped (enclosing squares, pHash, budget 9), and built into one dataset per strategy
(originals, crops, originals+crops) by croptune's dataset builder: the steps of `croptune demo`.

Part 1. croptune's training entry point, finetune.train.train(TrainConfig) called in this
process, against the straight-line TRL script (SFTTrainer + SFTConfig + LoraConfig) on the same
tiny Gemma 3, the same originals+crops dataset and the same settings. Only the training loop is
timed (on_train_begin -> on_train_end): model loading and trainer set-up are reported apart.
Runs are interleaved (croptune, bare, croptune, bare, ...) after one untimed warm-up of each.

Part 2. Per strategy: images, prompt, image and completion tokens per example (TRL's vision
collator with the student's processor on every train row, i.e. exactly what is trained), and
croptune's steps/s; plus the CPU cost of preparing the same images at Gemma 3's 896x896.

Part 3. An ESTIMATE (arithmetic, not a measurement) of what the strategies cost when training
Gemma-3-4B with LoRA on one H100, from the measured images and tokens per example.

    python bench/train_overhead.py                       # ~3-4 minutes on 2 cores
    python bench/train_overhead.py --steps 20 --repeats 2
    python bench/train_overhead.py --workdir /tmp/tob    # keeps (and reuses) the built datasets
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STRATEGIES = ("originals", "crops", "originals+crops")
OVERHEAD_STRATEGY = "originals+crops"  # the paper's best student, and croptune's default
SEED = 0
LEARNING_RATE = 2e-4
LOGGING_STEPS = 10
LORA_R, LORA_ALPHA, LORA_DROPOUT = 8, 16, 0.05

# Gemma-3-4B (google/gemma-3-4b-it config.json) for the estimate.
G4B_LAYERS, G4B_HIDDEN, G4B_FFN, G4B_Q_DIM, G4B_KV_DIM = 34, 2560, 10240, 8 * 256, 4 * 256
G4B_VOCAB, G4B_WINDOW, G4B_GLOBAL_EVERY = 262_208, 1024, 6  # 5 sliding layers, then 1 global
SIGLIP_LAYERS, SIGLIP_HIDDEN, SIGLIP_FFN = 27, 1152, 4304
SIGLIP_PATCHES = (896 // 14) ** 2  # 4096 patches, average-pooled to 256 soft tokens afterwards
G4B_IMAGE_TOKENS = 256
H100_BF16_DENSE = 989e12  # H100 SXM, dense bf16 tensor-core peak, FLOP/s
MFU_RANGE = (0.35, 0.40)


def sandbox(workdir: Path) -> None:
    """Offline, and nothing written to the home folder (as tests/conftest.py does)."""
    for name, value in {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "TOKENIZERS_PARALLELISM": "false",
    }.items():
        os.environ[name] = value
    # A cache given by the caller is kept (so the tiny student is not rebuilt).
    for name, sub in {
        "HF_HOME": "hf",
        "MPLCONFIGDIR": "mpl",
        "YOLO_CONFIG_DIR": "yolo",
        "CROPTUNE_CACHE": "croptune-cache",
    }.items():
        os.environ.setdefault(name, str(workdir / sub))
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)


# Setup: the demo's offline pipeline, once
def build_datasets(workdir: Path) -> dict[str, Path]:
    """Example catalog -> reference labels -> crops -> one dataset per strategy."""
    from croptune.pipeline import run_crop, run_dataset, run_label
    from croptune.synthetic.catalog import make_example_catalog
    from teacher_labeling.teachers import LabelConfig, TeacherConfig
    from toolkit.crops import CropConfig
    from toolkit.dataset import DatasetConfig

    folders = {s: workdir / f"dataset-{s.replace('+', '-')}" for s in STRATEGIES}
    if all((folder / "croptune_dataset.json").is_file() for folder in folders.values()):
        return folders
    catalog = make_example_catalog(workdir / "catalog", n_items=30, seed=SEED)
    label = LabelConfig(
        teachers=[TeacherConfig(name="reference", role="both", kind="reference", coords="pixels")]
    )
    run_dir = workdir / "run"
    run_label(catalog, label, run_dir)
    run_crop(run_dir, CropConfig())
    for strategy, folder in folders.items():
        run_dataset(run_dir, folder, DatasetConfig(strategy=strategy, seed=SEED))
    return folders


# Timing
def loop_timer() -> Any:
    """A callback timing the training loop alone, from on_train_begin to on_train_end."""
    from transformers import TrainerCallback

    class LoopTimer(TrainerCallback):
        def __init__(self) -> None:
            self.created = time.perf_counter()
            self.began = self.seconds = self.cpu_began = self.cpu_seconds = 0.0
            self.steps = 0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.began = time.perf_counter()
            self.cpu_began = time.process_time()

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.seconds = time.perf_counter() - self.began
            # CPU seconds of this process: less sensitive to other jobs than wall time (threads
            # spinning while they wait for a busy core still count).
            self.cpu_seconds = time.process_time() - self.cpu_began
            self.steps = state.global_step

        @property
        def startup(self) -> float:
            return self.began - self.created

        @property
        def steps_per_second(self) -> float:
            return self.steps / self.seconds

    return LoopTimer()


def run_croptune(dataset: Path, out: Path, settings: argparse.Namespace) -> dict[str, Any]:
    """croptune's training entry point, in this process."""
    from finetune.train import TrainConfig, train

    timer = loop_timer()
    config = TrainConfig(
        student="tiny",
        dataset=dataset,
        output_dir=out,
        max_steps=settings.steps,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum,
        learning_rate=LEARNING_RATE,
        warmup_ratio=0.0,
        logging_steps=LOGGING_STEPS,
        gradient_checkpointing=settings.gradient_checkpointing,
        seed=SEED,
        lora_r=LORA_R,
        lora_alpha=LORA_ALPHA,
        lora_dropout=LORA_DROPOUT,
    )
    result = train(config, callbacks=[timer])
    return _timing(timer, result.losses, result.adapter_dir, settings)


def run_bare(dataset: Path, out: Path, settings: argparse.Namespace) -> dict[str, Any]:
    """What one writes by hand with TRL: load, SFTTrainer(...), train(), save."""
    timer = loop_timer()  # created first: start-up counts the model load, as for croptune
    import torch
    from datasets import load_from_disk
    from peft import LoraConfig
    from transformers import AutoModelForImageTextToText, AutoProcessor, set_seed
    from trl import SFTConfig, SFTTrainer

    from finetune.students import resolve_student
    from finetune.train import TrainConfig
    from finetune.train.config import LANGUAGE_MODEL_LORA_TARGET

    model_path = resolve_student("croptune:tiny")
    set_seed(SEED)
    processor = AutoProcessor.from_pretrained(model_path)
    model = AutoModelForImageTextToText.from_pretrained(
        model_path, dtype=torch.float32, attn_implementation="eager"
    )
    train_dataset = load_from_disk(str(dataset))["train"]
    # croptune checkpoints every save_steps (when it has the option): do the same work here.
    saving = {
        key: TrainConfig.model_fields[key].default
        for key in ("save_steps", "save_total_limit")
        if key in TrainConfig.model_fields
    }
    args = SFTConfig(
        output_dir=str(out),
        max_steps=settings.steps,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum,
        learning_rate=LEARNING_RATE,
        logging_steps=LOGGING_STEPS,
        seed=SEED,
        bf16=False,
        gradient_checkpointing=settings.gradient_checkpointing,
        max_length=None,
        completion_only_loss=True,
        report_to="none",
        disable_tqdm=True,
        **saving,
    )
    lora = LoraConfig(
        r=LORA_R,
        lora_alpha=LORA_ALPHA,
        lora_dropout=LORA_DROPOUT,
        target_modules=LANGUAGE_MODEL_LORA_TARGET,
        task_type="CAUSAL_LM",
    )
    trainer = SFTTrainer(
        model,
        args=args,
        train_dataset=train_dataset,
        processing_class=processor,
        peft_config=lora,
        callbacks=[timer],
    )
    with contextlib.redirect_stdout(io.StringIO()):  # the Trainer print()s its log dicts
        trainer.train()
    trainer.save_model(str(out / "adapter"))
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return _timing(timer, losses, out / "adapter", settings)


def _timing(
    timer: Any, losses: list[float], adapter: Path, settings: argparse.Namespace
) -> dict[str, Any]:
    assert timer.steps == settings.steps, (timer.steps, settings.steps)
    gc.collect()  # the finished trainer's model and optimizer, before the next run
    return {
        "steps_per_s": timer.steps_per_second,
        "steps_per_cpu_s": timer.steps / timer.cpu_seconds,
        "examples_per_s": timer.steps_per_second * settings.batch_size * settings.grad_accum,
        "startup_s": timer.startup,
        "last_loss": losses[-1] if losses else None,
        "adapter": adapter,
    }


def adapter_difference(first: Path, second: Path) -> float:
    """Largest absolute difference between two saved LoRA adapters' weights."""
    from safetensors.torch import load_file

    a = load_file(str(first / "adapter_model.safetensors"))
    b = load_file(str(second / "adapter_model.safetensors"))
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    return max(float((a[key] - b[key]).abs().max()) for key in a)


def spread(values: list[float]) -> float:
    """(max - min) / median."""
    return (max(values) - min(values)) / statistics.median(values)


# Tokens and images per example
def token_stats(dataset: Path) -> dict[str, list[int]]:
    """Per train row: images, input ids, image soft tokens, completion tokens, as trained."""
    from datasets import load_from_disk
    from transformers import AutoProcessor
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from finetune.students import resolve_student

    processor = AutoProcessor.from_pretrained(resolve_student("croptune:tiny"))
    collator = DataCollatorForVisionLanguageModeling(
        processor, completion_only_loss=True, max_length=None
    )
    image_token = processor.tokenizer.convert_tokens_to_ids(processor.tokenizer.image_token)
    stats: dict[str, list[int]] = {"images": [], "input": [], "image": [], "completion": []}
    for row in load_from_disk(str(dataset))["train"]:
        stats["images"].append(len(row["images"]))
        batch = collator([row])  # one row: no padding
        ids = batch["input_ids"][0]
        stats["input"].append(int(ids.numel()))
        stats["image"].append(int((ids == image_token).sum()))
        stats["completion"].append(int((batch["labels"][0] != -100).sum()))  # trained tokens
    stats["prompt"] = [i - c for i, c in zip(stats["input"], stats["completion"], strict=True)]
    stats["text"] = [i - m for i, m in zip(stats["input"], stats["image"], strict=True)]
    return stats


def prep_ms_at_896(dataset: Path) -> tuple[float, float]:
    """CPU ms per example and per image to decode a row and preprocess it at 896x896."""
    from datasets import load_from_disk
    from transformers import AutoProcessor

    from finetune.students import resolve_student

    tiny = AutoProcessor.from_pretrained(resolve_student("croptune:tiny")).image_processor
    # The same image processor class Gemma-3-4B loads, at its size; no pan & scan.
    image_processor = copy.deepcopy(tiny)
    image_processor.size = type(tiny.size)(height=896, width=896)
    image_processor.do_pan_and_scan = False
    split = load_from_disk(str(dataset))["train"]
    started = time.perf_counter()
    n_images = 0
    for index in range(len(split)):
        images = split[index]["images"]  # PNG/JPEG decode happens here
        image_processor(images=images, return_tensors="pt")
        n_images += len(images)
    seconds = time.perf_counter() - started
    return 1000 * seconds / len(split), 1000 * seconds / n_images


# The Gemma-3-4B estimate
def lm_flops_per_token() -> float:
    """Matmul FLOPs of one forward token through Gemma-3-4B's decoder and (tied) lm_head."""
    attention = G4B_HIDDEN * (2 * G4B_Q_DIM + 2 * G4B_KV_DIM)  # q, o and k, v projections
    mlp = 3 * G4B_HIDDEN * G4B_FFN
    return 2 * (G4B_LAYERS * (attention + mlp) + G4B_HIDDEN * G4B_VOCAB)


def lm_attention_flops(tokens: float) -> float:
    """Forward FLOPs of the attention scores (QK^T and AV), causal, with the sliding window."""
    n_global = G4B_LAYERS // G4B_GLOBAL_EVERY
    n_local = G4B_LAYERS - n_global
    # Keys seen, summed over positions: T^2/2 causal; T*W - W^2/2 within a window W < T.
    global_pairs = tokens * tokens / 2
    window = min(G4B_WINDOW, tokens)
    local_pairs = tokens * window - window * window / 2
    return 4 * G4B_Q_DIM * (n_global * global_pairs + n_local * local_pairs)


def siglip_flops_per_image() -> float:
    """Forward FLOPs of the SigLIP tower on one 896x896 image (4096 patches)."""
    per_patch = 2 * SIGLIP_LAYERS * (4 * SIGLIP_HIDDEN**2 + 2 * SIGLIP_HIDDEN * SIGLIP_FFN)
    scores = 4 * SIGLIP_LAYERS * SIGLIP_HIDDEN * SIGLIP_PATCHES**2  # bidirectional
    return per_patch * SIGLIP_PATCHES + scores


def flops_per_example(images: float, tokens: float, checkpointing: bool) -> float:
    """LoRA training FLOPs of one example on Gemma-3-4B (frozen base, frozen vision tower)."""
    # Weights: forward 1x; backward computes activation gradients only (the base is frozen):
    # 1x more; gradient checkpointing recomputes the forward: 1x more. Attention scores have
    # no weights, but their backward needs gradients of both operands: 2x. LoRA's own matmuls
    # are ignored (r=8: ~0.5% of the base's).
    passes = 3 if checkpointing else 2
    lm = passes * lm_flops_per_token() * tokens + (passes + 1) * lm_attention_flops(tokens)
    # No trainable weight before the LM: the tower runs forward only, once.
    return lm + images * siglip_flops_per_image()


def print_estimate(rows: list[tuple[str, dict[str, list[int]]]], prep_ms: dict[str, float]) -> None:
    print("\nESTIMATE, not a measurement: Gemma-3-4B + LoRA on one H100 SXM (bf16)")
    print("Assumptions:")
    print(f"  - {G4B_IMAGE_TOKENS} image tokens per image (896x896, pan & scan off) whatever "
          "its size; images per example as measured above")  # fmt: skip
    print("  - text tokens per example = the tiny student's count (1k-token BPE): only a "
          "proxy; Gemma's 262k vocabulary likely needs fewer")  # fmt: skip
    print(f"  - decoder + tied lm_head: {lm_flops_per_token() / 2:.2e} matmul params per token; "
          "attention scores counted (5 of 6 layers on a 1024-token window)")  # fmt: skip
    print("  - LoRA on the language model: forward + activation-gradient backward = 4 x params "
          "x tokens (2/3 of full fine-tuning's 6x), +2x for gradient checkpointing (croptune's "
          "default); LoRA's own small matmuls ignored")  # fmt: skip
    print(f"  - SigLIP tower: forward only (frozen, no LoRA), {SIGLIP_PATCHES} patches per image "
          f"= {siglip_flops_per_image() / 1e12:.1f} TFLOP per image")  # fmt: skip
    print(f"  - H100 SXM {H100_BF16_DENSE / 1e12:.0f} TFLOP/s dense bf16 at an assumed MFU of "
          f"{MFU_RANGE[0]:.0%}-{MFU_RANGE[1]:.0%}; batch padding, optimizer step, data loading "
          "ignored (see the last column)")  # fmt: skip
    low, high = (H100_BF16_DENSE * m for m in MFU_RANGE)
    print(
        "strategy        | images/ex | tokens/ex (image + text) | TFLOP/ex (ckpt on / off) "
        "| examples/s (ckpt on) | h per 10k ex/epoch (ckpt on) | + serial CPU prep: ex/s"
    )
    for strategy, stats in rows:
        images = statistics.fmean(stats["images"])
        text = statistics.fmean(stats["text"])
        tokens = images * G4B_IMAGE_TOKENS + text
        on = flops_per_example(images, tokens, checkpointing=True)
        off = flops_per_example(images, tokens, checkpointing=False)
        fast, slow = high / on, low / on
        # With dataloader_num_workers=0 (the Trainer's default) image preparation runs between
        # steps in the training process: its CPU time adds to every example's GPU time.
        prep = prep_ms[strategy] / 1000
        serial = f"{1 / (1 / slow + prep):.2f}-{1 / (1 / fast + prep):.2f}"
        print(
            f"{strategy:15} | {images:9.2f} | {tokens:6.0f} ({images * G4B_IMAGE_TOKENS:4.0f} + "
            f"{text:3.0f})     | {on / 1e12:6.1f} / {off / 1e12:5.1f}           "
            f"| {slow:5.2f}-{fast:5.2f}          | {1e4 / fast / 3600:4.2f}-{1e4 / slow / 3600:4.2f}"
            f"                    | {serial}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per run")
    parser.add_argument("--repeats", type=int, default=5, help="croptune/bare pairs")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument(
        "--gradient-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="off by default: the tiny model has nothing to save (croptune's default is on)",
    )
    parser.add_argument(
        "--threads", type=int, help="torch intra-op threads (default: torch's own choice)"
    )
    parser.add_argument("--workdir", type=Path, help="keep the built datasets here (reused)")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        if args.workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="croptune-tob-")))
        else:
            workdir = args.workdir.resolve()
            workdir.mkdir(parents=True, exist_ok=True)
        sandbox(workdir)
        bench(args, workdir)


def bench(args: argparse.Namespace, workdir: Path) -> None:
    t0 = time.perf_counter()
    import torch
    from datasets.utils.logging import disable_progress_bar
    from transformers.utils import logging as transformers_logging

    if args.threads:
        torch.set_num_threads(args.threads)
    disable_progress_bar()
    transformers_logging.disable_progress_bar()  # "Loading weights" bars on every model load
    datasets = build_datasets(workdir)
    runs = workdir / "runs"
    shutil.rmtree(runs, ignore_errors=True)  # left by an earlier bench in the same workdir
    counter = iter(range(10_000))

    def out(name: str) -> Path:
        return runs / f"{name}-{next(counter)}"  # a fresh output_dir: never resume

    overhead_data = datasets[OVERHEAD_STRATEGY]
    setup = time.perf_counter() - t0
    warm = argparse.Namespace(**{**vars(args), "steps": max(2, args.steps // 4)})
    run_croptune(overhead_data, out("warm-croptune"), warm)
    run_bare(overhead_data, out("warm-bare"), warm)
    pairs = []
    for _ in range(args.repeats):
        ours = run_croptune(overhead_data, out("croptune"), args)
        bare = run_bare(overhead_data, out("bare"), args)
        pairs.append((ours, bare))

    n_train = len(token_stats(overhead_data)["images"])
    print(
        f"Training overhead on the tiny Gemma 3 (fp32, CPU, {os.cpu_count()} cores, torch "
        f"{torch.get_num_threads()} threads); datasets built offline in {setup:.0f} s (not timed)"
    )
    print(
        f"dataset {OVERHEAD_STRATEGY}: {n_train} train examples; batch {args.batch_size} x "
        f"grad-accum {args.grad_accum}, {args.steps} steps, lr {LEARNING_RATE}, no warm-up, LoRA "
        f"r {LORA_R} alpha {LORA_ALPHA} dropout {LORA_DROPOUT} on the language model, gradient "
        f"checkpointing {'on' if args.gradient_checkpointing else 'off'}, completion-only loss, "
        f"max_length None, seed {SEED}"
    )
    print(
        "croptune = finetune.train.train(TrainConfig) in this process (what `croptune train` "
        "calls); bare = SFTTrainer(model, args=SFTConfig(...), train_dataset, "
        "processing_class=processor, peft_config=LoraConfig(...)). Timed: on_train_begin -> "
        f"on_train_end; interleaved, after one untimed warm-up of each ({warm.steps} steps)."
    )
    print(
        "run | croptune steps/s | bare TRL steps/s | croptune / bare | steps per CPU-second: "
        "croptune | bare | croptune / bare"
    )
    for n, (ours, bare) in enumerate(pairs, 1):
        print(
            f"{n:3d} | {ours['steps_per_s']:16.2f} | {bare['steps_per_s']:16.2f} | "
            f"{ours['steps_per_s'] / bare['steps_per_s']:15.3f} | "
            f"{ours['steps_per_cpu_s']:30.2f} | {bare['steps_per_cpu_s']:4.2f} | "
            f"{ours['steps_per_cpu_s'] / bare['steps_per_cpu_s']:.3f}"
        )
    wall = {side: [p[k]["steps_per_s"] for p in pairs] for k, side in enumerate(("ours", "bare"))}
    cpu = {
        side: [p[k]["steps_per_cpu_s"] for p in pairs] for k, side in enumerate(("ours", "bare"))
    }
    ratios = [o / b for o, b in zip(wall["ours"], wall["bare"], strict=True)]
    cpu_ratios = [o / b for o, b in zip(cpu["ours"], cpu["bare"], strict=True)]
    ratio = statistics.median(wall["ours"]) / statistics.median(wall["bare"])
    cpu_ratio = statistics.median(cpu["ours"]) / statistics.median(cpu["bare"])
    print(
        f"median | {statistics.median(wall['ours']):13.2f} | "
        f"{statistics.median(wall['bare']):16.2f} | {ratio:15.3f} | "
        f"{statistics.median(cpu['ours']):30.2f} | {statistics.median(cpu['bare']):4.2f} | "
        f"{cpu_ratio:.3f}"
    )
    print(
        f"croptune / bare, steps/s of medians: {ratio:.3f} (target >= 0.95: "
        f"{'met' if ratio >= 0.95 else 'NOT met'}); per CPU-second: {cpu_ratio:.3f}"
    )
    print(
        f"run-to-run spread (max-min)/median, steps/s: croptune {spread(wall['ours']):.1%}, bare "
        f"{spread(wall['bare']):.1%}; per CPU-second: croptune {spread(cpu['ours']):.1%}, bare "
        f"{spread(cpu['bare']):.1%}; per-pair ratios {min(ratios):.3f}..{max(ratios):.3f} "
        f"(per CPU-second {min(cpu_ratios):.3f}..{max(cpu_ratios):.3f})"
    )
    print(
        "start-up before the first step (model load, trainer set-up), median: croptune "
        f"{statistics.median(p[0]['startup_s'] for p in pairs):.2f} s, bare "
        f"{statistics.median(p[1]['startup_s'] for p in pairs):.2f} s"
    )
    difference = max(adapter_difference(p[0]["adapter"], p[1]["adapter"]) for p in pairs)
    print(
        f"trained LoRA weights, croptune vs bare, largest difference over all pairs: "
        f"{difference:.1e} ({'identical' if difference == 0 else 'NOT identical'}: same model, "
        "data order, seed and settings); last logged loss croptune "
        f"{pairs[0][0]['last_loss']:.4f}, bare {pairs[0][1]['last_loss']:.4f}"
    )

    print("\nPer strategy: croptune train, same settings, one run each; tokens from TRL's "
          "collator with the tiny student's processor on every train row (the tiny student: "
          "16 image tokens per image), one row at a time (no padding)")  # fmt: skip
    print(
        "strategy        | train ex | images/ex mean max | prompt tok mean max | of which image "
        "tok mean max | completion tok mean max | steps/s | examples/s"
    )
    rows, prep_ms = [], {}
    for strategy in STRATEGIES:
        stats = token_stats(datasets[strategy])
        speed = run_croptune(datasets[strategy], out(f"strategy-{strategy}"), args)
        rows.append((strategy, stats))

        def mm(key: str, stats: dict[str, list[int]] = stats) -> str:
            return f"{statistics.fmean(stats[key]):7.1f} {max(stats[key]):5d}"

        print(
            f"{strategy:15} | {len(stats['images']):8d} | {mm('images')}      | {mm('prompt')}"
            f"       | {mm('image')}                | {mm('completion')}           | "
            f"{speed['steps_per_s']:7.2f} | {speed['examples_per_s']:10.2f}"
        )
    print("CPU preparation of the same rows at Gemma 3's 896x896 (decode + image processor, "
          "this machine):")  # fmt: skip
    for strategy in STRATEGIES:
        per_example, per_image = prep_ms_at_896(datasets[strategy])
        prep_ms[strategy] = per_example
        print(f"  {strategy:15} {per_example:6.0f} ms per example ({per_image:.0f} ms per image)")

    print_estimate(rows, prep_ms)
    print(f"\ntotal bench time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
