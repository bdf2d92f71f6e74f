"""Real teachers over HTTP: the real openai client against a loopback OpenAI-compatible server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from teacher_labeling.batch import label_with_batches
from teacher_labeling.conventions import smart_resize
from teacher_labeling.labeling import label_items, pending_requests
from teacher_labeling.teachers import FusionConfig, OpenAITeacher, ReferenceTeacher, TeacherConfig
from tests.fake_openai import (
    AttributesFromImage,
    FakeOpenAI,
    FixedAnswer,
    RedSquareBoxes,
    Reply,
    mean_rgb,
)
from toolkit.catalog import ingest_catalog, load_catalog
from toolkit.schema import load_schema
from toolkit.store import RunStore

ORIENTATION = 0x0112


def _photo(size, square, color=(40, 90, 160)):
    """An upright photo of `size` with a pure red square at `square` (x1, y1, x2, y2)."""
    array = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    array[:] = color
    x1, y1, x2, y2 = square
    array[y1:y2, x1:x2] = (255, 0, 0)
    return Image.fromarray(array)


# How to store an upright photo so that exif_transpose gives it back, per Orientation tag.
_INVERSE = {
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
}


def _write_catalog(folder: Path, photos: list[dict]) -> Path:
    """A catalog of one-photo items; each dict: size, square, orientation, color, attributes."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    lines = []
    for n, spec in enumerate(photos):
        upright = _photo(spec["size"], spec["square"], spec.get("color", (40, 90, 160)))
        path = folder / "img" / f"p{n}.png"
        orientation = spec.get("orientation")
        if orientation:
            exif = Image.Exif()
            exif[ORIENTATION] = orientation
            upright.transpose(_INVERSE[orientation]).save(path, exif=exif)
        else:
            upright.save(path)
        lines.append(
            json.dumps(
                {
                    "item_id": f"I{n}",
                    "images": [f"img/{path.name}"],
                    "attributes": spec.get("attributes"),
                }
            )
        )
    catalog = folder / "catalog.jsonl"
    catalog.write_text("\n".join(lines) + "\n")
    return catalog


def _teacher(server, name="qwen", role="boxes", **config) -> OpenAITeacher:
    config.setdefault("max_retries", 2)
    config.setdefault("timeout_s", 5)
    return OpenAITeacher(
        TeacherConfig(
            name=name, role=role, kind="openai", base_url=server.base_url, model="m",
            api_key_env="CROPTUNE_TEST_KEY", **config,
        ),
        load_schema(),
    )  # fmt: skip


@pytest.fixture(autouse=True)
def _api_key(monkeypatch):
    monkeypatch.setenv("CROPTUNE_TEST_KEY", "sk-test-SECRET-0123456789")


def _label(tmp_path, catalog, teachers, **kwargs):
    store = RunStore(tmp_path / "run")
    ingest_catalog(load_catalog(catalog), store)
    return store, label_items(store, teachers, **kwargs)


PHOTOS = [
    # sides that are not multiples of 28
    {"size": (641, 479), "square": (100, 50, 180, 90)},
    # a portrait photo with the square near the bottom-right corner
    {"size": (333, 517), "square": (250, 430, 333, 517)},
    # an EXIF-rotated photo (stored sideways, tag 6): the box is in upright pixels
    {"size": (480, 640), "square": (20, 500, 120, 560), "orientation": 6},
    # tag 8 and tag 3
    {"size": (400, 300), "square": (300, 10, 390, 60), "orientation": 8},
    {"size": (400, 300), "square": (10, 200, 60, 290), "orientation": 3},
    # above the server's max_pixels (set low below): sent smaller, mapped back up
    {"size": (1600, 1200), "square": (800, 600, 1000, 700)},
]


