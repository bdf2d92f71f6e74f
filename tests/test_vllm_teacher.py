"""The tiny Qwen2.5-VL served by a real vLLM (CPU build) as croptune's teacher.

Its weights are random, so its answers are noise: what is tested is that croptune's real
client path copes with a real server (qwen2.5-vl coordinates, strict json_schema response
formats, a server killed mid-run and started again), never what the boxes say.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.label_runs import CROPTUNE, label_command, stored_requests
from tests.vllm_server import VLLMServer

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

QWEN = "tiny-qwen"
CHAT_LINE = '"POST /v1/chat/completions HTTP/1.1"'


@pytest.fixture(scope="module")
def qwen_server(vllm_sandbox: Path) -> Any:
    """vLLM serving the tiny Qwen2.5-VL (its processor: 56x56..112x112 pixels per image)."""
    from finetune.students import resolve_student
    from finetune.students.tiny import TINY_QWEN_MODEL

    folder = resolve_student(TINY_QWEN_MODEL)
    args = [
        "serve",
        folder,
        "--served-model-name",
        QWEN,
        "--enforce-eager",
        "--dtype",
        "float32",
        "--max-model-len",
        "4096",
        "--limit-mm-per-prompt",
        '{"image": 8}',
    ]
    with VLLMServer(args, cwd=vllm_sandbox, log=vllm_sandbox / "qwen.log") as server:
        yield server


def teacher(server: VLLMServer, **changes: Any) -> dict[str, Any]:
    """A teacher config for the served tiny Qwen."""
    return {
        "name": "qwen",
        "role": "boxes",
        "base_url": server.base_url,
        "model": QWEN,
        "coords": "qwen2.5-vl",
        "min_pixels": 56 * 56,  # the server processor's limits (its preprocessor_config.json)
        "max_pixels": 112 * 112,
        "max_tokens": 48,  # noise: keep it short
        "max_concurrency": 1,
        "timeout_s": 60,
        "max_retries": 1,
        **changes,
    }


def label(catalog: Path, config: Path, run: Path, **popen: Any) -> Any:
    """`croptune label` as a user runs it."""
    command = label_command(catalog, config, run)
    if popen:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, capture_output=True, text=True, timeout=900)


def requests_table(run: Path) -> dict[str, tuple[str, str | None, float]]:
    """cache key -> (status, response, time stored), read without disturbing a writer."""
    rows = stored_requests(run, "cache_key, status, response, created_at")
    return {key: (status, response, stamp) for key, status, response, stamp in rows}


def chat_requests_in_log(server: VLLMServer, since: int) -> int:
    """Chat completions the server answered after the log's first `since` characters."""
    return server.log.read_text(errors="replace")[since:].count(CHAT_LINE)


