"""TRL's SFTConfig for a TrainConfig: precision, trackers, and the checkpoint to resume from."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from finetune.train.config import TrainConfig
from toolkit.errors import CroptuneError

logger = logging.getLogger(__name__)


def use_bf16(config: TrainConfig, preset_dtype: str) -> bool:
    """Whether to train in bf16: the config says so, or (unset) a bfloat16 preset on a bf16 GPU."""
    import torch

    if config.bf16 is not None:
        return config.bf16
    # bf16 autocast runs on CPU but slower than fp32; keep CPU runs in fp32 unless asked.
    return (
        preset_dtype == "bfloat16" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    )


def sft_config(config: TrainConfig, bf16: bool, eval_enabled: bool) -> Any:
    """The trl.SFTConfig of a run (sft_args on top), or a CroptuneError naming a bad argument."""
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
