"""Student presets: the StudentPreset model and the bundled YAML files (finetune/presets)."""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from toolkit.errors import CroptuneError

if TYPE_CHECKING:
    from importlib.abc import Traversable

Family = Literal["gemma3", "qwen2_5_vl"]
Tuning = Literal["lora", "full"]
# Qwen2.5-VL: 14 px patches merged 2x2, so one image token per 28x28 pixels.
QWEN_PIXELS_PER_TOKEN = 28 * 28


class StudentPreset(BaseModel):
    """A student model and the settings that go with it (one YAML file in finetune/presets)."""

    name: str = Field(description="Preset name: the YAML file name without its extension")
    model: str = Field(
        description="Hub id or local path of the base model; 'croptune:tiny', "
        "'croptune:tiny-qwen', 'croptune:tiny-scratch' and 'croptune:tiny-reader' = the "
        "offline tiny ones"
    )
    family: Family = Field(
        "gemma3",
        description="Model family: decides the chat template, the image budget and where LoRA goes",
    )
    image_tokens: int = Field(
        description="Image tokens per image in the prompt. Gemma 3: exactly 256 whatever the "
        "image size. Qwen2.5-VL: one per 28x28 pixels after resizing, so this is the MOST per "
        "image, reached at max_pixels (= max_pixels / 784); smaller crops cost fewer",
        gt=0,
    )
    image_size: int = Field(
        description="Gemma 3: side in pixels of the square the vision tower sees. Qwen2.5-VL: "
        "side of a square photo at max_pixels (bigger photos are scaled down to that area)",
        gt=0,
    )
    min_pixels: int | None = Field(
        None,
        description="Qwen2.5-VL only: smaller images are scaled up to this many pixels",
        ge=QWEN_PIXELS_PER_TOKEN,
    )
    max_pixels: int | None = Field(
        None,
        description="Qwen2.5-VL only: bigger images are scaled down to this many pixels; with "
        "the image count it sets the sequence length and so the training memory",
        ge=QWEN_PIXELS_PER_TOKEN,
    )
    torch_dtype: Literal["float32", "bfloat16"] = Field(
        "bfloat16", description="Weight dtype for training and inference"
    )
    attn_implementation: str = Field(
        "eager",
        description="Attention kernel: 'eager' as Gemma 3 guides train it; 'sdpa' is faster on GPUs",
    )
    tuning: Tuning = Field(
        "lora",
        description="What training changes by default: lora (an adapter; the base stays "
        "frozen and vLLM serves it) or full (every weight; for randomly initialised "
        "experiment students, which LoRA cannot teach)",
    )
    notes: str = Field("", description="Free text: memory needs, caveats")

    @model_validator(mode="after")
    def _pixel_budget_fits_the_family(self) -> StudentPreset:
        min_pixels, max_pixels = self.min_pixels, self.max_pixels
        if self.family == "gemma3":
            if (min_pixels, max_pixels) != (None, None):
                raise ValueError("min_pixels/max_pixels apply to qwen2_5_vl only (Gemma 3 resizes)")
            return self
        if min_pixels is None or max_pixels is None:
            raise ValueError("a qwen2_5_vl preset needs min_pixels and max_pixels")
        if min_pixels > max_pixels:
            raise ValueError(f"min_pixels {min_pixels} > max_pixels {max_pixels}")
        most = max_pixels // QWEN_PIXELS_PER_TOKEN
        if self.image_tokens != most:
            raise ValueError(
                f"image_tokens must be max_pixels / 784 = {most} for qwen2_5_vl, "
                f"not {self.image_tokens}"
            )
        return self


def _presets_dir() -> Traversable:
    return resources.files("finetune") / "presets"


def list_presets() -> list[str]:
    """Names of the bundled student presets (the YAML files in finetune/presets)."""
    return sorted(
        entry.name.removesuffix(".yaml")
        for entry in _presets_dir().iterdir()
        if entry.name.endswith(".yaml")
    )


def load_preset(name: str) -> StudentPreset:
    """Load a bundled student preset by name."""
    entry = _presets_dir() / f"{name}.yaml"
    if not entry.is_file():
        raise CroptuneError(
            f"unknown student preset {name!r}; choose one of: {', '.join(list_presets())}"
        )
    try:
        data = yaml.safe_load(entry.read_text(encoding="utf-8")) or {}
        return StudentPreset.model_validate({"name": name, **data})
    except (yaml.YAMLError, ValidationError) as exc:
        raise CroptuneError(f"student preset {name!r} is not valid: {exc}") from exc
