"""LoRA fine-tuning of a student VLM with TRL's SFTTrainer on a croptune dataset."""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

from finetune.students import LORA_TARGETS, lora_targets
from toolkit.config import ConfigPath, dump_config, load_stage_config
from toolkit.dataset import dataset_features, example_row  # noqa: F401 - one row shape, re-exported
from toolkit.errors import CroptuneError

if TYPE_CHECKING:
    from transformers import ProcessorMixin

logger = logging.getLogger(__name__)

# The language model's attention and MLP projections only (the default LoRA target); the
# per-family table of finetune.students is its source.
LANGUAGE_MODEL_LORA_TARGET = LORA_TARGETS["gemma3"]["language"].modules
# What `adapt` may name: the language model always, plus the vision tower and/or projector.
Adapt = Literal["language", "language+vision", "language+projector", "language+vision+projector"]
# vLLM's --max-lora-rank choices (vllm.config.lora.LoRAConfig.max_lora_rank). An adapter of
# any rank up to the server's --max-lora-rank loads: rank 4 serves under --max-lora-rank 8.
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)

_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


class TrainConfig(BaseModel):
    """Training settings: student, data, LoRA and the SFT knobs (overridable as key=value)."""

    model_config = ConfigDict(extra="forbid")

    student: str = Field("tiny", description="Student preset name (see finetune/presets)")
    model: Annotated[str | None, ConfigPath()] = Field(
        None,
        description="Base model hub id or local model folder (relative to the config file); "
        "overrides the preset's model",
    )
    dataset: Path = Field(description="Folder written by `croptune dataset build` (save_to_disk)")
    output_dir: Path = Field(description="Run folder; the adapter goes to OUTPUT_DIR/adapter")
    max_steps: int = Field(-1, description="Optimizer steps; -1 trains num_train_epochs instead")
    num_train_epochs: float = Field(3.0, description="Epochs over the train split", gt=0)
    per_device_train_batch_size: int = Field(
        2, description="Examples per device per forward pass (each with several images)", ge=1
    )
    gradient_accumulation_steps: int = Field(
        4,
        description="Forward passes per optimizer step; effective batch = this x batch size",
        ge=1,
    )
    learning_rate: float = Field(
        2e-4, description="Peak learning rate (LoRA likes 1e-4..2e-4)", gt=0
    )
    lr_scheduler_type: str = Field("linear", description="transformers scheduler name")
    warmup_ratio: float = Field(
        0.03, description="Fraction of steps spent warming up the learning rate", ge=0, lt=1
    )
    logging_steps: int = Field(10, description="Log the training loss every N steps", ge=1)
    eval_steps: int | None = Field(
        None, description="Evaluate on the validation split every N steps; None disables eval", ge=1
    )
    seed: int = Field(42, description="Seed for LoRA init, data order and dropout")
    bf16: bool | None = Field(
        None,
        description="bf16 mixed precision; None = on if the preset is bfloat16 and a GPU is present",
    )
    gradient_checkpointing: bool = Field(
        True, description="Recompute activations in backward: less memory, ~30% slower"
    )
    report_to: str | list[str] = Field(
        "none",
        description="Experiment trackers: 'none', 'tensorboard' (to OUTPUT_DIR/runs), 'wandb', "
        "or a list; each must be installed",
    )
    save_steps: int = Field(
        100,
        description="Write a resumable checkpoint (adapter, optimizer, scheduler, RNG) every N steps",
        ge=1,
    )
    save_total_limit: int | None = Field(
        2, description="Keep only the newest N checkpoints; None keeps all", ge=1
    )
    resume_from_checkpoint: bool | Path = Field(
        False,
        description="Continue an interrupted run: true = newest checkpoint in output_dir, or a "
        "checkpoint folder (`croptune train --resume`)",
    )
    eval_on_start: bool = Field(
        False, description="Also evaluate before the first step: a baseline validation loss"
    )
    tuning: Literal["lora", "full"] | None = Field(
        None,
        description="lora: train a LoRA adapter, saved to OUTPUT_DIR/adapter (the base stays "
        "frozen; vLLM serves it); full: train every weight and save the whole model with its "
        "processor to OUTPUT_DIR/model (for randomly initialised experiment students such as "
        "tiny-scratch, which LoRA cannot teach; `croptune evaluate --model OUTPUT_DIR/model` "
        "loads it, `croptune export` does not bundle it); None = the preset's tuning (lora for "
        "every preset but tiny-scratch). The lora_* and adapt settings apply to lora only",
    )
    qlora: bool = Field(
        False,
        description="Load the base in 4-bit NF4 (bitsandbytes, pip extra 'qlora') and train LoRA "
        "on top: ~1/4 of the bf16 weight memory, somewhat slower",
    )
    pan_and_scan: bool = Field(
        False,
        description="Gemma 3 only: add up to pan_and_scan_max_crops crops of wide or tall photos "
        "(more image tokens); croptune's targeted crops usually do this job better",
    )
    pan_and_scan_max_crops: int = Field(
        4, description="Gemma 3 pan & scan: crops per image at most", ge=1
    )
    image_min_pixels: int | None = Field(
        None, description="Qwen2.5-VL only: fewest pixels an image is resized to (processor)", ge=1
    )
    image_max_pixels: int | None = Field(
        None,
        description="Qwen2.5-VL only: most pixels an image is resized to; image tokens = pixels / 784",
        ge=1,
    )
    lora_r: int = Field(
        8,
        description=f"LoRA rank; vLLM serves 1..{VLLM_MAX_LORA_RANKS[-1]} (the server's "
        "--max-lora-rank must be at least this)",
    )
    lora_alpha: int = Field(16, description="LoRA scaling numerator (scale = alpha / r)", gt=0)
    lora_dropout: float = Field(0.05, description="Dropout on the LoRA input", ge=0, lt=1)
    adapt: Adapt = Field(
        "language",
        description="Where LoRA goes: the language model (vLLM serves it as is), plus the vision "
        "tower and/or the projector (a LoRA vLLM serves without those; serve the merged export "
        "to include them)",
    )
    lora_target: str | list[str] | None = Field(
        None,
        description="Explicit peft target_modules (a full-match regex or module name suffixes), "
        "instead of adapt; None = the preset family's layers for adapt",
    )
    sft_args: dict[str, Any] = Field(
        default_factory=dict, description="Extra trl.SFTConfig arguments, passed through as is"
    )

    @field_validator("lora_r")
    @classmethod
    def _servable_rank(cls, value: int) -> int:
        if not 1 <= value <= VLLM_MAX_LORA_RANKS[-1]:
            raise ValueError(
                f"lora_r={value} cannot be served by vLLM, whose largest --max-lora-rank is "
                f"{VLLM_MAX_LORA_RANKS[-1]}; choose 1..{VLLM_MAX_LORA_RANKS[-1]}"
            )
        return value

    @field_validator("lora_target")
    @classmethod
    def _one_way_to_target(cls, value: str | list[str] | None, info: ValidationInfo) -> Any:
        if value is not None and info.data.get("adapt", "language") != "language":
            raise ValueError("set either adapt or lora_target, not both")
        return value

    @field_validator("sft_args")
    @classmethod
    def _numbers_in_sft_args(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Typed fields coerce "1e-4" themselves; these free-form values need help.
        return {key: _maybe_number(item) for key, item in value.items()}


@dataclass
class TrainResult:
    """What a training run produced."""

    adapter_dir: Path  # OUTPUT_DIR/adapter; OUTPUT_DIR/model (the whole model) when full
    steps: int
    losses: list[float] = field(default_factory=list)
    first_loss: float | None = None
    last_loss: float | None = None
    eval_loss: float | None = None
    seconds: float = 0.0
    tuning: str = "lora"  # lora | full


def _maybe_number(value: Any) -> Any:
    # YAML 1.1 leaves exponent forms without a dot ("1e-4") as strings; integers never get here.
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        return float(value)
    return value


def load_train_config(path: Path | None, overrides: list[str]) -> TrainConfig:
    """A training config from YAML and `key=value` overrides (torchtune style), validated."""
    return load_stage_config(TrainConfig, path, overrides, stage="train")


def save_train_config(config: TrainConfig, path: Path) -> None:
    """Write a config (paths absolute) as YAML that load_train_config reads back."""
    path.write_text(dump_config(config), encoding="utf-8")


def _load_splits(dataset_dir: Path) -> Any:
    from datasets import DatasetDict, load_from_disk

    if not Path(dataset_dir).is_dir():
        raise CroptuneError(
            f"dataset folder {dataset_dir} does not exist; run `croptune dataset build`"
        )
    try:
        data = load_from_disk(str(dataset_dir))
    except FileNotFoundError as exc:
        raise CroptuneError(f"{dataset_dir} is not a saved dataset: {exc}") from exc
    if not isinstance(data, DatasetDict) or "train" not in data:
        raise CroptuneError(f"dataset {dataset_dir} has no 'train' split")
    missing = {"images", "prompt", "completion"} - set(data["train"].column_names)
    if missing:
        raise CroptuneError(f"dataset {dataset_dir} lacks columns {sorted(missing)}")
    if len(data["train"]) == 0:
        raise CroptuneError(f"dataset {dataset_dir} has an empty 'train' split")
    return data


def dataset_stats(splits: Any) -> dict[str, Any]:
    """Examples per split and images per example, read from Arrow without decoding images."""
    import pyarrow.compute as pc

    stats: dict[str, Any] = {}
    for name, split in splits.items():
        table = split.with_format("arrow")[:]  # honours any indices mapping; no image decoding
        counts = pc.list_value_length(table.column("images")).to_pylist() if len(split) else []
        stats[name] = {
            "examples": len(split),
            "images": sum(counts),
            "images_per_example_min": min(counts, default=0),
            "images_per_example_max": max(counts, default=0),
            "images_per_example_mean": round(sum(counts) / len(counts), 3) if counts else 0.0,
        }
    return stats


def _use_bf16(config: TrainConfig, preset_dtype: str) -> bool:
    import torch

    if config.bf16 is not None:
        return config.bf16
    # bf16 autocast runs on CPU but slower than fp32; keep CPU runs in fp32 unless asked.
    return (
        preset_dtype == "bfloat16" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    )


def _sft_config(config: TrainConfig, bf16: bool, eval_enabled: bool) -> Any:
    import torch
    from trl import SFTConfig

    args: dict[str, Any] = {
        "output_dir": str(config.output_dir),
        "max_steps": config.max_steps,
        "num_train_epochs": config.num_train_epochs,
        "per_device_train_batch_size": config.per_device_train_batch_size,
        "per_device_eval_batch_size": config.per_device_train_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "learning_rate": config.learning_rate,
        "lr_scheduler_type": config.lr_scheduler_type,
        # transformers 5 folded warmup_ratio into warmup_steps: a float below 1 is a ratio.
        "warmup_steps": config.warmup_ratio,
        "logging_steps": config.logging_steps,
        "logging_first_step": True,  # a first loss to compare the last one with
        "eval_strategy": "steps" if eval_enabled else "no",
        "eval_steps": config.eval_steps if eval_enabled else None,
        "eval_on_start": config.eval_on_start and eval_enabled,
        "save_strategy": "steps",
        "save_steps": config.save_steps,
        "save_total_limit": config.save_total_limit,
        "seed": config.seed,
        "bf16": bf16,
        # The new name; setting the deprecated gradient_checkpointing alias only adds a warning.
        "activation_checkpointing": config.gradient_checkpointing,
        # Its tqdm bar would write each log dict a second time; TrainProgress is the display.
        "disable_tqdm": True,
        # Pinning is a no-op on CPU and only adds a warning there.
        "dataloader_pin_memory": torch.cuda.is_available(),
        # Truncation could cut through an image's soft tokens and break the batch.
        "max_length": None,
        # Loss on the answer only: never on prompt text or image placeholder tokens.
        "completion_only_loss": True,
    }
    if bf16 and not torch.cuda.is_available():
        args["use_cpu"] = (
            True  # transformers refuses bf16 without a GPU unless told it is a CPU run
        )
    args["report_to"] = check_trackers(config.report_to)
    args.update(config.sft_args)
    try:
        return SFTConfig(**args)
    except (TypeError, ValueError) as exc:
        raise CroptuneError(f"invalid training arguments (check sft_args): {exc}") from exc


# Trackers the Trainer knows, and the module each one needs.
_TRACKER_MODULES = {
    "tensorboard": "tensorboard",
    "wandb": "wandb",
    "mlflow": "mlflow",
    "trackio": "trackio",
    "comet_ml": "comet_ml",
}


def check_trackers(report_to: str | list[str]) -> list[str]:
    """The trackers to report to, each checked to be known and installed."""
    import importlib.util

    names = [report_to] if isinstance(report_to, str) else list(report_to)
    names = [name for name in names if name != "none"]
    for name in names:
        module = _TRACKER_MODULES.get(name)
        if module is None:
            raise CroptuneError(
                f"report_to {name!r} is not a known tracker; use 'none' or some of "
                f"{sorted(_TRACKER_MODULES)}"
            )
        if importlib.util.find_spec(module) is None:
            raise CroptuneError(
                f"report_to {name!r} needs the {module!r} package: pip install {module}"
            )
    return names or ["none"]


def resolve_checkpoint(config: TrainConfig) -> str | None:
    """The checkpoint folder to resume from, or None for a fresh run."""
    from transformers.trainer_utils import get_last_checkpoint

    wanted = config.resume_from_checkpoint
    output_dir = Path(config.output_dir)
    if wanted is False:
        if output_dir.is_dir() and get_last_checkpoint(str(output_dir)):
            logger.warning(
                "%s already holds checkpoints; this run starts afresh "
                "(use --resume to continue from the newest)",
                output_dir,
            )
        return None
    if wanted is True:
        last = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
        if last is None:
            raise CroptuneError(
                f"nothing to resume: {output_dir} has no checkpoint-N folder "
                f"(checkpoints are written every save_steps={config.save_steps} steps)"
            )
        return last
    folder = Path(wanted)
    if not (folder / "trainer_state.json").is_file():
        raise CroptuneError(f"{folder} is not a training checkpoint (no trainer_state.json)")
    return str(folder)


def lora_target_of(config: TrainConfig, family: str) -> tuple[str | list[str], list[str]]:
    """(peft target_modules, target_parameters) for the config's adapt on this model family."""
    if config.lora_target is not None:
        return config.lora_target, []
    return lora_targets(family, config.adapt.split("+"))


def _lora_config(config: TrainConfig, family: str) -> Any:
    from peft import LoraConfig

    target_modules, target_parameters = lora_target_of(config, family)
    if target_parameters and config.lora_dropout:
        raise CroptuneError(
            f"adapt={config.adapt} on a {family} student puts LoRA on bare parameters "
            f"({', '.join(target_parameters)}), which peft supports only without dropout; "
            f"set lora_dropout=0 (it is {config.lora_dropout})"
        )
    if config.lora_target is None and config.adapt != "language":
        logger.warning(
            "adapt=%s: vLLM 0.32 ignores vision-tower and projector LoRA weights (Gemma 3's "
            "projector, a bare parameter, makes it refuse the adapter), and "
            "--enable-tower-connector-lora crashes it on Gemma 3; serve the merged model "
            "(croptune export --merge) to serve what this trains. transformers (croptune "
            "evaluate) applies them",
            config.adapt,
        )
    # Only what vLLM can serve: no bias, no modules_to_save, no DoRA, default init.
    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=target_modules,
        # Bare nn.Parameters (Gemma 3's projector) that LoRA reaches only this way.
        target_parameters=target_parameters or None,
        bias="none",
        modules_to_save=None,
        use_dora=False,
        task_type="CAUSAL_LM",
    )


