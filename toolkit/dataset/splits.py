"""The one split authority: items -> train/validation/test by photo groups and held-out
quotas, recorded in the run store and obeyed by the dataset, the detector and label exports.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from toolkit.store import ItemRow, RunStore

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
SPLIT_KEYS = ("validation_ratio", "test_ratio", "seed")  # the settings that decide the split


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
        return f"{settings_text(self.settings)} ({where})"

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
                settings_text(asked),
                settings_text(store.split_settings() or {}),
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
            settings_text(settings),
            store.path,
            settings_text(asked),
        )
    return result


def settings_text(settings: Mapping[str, Any]) -> str:
    """The settings that decide a split as one phrase, in SPLIT_KEYS order."""
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


def _held_out(total: int, ratio: float) -> int:
    """Items to hold out: the ratio rounded, at least one when asked for and possible."""
    if ratio <= 0 or total < 3:
        return 0
    return max(1, round(total * ratio))


def _rank(seed: int, item_id: str) -> str:
    return hashlib.sha256(f"{seed}:{item_id}".encode()).hexdigest()
