"""GPU training throughput: LoRA on a real-size Gemma-3-4B (random weights) through croptune's train.

What runs: finetune.train.train(TrainConfig(student="gemma-3-4b-it", ...)), the entry point behind
`croptune train` (the same SFTConfig builder, LoRA config, TRL vision collator and image options),
given a model built in process from Gemma-3-4B's architecture (google/gemma-3-4b-it's config:
34 decoder layers of 2560, 262k vocabulary, SigLIP 27 x 1152 at 896x896, 256 soft tokens per
image) with RANDOM weights, so nothing is downloaded. Random weights cost what trained ones do.
Precision, attention kernel and gradient checkpointing are the preset's and croptune's defaults
(bf16 on a bf16 GPU, eager, checkpointing on).

Data: one synthetic dataset per strategy, saved in croptune's dataset format (prompt/completion
rows of `toolkit.dataset.example_row`): the example catalog's listings (the real extraction
prompt with the listing text, the reference attributes as the answer), with 4 / 3 / 7 images of
896x896 per example for originals / crops / originals+crops (docs/benchmarks.md's estimate
measured 4.10 / 3.05 / 6.90 on the example catalog). The processor is Gemma 3's (896x896, 256
image tokens, pan & scan off) around croptune's offline tiny tokenizer (1k BPE): text tokens are
a proxy, as in the estimate; image tokens are exact.

Printed per dataset: examples/s and tokens/s over the timed steps (after warm-up steps, CUDA
synchronised at both ends; image decoding and preprocessing in the data loader included, as in a
real run), peak GPU memory (torch.cuda.max_memory_allocated, weights included), and the ratio of
the measured examples/s to the estimate of docs/benchmarks.md (bench/train_overhead.py's FLOP
count at this run's images and tokens per example, at its assumed MFU range) with the MFU that the
measurement implies. Also checked: every LoRA tensor trained moved, the base stayed frozen.

Without CUDA it runs --tiny: croptune's tiny Gemma 3 architecture (random weights, 112x112, 16
image tokens), fp32, as a smoke test of this script; its speeds say nothing about a GPU.

    python bench/gpu_train.py                          # on a GPU: ~2-3 minutes
    python bench/gpu_train.py --steps 40 --batch-size 4 --datasets originals+crops
    python bench/gpu_train.py --dataloader-workers 4   # image preparation off the training loop
    python bench/gpu_train.py --tiny --steps 2         # the CPU smoke test (automatic without CUDA)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH.parent) not in sys.path:
    sys.path.insert(0, str(BENCH.parent))
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

# The estimate's model and assumptions: one source (docs/benchmarks.md, "ESTIMATE").
import train_overhead as estimate  # noqa: E402

DATASETS = ("originals", "crops", "originals+crops")
# The estimate's images per example (4.10 / 3.05 / 6.90, measured on the example catalog),
# rounded: every example of a dataset has the same count, so batches are not padded.
IMAGES_PER_EXAMPLE = {"originals": 4, "crops": 3, "originals+crops": 7}
PRESET_4B, PRESET_TINY = "gemma-3-4b-it", "tiny"
G4B_HEAD_DIM, G4B_VISION_HEADS = 256, 16
SIGLIP_IMAGE_SIZE, SIGLIP_PATCH = 896, 14  # the estimate's SIGLIP_PATCHES = (896 // 14) ** 2
LEARNING_RATE = 2e-4  # TrainConfig's default
SEED = 0
# Dense bf16 tensor-core peaks, FLOP/s, by a piece of the CUDA device name (first match wins).
# H200 has the H100 SXM's compute (more and faster memory).
BF16_PEAKS = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("A100", 312e12),
)


@dataclass
class DatasetRow:
    """What one dataset's training run measured."""

    dataset: str
    images_per_example: float
    tokens_per_example: float  # input ids per example, image soft tokens included
    image_tokens_per_example: float
    timed_steps: int
    seconds: float
    examples_per_s: float
    tokens_per_s: float
    last_loss: float | None
    peak_memory_bytes: int | None  # torch.cuda.max_memory_allocated; None on CPU
    memory_before_bytes: int | None  # still allocated when the run began (should be ~0)
    weight_bytes: int  # the base model's parameters and buffers
    lora_tensors: int
    lora_tensors_changed: int
    base_tensors: int
    base_tensors_changed: int
    trainable_not_lora: list[str] = field(default_factory=list)
    estimate_examples_per_s: tuple[float, float] | None = None  # at the low / high MFU
    measured_over_estimate: tuple[float, float] | None = None
    implied_mfu: float | None = None


