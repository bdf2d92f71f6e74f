"""A training run: build TRL's SFTTrainer for a TrainConfig, train, save the adapter or model."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from finetune.students.checkpoints import restore_checkpoint_names
from finetune.students.presets import load_preset
from finetune.students.tiny import resolve_student
from finetune.train.arguments import resolve_checkpoint, sft_config, use_bf16
from finetune.train.callbacks import ClosesProgress, progress_callback
from finetune.train.config import TrainConfig, save_train_config
from finetune.train.data import dataset_stats, load_splits
from finetune.train.model import (
    ProcessorWithImageKwargs,
    apply_image_options,
    load_base,
    lora_config,
    quantization_config,
)
from toolkit.errors import CroptuneError
from toolkit.generation import image_processor_kwargs  # the inference path's too
from toolkit.noise import silence_known_warnings

if TYPE_CHECKING:
    from transformers import ProcessorMixin

logger = logging.getLogger(__name__)


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


def build_trainer(
    config: TrainConfig,
    progress: bool = False,
    callbacks: list[Any] | None = None,
    base: tuple[Any, Any] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """An SFTTrainer with LoRA on the configured student and dataset, plus run facts.

    base: a (model, processor) built in process, trained instead of loading the student
    (bench/gpu_train.py: a real-size architecture with random weights, no download).
    """
    silence_known_warnings()
    from transformers import PrinterCallback, set_seed
    from trl import SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    preset = load_preset(config.student)
    splits = load_splits(config.dataset)  # first: a wrong path must not build a student
    model_path = resolve_student(config.model or preset.model)
    eval_split = splits.get("validation")
    eval_enabled = config.eval_steps is not None and eval_split is not None and len(eval_split) > 0
    if config.eval_steps is not None and not eval_enabled:
        logger.warning(
            "eval_steps is set but the dataset has no validation examples; skipping eval"
        )
    bf16 = use_bf16(config, preset.torch_dtype)
    tuning = config.tuning or preset.tuning
    if tuning == "full" and config.qlora:
        raise CroptuneError("qlora trains LoRA on a 4-bit base; it cannot go with tuning=full")
    # Checked before loading the model, so a typo in sft_args fails in seconds, not minutes.
    args = sft_config(config, bf16, eval_enabled)
    checkpoint = resolve_checkpoint(config)
    set_seed(config.seed)  # LoRA matrices are initialised before the Trainer seeds anything
    if base is None:
        model, processor = load_base(
            model_path, bf16, preset.attn_implementation, quantization_config(config, bf16)
        )
    else:
        if config.qlora:
            raise CroptuneError("qlora loads its own 4-bit base; it cannot train a given one")
        model, processor = base
        model_path = f"{model_path} (architecture only: weights built in process)"
    apply_image_options(processor, config, preset)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=splits["train"],
        eval_dataset=eval_split if eval_enabled else None,
        processing_class=processor,
        # Full tuning: no peft wrapper, every parameter of the model trains.
        peft_config=lora_config(config, preset.family) if tuning == "lora" else None,
        callbacks=[progress_callback(progress), *(callbacks or [])],
    )
    extra = image_processor_kwargs(processor)
    collator = trainer.data_collator
    # Image options exist only with images, whose examples SFTTrainer's vision collator takes.
    if extra and isinstance(collator, DataCollatorForVisionLanguageModeling):
        # A stand-in by construction: it delegates every call and attribute to the processor.
        collator.processor = cast("ProcessorMixin", ProcessorWithImageKwargs(processor, extra))
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
    config: TrainConfig,
    progress: bool = False,
    callbacks: list[Any] | None = None,
    base: tuple[Any, Any] | None = None,
) -> TrainResult:
    """Fine-tune the student and save a self-contained adapter (or, tuning=full, model) folder."""
    trainer, facts = build_trainer(config, progress=progress, callbacks=callbacks, base=base)
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
            if isinstance(callback, ClosesProgress):
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
