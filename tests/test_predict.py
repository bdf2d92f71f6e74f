"""`croptune predict`: training-time crops and prompt at serving, per-item errors, resume,
the endpoint student, and the whole recipe end to end on the tiny student."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from finetune.predict import (
    STATS_FILE,
    NoBoxes,
    default_workdir,
    load_bundle,
    predict_catalog,
)
from teacher_labeling.box_source import TeacherBoxes, box_teacher_config
from teacher_labeling.endpoint import EndpointBackend, EndpointConfig
from teacher_labeling.teachers import TeacherConfig
from tests.bundles import manifest_data, write_manifest
from tests.fake_openai import ChatRequest, FakeOpenAI, FixedAnswer, RedSquareBoxes, Reply
from toolkit.crops import CropConfig
from toolkit.errors import CroptuneError
from toolkit.schema import extraction_prompt, listing_text, load_schema

ANSWER = {
    "attributes": {"brand": "Acme", "color": "red", "no_such_field": "x"},
    "identifiers": {"gtin": "4006381333931"},
    "extra_group": {"a": "b"},
}
RED = (230, 20, 20)


# ------------------------------------------------------------------------------- helpers


def write_bundle(
    folder: Path,
    *,
    crop: CropConfig | None = None,
    strategy: str = "originals+crops",
    budget: int = 9,
    box_source: str = "none",
    **extra: object,
) -> Path:
    """A bundle's croptune.yaml as `croptune export` writes it (the keys predict reads)."""
    data = manifest_data(
        crop=crop, strategy=strategy, budget=budget, box_source=box_source, **extra
    )
    return write_manifest(folder, data)


def photo(
    path: Path, size: tuple[int, int] = (160, 120), square: tuple[int, ...] = (), turned=False
) -> str:
    """A grey PNG with an optional red square (x1, y1, x2, y2), both as seen upright.

    turned: the file holds the pixels turned, with EXIF orientation 6 turning them upright.
    """
    image = Image.new("RGB", size, (120, 130, 140))
    if square:
        image.paste(RED, square)
    path.parent.mkdir(parents=True, exist_ok=True)
    if turned:
        exif = Image.Exif()
        exif[0x0112] = 6  # exif_transpose applies ROTATE_270: the file holds ROTATE_90
        image.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif)
    else:
        image.save(path)
    return path.name


def write_catalog(folder: Path, items: list[dict]) -> Path:
    catalog = folder / "catalog.jsonl"
    catalog.write_text("".join(json.dumps(item) + "\n" for item in items))
    return catalog


def endpoint(server: FakeOpenAI, name: str = "croptune-tiny") -> EndpointBackend:
    """The student behind the loopback server, uncached (every answer reaches the server)."""
    config = EndpointConfig(name=name, model=name, base_url=server.base_url, max_retries=0)
    return EndpointBackend(config, cache_dir=None, max_new_tokens=64)


def chats(server: FakeOpenAI) -> list:
    return [r for r in server.requests if r.path.endswith("/chat/completions")]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Recording:
    """A real answer backend that also keeps every example it was given (for the pixels)."""

    def __init__(self, inner) -> None:
        self.inner, self.examples = inner, []
        self.name, self.kind = inner.name, inner.kind

    def identity(self) -> dict:
        return self.inner.identity()

    def check_ready(self) -> None:
        self.inner.check_ready()

    def prepare(self) -> None:
        self.inner.prepare()

    def answer(self, examples, progress=False):
        self.examples += list(examples)
        return self.inner.answer(examples, progress)

    def close(self) -> None:
        self.inner.close()


# ------------------------------------------------------------------------ train/serve parity


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """The example catalog labeled by the reference teacher, cropped and built into a dataset:
    what `croptune label`, `crop` and `dataset build` make."""
    from croptune.pipeline import run_crop, run_dataset, run_label
    from croptune.synthetic.catalog import make_example_catalog
    from teacher_labeling.teachers import LabelConfig
    from toolkit.dataset import DatasetConfig

    work = tmp_path_factory.mktemp("trained-run")
    catalog = make_example_catalog(work / "catalog", n_items=6, seed=3)
    teacher = TeacherConfig(name="reference", role="both", kind="reference", coords="pixels")
    run_label(catalog, LabelConfig(teachers=[teacher]), work / "run")
    crop = CropConfig()
    run_crop(work / "run", crop)
    run_dataset(work / "run", work / "dataset", DatasetConfig(max_images_per_item=4))
    return {"work": work, "catalog": catalog, "crop": crop}


