"""The fast labeling path: draft decoding, one encoding per size, worker processes, streaming.

Speed itself is measured in bench/label_throughput.py; these tests check that the fast path
sends the same picture, does each piece of work once, keeps a bounded window of items and
stops its worker processes.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from teacher_labeling.client import EncodedImages, encode_data_url
from teacher_labeling.conventions import smart_resize
from teacher_labeling.image_pool import ImagePool
from teacher_labeling.labeling import label_items
from teacher_labeling.teachers import OpenAITeacher, TeacherConfig
from tests.fake_openai import FakeOpenAI, Latency, RedSquareBoxes
from toolkit.catalog import ingest_catalog, load_catalog
from toolkit.images import ImageLoadError, decode_image_with_conversions, decode_resized
from toolkit.schema import load_schema
from toolkit.store import RunStore

ROOT = Path(__file__).resolve().parent.parent
ORIENTATION = 0x0112
BACKGROUND = (40, 90, 160)
# How to store an upright photo so that exif_transpose gives it back, per Orientation tag.
_STORED_AS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def _jpeg(size, square, orientation=1) -> bytes:
    """A JPEG whose upright picture (after its EXIF orientation) is `size` with a pure red
    square at `square` (x1, y1, x2, y2) on a blue-grey background."""
    array = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    array[:] = BACKGROUND
    x1, y1, x2, y2 = square
    array[y1:y2, x1:x2] = (255, 0, 0)
    upright = Image.fromarray(array)
    stored = upright if orientation == 1 else upright.transpose(_STORED_AS[orientation])
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", quality=95, exif=exif)
    return buffer.getvalue()


def _red_centre(image: Image.Image) -> tuple[float, float]:
    """The centre of the red square in pixels of `image`: a weighted mean of a LINEAR redness
    (zero on the background), so resizing moves it only as the geometry does."""
    rgb = np.asarray(image, dtype=np.float64)
    weight = (rgb[..., 0] - rgb[..., 2]) - (BACKGROUND[0] - BACKGROUND[2])
    columns, rows = weight.sum(axis=0), weight.sum(axis=1)
    x = (columns * (np.arange(columns.size) + 0.5)).sum() / columns.sum()
    y = (rows * (np.arange(rows.size) + 0.5)).sum() / rows.sum()
    return float(x), float(y)


DRAFT_CASES = [
    # the 1600x1200 photo of the labeling issue, sent at 728x546: decoded at 1/2 scale
    ((1600, 1200), 1, (728, 546), True),
    # sent at 196x140: decoded at 1/8 scale
    ((1600, 1200), 1, (196, 140), True),
    # sent at 1148x840, more than half its sides: no draft, the very pixels of a full decode
    ((1600, 1200), 1, (1148, 840), False),
    # sides that are not multiples of 8: the last decoded column and row cover part of a pixel
    ((1603, 1201), 1, (380, 280), True),
    # ... and with every EXIF orientation that part moves to another side (or axis)
    ((1603, 1201), 2, (190, 140), True),
    ((1603, 1201), 3, (190, 140), True),
    ((1603, 1201), 4, (380, 280), True),
    ((1603, 1201), 5, (380, 280), True),
    ((1603, 1201), 6, (190, 140), True),
    ((1603, 1201), 7, (700, 520), True),
    ((1603, 1201), 8, (190, 140), True),
]


@pytest.mark.parametrize(("size", "orientation", "sent", "reduced"), DRAFT_CASES)
def test_draft_decoding_keeps_the_picture_where_it_was(size, orientation, sent, reduced):
    square = (900, 300, 1100, 420)
    data = _jpeg(size, square, orientation)
    (drafted,), notes = decode_resized(data, [sent])
    (full_scale,), full_notes = decode_resized(data, [sent], draft=False)
    assert drafted.size == full_scale.size == sent
    # the same orientation and conversion notes as the one decoder's
    assert notes == full_notes == decode_image_with_conversions(data)[1]
    pixels, reference = np.asarray(drafted, dtype=int), np.asarray(full_scale, dtype=int)
    if not reduced:
        assert np.array_equal(pixels, reference)
        return
    assert not np.array_equal(pixels, reference)  # it was decoded at a reduced scale
    # the square sits where it sits in a full-scale decode, to a fraction of an original
    # pixel (ignoring the box that is the whole picture moves it by 4 pixels at 1603x1201)
    (dx, dy), (fx, fy) = _red_centre(drafted), _red_centre(full_scale)
    assert abs(dx - fx) * size[0] / sent[0] < 0.5
    assert abs(dy - fy) * size[1] / sent[1] < 0.5


def _oversized() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (300, 300)).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "max_pixels"),
    [
        (b"", 10**6),  # an empty file
        (b"not an image at all", 10**6),  # not an image
        (_jpeg((64, 48), (0, 0, 8, 8))[:300], 10**6),  # a truncated JPEG
        (_oversized(), 50_000),  # over the pixel limit
    ],
)
def test_draft_decoding_refuses_what_the_decoder_refuses_in_its_words(data, max_pixels):
    with pytest.raises(ImageLoadError) as full:
        decode_image_with_conversions(data, max_pixels)
    with pytest.raises(ImageLoadError) as drafted:
        decode_resized(data, [(32, 24)], max_pixels)
    assert str(drafted.value) == str(full.value)


@pytest.fixture(autouse=True)
def _api_key(monkeypatch):
    monkeypatch.setenv("CROPTUNE_TEST_KEY", "sk-test-0123456789")


def _teacher(server, name="qwen", role="boxes", **config) -> OpenAITeacher:
    config.setdefault("max_retries", 1)
    config.setdefault("timeout_s", 10)
    teacher = OpenAITeacher(
        TeacherConfig(
            name=name, role=role, base_url=server.base_url, model="m",
            api_key_env="CROPTUNE_TEST_KEY", **config,
        ),
        load_schema(),
    )  # fmt: skip
    # Its own cache: the process-wide one holds what earlier tests encoded of the same photos.
    teacher._encoded = EncodedImages()
    return teacher


def _catalog(folder: Path, items: dict[str, list[bytes]]) -> Path:
    """A catalog of items, each a list of JPEG files (written once per distinct content)."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    names: dict[bytes, str] = {}
    lines = []
    for item_id, photos in items.items():
        for data in photos:
            if data not in names:
                names[data] = f"img/p{len(names)}.jpg"
                (folder / names[data]).write_bytes(data)
        lines.append(json.dumps({"item_id": item_id, "images": [names[d] for d in photos]}))
    (folder / "catalog.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "catalog.jsonl"


def _ingested(folder: Path, catalog: Path, name: str = "run") -> RunStore:
    store = RunStore(folder / name)
    ingest_catalog(load_catalog(catalog), store)
    return store


def _sent_urls(server) -> list[str]:
    return [
        part["image_url"]["url"]
        for r in server.requests
        if r.path.endswith("/chat/completions")
        for part in r.body_json["messages"][0]["content"]
        if part["type"] == "image_url"
    ]


# Where the photo's image jobs run: in threads, or in a worker process started beforehand.
POOLS = {"threads": 0, "processes": 1}


@pytest.mark.parametrize("where", POOLS)
def test_a_box_on_a_1600x1200_photo_maps_to_the_same_original_pixels_with_draft_decoding(
    tmp_path, where
):
    # Sent at a qwen2.5-vl size under a quarter of the photo: decoded at 1/4 scale.
    max_pixels = 120_000
    photos = {
        "upright": ((800, 600, 1000, 700), 1),
        "rotated": ((100, 900, 260, 1100), 6),  # stored sideways: boxes in upright pixels
    }
    files = {name: _jpeg((1600, 1200), square, o) for name, (square, o) in photos.items()}
    catalog = _catalog(tmp_path, {name: [data] for name, data in files.items()})
    sent_h, sent_w = smart_resize(1200, 1600, max_pixels=max_pixels)
    with (
        FakeOpenAI(RedSquareBoxes("qwen2.5-vl")) as server,
        ImagePool(workers=POOLS[where]) as pool,
        _ingested(tmp_path, catalog) as store,
    ):
        pool.start(wait=True)
        teacher = _teacher(server, coords="qwen2.5-vl", max_pixels=max_pixels)
        summary = label_items(store, [teacher], images=pool)
        boxes = {name: [b.xyxy for _, b in store.boxes(name)] for name in photos}
        sent = sorted(_sent_urls(server))
    assert summary.failed == 0 and summary.asked == 2
    # within one pixel of the image as sent (plus rounding), scaled back to the original
    tolerance = 1.5 * max(1600 / sent_w, 1200 / sent_h) + 1
    for name, (square, _) in photos.items():
        assert len(boxes[name]) == 1
        assert boxes[name][0] == pytest.approx(square, abs=tolerance), name
    # what the teacher saw: the draft decode, not the full-scale one
    expected = {
        draft: sorted(
            encode_data_url(decode_resized(data, [(sent_w, sent_h)], draft=draft)[0][0], ("jpeg", 90))
            for data in files.values()
        )
        for draft in (True, False)
    }  # fmt: skip
    assert sent == expected[True] != expected[False]
    assert pool.in_processes == (2 if where == "processes" else 0)


def test_each_photo_is_decoded_and_encoded_once_per_size_it_is_sent_at(tmp_path):
    # p1 is in both listings; the attributes teacher sends photos as they are, the boxes
    # teacher at its smaller qwen2.5-vl size: two sizes per photo.
    p0, p1, p2 = (_jpeg((640, 480), (10 * i, 10, 10 * i + 50, 60)) for i in range(1, 4))
    catalog = _catalog(tmp_path, {"A": [p0, p1], "B": [p1, p2]})
    encoded = EncodedImages()
    answers = Latency(30, lambda request: "{}" if request.response_format else "[]")

    def teachers(server) -> list[OpenAITeacher]:
        both = [
            _teacher(server, name="gpt", role="attributes"),
            _teacher(server, name="qwen", coords="qwen2.5-vl", max_pixels=50_000),
        ]
        for teacher in both:
            teacher._encoded = encoded  # one cache shared by both, as the process-wide one is
        return both

    with FakeOpenAI(answers) as server, ImagePool(workers=0) as pool:
        with _ingested(tmp_path, catalog) as store:
            first = label_items(store, teachers(server), images=pool)
        # attributes per listing; boxes per photo: p1's boxes question is asked once
        assert first.failed == 0 and first.asked == 2 + 3
        assert pool.in_threads == 3  # one job per photo: p1's for A, or B waited for it
        assert encoded.encoded == 6  # 3 photos x 2 sizes
        # A new run of the same photos: every data URL is in the cache, nothing is decoded,
        # resized or encoded again, and the teachers still see every photo.
        with _ingested(tmp_path, catalog, "again") as store:
            again = label_items(store, teachers(server), images=pool)
        assert again.failed == 0 and again.asked == 2 + 3
        assert pool.in_threads == 3 and encoded.encoded == 6
        assert len(_sent_urls(server)) == 2 * (2 + 2 + 3)


def test_items_stream_through_a_window_bounded_by_the_request_slots(tmp_path):
    photos = {f"I{n:02d}": [_jpeg((96, 64), (n, 5, n + 20, 25))] for n in range(30)}
    catalog = _catalog(tmp_path, photos)
    taken: list[str] = []  # items read from the store so far
    taken_at_request: list[int] = []

    def answer(request):
        taken_at_request.append(len(taken))
        return "[]"

    with (
        FakeOpenAI(Latency(20, answer)) as server,
        ImagePool(workers=0) as pool,
        _ingested(tmp_path, catalog) as store,
    ):
        items = store.items

        def counted_items(limit=None):
            for item in items(limit=limit):
                taken.append(item.item_id)
                yield item

        store.items = counted_items  # the real store, observed
        summary = label_items(store, [_teacher(server, max_concurrency=2)], images=pool)
    assert summary.asked == 30 and taken == sorted(photos)
    window = 2 + pool.ahead
    # An item is read only when a worker of the window is free: at the k-th request at
    # most k items are finished (one request each), so at most k + window have been read.
    assert taken_at_request[0] <= window < 30
    for k, count in enumerate(taken_at_request):
        assert count <= k + window, (k, count)


def test_an_unreadable_photo_in_a_worker_process_fails_its_item_only(tmp_path):
    photos = {f"I{n}": [_jpeg((320, 240), (n * 20, 10, n * 20 + 40, 50))] for n in range(3)}
    catalog = _catalog(tmp_path, photos)
    with (
        FakeOpenAI(RedSquareBoxes("pixels")) as server,
        ImagePool(workers=1) as pool,
        _ingested(tmp_path, catalog) as store,
    ):
        (tmp_path / "img" / "p1.jpg").write_bytes(b"overwritten after ingest")
        pool.start(wait=True)
        summary = label_items(store, [_teacher(server)], images=pool)
        labeled = {i: len(store.boxes(i)) for i in photos}
    assert summary.errors == ["item I1: image 0: not an image or an unsupported format"]
    assert labeled == {"I0": 1, "I1": 0, "I2": 1}
    assert pool.in_processes == 2  # the two readable photos (the third failed there too)


WORKERS_SCRIPT = """
    import multiprocessing, sys, time
    sys.path.insert(0, {root!r})
    from teacher_labeling.image_pool import ImagePool

    if __name__ == "__main__":
        with ImagePool(workers=2) as pool:
            try:
                pool.start(wait=True)
                print(*(p.pid for p in multiprocessing.active_children()), flush=True)
                time.sleep(120)
            except KeyboardInterrupt:
                print("interrupted", flush=True)
"""


def _alive(pid: int) -> bool:
    """Whether a process runs (a zombie waiting for its parent to reap it does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.parametrize(
    "stop",
    [
        "ctrl-c",  # SIGINT to the whole process group, as a terminal sends it
        "kill",  # SIGKILL to the labeling process alone: no clean-up runs
    ],
)
def test_worker_processes_stop_with_the_labeling_process(tmp_path, stop):
    script = tmp_path / "pool.py"
    script.write_text(textwrap.dedent(WORKERS_SCRIPT.format(root=str(ROOT))))
    process = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, like a shell job
    )
    workers = [int(pid) for pid in process.stdout.readline().split()]
    assert len(workers) == 2 and all(_alive(pid) for pid in workers)
    if stop == "ctrl-c":
        os.killpg(process.pid, signal.SIGINT)
    else:
        process.kill()
    out, err = process.communicate(timeout=60)
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in workers)
    if stop == "ctrl-c":
        # the parent handled Ctrl-C and closed the pool; the workers ignored it, silently
        assert process.returncode == 0 and out.strip() == "interrupted"
        assert "Traceback" not in err and "KeyboardInterrupt" not in err


def test_a_run_starts_no_worker_process_until_it_is_long_enough(tmp_path):
    photos = {f"I{n}": [_jpeg((96, 64), (n, 5, n + 20, 25))] for n in range(5)}
    catalog = _catalog(tmp_path, photos)
    children = set(multiprocessing.active_children())
    with (
        FakeOpenAI(RedSquareBoxes("pixels")) as server,
        ImagePool(workers=2, start_after=5) as pool,
        _ingested(tmp_path, catalog) as store,
    ):
        label_items(store, [_teacher(server)], images=pool)
        assert set(multiprocessing.active_children()) == children
        assert pool.in_threads == 5 and pool.in_processes == 0
        assert len(_sent_urls(server)) == 5
