"""`label --engine ray` on a real local Ray (2 CPUs, in this process), against loopback teachers.

What a single-process run has must hold on Ray: the same answers box for box, a killed run
resumes without asking a finished request again (counted at the server), and the key never
reaches a shard, the run folder or Ray's own logs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.fake_openai import (
    AttributesFromImage,
    ChatRequest,
    FakeOpenAI,
    RedSquareBoxes,
    Reply,
    mean_rgb,
)
from tests.label_runs import (
    CROPTUNE,
    asked_per_image,
    fake_server_process,
    label_command,
    sent_hash,
    stored_requests,
)

pytestmark = pytest.mark.ray

ROOT = Path(__file__).parent.parent
SECRET = "sk-test-SECRET-ray-0badf00d"
KEY_ENV = "CROPTUNE_RAY_TEST_KEY"


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray with 2 CPUs for the module, started with the key in its environment (as a
    cluster's workers get it), logging into a folder of its own; yields that folder."""
    import ray

    # Short: Ray's socket paths live under it and must stay under 108 characters.
    folder = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    os.environ[KEY_ENV] = SECRET
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
        _temp_dir=str(folder),
    )
    yield folder
    ray.shutdown()
    shutil.rmtree(folder, ignore_errors=True)


def _catalog(folder: Path, n: int, shared: bool = True) -> Path:
    """n one-photo items, each with its red square elsewhere; the last two share one photo."""
    (folder / "img").mkdir(parents=True)
    lines = []
    for i in range(n):
        array = np.full((120, 160, 3), (30, 60 + 9 * i, 120), dtype=np.uint8)
        x, y = 5 + (i * 7) % 130, 5 + (i * 11) % 90
        array[y : y + 20, x : x + 20] = (255, 0, 0)
        Image.fromarray(array).save(folder / "img" / f"{i}.png")
    for i in range(n):
        photo = n - 2 if shared and i == n - 1 else i
        lines.append(
            json.dumps({"item_id": f"I{i:02d}", "images": [f"img/{photo}.png"], "title": f"t{i}"})
        )
    (folder / "catalog.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "catalog.jsonl"


def _teacher(base_url: str, **changes: Any) -> dict[str, Any]:
    return {
        "name": "qwen",
        "role": "boxes",
        "base_url": base_url,
        "model": "qwen-test",
        "api_key_env": KEY_ENV,
        "coords": "pixels",
        "max_concurrency": 4,
        "timeout_s": 20,
        "max_retries": 2,
        **changes,
    }


def _config(path: Path, teachers: list[dict[str, Any]], **ray: Any) -> Path:
    ray = {"batch_size": 2, "rows_per_shard": 2, "poll_s": 0.2, **ray}
    path.write_text(yaml.safe_dump({"teachers": teachers, "ray": ray}))
    return path


def _boxes_and_attributes(request: ChatRequest) -> Reply:
    """Boxes for the boxes teacher; for the attributes teacher, the photo's mean colour."""
    if request.model == "qwen-test":
        return RedSquareBoxes()(request)
    colour = "#{:02x}{:02x}{:02x}".format(*mean_rgb(request.images[0]))
    return AttributesFromImage(lambda image: {"attributes": {"color": colour}})(request)


def _tables(run: Path) -> dict[str, list[tuple[Any, ...]]]:
    """What a run stored, without times, ids or latencies, in a fixed order."""
    queries = {
        "requests": "SELECT cache_key, teacher, model, item_id, image, status, response, error "
        "FROM requests",
        "results": "SELECT item_id, cache_key FROM results",
        "labels": "SELECT item_id, teacher, generation, attributes, cache_key FROM labels",
        "boxes": "SELECT item_id, image, x1, y1, x2, y2, label, source, score, cache_key "
        "FROM boxes",
    }
    conn = sqlite3.connect(run / "run.sqlite")
    try:
        return {
            name: sorted(conn.execute(sql).fetchall(), key=repr) for name, sql in queries.items()
        }
    finally:
        conn.close()


def _chats(server: FakeOpenAI) -> list[Any]:
    return [r for r in server.requests if r.path.endswith("/chat/completions")]


def test_ray_run_stores_exactly_what_a_single_process_run_stores(ray_cluster, tmp_path):
    from croptune.pipeline import run_label
    from teacher_labeling.teachers import load_label_config

    catalog = _catalog(tmp_path / "catalog", 9)
    with FakeOpenAI(_boxes_and_attributes, api_key=SECRET) as server:
        teachers = [
            _teacher(server.base_url),
            _teacher(server.base_url, name="gpt", role="attributes", model="gpt-test"),
        ]
        config = load_label_config(_config(tmp_path / "label.yaml", teachers))
        _, single = run_label(catalog, config, tmp_path / "single")
        asked_single = len(_chats(server))
        _, on_ray = run_label(catalog, config, tmp_path / "ray", engine="ray")
        asked_ray = len(_chats(server)) - asked_single
        _, rerun = run_label(catalog, config, tmp_path / "ray", engine="ray")
        assert len(_chats(server)) == asked_single + asked_ray  # every answer is stored

    # 9 items, 8 photos: 8 boxes + 9 attributes questions (the two items differ in title).
    assert asked_single == asked_ray == 17
    assert (on_ray.items, on_ray.asked, on_ray.failed) == (single.items, single.asked, 0)
    assert (on_ray.boxes, on_ray.labels) == (single.boxes, single.labels) == (9, 9)
    assert _tables(tmp_path / "ray") == _tables(tmp_path / "single")
    shards = tmp_path / "ray" / "ray-shards"
    assert not list(shards.glob("*.parquet"))  # every shard imported ...
    assert len(list((shards / "imported").glob("*.parquet"))) >= 2  # ... from several
    assert not (tmp_path / "ray" / "ray-requests").exists()
    assert (rerun.asked, rerun.boxes, rerun.labels) == (0, 0, 0)


def test_relabel_on_ray_stores_what_relabel_in_process_stores(ray_cluster, tmp_path):
    from croptune.pipeline import run_crop, run_label, run_relabel
    from teacher_labeling.teachers import load_label_config
    from toolkit.crops.config import CropConfig

    catalog = _catalog(tmp_path / "catalog", 4, shared=False)
    with FakeOpenAI(_boxes_and_attributes, api_key=SECRET) as server:
        teachers = [
            _teacher(server.base_url),
            _teacher(server.base_url, name="gpt", role="attributes", model="gpt-test"),
        ]
        config = load_label_config(_config(tmp_path / "label.yaml", teachers))
        run_label(catalog, config, tmp_path / "single")
        run_crop(tmp_path / "single", CropConfig())
        shutil.copytree(tmp_path / "single", tmp_path / "ray")
        before = len(_chats(server))
        single = run_relabel(tmp_path / "single", config)
        asked_single = len(_chats(server)) - before
        on_ray = run_relabel(tmp_path / "ray", config, engine="ray")
        asked_ray = len(_chats(server)) - before - asked_single

    assert asked_single == asked_ray == 4  # one attributes question per item, with its crop
    assert (on_ray.asked, on_ray.labels) == (single.asked, single.labels) == (4, 4)
    assert _tables(tmp_path / "ray") == _tables(tmp_path / "single")


def test_key_reaches_the_server_but_no_shard_run_file_or_ray_log(ray_cluster, tmp_path):
    from croptune.pipeline import run_label
    from teacher_labeling.teachers import load_label_config

    catalog = _catalog(tmp_path / "catalog", 4)
    with FakeOpenAI(RedSquareBoxes(), api_key=SECRET) as server:
        config = load_label_config(_config(tmp_path / "label.yaml", [_teacher(server.base_url)]))
        _, summary = run_label(catalog, config, tmp_path / "run", engine="ray")
        headers = [r.headers.get("authorization") for r in _chats(server)]
    assert summary.boxes == 4 and headers == [f"Bearer {SECRET}"] * 3
    files = [p for p in [*tmp_path.rglob("*"), *ray_cluster.rglob("*")] if p.is_file()]
    assert any(p.suffix == ".parquet" for p in files)
    assert any(p.name.startswith("runtime_env") for p in files)  # Ray's own logs are there
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), f"the key leaked into {path}"