def test_predict_shows_the_student_the_training_pixels_and_prompt(trained_run, tmp_path):
    from datasets import load_from_disk

    from toolkit.store import RunStore

    work = trained_run["work"]
    bundle = load_bundle(
        write_bundle(tmp_path / "bundle", crop=trained_run["crop"], budget=4, box_source="teacher")
    )
    # The same boxes as training: the reference teacher answers the catalog's own boxes.
    boxes = TeacherBoxes(
        TeacherConfig(name="reference", role="boxes", kind="reference", coords="pixels")
    )
    with FakeOpenAI(FixedAnswer(json.dumps(ANSWER))) as server:
        student = Recording(endpoint(server))
        summary = predict_catalog(
            bundle, trained_run["catalog"], tmp_path / "preds.jsonl", student, boxes
        )
    assert summary.failed == 0 and summary.predicted == 6

    dataset = load_from_disk(str(work / "dataset"))
    rows = {row["item_id"]: row for split in dataset.values() for row in split}
    # The student got the items in catalog order.
    order = [
        json.loads(line)["item_id"] for line in trained_run["catalog"].read_text().splitlines()
    ]
    assert len(student.examples) == len(order) == len(rows)
    for item_id, (images, messages) in zip(order, student.examples, strict=True):
        row = rows[item_id]
        # the same prompt, word for word, with one image part per image ...
        assert messages == row["prompt"]
        # ... and the same images, pixel for pixel, in the same order
        assert len(images) == len(row["images"])
        for served, trained in zip(images, row["images"], strict=True):
            assert served.size == trained.size
            assert np.array_equal(np.asarray(served), np.asarray(trained.convert("RGB")))

    # The crop files predict cut equal the ones `croptune crop` cut, region for region.
    crop_hash = trained_run["crop"].config_hash()
    used = 0
    with RunStore(work / "run", create=False) as run, RunStore(summary.workdir) as served:
        for item_id in rows:
            trained_crops = {(c.image, c.region): c for c in run.crops(item_id, crop_hash)}
            served_crops = {(c.image, c.region): c for c in served.crops(item_id, crop_hash)}
            assert trained_crops.keys() == served_crops.keys()
            for key, crop in trained_crops.items():
                a = np.asarray(Image.open(work / "run" / crop.path).convert("RGB"))
                b = np.asarray(Image.open(summary.workdir / served_crops[key].path).convert("RGB"))
                assert np.array_equal(a, b)
                assert crop.duplicate_of == served_crops[key].duplicate_of
                used += crop.duplicate_of is None
    assert used > 0  # the comparison covered crops, not only photos


# ----------------------------------------------------------------- failures, the CLI, resume