def _progress_callback(enabled: bool) -> Any:
    """The training display: steps, loss and ETA as one bar, or one plain line per logged loss."""
    from transformers import TrainerCallback

    from toolkit.progress import ProgressBar

    class TrainProgress(TrainerCallback):
        """Feeds croptune's progress report from the Trainer (which shows none of its own)."""

        def __init__(self) -> None:
            self.bar: ProgressBar | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.is_local_process_zero:
                self.bar = ProgressBar(
                    "train",
                    state.max_steps,
                    enabled,
                    unit="steps",
                    completed=state.global_step,  # a resumed run starts where it stopped
                    milestones=False,  # a line per logged loss instead (logging_steps)
                ).__enter__()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if self.bar is not None:
                self.bar.advance()
            # Log the final step too, so the last loss is the end of training, not the
            # last multiple of logging_steps.
            if state.global_step >= state.max_steps:
                control.should_log = True
            return control

        def on_log(
            self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any
        ) -> None:
            if not state.is_local_process_zero or not logs:
                return
            logger.debug("step %d: %s", state.global_step, logs)
            step = f"step {state.global_step}/{state.max_steps}"
            if "eval_loss" in logs:
                logger.info("%s: validation loss %.4f", step, logs["eval_loss"])
            elif "loss" in logs and self.bar is not None:
                lr = logs.get("learning_rate")
                self.bar.advance(
                    0, status=f"loss {logs['loss']:.4f}" + ("" if lr is None else f", lr {lr:.2e}")
                )
                self.bar.report()

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.close_progress()

        def close_progress(self) -> None:
            """Take the bar down (also when training stopped with an error)."""
            if self.bar is not None:
                self.bar.__exit__(None, None, None)
                self.bar = None

    return TrainProgress()