@dataclass
class BenchResult:
    """The whole run: where it ran and one row per dataset."""

    device: str
    tiny: bool
    bf16: bool
    batch_size: int
    rows: list[DatasetRow]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="the tiny Gemma 3 architecture (a smoke test); automatic without a CUDA device",
    )
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per dataset")
    parser.add_argument(
        "--warmup-steps", type=int, default=3, help="untimed steps first (kernels, allocator)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=2, help="per_device_train_batch_size (TrainConfig's)"
    )
    parser.add_argument("--grad-accum", type=int, default=1, help="gradient_accumulation_steps")
    parser.add_argument(
        "--datasets", nargs="+", choices=DATASETS, default=list(DATASETS), help="which to train"
    )
    parser.add_argument(
        "--examples", type=int, default=8, help="distinct examples per dataset (cycled)"
    )
    parser.add_argument(
        "--gradient-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="on by default, as croptune and the Gemma-3-4B preset say",
    )
    parser.add_argument(
        "--attn-implementation", help="attention kernel (default: the preset's, eager); try sdpa"
    )
    parser.add_argument(
        "--dataloader-workers",
        type=int,
        default=0,
        help="dataloader_num_workers (sft_args); 0, the Trainer's default, prepares images "
        "between steps in the training process",
    )
    parser.add_argument(
        "--peak-tflops", type=float, help="this GPU's dense bf16 peak, if not in the known list"
    )
    parser.add_argument("--workdir", type=Path, help="keep datasets and runs here")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup_steps < 0 or args.examples < 1:
        parser.error("--steps and --examples must be >= 1, --warmup-steps >= 0")
    return args


def bf16_peak(device_name: str, given_tflops: float | None) -> tuple[float, str]:
    """The dense bf16 peak FLOP/s to compare against, and where the figure comes from."""
    if given_tflops:
        return given_tflops * 1e12, "--peak-tflops"
    for piece, peak in BF16_PEAKS:
        if piece in device_name:
            return peak, f"known peak of {piece}"
    return (
        estimate.H100_BF16_DENSE,
        "UNKNOWN GPU: the H100 SXM peak of the estimate, not this GPU's",
    )


# The student: architecture from a config, random weights, built on the device
def gemma3_4b_config(tokenizer: Any) -> Any:
    """Gemma-3-4B's Gemma3Config (google/gemma-3-4b-it), token ids from the given tokenizer."""
    from transformers import Gemma3Config, Gemma3TextConfig, SiglipVisionConfig

    def ids(token: str) -> int:
        return int(tokenizer.convert_tokens_to_ids(token))

    layer_types = [
        "full_attention" if (i + 1) % estimate.G4B_GLOBAL_EVERY == 0 else "sliding_attention"
        for i in range(estimate.G4B_LAYERS)
    ]
    text = Gemma3TextConfig(
        vocab_size=estimate.G4B_VOCAB,
        hidden_size=estimate.G4B_HIDDEN,
        intermediate_size=estimate.G4B_FFN,
        num_hidden_layers=estimate.G4B_LAYERS,
        num_attention_heads=estimate.G4B_Q_DIM // G4B_HEAD_DIM,
        num_key_value_heads=estimate.G4B_KV_DIM // G4B_HEAD_DIM,
        head_dim=G4B_HEAD_DIM,
        query_pre_attn_scalar=G4B_HEAD_DIM,
        sliding_window=estimate.G4B_WINDOW,
        layer_types=layer_types,
        rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        },
        pad_token_id=ids("<pad>"),
        eos_token_id=ids("<eos>"),
        bos_token_id=ids("<bos>"),
    )
    if estimate.SIGLIP_PATCHES != (SIGLIP_IMAGE_SIZE // SIGLIP_PATCH) ** 2:
        raise ValueError("the estimate's SigLIP patch count does not match this architecture")
    vision = SiglipVisionConfig(
        image_size=SIGLIP_IMAGE_SIZE,
        patch_size=SIGLIP_PATCH,
        hidden_size=estimate.SIGLIP_HIDDEN,
        intermediate_size=estimate.SIGLIP_FFN,
        num_hidden_layers=estimate.SIGLIP_LAYERS,
        num_attention_heads=G4B_VISION_HEADS,
        vision_use_head=False,
    )
    return Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=estimate.G4B_IMAGE_TOKENS,
        boi_token_index=ids(tokenizer.boi_token),
        eoi_token_index=ids(tokenizer.eoi_token),
        image_token_index=ids(tokenizer.image_token),
    )