def test_cli_writes_error_records_and_exits_1(tmp_path, monkeypatch, capsys):
    from croptune import cli

    folder = tmp_path / "catalog"
    (folder / "img").mkdir(parents=True)
    (folder / "img" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    photo(folder / "img" / "good.png", square=(20, 20, 60, 50))
    catalog = write_catalog(
        folder,
        [
            {"item_id": "corrupt", "images": ["img/broken.jpg"], "title": "Kettle"},
            {"item_id": "good", "images": ["img/good.png"], "title": "Toaster"},
            {"item_id": "missing", "images": ["img/nowhere.jpg"]},
        ],
    )
    bundle = write_bundle(tmp_path / "bundle")
    out = tmp_path / "preds.jsonl"
    with FakeOpenAI(FixedAnswer(json.dumps(ANSWER))) as server:
        args = ["croptune", "--no-progress", "predict", str(catalog), "--bundle", str(bundle)]
        args += ["--out", str(out), "--endpoint", server.base_url]
        monkeypatch.setattr(sys, "argv", args)
        with pytest.raises(SystemExit) as exited:
            cli.main()
        asked = len(chats(server))
    assert exited.value.code == 1
    records = {r["item_id"]: r for r in read_jsonl(out)}
    assert list(records) == ["corrupt", "good", "missing"]  # catalog order
    assert records["corrupt"]["stage"] == "decode"
    assert "corrupt" in records["corrupt"]["error"] or "not an image" in records["corrupt"]["error"]
    assert records["missing"]["stage"] == "decode"
    assert "file not found" in records["missing"]["error"]
    assert "error" not in records["good"] and records["good"]["images"] == 1
    assert records["good"]["attributes"]["attributes"]["brand"] == "Acme"
    assert asked == 1  # only the good item reached the student
    err = capsys.readouterr().err
    assert "2 of 3 item(s) failed" in err and "Traceback" not in err
    # failures and the good item's notes by cause, on the console (not only in the file)
    lines = err.splitlines()
    assert f"2 failed item(s), by cause (each one is in {out}):" in lines
    assert (
        "  1 x decode: image ...: file not found; no usable image; the item is skipped "
        "(1 item(s): missing)"
    ) in lines
    assert f"2 warning(s) and note(s), by cause (each one is in {out}):" in lines
    assert "  1 x unknown field attributes.no_such_field dropped (1 item(s): good)" in lines
    stats = json.loads((default_workdir(out) / STATS_FILE).read_text())
    assert (stats["items"], stats["predicted"], stats["failed"]) == (3, 1, 2)
    assert set(stats["seconds_per_item"]) == {"decode", "boxes", "crop", "generate"}


@pytest.mark.parametrize(
    ("columns", "code", "said"),
    [
        # the catalog's own names mapped: predicted as a croptune catalog would be
        (["item_id=sku", "images=photos"], 0, None),
        # not mapped: one message naming what was found and the flags to pass
        ([], 1, "--column item_id=sku --column images=photos"),
    ],
)
def test_cli_maps_a_catalogs_own_column_names(tmp_path, monkeypatch, capsys, columns, code, said):
    from croptune import cli

    folder = tmp_path / "catalog"
    photo(folder / "a.png", square=(20, 20, 60, 50))
    rows = [{"sku": "K-1", "photos": ["a.png"], "title": "Kettle"}]
    catalog = folder / "catalog.jsonl"
    catalog.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "preds.jsonl"
    with FakeOpenAI(FixedAnswer(json.dumps(ANSWER))) as server:
        args = ["croptune", "--no-progress", "predict", str(catalog), "--out", str(out)]
        args += ["--bundle", str(write_bundle(tmp_path / "bundle"))]
        args += ["--endpoint", server.base_url, *[f"--column={c}" for c in columns]]
        monkeypatch.setattr(sys, "argv", args)
        with pytest.raises(SystemExit) as exited:
            cli.main()
    assert exited.value.code == code
    if said is None:
        (record,) = read_jsonl(out)
        assert record["item_id"] == "K-1" and record["attributes"]["attributes"]["brand"] == "Acme"
    else:
        assert said in capsys.readouterr().err and not out.exists()


def test_what_ingest_changed_about_a_photo_is_in_its_record(tmp_path):
    folder = tmp_path / "catalog"
    photo(folder / "turned.jpg", (160, 120), turned=True)
    Image.new("CMYK", (64, 48), (0, 255, 0, 0)).save(folder / "cmyk.jpg")
    photo(folder / "plain.png")
    rows = [
        {"item_id": "turned", "images": ["turned.jpg"]},
        {"item_id": "cmyk", "images": ["cmyk.jpg"]},
        {"item_id": "plain", "images": ["plain.png"]},
    ]
    with FakeOpenAI(FixedAnswer(json.dumps(ANSWER))) as server:
        bundle = load_bundle(write_bundle(tmp_path / "bundle"))
        summary = predict_catalog(bundle, write_catalog(folder, rows), tmp_path / "p.jsonl",
                                  endpoint(server))  # fmt: skip
    records = {r["item_id"]: r for r in read_jsonl(tmp_path / "p.jsonl")}
    assert records["turned"]["warnings"] == [
        "image 0 (turned.jpg): EXIF orientation 6 applied (120x160 file, 160x120 oriented; "
        "boxes are read in the oriented frame)"
    ]
    assert records["cmyk"]["warnings"] == ["image 0 (cmyk.jpg): CMYK converted to RGB"]
    assert "warnings" not in records["plain"]
    assert summary.warnings["image ...: CMYK converted to RGB"] == ["cmyk"]


def test_a_photo_croptune_did_not_change_is_sent_as_its_own_file(tmp_path):
    from toolkit.dataset.rows import fit_image
    from toolkit.images import decode_image

    side = 200  # the bundle's originals_max_side
    folder = tmp_path / "catalog"
    folder.mkdir()
    noise = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "upright.jpg", quality=90)
    Image.fromarray(noise).save(folder / "upright.png")
    photo(folder / "turned.jpg", (160, 120), turned=True)
    Image.new("CMYK", (64, 48), (0, 255, 0, 0)).save(folder / "cmyk.jpg")
    Image.fromarray(np.tile(noise, (3, 3, 1))).save(folder / "big.jpg", quality=90)  # 480x360
    # file -> (MIME type sent, sent as the file's own bytes)
    expected = {
        "upright.jpg": ("image/jpeg", True),  # unchanged: its bytes, nothing encoded
        "upright.png": ("image/png", True),  # unchanged PNG: its bytes too
        "turned.jpg": ("image/png", False),  # EXIF-turned upright by croptune: PNG of those
        "cmyk.jpg": ("image/png", False),  # converted to RGB: PNG
        "big.jpg": ("image/png", False),  # over originals_max_side: PNG of the downscaled
    }
    rows = [{"item_id": name, "title": f"listing {name}", "images": [name]} for name in expected]
    data = manifest_data(strategy="originals")
    data["prompt"].update(originals_max_side=side)
    bundle = load_bundle(write_manifest(tmp_path / "bundle", data))
    with FakeOpenAI(FixedAnswer(json.dumps(ANSWER))) as server:
        summary = predict_catalog(bundle, write_catalog(folder, rows), tmp_path / "p.jsonl",
                                  endpoint(server))  # fmt: skip
    assert summary.predicted == len(expected)
    sent = {}
    for request in (ChatRequest(r.body_json) for r in chats(server)):
        (url,) = request.image_urls
        (image,) = request.images
        name = next(n for n in expected if f"listing {n}" in " ".join(request.texts))
        sent[name] = (url, image)
    assert sent.keys() == expected.keys()
    for name, (mime, own_bytes) in expected.items():
        url, received = sent[name]
        file_bytes = (folder / name).read_bytes()
        assert url.startswith(f"data:{mime};base64,"), (name, url[:30])
        assert (base64.b64decode(url.split(",", 1)[1]) == file_bytes) is own_bytes, name
        # Either way the student sees exactly the training pixels (oriented, RGB, fitted).
        want = fit_image(decode_image(file_bytes), side)
        assert received.size == want.size and received.mode == "RGB", name
        assert np.array_equal(np.asarray(received), np.asarray(want)), name