def test_a_worker_without_the_key_fails_naming_the_variable(ray_cluster, tmp_path, monkeypatch):
    from croptune.pipeline import run_label
    from teacher_labeling.teachers import load_label_config
    from toolkit.errors import CroptuneError

    # Set here only: the workers started before it, so they lack it (as an unset cluster would).
    monkeypatch.setenv("CROPTUNE_RAY_UNSET_KEY", SECRET)
    catalog = _catalog(tmp_path / "catalog", 2)
    with FakeOpenAI(RedSquareBoxes(), api_key=SECRET) as server:
        teacher = _teacher(server.base_url, api_key_env="CROPTUNE_RAY_UNSET_KEY")
        config = load_label_config(_config(tmp_path / "label.yaml", [teacher]))
        with pytest.raises(CroptuneError, match="CROPTUNE_RAY_UNSET_KEY is not set") as error:
            run_label(catalog, config, tmp_path / "run", engine="ray")
        assert _chats(server) == []
    assert SECRET not in str(error.value)


@pytest.mark.slow
def test_killed_ray_run_resumes_without_asking_a_finished_request_again(tmp_path):
    log = tmp_path / "server.jsonl"
    with fake_server_process(log, SECRET) as base_url:
        catalog = _catalog(tmp_path / "catalog", 40, shared=False)
        teacher = _teacher(base_url, max_concurrency=2)
        config = _config(tmp_path / "label.yaml", [teacher], num_cpus=2, batch_size=2)
        run = tmp_path / "run"
        command = [*label_command(catalog, config, run), "--engine", "ray"]
        ray_logs = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
        environment = {**os.environ, KEY_ENV: SECRET, "RAY_TMPDIR": str(ray_logs)}

        # The driver and the Ray it started (its own process group), killed without clean-up.
        first = subprocess.Popen(
            command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and first.poll() is None:
            if len(stored_requests(run, "cache_key", "status='ok'")) >= 8:
                break
            time.sleep(0.05)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        finished = {item for (item,) in stored_requests(run, "item_id", "status='ok'")}
        assert 8 <= len(finished) < 40, "kill the run midway"

        second = subprocess.run(
            command, env=environment, capture_output=True, text=True, timeout=300
        )
        assert second.returncode == 0, second.stderr
        assert SECRET not in second.stdout + second.stderr
        leaked = [
            p for p in ray_logs.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()
        ]
        assert leaked == [], "the key is in Ray's logs"
        shutil.rmtree(ray_logs, ignore_errors=True)

    from toolkit.store import RunStore

    with RunStore(run, create=False) as store:
        uris = {item.item_id: store.images(item.item_id)[0].uri for item in store.items()}
        assert all(len(store.boxes(i)) == 1 for i in uris)  # every item labeled
    asked = asked_per_image(log)
    for item_id, uri in uris.items():
        times = asked.get(sent_hash(uri), 0)
        if item_id in finished:
            assert times == 1, f"{item_id} was finished before the kill but asked {times} times"
        else:
            assert times in (1, 2), item_id  # at most once more: it was in flight at the kill
    # Asked again: only what was in flight, or answered but not yet in a written shard.
    resent = sum(asked.values()) - len(uris)
    assert resent <= 8, resent


def test_vllm_engine_processor_config_carries_the_teachers_engine():
    from teacher_labeling.cluster.config import RayConfig
    from teacher_labeling.cluster.pipeline import vllm_processor_config
    from teacher_labeling.teachers import TeacherConfig, build_teacher
    from toolkit.errors import CroptuneError
    from toolkit.schema import load_schema

    teacher = build_teacher(
        TeacherConfig(
            name="qwen",
            role="boxes",
            model="Qwen/Qwen2.5-VL-32B-Instruct",
            model_source="/weights/qwen2.5-vl-32b",
            engine_kwargs={"max_model_len": 8192, "tensor_parallel_size": 2},
            base_url="http://unused/v1",
        ),
        load_schema(),
    )
    config = RayConfig(
        engines={"qwen": "vllm"},
        replicas=3,
        batch_size=8,
        gpus_per_replica=2,
        accelerator_type="H100",
        python="/opt/vllm/bin/python",
    )
    processor = vllm_processor_config(teacher, config)
    assert processor.model_source == "/weights/qwen2.5-vl-32b"
    assert (
        processor.engine_kwargs.items()
        >= {"max_model_len": 8192, "tensor_parallel_size": 2}.items()
    )
    assert (processor.concurrency, processor.batch_size) == (3, 8)
    assert processor.accelerator_type == "H100"
    assert processor.runtime_env == {"py_executable": "/opt/vllm/bin/python"}
    assert processor.placement_group_config is None  # Ray Data's own: one GPU per TP rank
    on_cpu = vllm_processor_config(teacher, config.model_copy(update={"gpus_per_replica": 0}))
    assert on_cpu.placement_group_config["bundles"] == [{"CPU": 0.5, "GPU": 0}]
    assert on_cpu.tokenize_stage["num_cpus"] == 0.1  # the LLM stages fit a small Ray too
    with pytest.raises(CroptuneError, match="gpus_per_replica is 4 but teacher 'qwen' runs on 2"):
        vllm_processor_config(teacher, config.model_copy(update={"gpus_per_replica": 4}))


def test_shipped_ray_config_builds_its_vllm_engine_processor():
    from teacher_labeling.cluster.pipeline import vllm_processor_config
    from teacher_labeling.teachers import build_teacher, load_label_config
    from toolkit.schema import load_schema

    config = load_label_config(ROOT / "toolkit" / "configs" / "label-ray.yaml")
    (qwen,) = [t for t in config.teachers if config.ray.engine_of(t.name) == "vllm"]
    processor = vllm_processor_config(build_teacher(qwen, load_schema()), config.ray)
    assert processor.model_source == "Qwen/Qwen2.5-VL-32B-Instruct"
    assert processor.engine_kwargs["tensor_parallel_size"] == 2
    assert (processor.concurrency, processor.accelerator_type) == (8, "H100")


def test_config_show_label_lists_the_ray_section():
    result = subprocess.run(
        [CROPTUNE, "config", "show", "label"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    shown = result.stdout
    assert "ray:" in shown
    for field in ("address", "replicas", "batch_size", "gpus_per_replica", "accelerator_type"):
        assert field in shown, field


@pytest.mark.parametrize(
    ("engines", "message"),
    [
        # a typo in a teacher's name
        ({"qwne": "vllm"}, "ray.engines names teacher 'qwne', which is not configured"),
        # the catalog's own labels have no weights to run
        ({"ref": "vllm"}, "teacher 'ref' is kind reference; only an openai teacher"),
    ],
)
def test_ray_engines_must_name_a_teacher_that_can_run_there(tmp_path, engines, message):
    from teacher_labeling.teachers import load_label_config
    from toolkit.errors import CroptuneError

    teachers = [
        _teacher("http://127.0.0.1:9/v1"),
        {"name": "ref", "role": "attributes", "kind": "reference"},
    ]
    with pytest.raises(CroptuneError, match=message):
        load_label_config(_config(tmp_path / "label.yaml", teachers, engines=engines))