def student_processor(tiny: bool) -> tuple[Any, Any]:
    """The processor and the model config: the tiny student's, or Gemma-3-4B's around its tokenizer."""
    from transformers import AutoConfig, AutoProcessor, Gemma3Processor

    from finetune.students import resolve_student

    tiny_path = resolve_student("croptune:tiny")  # built offline once into $CROPTUNE_CACHE
    processor = AutoProcessor.from_pretrained(tiny_path)
    if tiny:
        return processor, AutoConfig.from_pretrained(tiny_path)
    config = gemma3_4b_config(processor.tokenizer)
    # The same image processor class Gemma-3-4B loads, at its size; pan & scan off (its preset).
    image_processor = copy.deepcopy(processor.image_processor)
    side = config.vision_config.image_size
    image_processor.size = type(processor.image_processor.size)(height=side, width=side)
    image_processor.do_pan_and_scan = False
    processor = Gemma3Processor(
        image_processor=image_processor,
        tokenizer=processor.tokenizer,
        chat_template=processor.chat_template,
        image_seq_length=config.mm_tokens_per_image,
    )
    return processor, config


def build_model(config: Any, device: str, bf16: bool, attn_implementation: str) -> Any:
    """A model of this config with random weights, made directly on the device."""
    import torch
    from transformers import AutoModelForImageTextToText

    with torch.device(device):  # no 17 GB float32 copy on the CPU first
        model = AutoModelForImageTextToText.from_config(
            config,
            dtype=torch.bfloat16 if bf16 else torch.float32,
            attn_implementation=attn_implementation,
        )
    misplaced = {p.device.type for p in model.parameters()} - {torch.device(device).type}
    return model.to(device) if misplaced else model


# The data
def synthetic_dataset(out_dir: Path, images_per_example: int, examples: int, side: int) -> Path:
    """A croptune dataset folder: the example catalog's listings, each with N side x side images."""
    from datasets import Dataset, DatasetDict
    from PIL import ImageOps

    from croptune.synthetic.catalog import make_example_catalog
    from toolkit.catalog import load_catalog
    from toolkit.dataset import dataset_features, example_row
    from toolkit.dataset.rows import answer_text
    from toolkit.images import load_image
    from toolkit.schema import extraction_prompt, listing_text, load_schema

    catalog_path = out_dir.parent / f"catalog-{examples}" / "catalog.jsonl"
    if not catalog_path.is_file():
        make_example_catalog(catalog_path.parent, n_items=examples, seed=SEED)
    catalog = load_catalog(catalog_path)
    schema = load_schema("compliance")
    rows = []
    for item in catalog.items[:examples]:
        photos = [load_image(catalog.resolve(item, ref)).image for ref in item.images]
        # The item's photos, cycled, as squares of the tower's size: Gemma 3 spends 256 tokens
        # on an image whatever it shows, so only the count changes the cost.
        images = [
            ImageOps.fit(photos[k % len(photos)], (side, side)) for k in range(images_per_example)
        ]
        prompt = extraction_prompt(schema, listing_text(item.title, item.text))
        row = example_row(images, prompt, answer_text(item.attributes or {}))
        rows.append({"item_id": item.item_id, "category": item.category or "", **row})
    DatasetDict({"train": Dataset.from_list(rows, features=dataset_features())}).save_to_disk(
        str(out_dir)
    )
    return out_dir