def _quantization(config: TrainConfig, bf16: bool) -> Any:
    """bitsandbytes 4-bit NF4 settings for QLoRA, or None."""
    if not config.qlora:
        return None
    import importlib.util

    import torch

    if importlib.util.find_spec("bitsandbytes") is None:
        raise CroptuneError("qlora: true needs bitsandbytes: pip install 'croptune[qlora]'")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",  # the QLoRA paper's data type for normally distributed weights
        bnb_4bit_use_double_quant=True,  # quantise the scales too: ~0.4 bit/param saved
        bnb_4bit_compute_dtype=torch.bfloat16 if bf16 else torch.float32,
        # The vision tower and projector stay in full precision: small, and sensitive.
        # Prefixes of module names (transformers matches them from the start).
        llm_int8_skip_modules=[
            "model.vision_tower",
            "model.visual",
            "model.multi_modal_projector",
            "lm_head",
        ],
    )


def _load_base(
    model_path: str, bf16: bool, attn_implementation: str, quantization: Any = None
) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(model_path)
        model = AutoModelForImageTextToText.from_pretrained(
            model_path,
            dtype=torch.bfloat16 if bf16 else torch.float32,
            attn_implementation=attn_implementation,
            quantization_config=quantization,
        )
    except OSError as exc:
        raise CroptuneError(f"cannot load student model {model_path!r}: {exc}") from exc
    return model, processor


