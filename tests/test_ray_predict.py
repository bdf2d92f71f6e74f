"""`predict --engine ray`: replicas of the in-process student as actors of a real local Ray."""

from __future__ import annotations

import functools
import json
import logging
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.bundles import write_manifest
from tests.label_runs import CROPTUNE

pytestmark = pytest.mark.ray


@pytest.mark.parametrize(
    ("n", "parts", "sizes"),
    [
        (5, 2, [3, 2]),  # the first replicas take the one left over
        (4, 2, [2, 2]),  # even
        (1, 3, [1, 0, 0]),  # fewer examples than replicas: the idle ones are not asked
        (0, 2, [0, 0]),  # nothing to answer
    ],
)
def test_split_evenly_keeps_order_and_balance(n, parts, sizes):
    from finetune.predict.ray_replicas import split_evenly

    examples = [([], [{"n": i}]) for i in range(n)]
    chunks = split_evenly(examples, parts)
    assert [len(c) for c in chunks] == sizes
    assert [e for c in chunks for e in c] == examples


def _records(path: Path) -> list[dict]:
    """predict's records without what differs run to run (timings)."""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for record in records:
        record.pop("seconds", None)
    return records


def test_predict_on_ray_replicas_writes_the_single_process_records(tmp_path):
    import ray

    from croptune.models import open_model
    from croptune.synthetic.catalog import make_example_catalog
    from finetune.predict import load_bundle, predict_catalog
    from finetune.predict.ray_replicas import RayReplicas
    from tests.bundles import manifest_data

    catalog = make_example_catalog(tmp_path / "catalog", n_items=5, seed=5)
    bundle = load_bundle(write_manifest(tmp_path / "bundle", manifest_data(box_source="none")))
    # The tiny Qwen2.5-VL (random weights: noise, but never empty). One example per generate
    # call in both runs: the same inputs give the same greedy tokens.
    student = functools.partial(
        open_model, "croptune:tiny-qwen", batch_size=1, max_new_tokens=24, name="croptune-tiny"
    )
    single = predict_catalog(bundle, catalog, tmp_path / "single.jsonl", student(), batch_size=2)

    folder = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING, _temp_dir=str(folder))  # fmt: skip
    backend = RayReplicas(student, replicas=2, gpus_per_replica=0)
    try:
        assert backend.identity() == student().identity()  # the same cache keys
        on_ray = predict_catalog(bundle, catalog, tmp_path / "ray.jsonl", backend, batch_size=4)
        replicas = len(backend._actors)
    finally:
        backend.close()
        ray.shutdown()
        shutil.rmtree(folder, ignore_errors=True)

    assert replicas == 2
    assert (on_ray.items, on_ray.predicted, on_ray.failed) == (
        single.items,
        single.predicted,
        single.failed,
    )
    assert on_ray.items == 5
    records = _records(tmp_path / "ray.jsonl")
    assert records == _records(tmp_path / "single.jsonl")
    # Random weights answer noise, but not nothing: the comparison covers real answers.
    assert all(record.get("answer") or "attributes" in record for record in records)


def _work_folder(workdir: Path) -> dict:
    """What predict left in a work folder, without its ids and times: each item's boxes, its
    crops (with the boxes they cover), its originals' pHashes and the crop files' bytes."""
    from toolkit.store import RunStore

    state = {}
    with RunStore(workdir, create=False) as store:
        crop_hash = store.get_meta("crop_config_hash")
        for item in store.items():
            boxes = dict(store.boxes(item.item_id))
            crops = store.crops(item.item_id, crop_hash)
            state[item.item_id] = {
                "boxes": sorted(boxes.values(), key=repr),
                "crops": sorted(
                    (
                        c.image,
                        c.region,
                        c.path,
                        c.sha256,
                        c.phash,
                        c.duplicate_of,
                        sorted(repr(boxes[i]) for i in c.box_ids),
                    )
                    for c in crops
                ),  # fmt: skip
                "phashes": store.image_phashes(item.item_id, crop_hash),
                "files": {c.path: (workdir / c.path).read_bytes() for c in crops},
                "warnings": sorted(e["message"] for e in store.warnings(item.item_id)),
            }
    return state


def _chats(server) -> int:
    """The chat completions the server got (not its readiness checks)."""
    return sum(1 for r in server.requests if r.path.endswith("/chat/completions"))


@pytest.fixture(scope="module")
def detector_run(tmp_path_factory):
    """A 6-item catalog labeled by the reference teacher and a real detector trained on it
    for one epoch (conf 0.01: it proposes boxes, so crops are cut)."""
    from croptune.pipeline import run_label
    from croptune.synthetic.catalog import make_example_catalog
    from finetune.detector import DetectorConfig, train_detector
    from teacher_labeling.teachers import LabelConfig, TeacherConfig

    work = tmp_path_factory.mktemp("ray-detector")
    catalog = make_example_catalog(work / "catalog", n_items=6, seed=1)
    teacher = TeacherConfig(name="reference", role="both", kind="reference", coords="pixels")
    run_label(catalog, LabelConfig(teachers=[teacher]), work / "run")
    config = DetectorConfig(
        epochs=1, imgsz=96, batch=8, workers=0, validation_ratio=0.1, test_ratio=0.2,
        device="cpu", conf=0.01,
    )  # fmt: skip
    train_detector(work / "run", work / "detector", config, verbose=False)
    return {"catalog": catalog, "detector": work / "detector"}