# Measuring inside the Trainer's loop
def bench_callback(warmup_steps: int, total_steps: int, cuda: bool) -> Any:
    """A TrainerCallback: tokens per example (the trainer's own collator), the timed window,
    and which weights moved."""
    import torch
    from transformers import TrainerCallback

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()  # the GPU runs behind the Python loop

    def sample(tensor: Any) -> Any:
        # A strided slice: a changed base weight changes everywhere, and a full copy of a 4B
        # model would double its memory.
        flat = tensor.detach().reshape(-1)
        return flat[:: max(1, flat.numel() // 4096)].clone()

    class BenchCallback(TrainerCallback):
        def __init__(self) -> None:
            self.tokens: list[int] = []
            self.image_tokens: list[int] = []
            self.started = self.seconds = 0.0
            self.timed_steps = 0
            self.lora: dict[str, Any] = {}
            self.base: dict[str, Any] = {}
            self.trainable_not_lora: list[str] = []
            self.lora_changed = self.base_changed = 0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            loader, model = kwargs["train_dataloader"], kwargs["model"]
            image_token = model.config.image_token_id
            for index in range(len(loader.dataset)):  # one row at a time: no padding
                batch = loader.collate_fn([loader.dataset[index]])
                self.tokens.append(int(batch["attention_mask"].sum()))
                self.image_tokens.append(int((batch["input_ids"] == image_token).sum()))
            for name, param in model.named_parameters():
                if "lora_" in name:
                    self.lora[name] = param.detach().clone()
                else:
                    self.base[name] = sample(param)
                    if param.requires_grad:
                        self.trainable_not_lora.append(name)
            if warmup_steps == 0:
                sync()
                self.started = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == warmup_steps:
                sync()
                self.started = time.perf_counter()
            elif state.global_step == total_steps:
                sync()
                self.seconds = time.perf_counter() - self.started
                self.timed_steps = total_steps - warmup_steps

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            params = dict(kwargs["model"].named_parameters())
            self.lora_changed = sum(
                not before.equal(params[name].detach()) for name, before in self.lora.items()
            )
            self.base_changed = sum(
                not before.equal(sample(params[name])) for name, before in self.base.items()
            )

    return BenchCallback()


def train_one(
    name: str,
    dataset: Path,
    out_dir: Path,
    base: tuple[Any, Any],
    settings: argparse.Namespace,
    preset: str,
    cuda: bool,
    memory_before_build: int = 0,
) -> tuple[DatasetRow, float]:
    """One croptune training run on one dataset: its row (no estimate yet) and the FLOPs per
    example that the Gemma-3-4B estimate counts at its images and tokens."""
    import torch

    from finetune.train import TrainConfig, train

    total = settings.warmup_steps + settings.steps
    config = TrainConfig(
        student=preset,
        dataset=dataset,
        output_dir=out_dir,
        max_steps=total,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum,
        learning_rate=LEARNING_RATE,
        warmup_ratio=0.0,  # a first step at learning rate 0 would leave LoRA B at zero
        logging_steps=max(1, total // 4),
        save_steps=total + 1,  # no checkpoint inside the timed window; the adapter at the end
        gradient_checkpointing=settings.gradient_checkpointing,
        seed=SEED,
        sft_args=(
            {"dataloader_num_workers": settings.dataloader_workers}
            if settings.dataloader_workers
            else {}
        ),
    )
    model = base[0]
    memory_before = memory_before_build if cuda else None
    weight_bytes = sum(
        t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]
    )
    callback = bench_callback(settings.warmup_steps, total, cuda)
    result = train(config, callbacks=[callback], base=base)
    if callback.timed_steps != settings.steps:
        raise RuntimeError(f"{name}: timed {callback.timed_steps} steps, not {settings.steps}")
    examples = callback.timed_steps * settings.batch_size * settings.grad_accum
    n_rows = len(callback.tokens)
    tokens = sum(callback.tokens) / n_rows
    examples_per_s = examples / callback.seconds
    images = float(IMAGES_PER_EXAMPLE[name])
    row = DatasetRow(
        dataset=name,
        images_per_example=images,
        tokens_per_example=tokens,
        image_tokens_per_example=sum(callback.image_tokens) / n_rows,
        timed_steps=callback.timed_steps,
        seconds=callback.seconds,
        examples_per_s=examples_per_s,
        tokens_per_s=examples_per_s * tokens,
        last_loss=result.last_loss,
        peak_memory_bytes=torch.cuda.max_memory_allocated() if cuda else None,
        memory_before_bytes=memory_before,
        weight_bytes=weight_bytes,
        lora_tensors=len(callback.lora),
        lora_tensors_changed=callback.lora_changed,
        base_tensors=len(callback.base),
        base_tensors_changed=callback.base_changed,
        trainable_not_lora=callback.trainable_not_lora,
    )
    flops = estimate.flops_per_example(images, tokens, settings.gradient_checkpointing)
    return row, flops


def main(argv: list[str] | None = None) -> BenchResult:
    """Run the benchmark, print its table, and return what it measured."""
    args = parse_args(argv)
    with contextlib.ExitStack() as stack:
        if args.workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="croptune-gpu-")))
        else:
            workdir = args.workdir.resolve()
            workdir.mkdir(parents=True, exist_ok=True)
        estimate.sandbox(workdir)
        return bench(args, workdir)