def apply_image_options(processor: Any, config: TrainConfig, preset: Any = None) -> None:
    """Set pan & scan (Gemma 3) or the pixel budget (Qwen2.5-VL) on the student's processor.

    The config's image_min/max_pixels win over the preset's min/max_pixels.
    """
    image_processor = processor.image_processor
    kind = type(image_processor).__name__
    if config.pan_and_scan:
        if not hasattr(image_processor, "do_pan_and_scan"):
            raise CroptuneError(f"pan_and_scan is a Gemma 3 option; this student uses {kind}")
        image_processor.do_pan_and_scan = True
        image_processor.pan_and_scan_max_num_crops = config.pan_and_scan_max_crops
    pixels = {
        "shortest_edge": config.image_min_pixels or getattr(preset, "min_pixels", None),
        "longest_edge": config.image_max_pixels or getattr(preset, "max_pixels", None),
    }
    if any(value is not None for value in pixels.values()):
        # Qwen2-VL-style processors keep their pixel budget as size.shortest/longest_edge.
        size = getattr(image_processor, "size", None)
        if (
            size is None
            or getattr(size, "longest_edge", None) is None
            or not hasattr(image_processor, "merge_size")
        ):
            raise CroptuneError(
                f"image_min_pixels/image_max_pixels are Qwen2.5-VL options; this student uses {kind}"
            )
        for key, value in pixels.items():
            if value is not None:
                setattr(size, key, value)  # saved with the processor next to the adapter
        if size.shortest_edge > size.longest_edge:
            raise CroptuneError(
                f"image_min_pixels {size.shortest_edge} exceeds image_max_pixels {size.longest_edge}"
            )


