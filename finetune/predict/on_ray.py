"""`predict --engine ray`: the items' CPU stages (decode, boxes, crops, the example) as Ray
Data actors, while the driver stores what they made and hands the examples to the student.

    work folder -> one ItemState per pending item (blocks in Ray's object store)
      -> Ray Data: PrepareItems actors (each loads the box source once)
      -> driver, as the batches come: store the item's changes -> student -> record

A worker runs the single-process code itself (ItemPreparer.prepare_item, crop_item,
item_example) on a scratch store holding the item's rows, then returns what that changed in
the scratch store (new boxes and their answer, crops and their files, pHashes, events) with
the example. The driver writes those changes into the work folder, so the work folder ends
exactly as a single-process run leaves it, and a killed run resumes from it the same way.
Workers read the photos and the bundle's detector at the paths the driver sees (a local Ray
or shared storage: docs/scale.md).
"""

from __future__ import annotations

import logging
import pickle
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from finetune.predict.bundle import Bundle
from finetune.predict.predictor import ItemFailed, ItemPreparer, PreparedItem
from toolkit.boxes import Box
from toolkit.errors import CroptuneError
from toolkit.files import write_once
from toolkit.protocols import BoxSource
from toolkit.ray_data import start_ray
from toolkit.store import CropRow, ImageRow, ItemRow, RunStore

logger = logging.getLogger(__name__)

_LEVELS = ("warning", "error")


@dataclass(frozen=True)
class RayPrepare:
    """How predict's CPU stages run on Ray: how many preparation actors, at how many CPUs."""

    actors: int = 0  # at most this many (autoscaled from one); 0: one per CPU of the cluster
    cpus: float = 1.0  # per actor: decoding, the detector and crop encoding are CPU work
    address: str | None = None  # the cluster (None: the Ray this process is connected to,
    # or a local one)


@dataclass
class ItemState:
    """One item's rows that preparing it reads: what a worker fills its scratch store with."""

    item: ItemRow
    fingerprint: str
    images: list[ImageRow]
    events: list[dict[str, Any]]  # the item's recorded warnings and errors, oldest first
    boxes: list[tuple[int, Box]]  # every source's, with the work folder's ids
    boxes_key: str
    boxes_answer: dict[str, Any] | None  # the box source's stored answer under boxes_key
    crops: list[CropRow]  # under the bundle's crop config
    phashes: dict[int, tuple[str | None, str | None]]
    crop_files: dict[str, bytes]  # the crops' files ("crops/ab12.png" -> bytes)


@dataclass
class ItemChanges:
    """What preparing an item changed in the scratch store, for the work folder."""

    item_id: str
    new_boxes: list[Box] | None  # the box source's new boxes (None: the stored ones served)
    boxes_answer: dict[str, Any] | None  # and their answer (text, usage)
    boxes: list[tuple[int, Box]]  # every box after, with scratch ids (crops name these)
    crops: list[CropRow]
    phashes: dict[int, tuple[str | None, str | None]]
    crop_files: dict[str, bytes] = field(default_factory=dict)  # files of new crops
    events: list[dict[str, Any]] = field(default_factory=list)  # new ones, with "level"


def item_state(preparer: ItemPreparer, item: ItemRow) -> ItemState:
    """What preparing the item reads from the work folder (driver)."""
    store, item_id = preparer.store, item.item_id
    key = preparer.boxes_key(item_id)
    crops = store.crops(item_id, preparer.crop_hash) if preparer.crop_hash else []
    return ItemState(
        item=item,
        fingerprint=store.item_fingerprint(item_id) or "",
        images=store.images(item_id),
        events=_item_events(store, item_id),
        boxes=store.boxes(item_id),
        boxes_key=key,
        boxes_answer=store.cached_response(key) if store.has_result(item_id, key) else None,
        crops=crops,
        phashes=store.image_phashes(item_id, preparer.crop_hash) if preparer.crop_hash else {},
        crop_files={c.path: (store.run_dir / c.path).read_bytes() for c in crops},
    )