def test_catalog_problems_become_error_records(tmp_path):
    folder = tmp_path / "catalog"
    photo(folder / "img" / "a.png")
    photo(tmp_path / "outside.png")
    catalog = folder / "catalog.jsonl"
    catalog.write_text(
        json.dumps({"item_id": "A", "images": ["img/a.png"]})
        + "\n{not json\n"
        + json.dumps({"item_id": "A", "images": ["img/a.png"]})
        + "\n"
        + json.dumps({"item_id": "escape", "images": ["../outside.png"]})
        + "\n"
    )
    with FakeOpenAI(FixedAnswer(json.dumps(ANSWER))) as server:
        summary = predict_catalog(
            load_bundle(write_bundle(tmp_path / "bundle")),
            catalog,
            tmp_path / "preds.jsonl",
            endpoint(server),
        )
    records = read_jsonl(tmp_path / "preds.jsonl")
    assert records[0]["item_id"] == "A" and "attributes" in records[0]
    problems = records[1:]
    assert [(r["item_id"], r["stage"]) for r in problems] == [
        (None, "catalog"),
        ("A", "catalog"),
        ("escape", "catalog"),
    ]
    assert problems[0]["where"] == "line 2" and "not valid JSON" in problems[0]["error"]
    assert "duplicate item_id" in problems[1]["error"]
    assert "leaves the catalog folder" in problems[2]["error"]
    assert (summary.predicted, summary.failed) == (1, 3)