def image_processor_kwargs(processor: Any) -> dict[str, Any]:
    """Per-call image options a saved processor needs (Gemma 3's pan & scan), else {}.

    Gemma3Processor's call defaults say do_pan_and_scan=False and beat the image
    processor's own setting, so the option must travel with every call (training collator,
    inference; vLLM: --mm-processor-kwargs).
    """
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is None or not getattr(image_processor, "do_pan_and_scan", False):
        return {}
    return {
        "do_pan_and_scan": True,
        "pan_and_scan_max_num_crops": image_processor.pan_and_scan_max_num_crops,
    }


class _ProcessorWithImageKwargs:
    """A processor whose calls with images carry fixed image options; all else delegated."""

    def __init__(self, processor: Any, images_kwargs: dict[str, Any]) -> None:
        self._processor = processor
        self._images_kwargs = images_kwargs

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("images") is not None:
            kwargs["images_kwargs"] = {**self._images_kwargs, **kwargs.get("images_kwargs", {})}
        return self._processor(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._processor, name)


def build_trainer(
    config: TrainConfig, progress: bool = False, callbacks: list[Any] | None = None
) -> tuple[Any, dict[str, Any]]:
    """An SFTTrainer with LoRA on the configured student and dataset, plus run facts."""
    from finetune.students import silence_known_warnings

    silence_known_warnings()
    from transformers import PrinterCallback, set_seed
    from trl import SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from finetune.students import load_preset, resolve_student

    preset = load_preset(config.student)
    splits = _load_splits(config.dataset)  # first: a wrong path must not build a student
    model_path = resolve_student(config.model or preset.model)
    eval_split = splits.get("validation")
    eval_enabled = config.eval_steps is not None and eval_split is not None and len(eval_split) > 0
    if config.eval_steps is not None and not eval_enabled:
        logger.warning(
            "eval_steps is set but the dataset has no validation examples; skipping eval"
        )
    bf16 = _use_bf16(config, preset.torch_dtype)
    tuning = config.tuning or preset.tuning
    if tuning == "full" and config.qlora:
        raise CroptuneError("qlora trains LoRA on a 4-bit base; it cannot go with tuning=full")
    # Checked before loading the model, so a typo in sft_args fails in seconds, not minutes.
    args = _sft_config(config, bf16, eval_enabled)
    checkpoint = resolve_checkpoint(config)
    set_seed(config.seed)  # LoRA matrices are initialised before the Trainer seeds anything
    model, processor = _load_base(
        model_path, bf16, preset.attn_implementation, _quantization(config, bf16)
    )
    apply_image_options(processor, config, preset)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=splits["train"],
        eval_dataset=eval_split if eval_enabled else None,
        processing_class=processor,
        # Full tuning: no peft wrapper, every parameter of the model trains.
        peft_config=_lora_config(config, preset.family) if tuning == "lora" else None,
        callbacks=[_progress_callback(progress), *(callbacks or [])],
    )
    extra = image_processor_kwargs(processor)
    collator = trainer.data_collator
    # Image options exist only with images, whose examples SFTTrainer's vision collator takes.
    if extra and isinstance(collator, DataCollatorForVisionLanguageModeling):
        # A stand-in by construction: it delegates every call and attribute to the processor.
        collator.processor = cast("ProcessorMixin", _ProcessorWithImageKwargs(processor, extra))
    # It print()s every log dict; croptune's TrainProgress shows the run instead.
    trainer.remove_callback(PrinterCallback)
    facts = {
        "base_model": model_path,
        "preset": preset.model_dump(),
        "bf16": bf16,
        "eval": eval_enabled,
        "qlora": config.qlora,
        "tuning": tuning,
        "resume_from": checkpoint,
        "dataset": dataset_stats(splits),
    }
    return trainer, facts


