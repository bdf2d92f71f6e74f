"""The dataset builder: labeled items -> a `datasets` DatasetDict of multi-image examples."""

from __future__ import annotations

import hashlib
import json
import logging
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from toolkit.catalog import load_ingested_image
from toolkit.crops.config import CropConfig
from toolkit.crops.selection import DEFAULT_IMAGE_BUDGET, select_images
from toolkit.errors import CroptuneError
from toolkit.images import ImageLoadError, load_image
from toolkit.schema import AttributeSchema, extraction_prompt, listing_text
from toolkit.store import CropRow, ItemRow, RunStore

logger = logging.getLogger(__name__)

Strategy = Literal["originals", "crops", "originals+crops"]
SPLITS = ("train", "validation", "test")
SPLIT_KEYS = ("validation_ratio", "test_ratio", "seed")  # the settings that decide the split


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
        1024,
        ge=64,
        description="Originals are downscaled to this longer side when stored (Gemma 3 sees "
        "896x896 anyway); crops are kept as cut",
    )
    image_tokens: int = Field(
        256,
        ge=1,
        description="Image tokens per image of the student, for the stats: its preset's "
        "image_tokens (Gemma 3: 256 for any image; Qwen2.5-VL: the most per image, at "
        "max_pixels, so the stats are an upper bound)",
    )


@dataclass
class DatasetSummary:
    """Examples per split, items left out and why, and image statistics."""

    examples: dict[str, int] = field(default_factory=dict)
    left_out: dict[str, int] = field(default_factory=dict)
    images_per_example: list[int] = field(default_factory=list)
    image_tokens: int = 256
    # Items that share a photo with another item, grouped (each group stays in one split).
    shared_photo_groups: list[list[str]] = field(default_factory=list)
    split: ItemSplit | None = None  # the run's split the examples follow

    def shared_photos(self) -> dict[str, Any]:
        """How many items were grouped by shared photos, in how many groups, the largest."""
        groups = self.shared_photo_groups
        return {
            "items": sum(len(g) for g in groups),
            "groups": len(groups),
            "largest": len(groups[0]) if groups else 0,
            "largest_items": groups[0][:5] if groups else [],
        }

    def stats(self) -> dict[str, Any]:
        """JSON-ready statistics (saved next to the dataset)."""
        counts = self.images_per_example or [0]
        return {
            "examples": self.examples,
            "left_out": self.left_out,
            "shared_photos": self.shared_photos(),
            "images_per_example": {
                "median": statistics.median(counts),
                "mean": round(statistics.fmean(counts), 2),
                "max": max(counts),
            },
            "image_tokens_per_example": {
                "median": statistics.median(counts) * self.image_tokens,
                "max": max(counts) * self.image_tokens,
            },
        }


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


def assign_splits(
    items: dict[str, dict[str, Any]],
    validation_ratio: float,
    test_ratio: float,
    seed: int = 0,
) -> dict[str, str]:
    """item_id -> split: deterministic by id, stratified by category, no image in two splits.

    `items` maps item_id to {"category": str | None, "hashes": set of image hashes}.
    Items sharing any image hash are grouped and always land in the same split.
    """
    groups = photo_groups(items)
    by_category: dict[str, list[list[str]]] = {}
    for members in groups:
        category = items[members[0]].get("category") or ""
        by_category.setdefault(category, []).append(members)
    for category in by_category:
        by_category[category].sort(key=lambda g: _rank(seed, g[0]))
    # Stratify by dealing the categories' groups out in turn: every prefix of this order
    # holds each category in proportion, so a small catalog still gets a test split.
    dealt = [
        queue[k]
        for k in range(max(len(q) for q in by_category.values()))
        for _, queue in sorted(by_category.items())
        if k < len(queue)
    ]
    total = len(items)
    n_test = _held_out(total, test_ratio)
    n_val = _held_out(total - n_test, validation_ratio / max(1e-9, 1 - test_ratio))
    splits: dict[str, str] = {}
    taken = {"test": 0, "validation": 0}
    for members in dealt:
        split = "train"
        for name, quota in (("test", n_test), ("validation", n_val)):
            # A held-out split may overshoot by one group, but not take a group of shared
            # photos far bigger than itself (stock photos on every listing would empty train).
            if taken[name] < quota and taken[name] + len(members) <= max(2 * quota, quota + 1):
                split = name
                break
        if split != "train":
            taken[split] += len(members)
        for item_id in members:
            splits[item_id] = split
    return splits