def test_a_killed_predict_resumes_without_asking_again(tmp_path):
    folder = tmp_path / "catalog"
    items = []
    for n in range(4):
        names = [
            photo(folder / f"i{n}_{k}.png", square=(10 + 5 * n, 10, 50, 40), turned=k == 1)
            for k in (0, 1)
        ]
        items.append({"item_id": f"I{n}", "images": names, "title": f"Item {n}"})
    catalog = write_catalog(folder, items)
    bundle = load_bundle(write_bundle(tmp_path / "bundle", box_source="teacher"))
    out = tmp_path / "preds.jsonl"

    class Killed(Exception):
        pass

    def kill_after_first(record):
        raise Killed(record["item_id"])

    with (
        FakeOpenAI(RedSquareBoxes("norm1000")) as box_server,
        FakeOpenAI(FixedAnswer(json.dumps(ANSWER))) as student_server,
    ):
        teacher = TeacherConfig(
            name="qwen", role="boxes", base_url=box_server.base_url, model="qwen", coords="norm1000"
        )
        with pytest.raises(Killed, match="I0"):
            predict_catalog(
                bundle, catalog, out, endpoint(student_server), TeacherBoxes(teacher),
                batch_size=1, on_record=kill_after_first,
            )  # fmt: skip
        assert (len(chats(box_server)), len(chats(student_server))) == (2, 1)
        assert not out.exists()

        summary = predict_catalog(
            bundle, catalog, out, endpoint(student_server), TeacherBoxes(teacher), batch_size=1
        )
        # the three unfinished items only: two photos each for the box teacher, one request each
        assert (len(chats(box_server)), len(chats(student_server))) == (2 + 6, 1 + 3)
        assert (summary.resumed, summary.predicted, summary.failed) == (1, 4, 0)

        again = predict_catalog(
            bundle, catalog, out, endpoint(student_server), TeacherBoxes(teacher), batch_size=1
        )
        assert (len(chats(box_server)), len(chats(student_server))) == (8, 4)
        assert again.resumed == 4
    records = read_jsonl(out)
    assert [r["item_id"] for r in records] == ["I0", "I1", "I2", "I3"]
    for n, record in enumerate(records):
        # the teacher's norm1000 boxes, back in pixels of each photo as seen upright (the
        # second one is stored turned): the red square
        assert [b["image"] for b in record["boxes"]] == [0, 1]
        for box in record["boxes"]:
            assert box["source"] == "qwen"
            assert box["xyxy"] == pytest.approx([10 + 5 * n, 10, 50, 40], abs=1)
        # one photo and its crop: the item's second photo is the same picture once upright,
        # so it and its crop are pHash duplicates, left out as training left them out
        assert record["images"] == 2


def test_box_source_clipping_is_in_the_record_and_the_summary(tmp_path):
    folder = tmp_path / "catalog"
    catalog = write_catalog(
        folder,
        [
            {"item_id": "A", "images": [photo(folder / "a.png", (400, 300))]},
            {"item_id": "B", "images": [photo(folder / "b.png", (400, 300))]},
        ],
    )

    def boxes(request: ChatRequest) -> str:
        # A box that sticks out of every 400x300 photo by 89% of its area.
        return json.dumps([{"bbox_2d": [350, 250, 500, 400], "label": "text"}])

    out = tmp_path / "preds.jsonl"
    with FakeOpenAI(boxes) as box_server, FakeOpenAI(FixedAnswer(json.dumps(ANSWER))) as server:
        teacher = TeacherConfig(name="t", role="boxes", base_url=box_server.base_url, model="t")
        bundle = load_bundle(write_bundle(tmp_path / "b", box_source="teacher"))
        summary = predict_catalog(bundle, catalog, out, endpoint(server), TeacherBoxes(teacher))
    records = {r["item_id"]: r for r in read_jsonl(out)}
    clipped = (
        "boxes: box [350.0, 250.0, 500.0, 400.0] on image 0 (400x300) is partly outside the "
        "image: clipped to [350.0, 250.0, 400.0, 300.0] (89% of its area was outside)"
    )
    for item_id in ("A", "B"):  # both got the sticking-out box: each record says so
        assert records[item_id]["warnings"] == [clipped]
        assert records[item_id]["boxes"][0]["xyxy"] == [350.0, 250.0, 400.0, 300.0]
    cause = "boxes: box ... on image 0 ... is partly outside the image: clipped to ... ..."
    assert summary.warnings[cause] == ["A", "B"]


def test_boxes_change_with_the_source_and_old_crops_go(tmp_path):
    folder = tmp_path / "catalog"
    catalog = write_catalog(
        folder,
        [{"item_id": "A", "images": [photo(folder / "a.png", (400, 300), (300, 200, 360, 250))]}],
    )
    out = tmp_path / "preds.jsonl"
    with (
        FakeOpenAI(RedSquareBoxes("pixels")) as box_server,
        FakeOpenAI(FixedAnswer(json.dumps(ANSWER))) as server,
    ):
        teacher = TeacherConfig(name="t", role="boxes", base_url=box_server.base_url, model="t")
        with_boxes = load_bundle(write_bundle(tmp_path / "b1", box_source="teacher"))
        first = predict_catalog(with_boxes, catalog, out, endpoint(server), TeacherBoxes(teacher))
        originals_only = load_bundle(write_bundle(tmp_path / "b1", box_source="none"))
        second = predict_catalog(originals_only, catalog, out, endpoint(server), NoBoxes())
    assert first.resumed == 0 and second.resumed == 0  # another setup: predicted again
    record = read_jsonl(out)[0]
    assert record["boxes"] == [] and record["images"] == 1 and record["box_source"] == "none"
    sent = [r.body_json for r in chats(server)]
    assert [sum(p["type"] == "image_url" for p in b["messages"][0]["content"]) for b in sent] == [
        2,  # the photo and the crop of the red square
        1,  # the photo alone: the crop cut from the teacher's boxes is not used any more
    ]