def train(
    config: TrainConfig, progress: bool = False, callbacks: list[Any] | None = None
) -> TrainResult:
    """Fine-tune the student and save a self-contained adapter (or, tuning=full, model) folder."""
    trainer, facts = build_trainer(config, progress=progress, callbacks=callbacks)
    logger.info(
        "training %s on %d examples (%s)",
        facts["base_model"],
        facts["dataset"]["train"]["examples"],
        "bf16" if facts["bf16"] else "fp32",
    )
    checkpoint = facts["resume_from"]
    if checkpoint:
        logger.info("resuming from %s", checkpoint)
    start = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=checkpoint)
    finally:
        for callback in trainer.callback_handler.callbacks:
            if hasattr(callback, "close_progress"):
                callback.close_progress()
    seconds = time.perf_counter() - start
    eval_loss = _final_eval_loss(trainer) if facts["eval"] else None
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    result = TrainResult(
        adapter_dir=Path(config.output_dir) / ("model" if facts["tuning"] == "full" else "adapter"),
        steps=trainer.state.global_step,
        losses=losses,
        first_loss=losses[0] if losses else None,
        last_loss=losses[-1] if losses else None,
        eval_loss=eval_loss,
        seconds=round(seconds, 3),
        tuning=facts["tuning"],
    )
    _save_artifacts(trainer, config, facts, result)
    return result