def bench(args: argparse.Namespace, workdir: Path) -> BenchResult:
    """Build the datasets and the student, train on each dataset, print and return the rows."""
    started = time.perf_counter()
    import torch
    from datasets.utils.logging import disable_progress_bar
    from transformers.utils import logging as transformers_logging

    from finetune.students import load_preset
    from finetune.train import TrainConfig
    from finetune.train.arguments import use_bf16

    disable_progress_bar()
    transformers_logging.disable_progress_bar()
    cuda = torch.cuda.is_available()
    tiny = args.tiny or not cuda
    if not cuda and not args.tiny:
        print(
            "No CUDA device: running the tiny smoke test (--tiny); it measures this script, not a GPU."
        )
    preset = load_preset(PRESET_TINY if tiny else PRESET_4B)
    attn = args.attn_implementation or preset.attn_implementation
    device = "cuda" if cuda else "cpu"
    device_name = (
        torch.cuda.get_device_name(0) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    )
    processor, model_config = student_processor(tiny)
    # croptune's own precision rule (what load_base would load the preset in).
    bf16 = use_bf16(
        TrainConfig(dataset=workdir, output_dir=workdir, student=preset.name), preset.torch_dtype
    )
    side = model_config.vision_config.image_size
    peak, peak_source = bf16_peak(device_name, args.peak_tflops) if cuda else (0.0, "")
    print(
        f"Measured: LoRA training (r {TrainConfig.model_fields['lora_r'].default} on the language "
        "model, croptune's defaults) of "
        f"{'the tiny Gemma 3 architecture' if tiny else 'the Gemma-3-4B architecture'} with RANDOM "
        f"weights, on {device_name}, {'bf16' if bf16 else 'fp32'}, attention {attn}, batch "
        f"{args.batch_size} x grad-accum {args.grad_accum}, gradient checkpointing "
        f"{'on' if args.gradient_checkpointing else 'off'}, dataloader workers "
        f"{args.dataloader_workers}; through finetune.train.train (croptune train's entry point). "
        f"{args.steps} timed steps after {args.warmup_steps} warm-up steps per dataset; "
        f"{args.examples} distinct examples per dataset, images {side}x{side}, "
        f"{model_config.mm_tokens_per_image} image tokens each."
    )
    rows: list[DatasetRow] = []
    for name in args.datasets:
        dataset = synthetic_dataset(
            workdir / f"dataset-{name.replace('+', '-')}",
            IMAGES_PER_EXAMPLE[name],
            args.examples,
            side,
        )
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() if cuda else 0
        built = time.perf_counter()
        model = build_model(model_config, device, bf16, attn)
        print(
            f"{name}: model built in {time.perf_counter() - built:.1f} s; training ...", flush=True
        )
        row, flops = train_one(
            name, dataset, workdir / f"run-{name.replace('+', '-')}", (model, processor), args,
            preset.name, cuda, before,
        )  # fmt: skip
        del model
        if not tiny:
            low, high = (peak * mfu / flops for mfu in estimate.MFU_RANGE)
            row.estimate_examples_per_s = (low, high)
            row.measured_over_estimate = (row.examples_per_s / low, row.examples_per_s / high)
            row.implied_mfu = row.examples_per_s * flops / peak
        rows.append(row)
    print_table(rows, cuda, tiny, peak, peak_source)
    print(f"total {time.perf_counter() - started:.0f} s")
    return BenchResult(device_name, tiny, bf16, args.batch_size, rows)


