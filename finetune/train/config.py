"""The training config: TrainConfig's fields and checks, its YAML load/save, where its LoRA goes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

from finetune.students.lora import LORA_TARGETS, lora_targets
from toolkit.config import ConfigPath, dump_config, load_stage_config

# The language model's attention and MLP projections only (the default LoRA target); the
# per-family table of finetune.students.lora is its source.
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


def lora_target_of(config: TrainConfig, family: str) -> tuple[str | list[str], list[str]]:
    """(peft target_modules, target_parameters) for the config's adapt on this model family."""
    if config.lora_target is not None:
        return config.lora_target, []
    return lora_targets(family, config.adapt.split("+"))
