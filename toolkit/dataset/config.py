"""DatasetConfig: how labeled items become examples (strategy, split, image budget)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from toolkit.crops.selection import DEFAULT_IMAGE_BUDGET

Strategy = Literal["originals", "crops", "originals+crops"]


class DatasetConfig(BaseModel):
    """How labeled items become training examples."""

    model_config = ConfigDict(extra="forbid")

    strategy: Strategy = Field(
        "originals+crops",
        description="originals: the photos only; crops: the crops only (an item without crops "
        "keeps its first photo); originals+crops: both, as in the paper's best student",
    )
    validation_ratio: float = Field(0.1, ge=0, lt=1, description="Share of items for validation")
    test_ratio: float = Field(0.2, ge=0, lt=1, description="Share of items held out for testing")
    seed: int = Field(
        0,
        description="Seed of the item-id hash that assigns splits. The first stage that splits "
        "a run records its split in the run store; later builds reuse it (a differing "
        "seed or ratio is warned about) unless --resplit",
    )
    max_images_per_item: int = Field(
        DEFAULT_IMAGE_BUDGET,
        ge=1,
        description="Image budget per example (the paper's maximum is 9), the only one: "
        "the main photo, then the crops, then the other photos, after pHash de-duplication",
    )
    max_image_side: int = Field(
        2048,
        ge=64,
        description="Longer side, in pixels, of the images an example shows: originals (and "
        "crops, see resize_crops) above it are downscaled (Lanczos) and stored as PNG; the "
        "rest are stored as their files' own bytes. 2048 keeps typical catalog photos "
        "(1-3 MP, e.g. 1600x1200; marketplaces ask for 1600-2048 px) as they are: the "
        "student's processor resizes every image anyway (Gemma 3 to 896x896, the Qwen2.5-VL "
        "presets to at most 896x896 pixels), so a larger stored side costs disk, not "
        "accuracy, while downscaling costs a PNG re-encode (~5x the JPEG's bytes). The "
        "bundle records it and predict resizes the same way",
    )
    resize_crops: bool = Field(
        True,
        description="Crops above max_image_side are downscaled to it too (false: crops as "
        "cut, as datasets built before this key were; predict follows the bundle's "
        "prompt.crops_max_side)",
    )
    image_tokens: int = Field(
        256,
        ge=1,
        description="Image tokens per image of the student, for the stats: its preset's "
        "image_tokens (Gemma 3: 256 for any image; Qwen2.5-VL: the most per image, at "
        "max_pixels, so the stats are an upper bound)",
    )