def print_table(rows: list[DatasetRow], cuda: bool, tiny: bool, peak: float, source: str) -> None:
    """The per-dataset table, the weight checks, and how to read the ratios."""
    gib = 1024**3
    print(
        "\ndataset         | images/ex | tokens/ex (image + text) | examples/s | tokens/s "
        "| peak GPU memory GiB (weights) | estimate ex/s | measured/estimate | implied MFU"
    )
    for row in rows:
        text = row.tokens_per_example - row.image_tokens_per_example
        memory = (
            f"{row.peak_memory_bytes / gib:6.1f} ({row.weight_bytes / gib:4.1f})"
            if row.peak_memory_bytes is not None
            else "n/a (CPU)"
        )
        if row.estimate_examples_per_s and row.measured_over_estimate:
            est = "{:.2f}-{:.2f}".format(*row.estimate_examples_per_s)
            ratio = "{:.2f}-{:.2f}".format(*row.measured_over_estimate)
            mfu = f"{row.implied_mfu:.1%}"
        else:
            est = ratio = mfu = "n/a (tiny)"
        print(
            f"{row.dataset:15} | {row.images_per_example:9.0f} | {row.tokens_per_example:6.0f} "
            f"({row.image_tokens_per_example:4.0f} + {text:3.0f})     | {row.examples_per_s:10.2f} "
            f"| {row.tokens_per_s:8.0f} | {memory:29} | {est:13} | {ratio:17} | {mfu}"
        )
    for row in rows:
        loss = "n/a" if row.last_loss is None else f"{row.last_loss:.3f}"
        frozen = row.base_tensors_changed == 0 and not row.trainable_not_lora
        notes = [
            f"{row.timed_steps} steps in {row.seconds:.2f} s, last loss {loss}",
            f"LoRA tensors moved {row.lora_tensors_changed} of {row.lora_tensors}",
            f"base tensors moved {row.base_tensors_changed} of {row.base_tensors} "
            f"({'frozen' if frozen else 'NOT frozen'})",
        ]
        if row.trainable_not_lora:
            notes.append(f"trainable outside LoRA: {row.trainable_not_lora[:5]}")
        if row.last_loss is not None and not math.isfinite(row.last_loss):
            notes.append("LOSS NOT FINITE")
        if row.memory_before_bytes and row.memory_before_bytes > gib / 2:
            notes.append(
                f"{row.memory_before_bytes / gib:.1f} GiB were still allocated before its model "
                "was built: its peak includes them"
            )
        print(f"{row.dataset}: " + "; ".join(notes))
    if tiny:
        print(
            "\nSmoke test only: the tiny architecture on "
            + ("this GPU" if cuda else "the CPU")
            + "; the estimate (Gemma-3-4B on an H100) does not apply, so no ratio is printed."
        )
        return
    print(
        f"\nEstimate: docs/benchmarks.md's (bench/train_overhead.py flops_per_example at this "
        f"run's images and tokens per example), {peak / 1e12:.0f} TFLOP/s dense bf16 ({source}) "
        f"at an assumed MFU of {estimate.MFU_RANGE[0]:.0%}-{estimate.MFU_RANGE[1]:.0%}. "
        "measured/estimate: against the low / high end (1.00 = as estimated). implied MFU = "
        "measured examples/s x estimated FLOP per example / peak. Data-loader image preparation "
        "is in the measurement, not in the estimate; text tokens come from a 1k-token BPE "
        "(a proxy for Gemma's 262k vocabulary)."
    )


if __name__ == "__main__":
    main()