# ------------------------------------------------------------------------ the endpoint student


def test_endpoint_answers_are_validated_against_the_schema(tmp_path):
    folder = tmp_path / "catalog"
    catalog = write_catalog(
        folder,
        [
            {"item_id": "json", "images": [photo(folder / "a.png")], "title": "Acme kettle"},
            {"item_id": "fenced", "images": [photo(folder / "b.png")], "title": "fence"},
            {"item_id": "prose", "images": [photo(folder / "c.png")], "title": "prose"},
        ],
    )

    def responder(request: ChatRequest) -> Reply | str:
        text = request.texts[-1]
        if "fence" in text:
            return "```json\n" + json.dumps(ANSWER) + "\n```"
        if "prose" in text:
            return "I cannot tell what this product is."
        return json.dumps(ANSWER)

    bundle = load_bundle(write_bundle(tmp_path / "bundle"))
    with FakeOpenAI(responder) as server:
        summary = predict_catalog(bundle, catalog, tmp_path / "p.jsonl", endpoint(server))
        sent = [r.body_json for r in chats(server)]
    records = {r["item_id"]: r for r in read_jsonl(tmp_path / "p.jsonl")}
    expected = {
        "attributes": {"brand": "Acme", "color": "red"},
        "identifiers": {"gtin": "4006381333931"},
    }
    for item_id in ("json", "fenced"):
        record = records[item_id]
        assert record["attributes"] == expected  # unknown groups and fields dropped ...
        assert any("no_such_field" in note for note in record["notes"])  # ... and said so
        assert record["json_valid"] is True
        assert (record["images"], record["image_tokens"]) == (1, 16)
    assert records["prose"]["stage"] == "parse"
    assert records["prose"]["answer"] == "I cannot tell what this product is."
    assert summary.failed == 1
    # the request: the model name, images first, then the training prompt with the listing text
    body = next(b for b in sent if "Acme kettle" in json.dumps(b))
    content = body["messages"][0]["content"]
    assert body["model"] == "croptune-tiny" and body["temperature"] == 0
    assert [p["type"] for p in content] == ["image_url", "text"]
    assert content[-1]["text"] == extraction_prompt(
        load_schema(), listing_text("Acme kettle", None)
    )


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        # a nesting loop to the token limit (it crashed predict with RecursionError)
        ('{"attributes":' * 3000 + "}" * 3000, "JSON nested 3000 levels deep"),
        # the same loop, truncated
        ('{"attributes":' * 3000, "JSON nested 3000 levels deep"),
        # a looping answer longer than any real one
        ('{"a": "' + "ha" * 150_000, "runaway generation"),
        # binary
        ("\x00\x01\x02\x03", "not text"),
        # empty
        ("", "empty answer"),
        # a JSON list, not an object of groups
        ('["CE", "UKCA"]', "not a JSON object of attribute groups"),
    ],
)
def test_a_pathological_answer_fails_its_item_alone(tmp_path, answer, reason):
    folder = tmp_path / "catalog"
    items = [{"item_id": f"I{i}", "images": [photo(folder / f"{i}.png")], "title": f"t{i}"}
             for i in range(3)]  # fmt: skip
    catalog = write_catalog(folder, items)

    def responder(request: ChatRequest) -> Reply | str:
        return answer if "t1" in request.texts[-1] else json.dumps(ANSWER)

    bundle = load_bundle(write_bundle(tmp_path / "bundle"))
    with FakeOpenAI(responder) as server:
        summary = predict_catalog(bundle, catalog, tmp_path / "p.jsonl", endpoint(server))
    records = {r["item_id"]: r for r in read_jsonl(tmp_path / "p.jsonl")}
    assert set(records) == {"I0", "I1", "I2"} and summary.failed == 1
    bad = records["I1"]
    assert bad["stage"] == "parse" and reason in bad["error"], bad["error"]
    assert len(bad["answer"]) <= 2100  # a runaway answer is cut in the record, saying so
    for good in ("I0", "I2"):
        assert records[good]["attributes"]["attributes"]["brand"] == "Acme"


