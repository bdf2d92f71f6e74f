"""One item's example (its images, prompt, answer) as a row: what train and predict both use."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from PIL import Image

from toolkit.catalog import load_ingested_image
from toolkit.crops.selection import select_images
from toolkit.dataset.config import DatasetConfig
from toolkit.images import load_image
from toolkit.schema import AttributeSchema, extraction_prompt, listing_text
from toolkit.store import CropRow, ImageRow, ItemRow, RunStore


def example_row(images: list[Any], prompt_text: str, answer_text: str) -> dict[str, Any]:
    """One dataset row in the prompt/completion shape TRL's vision collator trains on.

    Image parts carry ``"text": None`` so every content part has the same keys: that is
    the shape Arrow gives them anyway (a struct column holds the union of keys), so rows
    built here and rows read back from disk compare equal. Texts are stripped because the
    Gemma 3 chat template trims them: the stored answer is then exactly the trained target.
    """
    image_parts = [{"type": "image", "text": None} for _ in images]
    text_part = {"type": "text", "text": prompt_text.strip()}
    return {
        "images": list(images),
        "prompt": [{"role": "user", "content": [*image_parts, text_part]}],
        "completion": [
            {"role": "assistant", "content": [{"type": "text", "text": answer_text.strip()}]}
        ],
    }


def dataset_features() -> Any:
    """The `datasets.Features` of a croptune dataset (item_id, category, example_row columns)."""
    from datasets import Features, Image, Sequence, Value

    # Plain [...] is a list of structs in every datasets version (Sequence({...}) once meant
    # a struct of lists); Sequence(Image()) is the images column either way.
    message = {
        "role": Value("string"),
        "content": [{"type": Value("string"), "text": Value("string")}],
    }
    return Features(
        {
            "item_id": Value("string"),
            "category": Value("string"),
            "images": Sequence(Image()),
            "prompt": [message],
            "completion": [message],
        }
    )


def answer_text(attributes: dict[str, Any]) -> str:
    """The target answer: compact JSON (fewer tokens to learn and to generate)."""
    return json.dumps(attributes, ensure_ascii=False, separators=(",", ":"))


def item_example(
    store: RunStore,
    item: ItemRow,
    schema: AttributeSchema,
    config: DatasetConfig,
    crop_config_hash: str | None,
    originals: Mapping[int, Image.Image] | None = None,
) -> tuple[list[Image.Image], str]:
    """The images and the prompt text of one item's example: what training shows the student.

    The one code path of `dataset build` and `predict` (which runs it on its own run store,
    with boxes from the bundle's detector), so serving sees exactly the training pixels.
    originals: the item's decoded originals by image index, when the caller has them.
    """
    images = example_images(store, item.item_id, config, crop_config_hash, originals)
    return images, example_prompt(item, schema)


def example_prompt(item: ItemRow, schema: AttributeSchema) -> str:
    """The prompt text of an item's example: the instructions with its listing text."""
    return extraction_prompt(schema, listing_text(item.title, item.text))


@dataclass(frozen=True)
class ExampleImage:
    """One image of an example before it is read: an original photo or a crop file, and the
    longer side it is fitted to (None: used as it is)."""

    uri: str  # the photo's uri, or the crop file's path
    original: ImageRow | None  # the photo's store row; None for a crop
    max_side: int | None

    def describe(self) -> str:
        """'image 2' or 'crop crops/ab12.png', for messages."""
        if self.original is not None:
            return f"image {self.original.index}"
        return f"crop {self.uri}"


def example_sources(
    store: RunStore, item_id: str, config: DatasetConfig, crop_config_hash: str | None
) -> list[ExampleImage]:
    """The item's images for the strategy, without pHash duplicates, under the budget, unread.

    Budget priority: the main photo, then the crops, then the other photos. An original or
    crop the crop stage marked as repeating another image used here is left out. Originals
    are fitted to max_image_side, crops too unless resize_crops is off.
    """
    rows = [r for r in store.images(item_id) if r.usable]
    crops = _latest_crops(store.crops(item_id), crop_config_hash)
    use_originals = config.strategy in ("originals", "originals+crops")
    use_crops = config.strategy in ("crops", "originals+crops")
    original_ids = [r.index for r in rows] if use_originals else []
    if config.strategy == "crops" and not crops:
        original_ids = [rows[0].index]  # an item without crops keeps its main photo
    crops = crops if use_crops else []
    duplicates = (
        {i: dup for i, (_, dup) in store.image_phashes(item_id, crop_config_hash).items()}
        if crop_config_hash
        else {}
    )
    keep_originals, keep_crops = select_images(
        original_ids, crops, duplicates, config.max_images_per_item
    )
    by_index = {r.index: r for r in rows}
    crop_side = config.max_image_side if config.resize_crops else None
    return [
        ExampleImage(by_index[i].uri, by_index[i], config.max_image_side) for i in keep_originals
    ] + [ExampleImage(str(store.run_dir / crops[i].path), None, crop_side) for i in keep_crops]


def example_images(
    store: RunStore,
    item_id: str,
    config: DatasetConfig,
    crop_config_hash: str | None,
    originals: Mapping[int, Image.Image] | None = None,
) -> list[Image.Image]:
    """The pixels of the item's example images (example_sources, read and fitted).

    originals: already decoded originals by index (oriented RGB, as load_ingested_image
    returns them), so they are not decoded again.
    """
    sources = example_sources(store, item_id, config, crop_config_hash)
    return [example_pixels(source, originals) for source in sources]


def example_pixels(
    source: ExampleImage, originals: Mapping[int, Image.Image] | None = None
) -> Image.Image:
    """An example image's pixels: the oriented RGB photo or crop, fitted to its longer side."""
    if source.original is None:
        return fit_image(load_image(source.uri).image, source.max_side)
    decoded = originals.get(source.original.index) if originals is not None else None
    if decoded is None:
        decoded = load_ingested_image(source.original)
    return fit_image(decoded, source.max_side)


def _latest_crops(crops: list[CropRow], config_hash: str | None) -> list[CropRow]:
    """Crops of one crop config (none when no crop config was run)."""
    return [c for c in crops if c.config_hash == config_hash]


def fit_image(image: Image.Image, max_side: int | None) -> Image.Image:
    """The image downscaled (Lanczos) to max_side on its longer side; as it is when it fits."""
    if max_side is None or max(image.size) <= max_side:
        return image
    scale = max_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)
