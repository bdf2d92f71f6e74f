"""`dataset build` at scale: images stored as their files' bytes unless croptune changed their
pixels (and then PNG of exactly predict's pixels), in worker processes with the same result
whatever their number, streamed in chunks, and resumable after an interrupted build."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import toolkit.dataset.build as build_module
import toolkit.dataset.chunks as chunks_module
from tests.test_predict import ANSWER, Recording, endpoint
from toolkit.crops import CropConfig
from toolkit.dataset import DatasetConfig, build_dataset
from toolkit.dataset.build import default_workers
from toolkit.dataset.chunks import WORK_DIR
from toolkit.dataset.rows import example_sources
from toolkit.errors import CroptuneError
from toolkit.saved_dataset import load_saved_dataset
from toolkit.schema import load_schema
from toolkit.store import RunStore

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SIDE = 256  # max_image_side of the parity build: small, so that one photo and one crop exceed it


def _scene(size: tuple[int, int], seed: int) -> Image.Image:
    """A smooth 'photo' with a dark square (what the reference boxes cover)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(40, 220, size=(6, 8, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
    image.paste((20, 20, 30), (size[0] // 4, size[1] // 4, size[0] // 4 + 40, size[1] // 4 + 30))
    return image


def _save(kind: str, path: Path, seed: int) -> tuple[int, int]:
    """Write a photo of one kind; its upright size (the frame the boxes are in)."""
    image = _scene((200, 150), seed)
    if kind == "jpeg":
        image.save(path, quality=90)
    elif kind == "png":
        image.save(path)
    elif kind == "exif-jpeg":
        exif = Image.Exif()
        exif[0x0112] = 6  # exif_transpose applies ROTATE_270: the file holds ROTATE_90
        image.transpose(Image.Transpose.ROTATE_90).save(path, quality=90, exif=exif)
    elif kind == "cmyk-jpeg":
        image.convert("CMYK").save(path, quality=90)
    elif kind == "grey-png":
        image = image.convert("L")
        image.save(path)
    elif kind == "big-jpeg":
        image = _scene((600, 450), seed)
        image.save(path, quality=90)
    return image.size


# What each kind of photo is stored as, and why (the dataset stats' png_because).
PHOTOS = {
    # an upright RGB JPEG within max_image_side: its own bytes
    "jpeg": None,
    # an upright RGB PNG: its own bytes
    "png": None,
    # EXIF orientation 6: turned upright by croptune, so PNG of the turned pixels
    "exif-jpeg": "exif_turned",
    # CMYK: converted to RGB, PNG of the RGB pixels
    "cmyk-jpeg": "converted",
    # grey: repeated into three channels, PNG of the RGB pixels
    "grey-png": "converted",
    # 600x450 over max_image_side 256: downscaled, PNG of the downscaled pixels
    "big-jpeg": "resized",
}


@pytest.fixture(scope="module")
def photo_run(tmp_path_factory):
    """One item per photo kind (+ a second photo, the JPEG), labeled and boxed by the
    reference teacher, cropped; the big photo's box makes a crop over max_image_side."""
    from croptune.pipeline import run_crop, run_label
    from teacher_labeling.teachers import LabelConfig, TeacherConfig

    work = tmp_path_factory.mktemp("photo-run")
    folder = work / "catalog"
    folder.mkdir()
    lines = []
    for n, kind in enumerate(PHOTOS):
        name = f"{kind}.{'png' if kind.endswith('png') else 'jpg'}"
        _save(kind, folder / name, seed=n)
        other = f"{kind}-second.jpg"
        _save("jpeg", folder / other, seed=100 + n)
        # the big photo's box makes a square crop of ~310 px: over SIDE
        box = [20, 20, 330, 300] if kind == "big-jpeg" else [40, 30, 100, 80]
        lines.append(
            {
                "item_id": kind,
                "images": [name, other],
                "title": f"Kettle {n}",
                "attributes": {"attributes": {"brand": f"Acme {n}"}},
                "boxes": [{"image": 0, "xyxy": box, "label": "text"}],
            }
        )
    catalog = folder / "catalog.jsonl"
    catalog.write_text("".join(json.dumps(line) + "\n" for line in lines))
    teacher = TeacherConfig(name="reference", role="both", kind="reference", coords="pixels")
    run_label(catalog, LabelConfig(teachers=[teacher]), work / "run")
    crop = CropConfig()
    run_crop(work / "run", crop)
    return {"work": work, "catalog": catalog, "crop": crop}


def _raw_images(dataset_dir: Path) -> dict[str, list[bytes]]:
    """item_id -> the stored bytes of its example's images, as saved (not decoded)."""
    from datasets import Image as ImageFeature
    from datasets import Sequence, load_from_disk

    saved = load_from_disk(str(dataset_dir))
    out = {}
    for name in saved:
        raw = saved[name].cast_column("images", Sequence(ImageFeature(decode=False)))
        for row in raw:
            out[row["item_id"]] = [image["bytes"] for image in row["images"]]
    return out


def test_stored_bytes_decode_to_the_pixels_predict_sends(photo_run, tmp_path):
    """Source-bytes JPEGs/PNGs and PNGs of EXIF-turned, CMYK, grey and oversize photos (and an
    oversize crop) decode to exactly what `croptune predict` shows the student."""
    from datasets import load_from_disk

    from croptune.pipeline import run_dataset
    from finetune.predict import load_bundle, predict_catalog
    from teacher_labeling.box_source import TeacherBoxes
    from teacher_labeling.teachers import TeacherConfig
    from tests.bundles import manifest_data, write_manifest
    from tests.fake_openai import FakeOpenAI, FixedAnswer

    work = photo_run["work"]
    config = DatasetConfig(max_image_side=SIDE)
    summary = run_dataset(work / "run", tmp_path / "dataset", config)
    # The bundle export writes for this dataset: both sides fitted to SIDE.
    data = manifest_data(crop=photo_run["crop"], box_source="teacher")
    data["prompt"].update(originals_max_side=SIDE, crops_max_side=SIDE)
    bundle = load_bundle(write_manifest(tmp_path / "bundle", data))
    assert bundle.dataset.max_image_side == SIDE and bundle.dataset.resize_crops
    boxes = TeacherBoxes(
        TeacherConfig(name="reference", role="boxes", kind="reference", coords="pixels")
    )
    with FakeOpenAI(FixedAnswer(json.dumps(ANSWER))) as server:
        student = Recording(endpoint(server))
        predicted = predict_catalog(
            bundle, photo_run["catalog"], tmp_path / "preds.jsonl", student, boxes
        )
    assert predicted.failed == 0 and predicted.predicted == len(PHOTOS)

    saved = load_from_disk(str(tmp_path / "dataset"))
    rows = {row["item_id"]: row for name in saved for row in saved[name]}
    raw = _raw_images(tmp_path / "dataset")
    crop_hash = photo_run["crop"].config_hash()
    with RunStore(work / "run", create=False) as store:
        sources = {kind: example_sources(store, kind, config, crop_hash) for kind in PHOTOS}
    for kind, (served, _) in zip(PHOTOS, student.examples, strict=True):
        trained = rows[kind]["images"]
        assert len(served) == len(trained) == 3  # the photo, the second photo, the crop
        for got, want in zip(served, trained, strict=True):
            assert want.mode == "RGB" and got.size == want.size
            assert np.array_equal(np.asarray(got), np.asarray(want)), kind
        # As stored: the photo, the second (upright JPEG) photo, the crop.
        photo, second, crop = (Path(source.uri).read_bytes() for source in sources[kind])
        if PHOTOS[kind] is None:
            assert raw[kind][0] == photo  # the file's own bytes
        else:
            assert raw[kind][0].startswith(PNG_SIGNATURE) and raw[kind][0] != photo
        assert raw[kind][1] == second
        if kind == "big-jpeg":  # the crop over SIDE: downscaled, PNG
            assert max(served[2].size) == SIDE and raw[kind][2].startswith(PNG_SIGNATURE)
            assert raw[kind][2] != crop
        else:  # a crop file croptune wrote (PNG at its size): its own bytes
            assert raw[kind][2] == crop
    stored = summary.stats()["images_stored"]
    assert stored == {
        "source_bytes": 3 * len(PHOTOS) - 5,
        "png": 5,
        "png_because": {"resized": 2, "exif_turned": 1, "converted": 2},
    }


# ------------------------------------------------------------ workers, chunks, resuming


@pytest.fixture(scope="module")
def example_run(tmp_path_factory):
    """The example catalog (10 items, some photos EXIF-turned) labeled, boxed and cropped."""
    from croptune.pipeline import run_crop, run_label
    from croptune.synthetic.catalog import make_example_catalog
    from teacher_labeling.teachers import LabelConfig, TeacherConfig

    work = tmp_path_factory.mktemp("example-run")
    catalog = make_example_catalog(work / "catalog", n_items=10, seed=4)
    teacher = TeacherConfig(name="reference", role="both", kind="reference", coords="pixels")
    run_label(catalog, LabelConfig(teachers=[teacher]), work / "run")
    run_crop(work / "run", CropConfig())
    return work / "run"


def _build(run: Path, out: Path, config: DatasetConfig | None = None, **options):
    with RunStore(run, create=False) as store:
        return build_dataset(store, out, load_schema(), config or DatasetConfig(), **options)


def _tables(out: Path) -> dict:
    """Split -> its saved rows as one Arrow table (image bytes as stored)."""
    from datasets import load_from_disk

    saved = load_from_disk(str(out))
    return {name: saved[name].data.table.combine_chunks() for name in saved}


def _assert_same_dataset(a: Path, b: Path) -> None:
    tables_a, tables_b = _tables(a), _tables(b)
    assert tables_a.keys() == tables_b.keys()
    for name, table in tables_a.items():
        assert table.equals(tables_b[name]), name
    facts = [json.loads((d / "croptune_dataset.json").read_text()) for d in (a, b)]
    for fact in facts:  # the first build of a run records its split, later ones reuse it
        assert fact["split"].pop("status") in ("new", "recorded")
    assert facts[0] == facts[1]


def test_two_worker_processes_build_the_dataset_one_process_builds(example_run, tmp_path):
    # 5 chunks of 2 items: several chunks per worker, finishing in any order
    one = _build(example_run, tmp_path / "one", workers=1, chunk_items=2)
    two = _build(example_run, tmp_path / "two", workers=2, chunk_items=2)
    _assert_same_dataset(tmp_path / "one", tmp_path / "two")
    assert one.stats() == two.stats() and one.chunks_built == two.chunks_built == 5
    assert (one.processes, two.processes) == (1, 2)
    assert sum(one.examples.values()) == 10
    assert not (tmp_path / "two" / WORK_DIR).exists()  # the work folder goes once saved
    # The example catalog stores most photos as they are, EXIF-turned ones as PNG.
    stored = one.stats()["images_stored"]
    assert stored["source_bytes"] > 0 and stored["png_because"].get("exif_turned", 0) > 0


@pytest.mark.parametrize(
    ("after_s", "processes"),
    [
        # a build that proves long (here: any) moves to processes after its first chunk
        (0.0, min(default_workers(), 5)),
        # one that does not stays in this process
        (1e9, 1),
    ],
)
def test_with_no_number_asked_processes_start_once_the_build_proves_long(
    example_run, tmp_path, monkeypatch, after_s, processes
):
    monkeypatch.setattr(build_module, "PARALLEL_AFTER_S", after_s)
    auto = _build(example_run, tmp_path / "auto", workers=None, chunk_items=2)
    assert auto.processes == processes and auto.chunks_built == 5
    _build(example_run, tmp_path / "one", workers=1, chunk_items=2)
    _assert_same_dataset(tmp_path / "one", tmp_path / "auto")


class _Interrupt:
    """stored_image that raises KeyboardInterrupt (Ctrl-C) at its n-th call, counting calls."""

    def __init__(self, real, at: int | None) -> None:
        self.real, self.at, self.calls = real, at, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.at is not None and self.calls == self.at:
            raise KeyboardInterrupt
        return self.real(*args, **kwargs)


def test_an_interrupted_build_resumes_from_its_finished_chunks(example_run, tmp_path, monkeypatch):
    out = tmp_path / "ds"
    real = chunks_module.stored_image
    clean = _build(example_run, tmp_path / "clean", chunk_items=2)
    per_item = clean.images_per_example  # images stored per item, in catalog order
    # Ctrl-C at the second image of the third chunk: two chunks finished, one half-written.
    at = sum(per_item[:4]) + 2
    monkeypatch.setattr(chunks_module, "stored_image", _Interrupt(real, at))
    with pytest.raises(KeyboardInterrupt):
        _build(example_run, out, chunk_items=2)
    assert not (out / "dataset_dict.json").exists()
    assert len(list((out / WORK_DIR).glob("*/chunk-*.json"))) == 2

    counting = _Interrupt(real, None)
    monkeypatch.setattr(chunks_module, "stored_image", counting)
    resumed = _build(example_run, out, chunk_items=2)
    assert (resumed.chunks_reused, resumed.chunks_built) == (2, 3)
    # Only the items of the unfinished chunks had their images stored again.
    assert counting.calls == sum(per_item[4:])
    _assert_same_dataset(out, tmp_path / "clean")
    assert resumed.stats() == clean.stats()


def test_a_changed_config_builds_every_chunk_again(example_run, tmp_path, monkeypatch):
    out = tmp_path / "ds"
    monkeypatch.setattr(chunks_module, "stored_image", _Interrupt(chunks_module.stored_image, at=8))
    with pytest.raises(KeyboardInterrupt):
        _build(example_run, out, chunk_items=2)
    (old,) = (out / WORK_DIR).iterdir()
    monkeypatch.undo()
    rebuilt = _build(example_run, out, DatasetConfig(max_image_side=320), chunk_items=2)
    assert (rebuilt.chunks_reused, rebuilt.chunks_built) == (0, 5)
    assert not old.exists()
    # 320 is below the example's ~640x480 photos: every original is downscaled, as PNG.
    stored = rebuilt.stats()["images_stored"]
    assert stored["png_because"]["resized"] >= sum(rebuilt.examples.values())


def test_an_unreadable_photo_leaves_its_item_out_and_the_build_goes_on(tmp_path):
    from tests.test_labels_export import _listings_run, _own

    store = _listings_run(tmp_path, [_own(n) for n in range(6)])
    with store:
        missing = store.images("L03")[0].uri
        Path(missing).unlink()
        summary = build_dataset(store, tmp_path / "ds", load_schema(), DatasetConfig())
        (event,) = store.errors("L03", stage="dataset")
    assert summary.left_out == {"image unreadable": 1} and sum(summary.examples.values()) == 5
    assert event["message"] == f"image 0 ({missing}): file not found"


# ------------------------------------------------------------ saving: the chunk files moved


def _copied_save(files: dict[str, list[Path]], out: Path) -> None:
    """What the build saved before its chunk files were moved: them memory-mapped,
    concatenated and copied by save_to_disk."""
    from datasets import Dataset, DatasetDict, concatenate_datasets

    splits = {
        name: concatenate_datasets([Dataset.from_file(str(path)) for path in paths])
        for name, paths in files.items()
        if paths
    }
    DatasetDict(splits).save_to_disk(str(out))


def _json(path: Path, *dropped: str) -> dict:
    data = json.loads(path.read_text())
    return {key: value for key, value in data.items() if key not in dropped}


def test_the_saved_splits_are_the_chunk_files_moved_and_load_as_their_copy_did(
    example_run, tmp_path, monkeypatch
):
    out, copied = tmp_path / "ds", tmp_path / "copied"
    chunk_files: dict[str, list[tuple[int, int]]] = {}
    real_save = build_module._save

    def save(files, out_dir, work_dir):
        _copied_save(files, copied)  # the old way, from the same chunk files
        for name, paths in files.items():
            chunk_files[name] = [(p.stat().st_ino, p.stat().st_size) for p in paths]
        real_save(files, out_dir, work_dir)

    monkeypatch.setattr(build_module, "_save", save)
    summary = _build(example_run, out, chunk_items=2)  # 5 chunks: several files a split
    assert not (out / WORK_DIR).exists()
    splits = [name for name, files in chunk_files.items() if files]
    assert json.loads((out / "dataset_dict.json").read_text()) == {"splits": splits}
    assert len(chunk_files["train"]) > 1
    for name in splits:
        n = len(chunk_files[name])
        data = sorted((out / name).glob("*.arrow"))
        # save_to_disk's names, in chunk order, each the chunk file itself (its inode)
        assert [p.name for p in data] == [f"data-{i:05d}-of-{n:05d}.arrow" for i in range(n)]
        assert [(p.stat().st_ino, p.stat().st_size) for p in data] == chunk_files[name]
        assert sorted(p.name for p in (out / name).iterdir() if p.suffix != ".arrow") == [
            "dataset_info.json",
            "state.json",
        ]
        # save_to_disk's metadata, but for the data files and the fingerprint
        for meta, dropped in (("dataset_info.json", ()), ("state.json", ("_data_files",))):
            mine, theirs = _json(out / name / meta, *dropped), _json(copied / name / meta, *dropped)
            assert mine.pop("_fingerprint", None) != theirs.pop("_fingerprint", 0)
            assert mine == theirs, (name, meta)
    # The same rows, in the same order, as the copy; loaded by croptune's reader too.
    assert _tables(out).keys() == _tables(copied).keys()
    for name, table in _tables(out).items():
        assert table.equals(_tables(copied)[name]), name
    saved = load_saved_dataset(out, "not a dataset")
    assert {name: saved[name].num_rows for name in saved} == {
        name: summary.examples[name] for name in splits
    }
    assert saved["train"][0]["images"][0].size > (0, 0)  # images decode from the moved files
    fingerprints = {_json(out / name / "state.json")["_fingerprint"] for name in splits}
    assert len(fingerprints) == len(splits)


def test_an_empty_split_is_left_out_of_the_saved_dataset(tmp_path):
    from tests.test_labels_export import _listings_run, _own

    with _listings_run(tmp_path, [_own(n) for n in range(6)]) as store:
        config = DatasetConfig(validation_ratio=0.0, test_ratio=0.3)
        summary = build_dataset(store, tmp_path / "ds", load_schema(), config)
    assert summary.examples["validation"] == 0 and summary.examples["test"] > 0
    saved = load_saved_dataset(tmp_path / "ds", "not a dataset")
    assert sorted(saved) == ["test", "train"] and not (tmp_path / "ds" / "validation").exists()
    assert sum(saved[name].num_rows for name in saved) == 6


def test_a_build_that_dies_while_moving_its_chunks_gives_the_full_dataset_when_rerun(
    example_run, tmp_path, monkeypatch
):
    clean = _build(example_run, tmp_path / "clean", chunk_items=2)
    out = tmp_path / "ds"
    real_replace, real_save = os.replace, build_module._save
    moved: list[str] = []

    def dying_replace(src, dst):
        if len(moved) == 3:  # the process dies after moving three chunk files
            raise KeyboardInterrupt
        moved.append(Path(src).name)
        real_replace(src, dst)

    def save(*args):
        monkeypatch.setattr(os, "replace", dying_replace)
        try:
            real_save(*args)
        finally:
            monkeypatch.setattr(os, "replace", real_replace)

    monkeypatch.setattr(build_module, "_save", save)
    with pytest.raises(KeyboardInterrupt):
        _build(example_run, out, chunk_items=2)
    assert len(moved) == 3 and all(name.startswith("chunk-") for name in moved)
    with pytest.raises(CroptuneError):  # no half-moved dataset loads
        load_saved_dataset(out, "not a dataset")

    monkeypatch.setattr(build_module, "_save", real_save)
    resumed = _build(example_run, out, chunk_items=2)
    # The chunks whose files were moved are built again, the others reused.
    again = {name.split(".")[0] for name in moved}
    assert (resumed.chunks_built, resumed.chunks_reused) == (len(again), 5 - len(again))
    _assert_same_dataset(out, tmp_path / "clean")
    assert resumed.stats() == clean.stats()
    # Built again over a saved dataset, in other chunks: the new one's files are the ones named.
    _build(example_run, out, chunk_items=4)
    _assert_same_dataset(out, tmp_path / "clean")