# ------------------------------------------------------------------------------ bundle checks


def test_bundles_predict_cannot_use_are_refused(tmp_path):
    with pytest.raises(CroptuneError, match="not a croptune bundle"):
        load_bundle(tmp_path)
    (tmp_path / "croptune.yaml").write_text("base_model: x\n")
    with pytest.raises(CroptuneError, match="records no schema"):
        load_bundle(tmp_path)
    folder = write_bundle(tmp_path / "b")
    manifest = yaml.safe_load((folder / "croptune.yaml").read_text())
    manifest["prompt"]["instructions"] = "Describe the product."
    (folder / "croptune.yaml").write_text(yaml.safe_dump(manifest))
    with pytest.raises(CroptuneError, match="other instructions"):
        load_bundle(folder)


def test_box_teacher_config_takes_one_box_teacher(tmp_path):
    label = tmp_path / "label.yaml"
    label.write_text(
        yaml.safe_dump(
            {
                "teachers": [
                    {"name": "gpt", "role": "attributes", "model": "gpt-4.1"},
                    {"name": "qwen", "role": "boxes", "model": "q", "api_key_env": "QWEN_KEY"},
                ]
            }
        )
    )
    assert box_teacher_config(label).name == "qwen"
    with pytest.raises(CroptuneError, match="exactly one box teacher"):
        box_teacher_config({"name": "gpt", "role": "attributes", "model": "gpt-4.1"})
    with pytest.raises(CroptuneError, match="not valid"):
        box_teacher_config({"name": "q", "role": "boxes", "api_key": "sk-inline"})


def test_cli_box_source_needs_what_it_names(tmp_path):
    from croptune.pipeline import run_predict

    folder = write_bundle(tmp_path / "bundle")
    catalog = write_catalog(tmp_path, [])
    with pytest.raises(CroptuneError, match="ships no detector"):
        run_predict(catalog, folder, tmp_path / "o.jsonl", box_source="detector")
    with pytest.raises(CroptuneError, match="--teacher-config"):
        run_predict(catalog, folder, tmp_path / "o.jsonl", box_source="teacher")
    with pytest.raises(CroptuneError, match="unknown box source"):
        run_predict(catalog, folder, tmp_path / "o.jsonl", box_source="yolo")


# ----------------------------------------------------------------- end to end, tiny student