def load_item_state(preparer: ItemPreparer, state: ItemState) -> None:
    """Fill the preparer's (scratch) store with the item's rows (worker)."""
    store, item_id = preparer.store, state.item.item_id
    store.put_item(state.item, 0, state.fingerprint, state.images)
    if preparer.boxes_key(item_id) != state.boxes_key:
        raise CroptuneError(
            "a Ray worker keys the boxes differently from the driver: its bundle or "
            "detector files differ from the driver's (workers must read the same bundle)"
        )
    for event in state.events:
        store.log_event(
            event["stage"], event["message"], event["level"], item_id, event["teacher"],
            event["image"],
        )  # fmt: skip
    source = preparer.box_source.name
    for other in sorted({box.source for _, box in state.boxes} - {source}):
        store.set_boxes(item_id, other, [b for _, b in state.boxes if b.source == other])
    own = [b for _, b in state.boxes if b.source == source]
    if state.boxes_answer is not None:
        answer = state.boxes_answer
        store.record_answer(
            state.boxes_key, source, source, item_id, None, answer["text"], answer["usage"],
            boxes=own,
        )  # fmt: skip
    elif own:
        store.set_boxes(item_id, source, own)
    ids = _matching_ids(state.boxes, store.boxes(item_id))
    (store.run_dir / "crops").mkdir(exist_ok=True)
    for path, data in state.crop_files.items():
        write_once(store.run_dir / path, data)
    for crop in state.crops:
        store.add_crop(replace(crop, box_ids=[ids[i] for i in crop.box_ids]))
    if state.phashes and preparer.crop_hash:
        store.set_image_phashes(item_id, preparer.crop_hash, state.phashes)


def item_changes(preparer: ItemPreparer, state: ItemState) -> ItemChanges:
    """What preparing the item changed in the preparer's (scratch) store (worker)."""
    store, item_id = preparer.store, state.item.item_id
    source = preparer.box_source.name
    boxes = store.boxes(item_id)
    new = state.boxes_answer is None and store.has_result(item_id, state.boxes_key)
    crops = store.crops(item_id, preparer.crop_hash) if preparer.crop_hash else []
    return ItemChanges(
        item_id=item_id,
        new_boxes=[b for _, b in boxes if b.source == source] if new else None,
        boxes_answer=store.cached_response(state.boxes_key) if new else None,
        boxes=boxes,
        crops=crops,
        phashes=store.image_phashes(item_id, preparer.crop_hash) if preparer.crop_hash else {},
        crop_files={
            c.path: (store.run_dir / c.path).read_bytes()
            for c in crops
            if c.path not in state.crop_files
        },
        events=_new_events(_item_events(store, item_id), state.events),
    )


def apply_changes(preparer: ItemPreparer, changes: ItemChanges) -> None:
    """Write a worker's changes of one item into the work folder (driver), as a
    single-process preparation would have made them."""
    store, item_id = preparer.store, changes.item_id
    source = preparer.box_source.name
    if changes.new_boxes is not None and changes.boxes_answer is not None:
        # As ItemPreparer._boxes: crops cut from earlier boxes go, other sources' boxes too.
        store.forget_crops(item_id)
        for old in {box.source for _, box in store.boxes(item_id)}:
            store.set_boxes(item_id, old, [])
        answer = changes.boxes_answer
        store.record_answer(
            preparer.boxes_key(item_id), source, source, item_id, None, answer["text"],
            answer["usage"], boxes=changes.new_boxes,
        )  # fmt: skip
    ids = _matching_ids(changes.boxes, store.boxes(item_id))
    if changes.crop_files:
        (store.run_dir / "crops").mkdir(exist_ok=True)
    for path, data in changes.crop_files.items():
        write_once(store.run_dir / path, data)
    if preparer.crop_hash:
        stored = {(c.image, c.region): c for c in store.crops(item_id, preparer.crop_hash)}
        for crop in changes.crops:
            crop = replace(crop, box_ids=[ids[i] for i in crop.box_ids])
            before = stored.get((crop.image, crop.region))
            if before is None:
                store.add_crop(crop)
            elif (before.duplicate_of, before.phash) != (crop.duplicate_of, crop.phash):
                store.set_crop_duplicate(
                    item_id, crop.image, preparer.crop_hash, crop.duplicate_of, crop.region,
                    crop.phash,
                )  # fmt: skip
        if changes.phashes != store.image_phashes(item_id, preparer.crop_hash):
            store.set_image_phashes(item_id, preparer.crop_hash, changes.phashes)
    for event in changes.events:
        store.log_event(
            event["stage"], event["message"], event["level"], item_id, event["teacher"],
            event["image"],
        )  # fmt: skip


def _item_events(store: RunStore, item_id: str) -> list[dict[str, Any]]:
    """The item's warnings, then its errors, each with its level."""
    return [
        {**event, "level": level}
        for level in _LEVELS
        for event in (store.warnings(item_id) if level == "warning" else store.errors(item_id))
    ]