def split_input(store: RunStore, item: ItemRow) -> dict[str, Any]:
    """What assign_splits knows of one item: its category and its usable photos' pixel hashes."""
    hashes = {r.sha256 for r in store.images(item.item_id) if r.usable}
    return {"category": item.category, "hashes": hashes}


def run_splits(
    store: RunStore, validation_ratio: float, test_ratio: float, seed: int = 0
) -> dict[str, str]:
    """item_id -> split for EVERY item of a run, agreeing with `dataset build`'s split.

    The items with final attributes get exactly the split `build_dataset` gives them for
    these ratios and seed. Every other item (no attributes: not in the student's dataset)
    sharing a photo with them takes the most held-out split of the items it shares with, so
    no photo of a student validation/test item lands in another tool's train split; the rest
    are split among themselves by the same authority.
    """
    student: dict[str, dict[str, Any]] = {}
    others: dict[str, dict[str, Any]] = {}
    for item in store.items():
        entry = split_input(store, item)
        (student if store.final_attributes(item.item_id) else others)[item.item_id] = entry
    splits = assign_splits(student, validation_ratio, test_ratio, seed) if student else {}
    if not others:
        return splits
    joined = {**student, **others}
    free: dict[str, dict[str, Any]] = {}
    for members in photo_groups(joined):
        taken = [splits[m] for m in members if m in splits]
        if not taken:
            free.update({m: others[m] for m in members})
            continue
        # test > validation > train: a shared photo goes where it cannot leak.
        held = max(taken, key=SPLITS.index)
        splits.update({m: held for m in members if m not in splits})
    if free:
        splits.update(assign_splits(free, validation_ratio, test_ratio, seed))
    return splits


@dataclass
class ItemSplit:
    """The run's one item split: item_id -> split, the settings that made it, where it came from.

    status: "new" (computed now; record() writes it), "recorded" (read from the run store,
    items ingested since then added by the recorded settings) or "resplit" (computed now
    with the asked settings; record() replaces the recorded split).
    """

    splits: dict[str, str]
    settings: dict[str, Any]  # the settings that made `splits` (the recorded ones if reused)
    asked: dict[str, Any]  # the settings the caller gave
    status: Literal["new", "recorded", "resplit"]
    unrecorded: dict[str, str] = field(default_factory=dict)  # what record() adds

    @property
    def reused_other_settings(self) -> bool:
        """Whether a recorded split made by other settings than the asked ones is in use."""
        return self.status == "recorded" and self.settings != self.asked

    def describe(self) -> str:
        """One line: the settings that made the split and whether it was recorded before."""
        where = {
            "new": "recorded in the run now",
            "recorded": "recorded in the run before",
            "resplit": "re-split: replaces the split recorded before",
        }[self.status]
        return f"{_settings_text(self.settings)} ({where})"

    def record(self, store: RunStore) -> None:
        """Write what the run store does not hold yet: a new split, a re-split, added items."""
        if self.status == "recorded" and not self.unrecorded:
            return
        store.record_splits(self.unrecorded, self.settings, replace=self.status != "recorded")


def split_settings(validation_ratio: float, test_ratio: float, seed: int) -> dict[str, Any]:
    """The settings that decide a split, keyed by SPLIT_KEYS (as the run store records them)."""
    return {"validation_ratio": validation_ratio, "test_ratio": test_ratio, "seed": seed}