def test_killed_server_loses_no_finished_answer_and_asks_none_twice(qwen_server, tmp_path):
    from croptune.synthetic.catalog import make_example_catalog
    from toolkit.store import RunStore

    catalog = make_example_catalog(tmp_path / "catalog", n_items=6, seed=3)
    config = tmp_path / "label.yaml"
    config.write_text(yaml.safe_dump({"teachers": [teacher(qwen_server)]}))
    run = tmp_path / "run"

    first = label(catalog, config, run, popen=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and first.poll() is None:
        if sum(status == "ok" for status, _, _ in requests_table(run).values()) >= 4:
            break
        time.sleep(0.2)
    qwen_server.kill()  # mid-run, no clean-up
    stdout, stderr = first.communicate(timeout=300)
    assert "teacher qwen stopped" in stdout  # the summary's counters say it too
    # One message naming the URL, and the exit code says the teacher was stopped.
    assert first.returncode == 1, stderr
    assert f"teacher 'qwen' stopped: nothing answers at {qwen_server.base_url} any more" in stderr
    assert "Traceback" not in stderr
    finished = {k: v for k, v in requests_table(run).items() if v[0] == "ok"}
    assert len(finished) >= 4, stderr

    log_size = len(qwen_server.log.read_text(errors="replace"))
    qwen_server.start()  # the same port: the same endpoint, the same cache keys
    second = label(catalog, config, run)
    assert second.returncode in (0, 1), second.stderr  # 1: some noise did not parse
    assert "Traceback" not in second.stderr

    after = requests_table(run)
    for key, row in finished.items():
        assert after[key] == row, "a finished answer was asked again or changed"
    with RunStore(run, create=False) as store:
        images = [row for item in store.items() for row in store.images(item.item_id) if row.usable]
    assert len(after) == len(images)  # one boxes question per photo, nothing lost
    # Only what was not finished before the kill was asked, each once.
    assert chat_requests_in_log(qwen_server, log_size) == len(images) - len(finished)
    # Every noisy answer either parsed (boxes, maybe none) or is recorded as that photo's error.
    export = tmp_path / "labels.jsonl"
    exported = subprocess.run(
        [
            CROPTUNE,
            "labels",
            "export",
            "--run",
            str(run),
            "--format",
            "jsonl",
            "--out",
            str(export),
        ],
        capture_output=True,
        text=True,
    )
    assert exported.returncode == 0, exported.stderr
    failed_keys = {k for k, (status, _, _) in after.items() if status != "ok"}
    errors = [e for line in export.read_text().splitlines() for e in json.loads(line)["errors"]]
    assert len([e for e in errors if e.get("teacher") == "qwen"]) >= len(failed_keys)


def test_down_server_fails_at_once_naming_the_url(tmp_path):
    from tests.vllm_server import free_port

    catalog_dir = tmp_path / "catalog"
    from croptune.synthetic.catalog import make_example_catalog

    catalog = make_example_catalog(catalog_dir, n_items=2, seed=1)
    url = f"http://127.0.0.1:{free_port()}/v1"
    config = tmp_path / "label.yaml"
    config.write_text(yaml.safe_dump({"teachers": [{**teacher_stub(url)}]}))
    started = time.monotonic()
    result = label(catalog, config, tmp_path / "run")
    assert result.returncode == 1
    assert time.monotonic() - started < 60
    assert f"teacher 'qwen': nothing answers at {url}" in result.stderr
    assert "startup_wait_s" in result.stderr and "Traceback" not in result.stderr


def teacher_stub(url: str) -> dict[str, Any]:
    """A boxes teacher at a URL."""
    return {"name": "qwen", "role": "boxes", "base_url": url, "model": QWEN, "coords": "qwen2.5-vl"}


def test_unserved_model_names_what_the_server_serves(qwen_server, tmp_path):
    from croptune.synthetic.catalog import make_example_catalog

    catalog = make_example_catalog(tmp_path / "catalog", n_items=2, seed=1)
    config = tmp_path / "label.yaml"
    config.write_text(yaml.safe_dump({"teachers": [teacher(qwen_server, model="qwen-typo")]}))
    result = label(catalog, config, tmp_path / "run")
    assert result.returncode == 1
    assert f"{qwen_server.base_url} does not serve model 'qwen-typo'; it serves 'tiny-qwen'" in (
        result.stderr
    )


def test_strict_json_schema_response_format_is_accepted(qwen_server, tmp_path):
    """The attributes teacher's strict json_schema: vLLM guides the noise into the schema."""
    import openai

    from teacher_labeling.teachers import OpenAITeacher, TeacherConfig, TeacherRequest
    from toolkit.schema import load_schema

    schema = load_schema("compliance")
    config = TeacherConfig(**teacher(qwen_server, role="attributes", max_tokens=600))
    attributes = OpenAITeacher(config, schema)
    request = TeacherRequest(
        teacher="qwen",
        model=QWEN,
        item_id="A",
        image=None,
        prompt="Describe the product.",
        images=[],
        image_hashes=[],
    )
    parameters = attributes.request_parameters(request)
    assert parameters["response_format"]["json_schema"]["strict"] is True
    client = openai.OpenAI(base_url=qwen_server.base_url, api_key="EMPTY", max_retries=0)
    reply = client.chat.completions.create(
        model=QWEN,
        messages=[{"role": "user", "content": "Describe the product."}],
        **parameters,
    )
    choice = reply.choices[0]
    if choice.finish_reason == "stop":  # complete: it must follow the schema
        answer = json.loads(choice.message.content)
        assert set(answer) <= set(schema.groups)
        for group, fields in answer.items():
            assert set(fields) <= set(schema.groups[group]), (group, fields)
    else:
        assert choice.finish_reason == "length"
        assert choice.message.content.lstrip().startswith("{")


def test_label_with_both_teachers_through_vllm(qwen_server, tmp_path):
    from croptune.synthetic.catalog import make_example_catalog

    catalog = make_example_catalog(tmp_path / "catalog", n_items=2, seed=2)
    config = tmp_path / "label.yaml"
    teachers = [
        teacher(qwen_server),
        teacher(qwen_server, name="qwen-attributes", role="attributes", max_tokens=600),
    ]
    config.write_text(yaml.safe_dump({"teachers": teachers}))
    result = label(catalog, config, tmp_path / "run")
    assert result.returncode in (0, 1), result.stderr
    assert "Traceback" not in result.stderr and "HTTP 400" not in result.stderr
    # Every request got an answer (HTTP 200), parsed or recorded as the item's error.
    table = requests_table(tmp_path / "run")
    assert table and all(
        response is not None or status != "ok" for status, response, _ in table.values()
    )


@pytest.mark.ray
def test_label_on_ray_through_vllm_stores_what_a_single_process_run_stores(qwen_server, tmp_path):
    from croptune.synthetic.catalog import make_example_catalog

    catalog = make_example_catalog(tmp_path / "catalog", n_items=3, seed=4)
    config = tmp_path / "label.yaml"
    teachers = [
        teacher(qwen_server),
        teacher(qwen_server, name="qwen-attributes", role="attributes", max_tokens=64),
    ]
    ray = {"num_cpus": 2, "batch_size": 2, "rows_per_shard": 2, "poll_s": 0.5}
    config.write_text(yaml.safe_dump({"teachers": teachers, "ray": ray}))
    single = label(catalog, config, tmp_path / "single")
    since = len(qwen_server.log.read_text(errors="replace"))
    command = [*label_command(catalog, config, tmp_path / "ray"), "--engine", "ray"]
    on_ray = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert single.returncode in (0, 1) and on_ray.returncode == single.returncode, on_ray.stderr
    assert "Traceback" not in on_ray.stderr
    # Greedy decoding, one request at a time: the same answer for the same request, so the
    # Ray run stores the single-process run's rows (noise, but the same noise).
    rows = "cache_key, teacher, model, item_id, image, status, response, error"
    stored = sorted(stored_requests(tmp_path / "ray", rows))
    assert stored == sorted(stored_requests(tmp_path / "single", rows))
    assert len(stored) > 3 and all(row[6] is not None for row in stored)  # every one answered
    assert chat_requests_in_log(qwen_server, since) == len(stored)  # each asked once
