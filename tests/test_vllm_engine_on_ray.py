"""`label --engine ray` with the vllm engine, for real: Ray Data's vLLM engine processor runs
the tiny Qwen2.5-VL (vLLM's CPU build) on a local Ray whose workers use .venv-vllm-ray
(RayConfig.python, Ray's runtime_env py_executable; built by `make test`).

Random weights: the answers are noise, so what is tested is the path (requests keyed by
the driver, images prepared as Ray tasks, the engine's answers parsed and stored, nothing
asked twice), never what the boxes say.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.label_runs import label_command, stored_requests

pytestmark = [pytest.mark.vllm, pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).parent.parent
WORKER_PYTHON = REPO / ".venv-vllm-ray" / "bin" / "python"


@pytest.fixture
def worker_python() -> Path:
    """The workers' Python (vLLM + Ray + croptune); in CI a missing one is an error."""
    if not (WORKER_PYTHON.parent.parent / ".installed").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{WORKER_PYTHON} is missing: `make test` builds it (make vllm-ray-env)")
        pytest.skip(f"{WORKER_PYTHON} is missing: run `make vllm-ray-env`")
    return WORKER_PYTHON


def test_vllm_engine_replica_on_ray_answers_every_request_once(worker_python, tmp_path):
    from croptune.synthetic.catalog import make_example_catalog
    from finetune.students import resolve_student
    from finetune.students.tiny import TINY_QWEN_MODEL

    catalog = make_example_catalog(tmp_path / "catalog", n_items=2, seed=2)
    teacher = {
        "name": "qwen",
        "role": "boxes",
        "model": "tiny-qwen",
        "model_source": resolve_student(TINY_QWEN_MODEL),
        "coords": "qwen2.5-vl",
        "min_pixels": 56 * 56,  # the tiny processor's limits (its preprocessor_config.json)
        "max_pixels": 112 * 112,
        "max_tokens": 48,
        "engine_kwargs": {
            "enforce_eager": True,
            "dtype": "float32",
            "max_model_len": 4096,
            "limit_mm_per_prompt": {"image": 8},
        },
    }
    ray = {
        "engines": {"qwen": "vllm"},
        "gpus_per_replica": 0,  # the CPU build
        "python": str(worker_python),
        "num_cpus": 2,
        "batch_size": 2,
        "rows_per_shard": 2,
        "poll_s": 0.5,
    }
    config = tmp_path / "label.yaml"
    config.write_text(yaml.safe_dump({"teachers": [teacher], "ray": ray}))
    ray_logs = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    environment = {
        **os.environ,
        # Inherited by the local Ray and so by the engine's actor: a 2-core machine's vLLM.
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_CACHE_ROOT": str(tmp_path / "vllm-cache"),
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "RAY_TMPDIR": str(ray_logs),
    }
    command = [*label_command(catalog, config, tmp_path / "run"), "--engine", "ray"]
    try:
        result = subprocess.run(
            command, env=environment, capture_output=True, text=True, timeout=900
        )
    finally:
        shutil.rmtree(ray_logs, ignore_errors=True)

    # 1: some noise did not parse (recorded as the photos' errors), as in any run.
    assert result.returncode in (0, 1), result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    rows = stored_requests(tmp_path / "run", "status, response")
    photos = sum(len(json.loads(line)["images"]) for line in catalog.read_text().splitlines())
    assert len(rows) == photos  # one boxes question per photo ...
    assert all(response for _, response in rows)  # ... each answered by the engine ...
    sent = re.search(r"requests sent\s*\S?\s*(\d+)", result.stdout)
    assert sent is not None and int(sent.group(1)) == photos, result.stdout  # ... once
