"""The student as training loads it: base weights (4-bit for QLoRA), processor options, LoRA."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from finetune.train.config import TrainConfig, lora_target_of
from toolkit.errors import CroptuneError

if TYPE_CHECKING:
    from finetune.students.presets import StudentPreset

logger = logging.getLogger(__name__)


def lora_config(config: TrainConfig, family: str) -> Any:
    """The peft LoraConfig of a run: only what vLLM serves (no bias, no DoRA, default init)."""
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


def quantization_config(config: TrainConfig, bf16: bool) -> Any:
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


def load_base(
    model_path: str, bf16: bool, attn_implementation: str, quantization: Any = None
) -> tuple[Any, Any]:
    """The base model and its processor, loaded for training; a CroptuneError if they cannot be."""
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


def apply_image_options(
    processor: Any, config: TrainConfig, preset: StudentPreset | None = None
) -> None:
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
        "shortest_edge": config.image_min_pixels or (preset.min_pixels if preset else None),
        "longest_edge": config.image_max_pixels or (preset.max_pixels if preset else None),
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


class ProcessorWithImageKwargs:
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