def _new_events(after: list[dict[str, Any]], before: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events of `after` past those loaded from `before`, level by level."""
    return [
        event
        for level in _LEVELS
        for event in [e for e in after if e["level"] == level][
            sum(1 for e in before if e["level"] == level) :
        ]
    ]


def _matching_ids(before: list[tuple[int, Box]], after: list[tuple[int, Box]]) -> dict[int, int]:
    """Box ids of one store -> the same boxes' ids in another (paired by content, in order)."""
    free: dict[Box, list[int]] = {}
    for box_id, box in after:
        free.setdefault(box, []).append(box_id)
    return {box_id: free[box].pop(0) for box_id, box in before if free.get(box)}


class PrepareItems:
    """A Ray Data actor: prepares its batches' items on a scratch store, with the box source
    loaded once."""

    def __init__(self, setup: bytes) -> None:
        bundle, box_source = pickle.loads(setup)
        self.bundle: Bundle = bundle
        self.box_source: BoxSource = box_source
        self.box_source.prepare()

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        """One row per item: the pickled (item, changes, prepared item, failure)."""
        out: dict[str, list[Any]] = {"result": []}
        with (
            tempfile.TemporaryDirectory(prefix="croptune-predict-") as folder,
            RunStore(Path(folder)) as scratch,
        ):
            preparer = ItemPreparer(self.bundle, scratch, self.box_source)
            for payload in batch["payload"]:
                state: ItemState = pickle.loads(payload)
                load_item_state(preparer, state)
                prepared: PreparedItem | None = None
                failure: tuple[str, str, dict[str, Any]] | None = None
                try:
                    prepared = preparer.prepare_item(state.item)
                except ItemFailed as exc:  # (an exception's own pickling drops its stage)
                    failure = (exc.stage, str(exc), exc.extra)
                result = (state.item, item_changes(preparer, state), prepared, failure)
                out["result"].append(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
        return out


def prepared_on_ray(
    preparer: ItemPreparer, items: Iterator[ItemRow], batch_size: int, settings: RayPrepare
) -> Iterator[list[tuple[ItemRow, PreparedItem | ItemFailed]]]:
    """The items prepared by Ray Data actors, batch_size at a time as they finish (in any
    order), each item's changes already stored in the work folder."""
    import ray

    from toolkit.messages import innermost_message

    started = start_ray(settings.address)
    try:
        blocks = _state_blocks(preparer, items, batch_size)
        if not blocks:
            return
        for batch in _prepared_batches(preparer, blocks, batch_size, settings):
            ready: list[tuple[ItemRow, PreparedItem | ItemFailed]] = []
            for result in batch:
                item, changes, prepared, failure = pickle.loads(result)
                apply_changes(preparer, changes)
                if prepared is not None:
                    ready.append((item, prepared))
                else:
                    stage, message, extra = failure
                    ready.append((item, ItemFailed(stage, message, **extra)))
            yield ready
    except ray.exceptions.RayError as exc:
        message = innermost_message(exc)
        raise CroptuneError(f"predict's preparation on Ray failed: {message}") from exc
    finally:
        if started:
            ray.shutdown()


def _state_blocks(preparer: ItemPreparer, items: Iterator[ItemRow], batch_size: int) -> list[Any]:
    """The items' states in Ray's object store, batch_size to a block (Ray spills them to
    disk past its memory): the driver keeps only the references."""
    import pyarrow as pa
    import ray

    blocks, chunk = [], []
    for item in items:
        chunk.append(pickle.dumps(item_state(preparer, item), protocol=pickle.HIGHEST_PROTOCOL))
        if len(chunk) == batch_size:
            blocks.append(ray.put(pa.table({"payload": pa.array(chunk, pa.binary())})))
            chunk = []
    if chunk:
        blocks.append(ray.put(pa.table({"payload": pa.array(chunk, pa.binary())})))
    return blocks


def _prepared_batches(
    preparer: ItemPreparer, blocks: list[Any], batch_size: int, settings: RayPrepare
) -> Iterator[list[bytes]]:
    """The PrepareItems results of the state blocks, a batch at a time as Ray Data makes them."""
    import ray
    import ray.data

    actors = settings.actors or max(1, int(ray.cluster_resources().get("CPU", 1)))
    setup = pickle.dumps((preparer.bundle, preparer.box_source))
    # No file listing task (1 CPU in Ray Data, which replicas on CPUs may leave no room for).
    dataset = ray.data.from_arrow_refs(blocks).map_batches(
        PrepareItems,
        fn_constructor_kwargs={"setup": setup},
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
        num_cpus=settings.cpus,
    )
    for batch in dataset.iter_batches(batch_size=batch_size, batch_format="numpy"):
        yield list(batch["result"])
