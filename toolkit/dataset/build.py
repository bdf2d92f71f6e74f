"""build_dataset: a run's labeled items -> a saved DatasetDict (its data files the build's
chunk files, moved into place), and its DatasetSummary."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.crops.config import CropConfig
from toolkit.dataset.chunks import (
    CHUNK_ITEMS,
    IMAGE_UNREADABLE,
    NO_ATTRIBUTES,
    WORK_DIR,
    BuildSpec,
    build_key,
    plan_chunks,
    prepare_work_dir,
    run_chunks,
)
from toolkit.dataset.config import DatasetConfig
from toolkit.dataset.rows import dataset_features
from toolkit.dataset.splits import (
    SPLITS,
    ItemSplit,
    item_splits,
    settings_text,
    shared_photo_groups,
    split_input,
)
from toolkit.dataset.stored import REASONS
from toolkit.errors import CroptuneError
from toolkit.schema import AttributeSchema
from toolkit.store import RunStore


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
    # Images stored as their files' bytes ("source_bytes") or as PNG ("png"), and why PNG
    # (stored.REASONS: resized, exif_turned, converted, reencode; an image may have several).
    images_stored: dict[str, int] = field(default_factory=dict)
    chunks_built: int = 0
    chunks_reused: int = 0  # finished by an earlier, interrupted build of the same settings
    processes: int = 1  # the most processes that built chunks at once (1: this one)

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
            "images_stored": {
                "source_bytes": self.images_stored.get("source_bytes", 0),
                "png": self.images_stored.get("png", 0),
                "png_because": {
                    reason: self.images_stored[reason]
                    for reason in REASONS
                    if self.images_stored.get(reason)
                },
            },
        }


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
        f" (the split recorded in the run, made by {settings_text(summary.split.settings)}: "
        "add --resplit to split with the new settings)"
        if summary.split is not None and summary.split.status == "recorded"
        else ""
    )
    raise CroptuneError(
        f"no item is left for train (validation {held['validation']}, test {held['test']}): "
        f"{why}. Remove the photos several listings share (stock images, logos) from the "
        f"catalog, or lower validation_ratio/test_ratio{recorded}; nothing was written"
    )


# The metadata of the saved dataset, made in the work folder before it moves into place.
SAVED_METADATA = "saved-metadata"

# With no number of workers asked for, processes start only when the chunks left would
# take longer than this in process: starting one costs 1-3 s (an interpreter, pyarrow,
# croptune), more than a build of source bytes takes for a few hundred items.
PARALLEL_AFTER_S = 10.0


def default_workers() -> int:
    """The most worker processes of `dataset build` when none are asked for: up to 4, one
    per core."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(4, cores or 1)


def build_dataset(
    store: RunStore,
    out_dir: Path,
    schema: AttributeSchema,
    config: DatasetConfig,
    crop_config_hash: str | None = None,
    progress: bool = False,
    resplit: bool = False,
    workers: int | None = 1,
    reencode: bool = False,
    chunk_items: int = CHUNK_ITEMS,
) -> DatasetSummary:
    """Write a DatasetDict (train/validation/test) of the run's labeled items to out_dir.

    Items are split by the run's recorded split (item_splits: recorded by the first stage
    that splits the run, with its settings); resplit: split again with config's settings.
    Images are stored as their files' bytes when croptune did not change their pixels, else
    as PNG (toolkit.dataset.stored); reencode: PNG for all (the builder before source bytes).
    The items are built chunk_items at a time (toolkit.dataset.chunks) in `workers`
    processes (1: in this one; None: in this one, then up to default_workers() processes
    once the chunks left would take longer than PARALLEL_AFTER_S), streamed: the same
    dataset whatever the number of workers. A rerun after an interrupted build reuses its
    finished chunks. The finished chunk files become the saved dataset's data files (moved,
    not copied: _save), so saving costs neither a second write of the rows nor memory.
    """
    if not progress:
        import datasets

        datasets.disable_progress_bars()
    summary = DatasetSummary(image_tokens=config.image_tokens)
    crop_config_hash = crop_config_hash or store.get_meta("crop_config_hash")
    # Only small per-item facts are held: the split's inputs (category, photo hashes).
    candidates: dict[str, dict[str, Any]] = {}
    for item in store.items():
        if not store.final_attributes(item.item_id):
            summary.left_out[NO_ATTRIBUTES] = summary.left_out.get(NO_ATTRIBUTES, 0) + 1
            continue
        candidates[item.item_id] = split_input(store, item)
    if not candidates:
        raise CroptuneError("no item of this run has final attributes; run `croptune label` first")
    split = item_splits(
        store, config.validation_ratio, config.test_ratio, config.seed, resplit=resplit
    )
    summary.split = split
    splits = {item_id: split.splits[item_id] for item_id in candidates}
    summary.shared_photo_groups = shared_photo_groups(candidates)
    del candidates
    _check_train_left(splits, summary)
    split.record(store)

    created = not out_dir.exists()
    key = build_key(schema, config, crop_config_hash, reencode, chunk_items)
    work_dir = prepare_work_dir(out_dir, key)
    arrow_schema = dataset_features().arrow_schema
    spec = BuildSpec(
        store.run_dir, work_dir, schema, config, crop_config_hash, reencode, arrow_schema
    )
    files = _build_chunks(store, spec, splits, chunk_items, workers, progress, summary)
    if not files["train"]:
        shutil.rmtree(out_dir / WORK_DIR)
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise CroptuneError(
            f"no train example could be built: every train item's images were unreadable "
            f"({summary.left_out.get(IMAGE_UNREADABLE, 0)} items left out; see "
            "`croptune report`); nothing was written"
        )
    _save(files, out_dir, work_dir)
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
    shutil.rmtree(out_dir / WORK_DIR)  # the saved dataset holds it all now
    return summary