def item_splits(
    store: RunStore,
    validation_ratio: float,
    test_ratio: float,
    seed: int = 0,
    resplit: bool = False,
) -> ItemSplit:
    """The run's item split, THE one `dataset build`, the detector and label exports obey.

    The first call splits the run's items (run_splits) with these settings; record() then
    writes that split into the run store. Every later call returns the recorded split,
    whatever settings it is given: when they differ from the recorded ones it warns, naming
    both, and uses the recorded split, so the detector never trains on an item the student
    is tested on. Items ingested after the split was recorded are added by the recorded
    settings (an item sharing a photo with recorded items joins their most held-out split).
    resplit: split again with these settings; record() replaces the recorded split.
    """
    asked = split_settings(validation_ratio, test_ratio, seed)
    recorded = store.recorded_splits()
    if resplit or not recorded:
        splits = run_splits(store, validation_ratio, test_ratio, seed)
        status: Literal["new", "resplit"] = "resplit" if recorded else "new"
        if recorded and splits != recorded:
            logger.warning(
                "re-split the run's items with %s, replacing the split recorded before (%s): "
                "a detector trained or labels exported from the old split no longer match it",
                _settings_text(asked),
                _settings_text(store.split_settings() or {}),
            )
        return ItemSplit(splits, asked, asked, status, dict(splits))
    settings = store.split_settings() or asked
    current = {item.item_id: split_input(store, item) for item in store.items()}
    splits = {item_id: split for item_id, split in recorded.items() if item_id in current}
    added = _extend_splits(splits, current, settings)
    _warn_split_groups(splits, current)
    result = ItemSplit(splits, settings, asked, "recorded", added)
    if result.reused_other_settings:
        logger.warning(
            "this run's items were split with %s (recorded in %s); using that split, not %s "
            "as asked, so that the student, the detector and label exports share one split. "
            "To split again with the new settings: `croptune dataset build --resplit` (then "
            "build the datasets and train the detectors of this run again)",
            _settings_text(settings),
            store.path,
            _settings_text(asked),
        )
    return result


def _settings_text(settings: Mapping[str, Any]) -> str:
    return ", ".join(f"{key} {settings.get(key)}" for key in SPLIT_KEYS)


def _extend_splits(
    splits: dict[str, str], items: dict[str, dict[str, Any]], settings: Mapping[str, Any]
) -> dict[str, str]:
    """Split the items not in `splits` (in place), keeping every recorded one; return those."""
    if len(splits) == len(items):
        return {}
    free: dict[str, dict[str, Any]] = {}
    added: dict[str, str] = {}
    for members in photo_groups(items):
        taken = [splits[m] for m in members if m in splits]
        new = [m for m in members if m not in splits]
        if not new:
            continue
        if not taken:
            free.update({m: items[m] for m in new})
            continue
        held = max(taken, key=SPLITS.index)  # a shared photo goes where it cannot leak
        added.update({m: held for m in new})
    if free:
        added.update(
            assign_splits(
                free, settings["validation_ratio"], settings["test_ratio"], settings["seed"]
            )
        )
    splits.update(added)
    logger.info("added %d item(s) to the split recorded in the run", len(added))
    return added


def _warn_split_groups(splits: dict[str, str], items: dict[str, dict[str, Any]]) -> None:
    """Warn when items sharing a photo now sit in different recorded splits (re-ingested)."""
    mixed = [g for g in photo_groups(items) if len({splits[m] for m in g}) > 1]
    if mixed:
        logger.warning(
            "%d group(s) of items that share a photo sit in different splits of the split "
            "recorded in the run (the catalog changed since), e.g. %s: split again with "
            "`croptune dataset build --resplit` so that no photo is in two splits",
            len(mixed),
            ", ".join(mixed[0][:5]),
        )


