"""The label stage with the reference teacher: same store path, resume, errors, splits."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest
from PIL import Image

from teacher_labeling.labeling import label_items, pending_requests
from teacher_labeling.teachers import (
    LabelConfig,
    ReferenceTeacher,
    TeacherConfig,
    TeacherError,
    build_teacher,
)
from toolkit.catalog import ingest_catalog, load_catalog
from toolkit.dataset.splits import assign_splits
from toolkit.errors import CroptuneError
from toolkit.schema import load_schema
from toolkit.store import RunStore


class CountingReference(ReferenceTeacher):
    """The reference teacher, counting what it is asked (a stand-in for a paid API)."""

    asked: list[tuple[str, int | None]]

    async def answer(self, request, item):
        self.asked.append((request.item_id, request.image))
        return await super().answer(request, item)


def _teacher(coords="pixels") -> CountingReference:
    teacher = CountingReference(
        TeacherConfig(name="ref", role="both", kind="reference", coords=coords), load_schema()
    )
    teacher.asked = []
    return teacher


def _catalog(tmp_path, items):
    (tmp_path / "img").mkdir(exist_ok=True)
    lines = []
    for item_id, sizes, attributes, boxes in items:
        paths = []
        for index, size in enumerate(sizes):
            path = tmp_path / "img" / f"{item_id}_{index}.png"
            Image.new("RGB", size, (index * 40, ord(item_id[0]), 200)).save(path)
            paths.append(f"img/{path.name}")
        lines.append(
            json.dumps(
                {"item_id": item_id, "images": paths, "attributes": attributes, "boxes": boxes}
            )
        )
    (tmp_path / "catalog.jsonl").write_text("\n".join(lines) + "\n")
    return load_catalog(tmp_path / "catalog.jsonl")


ATTRS = {"identifiers": {"gtin": "4006381333931"}}


@pytest.mark.parametrize("coords", ["pixels", "norm1000", "norm1", "qwen2.5-vl"])
def test_reference_boxes_come_back_on_the_same_pixels(tmp_path, coords):
    # The reference teacher speaks each convention; the parser maps it back exactly.
    catalog = _catalog(
        tmp_path,
        [("A", [(640, 480), (333, 517)], ATTRS, [
            {"image": 0, "xyxy": [10, 20, 110, 60], "label": "barcode"},
            {"image": 1, "xyxy": [300, 500, 333, 517], "label": "mark"},
        ])],
    )  # fmt: skip
    with RunStore(tmp_path / "run") as store:
        ingest_catalog(catalog, store)
        summary = label_items(store, [_teacher(coords)])
        boxes = [b for _, b in store.boxes("A")]
    assert summary.failed == 0
    assert [(b.image, b.label) for b in boxes] == [(0, "barcode"), (1, "mark")]
    expected = [(10, 20, 110, 60), (300, 500, 333, 517)]
    for box, xyxy in zip(boxes, expected, strict=True):
        assert box.xyxy == pytest.approx(xyxy, abs=0.05)


def test_second_run_asks_nothing_and_failures_are_retried(tmp_path):
    catalog = _catalog(
        tmp_path,
        [
            ("A", [(64, 64), (64, 64)], ATTRS, [{"image": 1, "xyxy": [1, 1, 9, 9], "label": "x"}]),
            ("B", [(64, 64)], None, []),  # no reference attributes: the attributes request fails
        ],
    )
    with RunStore(tmp_path / "run") as store:
        ingest_catalog(catalog, store)
        teacher = _teacher()
        first = label_items(store, [teacher])
        assert len(teacher.asked) == 5  # A: 1 attributes + 2 images; B: 1 attributes + 1 image
        assert first.failed == 1 and "item B (ref)" in first.errors[0]
        assert store.final_attributes("A") == ATTRS
        assert store.final_attributes("B") is None
        assert [e["item_id"] for e in store.errors(stage="label")] == ["B"]

        teacher.asked = []
        second = label_items(store, [teacher])
        assert teacher.asked == [("B", None)]  # only the failed request is asked again
        assert second.cached == 4
        assert pending_requests(store, [teacher]).per_teacher == {"ref": 1}


@pytest.mark.parametrize("order", [("A", "B"), ("B", "A")])
def test_a_photo_two_listings_share_gets_each_listings_reference_boxes(tmp_path, order):
    # The reference teacher answers from the item's own labels: the shared photo's question
    # differs per listing, so neither listing is given the other's boxes, in either order.
    (tmp_path / "img").mkdir()
    Image.new("RGB", (96, 64), (10, 120, 200)).save(tmp_path / "img" / "shared.png")
    own = {"A": [[2, 2, 20, 20]], "B": [[2, 2, 20, 20], [40, 30, 90, 60]]}
    lines = [
        json.dumps({"item_id": item_id, "images": ["img/shared.png"], "attributes": ATTRS,
                    "boxes": [{"image": 0, "xyxy": xyxy, "label": "x"} for xyxy in own[item_id]]})
        for item_id in order
    ]  # fmt: skip
    (tmp_path / "catalog.jsonl").write_text("\n".join(lines) + "\n")
    with RunStore(tmp_path / "run") as store:
        ingest_catalog(load_catalog(tmp_path / "catalog.jsonl"), store)
        teacher = _teacher()
        label_items(store, [teacher])
        stored = {i: [list(b.xyxy) for _, b in store.boxes(i)] for i in ("A", "B")}
        # asked once per listing and question: identical attributes still share an answer
        assert sorted(teacher.asked, key=str) == sorted(
            [("A", 0), ("B", 0), (order[0], None)], key=str
        )
    assert stored == {i: [pytest.approx(b, abs=0.05) for b in own[i]] for i in own}


def test_changed_image_is_not_labeled_with_stale_hash(tmp_path):
    catalog = _catalog(tmp_path, [("A", [(64, 64)], ATTRS, [])])
    with RunStore(tmp_path / "run") as store:
        ingest_catalog(catalog, store)
        Image.new("RGB", (64, 64), "red").save(tmp_path / "img" / "A_0.png")  # edited after ingest
        summary = label_items(store, [_teacher()])
    assert summary.asked == 0
    assert "changed since ingest" in summary.errors[0]
    # the photo is named once: the error's type, not its words, says which kind it is
    assert summary.errors[0].count("image 0") == 1, summary.errors[0]


def test_a_changed_photo_is_its_own_error_type(tmp_path):
    from toolkit.catalog import load_ingested_image
    from toolkit.images import ImageChangedError

    catalog = _catalog(tmp_path, [("A", [(64, 64)], ATTRS, [])])
    with RunStore(tmp_path / "run") as store:
        ingest_catalog(catalog, store)
        Image.new("RGB", (64, 64), "red").save(tmp_path / "img" / "A_0.png")
        (row,) = store.images("A")
    with pytest.raises(ImageChangedError, match="^changed since ingest"):
        load_ingested_image(row)


def test_reference_teacher_without_attributes_raises_teacher_error(tmp_path):
    catalog = _catalog(tmp_path, [("A", [(64, 64)], None, [])])
    with RunStore(tmp_path / "run") as store:
        ingest_catalog(catalog, store)
        item = next(store.items())
        teacher = _teacher()
        request = teacher.attributes_request(item, [], ["h"])
        with pytest.raises(TeacherError, match="no reference attributes"):
            asyncio.run(teacher.answer(request, item))


def test_cache_key_depends_on_model_prompt_images_and_parameters():
    schema = load_schema()
    base = TeacherConfig(name="a", role="attributes", kind="reference", model="m1")
    item = type(
        "Item",
        (),
        {"item_id": "A", "title": "t", "text": None, "reference_attributes": None,
         "reference_boxes": []},
    )()  # fmt: skip
    key = ReferenceTeacher(base, schema).attributes_request(item, [], ["h1"]).cache_key
    same = ReferenceTeacher(base.model_copy(update={"name": "b"}), schema)
    assert same.attributes_request(item, [], ["h1"]).cache_key == key  # the name is not asked
    for changed in (
        ReferenceTeacher(base.model_copy(update={"model": "m2"}), schema).attributes_request(
            item, [], ["h1"]
        ),
        ReferenceTeacher(base, schema).attributes_request(item, [], ["h2"]),
        ReferenceTeacher(base.model_copy(update={"temperature": 0.5}), schema).attributes_request(
            item, [], ["h1"]
        ),
    ):
        assert changed.cache_key != key


def test_reference_keys_come_from_one_item_hook_and_stay_as_they_were():
    # Both requests of the reference teacher add the item's own labels through one hook
    # (Teacher._item_parameters); its keys are those runs already cached answers under.
    from toolkit.store import ItemRow

    item = ItemRow(
        item_id="A", title="t", category=None, text="x", reference_attributes={"a": 1},
        reference_boxes=[{"image": 0, "xyxy": [1, 2, 3, 4], "label": "m"},
                         {"image": 1, "xyxy": [5, 6, 7, 8]}],
    )  # fmt: skip
    photo = Image.new("RGB", (10, 10))
    reference = ReferenceTeacher(
        TeacherConfig(name="r", kind="reference", role="both"), load_schema()
    )
    keys = [reference.attributes_request(item, [photo], ["h"]).cache_key] + [
        reference.boxes_request(item, index, photo, "h", (10, 10)).cache_key for index in (0, 1)
    ]
    assert [key[:16] for key in keys] == [
        "a5038290a7fa5e5c",
        "e96099c614764f51",
        "128f6df6e0d02b6d",
    ]
    relabeled = dataclasses.replace(item, reference_attributes={"a": 2})
    assert reference.attributes_request(relabeled, [photo], ["h"]).cache_key != keys[0]
    # A teacher that does not answer from the item's labels is not keyed by them.
    api = build_teacher(
        TeacherConfig(name="g", role="both", model="m", api_key_env="X"), load_schema()
    )
    assert (
        api.attributes_request(item, [photo], ["h"]).cache_key
        == api.attributes_request(relabeled, [photo], ["h"]).cache_key
    )
    assert api.boxes_request(item, 0, photo, "h", (10, 10)).parameters.keys() == {
        "task",
        "coords",
        "temperature",
        "max_tokens",
        "endpoint",
    }


def test_label_config_rules():
    with pytest.raises(ValueError, match="unique"):
        LabelConfig(teachers=[{"name": "a", "role": "boxes"}, {"name": "a", "role": "boxes"}])
    with pytest.raises(ValueError, match="NAME of an environment variable"):
        TeacherConfig(name="a", role="boxes", api_key_env="sk-live-1234-abcd")
    with pytest.raises(CroptuneError, match="names no key variable"):
        build_teacher(TeacherConfig(name="gpt", role="attributes"), load_schema()).check_ready()


def test_splits_keep_shared_images_together_and_are_deterministic():
    items = {f"I{n:02d}": {"category": "ab"[n % 2], "hashes": {f"h{n}"}} for n in range(40)}
    items["I05"]["hashes"].add("shared")
    items["I06"]["hashes"].add("shared")  # a near-duplicate listing reusing a photo
    items["I07"]["hashes"].add("h6")
    splits = assign_splits(items, 0.1, 0.2, seed=0)
    assert splits == assign_splits(items, 0.1, 0.2, seed=0)
    assert splits["I05"] == splits["I06"] == splits["I07"]
    by_hash = {}
    for item_id, entry in items.items():
        for image_hash in entry["hashes"]:
            by_hash.setdefault(image_hash, set()).add(splits[item_id])
    assert all(len(found) == 1 for found in by_hash.values())
    counts = {s: list(splits.values()).count(s) for s in ("train", "validation", "test")}
    assert counts["test"] in (8, 9, 10) and counts["validation"] in (4, 5, 6)
    test_categories = {items[i]["category"] for i, s in splits.items() if s == "test"}
    assert test_categories == {"a", "b"}  # stratified
    assert assign_splits(items, 0.1, 0.2, seed=1) != splits