def _build_chunks(
    store: RunStore,
    spec: BuildSpec,
    splits: dict[str, str],
    chunk_items: int,
    workers: int | None,
    progress: bool,
    summary: DatasetSummary,
) -> dict[str, list[Path]]:
    """Build (or reuse) every chunk, adding each to the summary; per split, its Arrow files."""
    from toolkit.progress import ProgressBar

    files: dict[str, list[Path]] = {name: [] for name in SPLITS}
    summary.examples = dict.fromkeys(SPLITS, 0)
    total = -(-len(splits) // chunk_items)
    # None: up to default_workers() processes, once the build proves long enough for them.
    after_s = PARALLEL_AFTER_S if workers is None else None
    # More processes than chunks would only start up and wait.
    processes = min(default_workers() if workers is None else workers, total)
    chunks = plan_chunks(store, splits, chunk_items, spec.work_dir.name, spec.crop_config_hash)
    with (
        ProgressBar("dataset", len(splits), progress) as bar,
        closing(run_chunks(spec, chunks, processes, store, total, after_s)) as finished,
    ):
        for _, record, reused, used in finished:
            if reused:
                summary.chunks_reused += 1
            else:
                summary.chunks_built += 1
                summary.processes = max(summary.processes, used)
            for name, file in record["files"].items():
                files[name].append(spec.work_dir / file)
                summary.examples[name] += record["examples"][name]
            summary.images_per_example += record["images_per_example"]
            for kind, count in record["stored"].items():
                summary.images_stored[kind] = summary.images_stored.get(kind, 0) + count
            for entry in record["left_out"]:
                reason = entry["reason"]
                summary.left_out[reason] = summary.left_out.get(reason, 0) + 1
                if "message" in entry:
                    store.log_event(
                        "dataset", entry["message"], item_id=entry["item_id"], once=True
                    )
            bar.advance(record["items"], status="reused" if reused else "")
    return files


def _save(files: dict[str, list[Path]], out_dir: Path, work_dir: Path) -> None:
    """Make the finished chunk files the saved DatasetDict's own data files, split by split in
    chunk order: moved into out_dir/<split>/ (no copy), with the metadata save_to_disk writes.

    The metadata comes from `datasets` itself: the dataset the chunks make (the chunk files
    memory-mapped and concatenated, no row read) with none of its rows, saved with
    save_to_disk to a folder in work_dir; its state then names the chunk files, as
    save_to_disk names its shards. Everything is moved only once every chunk is finished,
    dataset_dict.json last: a build that dies while moving leaves no loadable dataset in
    out_dir, and its rerun builds again the chunks whose files were moved.
    """
    from datasets import Dataset, DatasetDict, concatenate_datasets, config

    # An empty split is left out: datasets cannot reload an empty saved split.
    splits = {name: paths for name, paths in files.items() if paths}
    metadata = work_dir / SAVED_METADATA
    if metadata.exists():  # from a build that died before moving it
        shutil.rmtree(metadata)
    # The rows' identity: the build's settings (work_dir's name) and its chunks' keys.
    fingerprints = {
        name: _digest([work_dir.name, name, [path.name for path in paths]])
        for name, paths in splits.items()
    }
    empty: dict[str, Any] = {}
    for name, paths in splits.items():
        dataset = concatenate_datasets([Dataset.from_file(str(path)) for path in paths])
        empty[name] = Dataset(
            dataset.data.slice(0, 0),
            info=dataset.info,
            split=dataset.split,
            fingerprint=fingerprints[name],
        )
        empty[name].set_format(**dataset.format)
    DatasetDict(empty).save_to_disk(str(metadata))
    del empty, dataset  # the chunk files move next (a mapped file would move as well)
    shards: dict[str, list[str]] = {}
    for name, paths in splits.items():
        for stray in (metadata / name).glob("*.arrow"):  # none: no rows were saved
            stray.unlink()
        state_path = metadata / name / config.DATASET_STATE_JSON_FILENAME
        state = json.loads(state_path.read_text())
        shards[name] = [f"data-{n:05d}-of-{len(paths):05d}.arrow" for n in range(len(paths))]
        state["_data_files"] = [{"filename": shard} for shard in shards[name]]
        state["_fingerprint"] = fingerprints[name]  # set_format derived another
        state_path.write_text(json.dumps(state, indent=2, sort_keys=True))
    # out_dir is no saved dataset until everything is in place (an older one is overwritten).
    (out_dir / config.DATASETDICT_JSON_FILENAME).unlink(missing_ok=True)
    for name, paths in splits.items():
        split_dir = out_dir / name
        split_dir.mkdir(exist_ok=True)
        (split_dir / config.DATASET_STATE_JSON_FILENAME).unlink(missing_ok=True)
        for old in split_dir.glob("data-*-of-*.arrow"):  # an older build's: listed nowhere now
            old.unlink()
        for path, shard in zip(paths, shards[name], strict=True):
            os.replace(path, split_dir / shard)
        for saved in sorted((metadata / name).iterdir(), key=_state_last):
            os.replace(saved, split_dir / saved.name)
    for saved in sorted((p for p in metadata.iterdir() if p.is_file()), key=_state_last):
        os.replace(saved, out_dir / saved.name)


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()[:16]


def _state_last(path: Path) -> tuple[bool, str]:
    """Sort key: the state files (what makes a folder a saved dataset) after the others."""
    from datasets import config

    last = (config.DATASET_STATE_JSON_FILENAME, config.DATASETDICT_JSON_FILENAME)
    return path.name in last, path.name