def photo_groups(items: dict[str, dict[str, Any]]) -> list[list[str]]:
    """Items joined by shared photos (pixel hashes), each group's ids sorted, in id order."""
    parent = {item_id: item_id for item_id in items}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    owner: dict[str, str] = {}
    for item_id in sorted(items):
        for image_hash in items[item_id]["hashes"]:
            if image_hash in owner:
                parent[find(item_id)] = find(owner[image_hash])
            else:
                owner[image_hash] = item_id
    groups: dict[str, list[str]] = {}
    for item_id in sorted(items):
        groups.setdefault(find(item_id), []).append(item_id)
    return list(groups.values())


def shared_photo_groups(items: dict[str, dict[str, Any]]) -> list[list[str]]:
    """The groups of 2+ items that share a photo, largest first."""
    shared = [group for group in photo_groups(items) if len(group) > 1]
    return sorted(shared, key=lambda group: (-len(group), group[0]))


def _check_train_left(splits: dict[str, str], summary: DatasetSummary) -> None:
    """CroptuneError (nothing written) when the split leaves no item for train."""
    if any(split == "train" for split in splits.values()):
        return
    shared = summary.shared_photos()
    held = {s: list(splits.values()).count(s) for s in ("validation", "test")}
    why = (
        f"{shared['items']} of the {len(splits)} items share photos with another item "
        f"({shared['groups']} group(s), the largest {shared['largest']} items: "
        f"{', '.join(shared['largest_items'])}...), and items sharing a photo stay in one "
        "split so that no photo is in two"
        if shared["items"]
        else f"the catalog has only {len(splits)} items"
    )
    recorded = (
        f" (the split recorded in the run, made by {_settings_text(summary.split.settings)}: "
        "add --resplit to split with the new settings)"
        if summary.split is not None and summary.split.status == "recorded"
        else ""
    )
    raise CroptuneError(
        f"no item is left for train (validation {held['validation']}, test {held['test']}): "
        f"{why}. Remove the photos several listings share (stock images, logos) from the "
        f"catalog, or lower validation_ratio/test_ratio{recorded}; nothing was written"
    )


def _held_out(total: int, ratio: float) -> int:
    """Items to hold out: the ratio rounded, at least one when asked for and possible."""
    if ratio <= 0 or total < 3:
        return 0
    return max(1, round(total * ratio))


def _rank(seed: int, item_id: str) -> str:
    return hashlib.sha256(f"{seed}:{item_id}".encode()).hexdigest()