@pytest.mark.parametrize("coords", ["pixels", "norm1000", "norm1", "qwen2.5-vl"])
def test_boxes_land_on_the_right_pixels(tmp_path, coords):
    catalog = _write_catalog(tmp_path, PHOTOS)
    with FakeOpenAI(
        RedSquareBoxes(coords, fence=True), api_key="sk-test-SECRET-0123456789"
    ) as server:
        teacher = _teacher(server, coords=coords, max_pixels=400_000)
        store, summary = _label(tmp_path, catalog, [teacher])
        received = [r.body_json for r in server.requests if r.path.endswith("/chat/completions")]
    assert summary.failed == 0 and summary.asked == len(PHOTOS)
    for n, spec in enumerate(PHOTOS):
        boxes = [b for _, b in store.boxes(f"I{n}")]
        assert len(boxes) == 1, spec
        # tolerance: one pixel of the image as sent, scaled back to the original
        width, height = spec["size"]
        if coords == "qwen2.5-vl":
            sent_h, sent_w = smart_resize(height, width, max_pixels=400_000)
            tolerance = 1.5 * max(width / sent_w, height / sent_h) + 1
        else:
            tolerance = 2.0
        assert boxes[0].xyxy == pytest.approx(spec["square"], abs=tolerance), (coords, spec)
    if coords == "qwen2.5-vl":
        # every image was sent at a smart_resize fixed point within max_pixels
        for body in received:
            url = body["messages"][0]["content"][0]["image_url"]["url"]
            image = _decode(url)
            assert image.width % 28 == 0 and image.height % 28 == 0
            assert image.width * image.height <= 400_000
            assert smart_resize(image.height, image.width, max_pixels=400_000) == (
                image.height,
                image.width,
            )
    store.close()


