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


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # an endpoint has replicas of its own
        (["--engine", "ray", "--endpoint", "http://127.0.0.1:9/v1"], "an --endpoint has replicas"),
        # replicas mean nothing in one process
        (["--replicas", "2"], "--replicas and --ray-address go with --engine ray"),
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