def build_dataset(
    store: RunStore,
    out_dir: Path,
    schema: AttributeSchema,
    config: DatasetConfig,
    crop_config_hash: str | None = None,
    progress: bool = False,
    resplit: bool = False,
) -> DatasetSummary:
    """Write a DatasetDict (train/validation/test) of the run's labeled items to out_dir.

    Items are split by the run's recorded split (item_splits: recorded by the first stage
    that splits the run, with its settings); resplit: split again with config's settings.
    """
    from datasets import Dataset, DatasetDict

    from toolkit.progress import track

    if not progress:
        import datasets

        datasets.disable_progress_bars()
    summary = DatasetSummary(image_tokens=config.image_tokens)
    crop_config_hash = crop_config_hash or store.get_meta("crop_config_hash")
    candidates = {}
    for item in store.items():
        attributes = store.final_attributes(item.item_id)
        if not attributes:
            summary.left_out["no final attributes"] = (
                summary.left_out.get("no final attributes", 0) + 1
            )
            continue
        candidates[item.item_id] = {"item": item, "attributes": attributes,
                                    **split_input(store, item)}  # fmt: skip
    if not candidates:
        raise CroptuneError("no item of this run has final attributes; run `croptune label` first")
    split = item_splits(
        store, config.validation_ratio, config.test_ratio, config.seed, resplit=resplit
    )
    summary.split = split
    splits = {item_id: split.splits[item_id] for item_id in candidates}
    summary.shared_photo_groups = shared_photo_groups(candidates)
    _check_train_left(splits, summary)
    split.record(store)
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in SPLITS}
    for item_id in track(list(candidates), "dataset", progress):
        entry = candidates[item_id]
        item = entry["item"]
        try:
            images, prompt = item_example(store, item, schema, config, crop_config_hash)
        except ImageLoadError as exc:
            summary.left_out["image unreadable"] = summary.left_out.get("image unreadable", 0) + 1
            store.log_event("dataset", str(exc), item_id=item_id)
            continue
        # Stored losslessly: `datasets` re-encodes an image that still carries its source
        # format (a JPEG photo, a JPEG crop) in that format at quality 75, which would give
        # training pixels that `predict` (and evaluation of a served model) never sees.
        images = [_lossless(image) for image in images]
        row = example_row(images, prompt, answer_text(entry["attributes"]))
        row.update(item_id=item_id, category=item.category or "")
        rows[splits[item_id]].append(row)
        summary.images_per_example.append(len(images))
    if not rows["train"]:
        raise CroptuneError(
            f"no train example could be built: every train item's images were unreadable "
            f"({summary.left_out.get('image unreadable', 0)} items left out; see "
            "`croptune report`); nothing was written"
        )
    features = dataset_features()
    # Column-wise, so that an empty split still gets its columns.
    dataset = DatasetDict(
        {
            name: Dataset.from_dict(
                {key: [row[key] for row in rows[name]] for key in features}, features=features
            )
            for name in SPLITS
            if rows[name]  # datasets cannot reload an empty saved split
        }
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset.save_to_disk(str(out_dir))
    summary.examples = {name: len(rows[name]) for name in SPLITS}
    crop_config = store.get_meta("crop_config")
    facts = {
        "config": config.model_dump(mode="json"),
        "schema": schema.model_dump(mode="json"),
        # Runs cropped by an older croptune recorded the image budget in it too: dropped.
        "crop_config": CropConfig.from_saved(json.loads(crop_config)).model_dump(mode="json")
        if crop_config
        else None,
        # The split the examples follow: the run's recorded one (its settings may differ
        # from config's when the run was split before).
        "split": {**split.settings, "status": split.status},
        "stats": summary.stats(),
    }
    (out_dir / "croptune_dataset.json").write_text(json.dumps(facts, indent=2))
    return summary


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
    return images, extraction_prompt(schema, listing_text(item.title, item.text))


def example_images(
    store: RunStore,
    item_id: str,
    config: DatasetConfig,
    crop_config_hash: str | None,
    originals: Mapping[int, Image.Image] | None = None,
) -> list[Image.Image]:
    """The item's images for the strategy, without pHash duplicates, under the budget.

    Budget priority: the main photo, then the crops, then the other photos. An original or
    crop the crop stage marked as repeating another image used here is left out.
    originals: already decoded originals by index (oriented RGB, as load_ingested_image
    returns them), so they are not decoded again.
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
    images = []
    for index in keep_originals:
        decoded = originals.get(index) if originals is not None else None
        if decoded is None:
            decoded = load_ingested_image(by_index[index])
        images.append(_downscale(decoded, config.max_image_side))
    for index in keep_crops:
        images.append(load_image(str(store.run_dir / crops[index].path)).image)
    return images


def _lossless(image: Image.Image) -> Image.Image:
    """The image without its source format, so `datasets` stores it as PNG (lossless)."""
    return image.copy() if image.format is not None else image


def _latest_crops(crops: list[CropRow], config_hash: str | None) -> list[CropRow]:
    """Crops of one crop config (none when no crop config was run)."""
    return [c for c in crops if c.config_hash == config_hash]


def _downscale(image: Image.Image, max_side: int) -> Image.Image:
    if max(image.size) <= max_side:
        return image
    scale = max_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)