def _decode(url: str) -> Image.Image:
    import base64
    import io

    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def test_attributes_are_routed_to_their_item_with_a_strict_schema(tmp_path):
    colors = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    photos = [{"size": (64, 64), "square": (0, 0, 0, 0), "color": c} for c in colors]
    catalog = _write_catalog(tmp_path, photos)

    def attributes(rgb):
        return {"attributes": {"color": "rgb" + "-".join(str(v // 100) for v in rgb)}}

    with FakeOpenAI(AttributesFromImage(lambda image: attributes(mean_rgb(image)))) as server:
        teacher = _teacher(server, name="gpt", role="attributes")
        store, summary = _label(tmp_path, catalog, [teacher])
        bodies = [r.body_json for r in server.requests if r.path.endswith("/chat/completions")]
    assert summary.labels == 3
    for n, rgb in enumerate(colors):
        assert store.final_attributes(f"I{n}") == attributes(rgb)
    response_format = bodies[0]["response_format"]
    assert response_format["type"] == "json_schema" and response_format["json_schema"]["strict"]
    store.close()


@pytest.mark.parametrize(
    ("answer", "stored", "failed"),
    [
        # a truncated answer (max_tokens hit) is repaired
        pytest.param(
            '{"identifiers": {"gtin": "123"}, "attributes": {"brand": "Ac',
            {"identifiers": {"gtin": "123"}, "attributes": {"brand": "Ac"}},
            0,
            id="truncated",
        ),
        # prose instead of JSON: a clear error, the item stays unlabeled
        pytest.param("I cannot help with that.", None, 1, id="prose"),
        # a JSON list instead of an object
        pytest.param("[1, 2, 3]", None, 1, id="list"),
    ],
)
def test_bad_attribute_answers(tmp_path, answer, stored, failed):
    catalog = _write_catalog(tmp_path, [{"size": (64, 64), "square": (0, 0, 1, 1)}])
    with FakeOpenAI(FixedAnswer(answer)) as server:
        store, summary = _label(
            tmp_path, catalog, [_teacher(server, name="gpt", role="attributes")]
        )
    assert store.final_attributes("I0") == stored
    assert summary.failed == failed
    if failed:
        assert "attributes:" in store.errors("I0")[0]["message"]
    store.close()


def test_failed_items_are_asked_again_and_nothing_else(tmp_path):
    photos = [{"size": (100, 80), "square": (10, 10, 20, 20)} for _ in range(4)]
    photos[2]["square"] = (50, 50, 60, 60)  # a different image, failing below
    catalog = _write_catalog(tmp_path, photos)

    def responder(request):
        if request.images[0].getpixel((55, 55))[0] > 200:
            return Reply(status=500, error="boom")
        return RedSquareBoxes("pixels")(request)

    with FakeOpenAI(responder) as server:
        store, first = _label(tmp_path, catalog, [_teacher(server, max_retries=1)])
        assert first.failed == 1 and "HTTP 500" in first.errors[0] and "I2" in first.errors[0]
        # I0, I1, I3 share their pixels: one question answers all three; I2 fails twice
        assert first.asked == 1 and first.cached == 2
        assert len(server.requests) == 3
        server.responder = RedSquareBoxes("pixels")
        before = len(server.requests)
        second = label_items(store, [_teacher(server)])
        assert len(server.requests) - before == 1  # only the failed image
    assert second.asked == 1 and second.failed == 0
    assert [b.xyxy for _, b in store.boxes("I2")] == [(50, 50, 60, 60)]
    store.close()


def test_429_with_retry_after_and_timeouts_are_retried(tmp_path):
    catalog = _write_catalog(tmp_path, [{"size": (100, 80), "square": (10, 10, 20, 20)}])
    throttled = Reply(status=429, headers={"Retry-After": "0.2"}, error="rate limited")
    slow = Reply(delay_s=1.0, content="[]")
    replies = iter([throttled, slow])

    def responder(request):
        reply = next(replies, None)
        return reply if reply is not None else RedSquareBoxes("pixels")(request)

    with FakeOpenAI(responder) as server:
        store, summary = _label(tmp_path, catalog, [_teacher(server, timeout_s=0.5, max_retries=3)])
    assert summary.failed == 0
    assert [b.xyxy for _, b in store.boxes("I0")] == [(10, 10, 20, 20)]
    usage = json.loads(store._conn.execute("SELECT usage FROM requests").fetchone()[0])
    assert usage["attempts"] == 3
    store.close()


def test_bad_key_stops_that_teacher_only(tmp_path):
    catalog = _write_catalog(
        tmp_path,
        [
            {"size": (64, 64), "square": (1, 1, 9, 9), "attributes": {"attributes": {"brand": "X"}}}
            for _ in range(3)
        ],
    )
    with FakeOpenAI(RedSquareBoxes("pixels"), api_key="another key") as server:
        qwen = _teacher(server)
        reference = ReferenceTeacher(
            TeacherConfig(name="reference", role="attributes", kind="reference"), load_schema()
        )
        store, summary = _label(tmp_path, catalog, [qwen, reference])
        attempts = [r for r in server.requests if r.path.endswith("/chat/completions")]
    assert list(summary.stopped) == ["qwen"] and "HTTP 401" in summary.stopped["qwen"]
    assert len(attempts) == 1  # stopped at once: no retries, no further requests
    assert all(store.final_attributes(f"I{n}") == {"attributes": {"brand": "X"}} for n in range(3))
    store.close()


def test_two_box_teachers_are_fused(tmp_path):
    catalog = _write_catalog(tmp_path, [{"size": (200, 100), "square": (40, 20, 80, 60)}])

    def shifted(request):
        return '[{"bbox_2d": [44, 20, 84, 60], "label": "red square"}]'

    with FakeOpenAI(RedSquareBoxes("pixels")) as a, FakeOpenAI(shifted) as b:
        teachers = [_teacher(a, name="qwen"), _teacher(b, name="other")]
        store, summary = _label(tmp_path, catalog, teachers, fusion=FusionConfig(policy="union"))
    fused = [box for _, box in store.boxes("I0") if box.source == "fused"]
    assert [f.xyxy for f in fused] == [(40, 20, 84, 60)]
    assert summary.agreement["boxes"] == 1 and summary.agreement["confirmed_by_all"] == 1.0
    store.close()


def test_dry_run_sends_nothing_and_prices_the_work(tmp_path):
    catalog = _write_catalog(
        tmp_path, [{"size": (1600, 1200), "square": (0, 0, 9, 9)} for _ in range(2)]
    )
    with FakeOpenAI(FixedAnswer("{}")) as server:
        store = RunStore(tmp_path / "run")
        ingest_catalog(load_catalog(catalog), store)
        gpt = OpenAITeacher(
            TeacherConfig(
                name="gpt",
                role="attributes",
                model="gpt-4.1",
                base_url=server.base_url,
                api_key_env="CROPTUNE_TEST_KEY",
            ),
            load_schema(),
        )
        pending = pending_requests(store, [gpt])
        assert server.requests == []
    # both items share their pixels: one request; 1600x1200 at high detail is 765 tokens
    assert pending.per_teacher == {"gpt": 1}
    tokens_in, tokens_out = pending.tokens["gpt"]
    assert tokens_in > 765 and tokens_out == 400
    assert pending.usd["gpt"] == pytest.approx((tokens_in * 2 + tokens_out * 8) / 1e6)
    store.close()


def test_batch_api_collects_and_resumes_without_paying_twice(tmp_path):
    colors = [(200, 30, 30), (30, 200, 30)]
    catalog = _write_catalog(
        tmp_path, [{"size": (64, 64), "square": (0, 0, 0, 0), "color": c} for c in colors]
    )
    answer = AttributesFromImage(
        lambda image: {"attributes": {"color": str(mean_rgb(image)[0] // 100)}}
    )
    with FakeOpenAI(answer, batch_polls_to_complete=3) as server:
        store = RunStore(tmp_path / "run")
        ingest_catalog(load_catalog(catalog), store)
        teacher = _teacher(server, name="gpt", role="attributes")

        # Submit, then stop before collecting (as a Ctrl-C while waiting would).
        from teacher_labeling import batch as batch_module

        async def submit_only():
            for lines, requests in batch_module._batch_files(store, teacher, None, {}, set()):
                await batch_module._submit(store, teacher.engine.client, teacher, lines, requests)
            await teacher.close()

        asyncio.run(submit_only())
        assert len(store.open_batches("gpt")) == 1

        summary = label_with_batches(
            store, [_teacher(server, name="gpt", role="attributes")], poll_interval_s=0.01
        )
        created = [r for r in server.requests if r.path == "/v1/batches" and r.method == "POST"]
    assert len(created) == 1  # the stored batch was collected, not created again
    assert summary.labels == 2 and store.open_batches("gpt") == []
    assert store.final_attributes("I0") == {"attributes": {"color": "2"}}
    assert store.final_attributes("I1") == {"attributes": {"color": "0"}}
    store.close()


@pytest.mark.parametrize(
    ("colors", "requests"),
    [
        # two items, two requests: each unanswered request fails its own item
        ([(200, 30, 30), (30, 200, 30)], 2),
        # two items with the same pixels share one request: it fails both items
        ([(200, 30, 30), (200, 30, 30)], 1),
    ],
)
def test_a_batch_that_ends_without_answers_fails_each_item_it_carried(tmp_path, colors, requests):
    catalog = _write_catalog(
        tmp_path, [{"size": (64, 64), "square": (0, 0, 0, 0), "color": c} for c in colors]
    )
    with FakeOpenAI(FixedAnswer('{"attributes": {}}')) as server:
        store = RunStore(tmp_path / "run")
        ingest_catalog(load_catalog(catalog), store)
        teacher = _teacher(server, name="gpt", role="attributes")
        from teacher_labeling import batch as batch_module

        async def submit_and_cancel() -> str:
            client = teacher.engine.client
            ((lines, carried),) = batch_module._batch_files(store, teacher, None, {}, set())
            created = await batch_module._submit(store, client, teacher, lines, carried)
            await client.batches.cancel(created["batch_id"])
            await teacher.close()
            return created["batch_id"]

        batch_id = asyncio.run(submit_and_cancel())
        summary = label_with_batches(
            store, [_teacher(server, name="gpt", role="attributes")], poll_interval_s=0.01
        )
        assert store.request_counts() == {"failed": requests}
        assert store.open_batches("gpt") == []  # collected: a re-run submits a new batch
    message = f"batch {batch_id} ended cancelled without an answer for this item"
    assert summary.failed == 2 and summary.labels == 0
    assert summary.errors == [f"item I0 (gpt): {message}", f"item I1 (gpt): {message}"]
    # ... and the console's summary by cause has them (the batch id is a particular)
    (cause,) = summary.failures
    assert cause.startswith("gpt: batch ") and summary.failures[cause] == ["I0", "I1"]
    store.close()


@pytest.mark.parametrize("batch", [False, True])  # label --batch dropped the policy once
@pytest.mark.parametrize(
    ("policy", "fused"),
    [
        # the two teachers' boxes, equally scored, averaged
        ("weighted", [105.0, 50.0, 185.0, 90.0]),
        # their union
        ("union", [100.0, 50.0, 190.0, 90.0]),
    ],
)
def test_the_configured_fusion_policy_is_used_with_and_without_batch(
    tmp_path, policy, fused, batch
):
    catalog = _write_catalog(tmp_path, [{"size": (300, 200), "square": (100, 50, 180, 90)}])
    shifted = FixedAnswer(json.dumps([{"bbox_2d": [110, 50, 190, 90], "label": "red square"}]))
    with FakeOpenAI(RedSquareBoxes("pixels")) as exact, FakeOpenAI(shifted) as other:
        store = RunStore(tmp_path / "run")
        ingest_catalog(load_catalog(catalog), store)
        teachers = [_teacher(exact, name="a"), _teacher(other, name="b")]
        config = FusionConfig(policy=policy)
        if batch:
            label_with_batches(store, teachers, fusion=config, poll_interval_s=0.01)
        else:
            label_items(store, teachers, fusion=config)
    (box,) = [b for _, b in store.boxes("I0") if b.source == "fused"]
    assert list(box.xyxy) == pytest.approx(fused)
    store.close()


def test_relabel_sends_originals_and_crops_and_makes_the_final_labels(tmp_path):
    from toolkit.crops import CropConfig, crop_run

    catalog = _write_catalog(tmp_path, [{"size": (300, 200), "square": (200, 120, 240, 160)}])
    with FakeOpenAI(RedSquareBoxes("pixels")) as boxes_server:
        store, _ = _label(tmp_path, catalog, [_teacher(boxes_server)])
    crop_run(store, CropConfig(min_side=64))
    (crop,) = store.crops("I0")

    def better(request):
        # the "better label" reads the crop: it says how many images it was shown
        return json.dumps({"attributes": {"name": f"{len(request.images)} images"}})

    with FakeOpenAI(FixedAnswer('{"attributes": {"name": "first"}}')) as first:
        label_items(store, [_teacher(first, name="gpt", role="attributes")])
    assert store.final_attributes("I0") == {"attributes": {"name": "first"}}
    with FakeOpenAI(better) as second:
        summary = label_items(
            store, [_teacher(second, name="gpt", role="attributes")], relabel=True
        )
        (request,) = [r.body_json for r in second.requests]
        again = label_items(store, [_teacher(second, name="gpt", role="attributes")], relabel=True)
        assert len(second.requests) == 1  # a second relabel asks nothing
    assert summary.labels == 1 and again.cached == 1
    assert store.final_attributes("I0") == {"attributes": {"name": "2 images"}}
    assert store.labels("I0")["gpt"] == {"attributes": {"name": "2 images"}}
    sent_crop = _decode(request["messages"][0]["content"][1]["image_url"]["url"])
    assert sent_crop.size == (crop.region[2] - crop.region[0],) * 2
    assert "close-up crops" in request["messages"][0]["content"][-1]["text"]
    store.close()