@pytest.mark.slow
def test_end_to_end_label_crop_detector_dataset_train_export_predict(tmp_path, monkeypatch, capsys):
    """label (reference) -> crop -> detector -> dataset -> train -> export --detector -> predict."""
    from croptune import cli
    from croptune.pipeline import run_crop, run_dataset, run_label
    from croptune.synthetic.catalog import make_example_catalog
    from finetune.detector import DetectorConfig, train_detector
    from finetune.export.writer import export_bundle
    from finetune.train import TrainConfig, train
    from teacher_labeling.teachers import LabelConfig
    from toolkit.dataset import DatasetConfig

    catalog = make_example_catalog(tmp_path / "catalog", n_items=6, seed=1)
    teacher = TeacherConfig(name="reference", role="both", kind="reference", coords="pixels")
    run_label(catalog, LabelConfig(teachers=[teacher]), tmp_path / "run")
    run_crop(tmp_path / "run", CropConfig())
    detector = tmp_path / "detector"
    # conf 0.01: one epoch from random weights proposes little above the default 0.25
    config = DetectorConfig(
        epochs=1,
        imgsz=96,
        batch=8,
        workers=0,
        validation_ratio=0.1,
        test_ratio=0.2,
        device="cpu",
        conf=0.01,
    )
    train_detector(tmp_path / "run", detector, config, verbose=False)
    run_dataset(tmp_path / "run", tmp_path / "dataset", DatasetConfig(max_images_per_item=4))
    result = train(
        TrainConfig(
            student="tiny",
            dataset=str(tmp_path / "dataset"),
            output_dir=str(tmp_path / "train"),
            max_steps=4,
            per_device_train_batch_size=2,
            gradient_accumulation_steps=1,
            learning_rate=1e-2,
            warmup_ratio=0.0,
            logging_steps=1,
            gradient_checkpointing=False,
            seed=0,
        )
    )
    bundle = export_bundle(result.adapter_dir, tmp_path / "bundle", detector_dir=detector)
    assert yaml.safe_load((bundle / "croptune.yaml").read_text())["box_source"] == "detector"

    out = tmp_path / "preds.jsonl"
    args = ["croptune", "--no-progress", "predict", str(catalog), "--bundle", str(bundle)]
    args += ["--out", str(out), "--max-new-tokens", "16", "--batch-size", "2"]
    monkeypatch.setattr(sys, "argv", args)
    with pytest.raises(SystemExit) as exited:
        cli.main()
    records = read_jsonl(out)
    assert len(records) == 6
    for record in records:
        # a random-weight toy student rarely writes JSON: a prediction, or a parse error
        # carrying its raw answer; no stage before the answer may fail
        if "error" in record:
            assert record["stage"] == "parse" and "answer" in record
        else:
            assert isinstance(record["attributes"], dict)
        assert record.get("stage") in (None, "parse")
    failed = sum("error" in r for r in records)
    assert exited.value.code == (1 if failed else 0)
    if failed:
        assert f"{failed} of 6 item(s) failed" in capsys.readouterr().err
    stats = json.loads((default_workdir(out) / STATS_FILE).read_text())
    assert stats["box_source"] == "detector" and stats["processed_this_run"] == 6
    assert stats["images_per_item"]["max"] <= 4  # the training image budget
    from toolkit.store import RunStore

    with RunStore(default_workdir(out), create=False) as store:
        sources = {b.source for item in store.items() for _, b in store.boxes(item.item_id)}
    assert sources == {"detector"}  # the detector's boxes, and only those, were cut from
    assert any(r["boxes"] for r in records)  # parse errors, too, say what the student saw
    assert {b["source"] for r in records for b in r["boxes"]} == {"detector"}
    assert all(1 <= r["images"] <= 4 for r in records)
    # again: everything resumes, nothing is generated
    with pytest.raises(SystemExit):
        cli.main()
    again = json.loads((default_workdir(out) / STATS_FILE).read_text())
    assert again["resumed"] == 6 - failed and again["processed_this_run"] == failed


# ---------------------------------------------------------------------- backend identity


def _backend_key_before_identity(backend) -> dict:
    """predict's backend_key as it was before the backends said who they are (getattr over
    model/adapter/config fields): the key every existing work folder was written under."""
    key = {"kind": backend.kind, "name": backend.name}
    for attr in ("model", "adapter", "max_new_tokens"):
        if getattr(backend, attr, None) is not None:
            key[attr] = str(getattr(backend, attr))
    config = getattr(backend, "config", None)
    if config is not None:
        names = ("base_url", "model", "max_tokens", "temperature", "image_format", "jpeg_quality")
        key["endpoint"] = [getattr(config, name, None) for name in names]
    return key


def _backend(which: str, tmp_path: Path):
    from finetune.infer import TransformersBackend

    if which == "tiny":
        return TransformersBackend("croptune:tiny")
    if which == "base+adapter":
        adapter = tmp_path / "adapter"
        return TransformersBackend("org/base", adapter, name="student", max_new_tokens=77)
    if which == "endpoint":
        return EndpointBackend(EndpointConfig(model="croptune", base_url="http://127.0.0.1:9/v1"))
    config = EndpointConfig(
        name="hosted", model="m", base_url="http://h/v1", api_key_env="SECRET_KEY",
        image_format="jpeg", jpeg_quality=80, temperature=0.2,
    )  # fmt: skip
    return EndpointBackend(config, max_new_tokens=99)


@pytest.mark.parametrize("which", ["tiny", "base+adapter", "endpoint", "endpoint-settings"])
def test_backend_identity_is_the_key_existing_work_folders_were_written_under(
    tmp_path, monkeypatch, which
):
    # Caught: a backend identity that differs from predict's old getattr key would make every
    # existing work folder ask all its finished items again; a key in it would leak the secret.
    from finetune.predict.predictor import _sha

    monkeypatch.setenv("SECRET_KEY", "sk-very-secret")
    backend = _backend(which, tmp_path)
    assert backend.identity() == _backend_key_before_identity(backend)
    assert _sha(backend.identity()) == _sha(_backend_key_before_identity(backend))
    assert "sk-very-secret" not in json.dumps(backend.identity(), default=str)
    assert "SECRET_KEY" not in json.dumps(backend.identity(), default=str)