def test_items_prepared_on_ray_leave_the_single_process_work_folder(detector_run, tmp_path):
    """Decode, detector boxes and crops as Ray Data actors: the same records, boxes, crops,
    crop files and pHashes as one process; resumed runs ask only for the rest."""
    import ray

    from finetune.predict import DetectorBoxes, load_bundle, predict_catalog
    from finetune.predict.on_ray import RayPrepare
    from finetune.predict.ray_replicas import RayReplicas
    from teacher_labeling.endpoint import EndpointBackend, EndpointConfig
    from tests.bundles import manifest_data
    from tests.fake_openai import FakeOpenAI, FixedAnswer

    catalog, detector = detector_run["catalog"], detector_run["detector"]
    bundle = load_bundle(write_manifest(tmp_path / "bundle", manifest_data(budget=4)))
    answer = {"attributes": {"brand": "Acme", "color": "red"}}
    with FakeOpenAI(FixedAnswer(json.dumps(answer))) as server:
        # A student whose answers parse (so that finished items exist to resume from), built
        # in the replica's own process: the real openai client against the loopback server.
        config = EndpointConfig(
            name="croptune-tiny", model="croptune-tiny", base_url=server.base_url, max_retries=0
        )
        student = functools.partial(EndpointBackend, config, None, 64)
        single = predict_catalog(
            bundle, catalog, tmp_path / "single.jsonl", student(), DetectorBoxes(detector),
            batch_size=2,
        )  # fmt: skip
        asked_single = _chats(server)

        folder = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING, _temp_dir=str(folder))  # fmt: skip
        settings = RayPrepare(actors=2, cpus=0.5)
        runs, asked = [], []
        try:
            # Two items finished; two more whose answers do not parse (their boxes and crops
            # are stored, their prediction is not); then the whole catalog: a resumed run
            # that prepares those two again from their stored boxes and crops.
            for limit, reply in ((2, answer), (4, "not JSON"), (None, answer)):
                server.responder = FixedAnswer(
                    reply if isinstance(reply, str) else json.dumps(reply)
                )
                before = _chats(server)
                backend = RayReplicas(student, replicas=1, gpus_per_replica=0)
                try:
                    runs.append(
                        predict_catalog(
                            bundle, catalog, tmp_path / "ray.jsonl", backend,
                            DetectorBoxes(detector), batch_size=2, limit=limit, on_ray=settings,
                        )
                    )  # fmt: skip
                finally:
                    backend.close()
                asked.append(_chats(server) - before)
        finally:
            ray.shutdown()
            shutil.rmtree(folder, ignore_errors=True)

    first, broken, last = runs
    assert (single.items, single.predicted, asked_single) == (6, 6, 6)
    assert (first.predicted, broken.resumed, broken.failed) == (2, 2, 2)
    assert (last.resumed, last.predicted, last.failed) == (2, 6, 0)
    assert asked == [2, 2, 4]  # counted at the server: no finished item was asked again
    records = _records(tmp_path / "ray.jsonl")
    assert records == _records(tmp_path / "single.jsonl")
    assert sum(len(r["boxes"]) for r in records) > 0  # the detector proposed boxes
    ray_folder, single_folder = _work_folder(last.workdir), _work_folder(single.workdir)
    assert ray_folder == single_folder
    assert sum(len(item["crops"]) for item in ray_folder.values()) > 0  # and crops were cut


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # an endpoint has replicas of its own
        (["--engine", "ray", "--endpoint", "http://127.0.0.1:9/v1"], "an --endpoint has replicas"),
        # replicas mean nothing in one process
        (["--replicas", "2"], "go with --engine ray"),
        # so do preparation actors
        (["--prepare-actors", "2"], "go with --engine ray"),
        # Ray workers do not ask a box teacher
        (["--engine", "ray", "--box-source", "teacher"], "do not ask a box teacher"),
    ],
)
def test_predict_refuses_ray_options_that_do_not_apply(tmp_path, args, message):
    from croptune.synthetic.catalog import make_example_catalog
    from tests.bundles import manifest_data

    catalog = make_example_catalog(tmp_path / "catalog", n_items=1, seed=5)
    bundle = write_manifest(tmp_path / "bundle", manifest_data(box_source="none"))
    command = [CROPTUNE, "predict", str(catalog), "--bundle", str(bundle)]
    result = subprocess.run(
        [*command, "--out", str(tmp_path / "p.jsonl"), *args], capture_output=True, text=True
    )
    assert result.returncode != 0
    assert message in " ".join(result.stderr.split())