def _final_eval_loss(trainer: Any) -> float:
    """The validation loss of the final weights: the last step's evaluation, else a new one."""
    state = trainer.state
    for entry in reversed(state.log_history):
        if "eval_loss" in entry:
            if entry.get("step") == state.global_step:
                return entry["eval_loss"]  # evaluated at the last step already: not twice
            break
    return trainer.evaluate()["eval_loss"]


def _save_artifacts(
    trainer: Any, config: TrainConfig, facts: dict[str, Any], result: TrainResult
) -> None:
    adapter_dir = result.adapter_dir
    # save_model writes the PEFT adapter (tuning=full: the whole model) and the processor:
    # the folder is enough to run inference.
    trainer.save_model(str(adapter_dir))
    if result.tuning == "full":
        from finetune.students import restore_checkpoint_names

        restore_checkpoint_names(adapter_dir)  # the names vLLM loads, like any base checkpoint
    save_train_config(config, adapter_dir / "train_config.yaml")
    stats = {
        **facts,
        "steps": result.steps,
        "losses": result.losses,
        "eval_loss": result.eval_loss,
        "seconds": result.seconds,
        # Every logged loss, eval loss and learning rate, by step: the curves to plot.
        "log_history": trainer.state.log_history,
    }
    (adapter_dir / "train_stats.json").write_text(json.dumps(stats, indent=2), encoding="utf-8")
    logger.info("saved %s to %s", "model" if result.tuning == "full" else "adapter", adapter_dir)
