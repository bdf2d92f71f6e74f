"""Shared test set-up: offline, no writes to the home folder, shared tiny models."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Before any heavy import: nothing may reach a hub or write to the home folder.
_SANDBOX = Path(tempfile.mkdtemp(prefix="croptune-tests-"))
for _name, _value in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HOME": str(_SANDBOX / "hf"),
    "MPLCONFIGDIR": str(_SANDBOX / "mpl"),
    "YOLO_CONFIG_DIR": str(_SANDBOX / "yolo"),
    "YOLO_OFFLINE": "1",
    "YOLO_AUTOINSTALL": "0",
    "CROPTUNE_CACHE": str(_SANDBOX / "croptune-cache"),
    "WANDB_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ[_name] = _value


def _restoring_environment():
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)


# Each test, and each test module (its module-scoped fixtures are set up before any
# function-scoped one), starts with the same environment: an in-process `croptune` command
# sets variables (toolkit.noise) that a later test's subprocess would otherwise inherit.
_module_environment_restored = pytest.fixture(scope="module", autouse=True)(_restoring_environment)
_environment_restored = pytest.fixture(autouse=True)(_restoring_environment)


@pytest.fixture(scope="session")
def tiny_student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real-architecture Gemma 3 student built offline once per test session."""
    from finetune.students.tiny_gemma3 import build_tiny_gemma3

    return build_tiny_gemma3(tmp_path_factory.mktemp("tiny-gemma3"), seed=0)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`vllm` tests skip only where .venv-vllm cannot exist; in CI a missing one is an error."""
    from tests.vllm_server import vllm_executable, vllm_missing, why_no_vllm

    if vllm_executable() is not None:
        return
    reason = why_no_vllm()
    if reason is None and os.environ.get("CI"):
        return  # the `vllm_session` fixture fails these tests: CI must have built it
    for item in items:
        if "vllm" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason or vllm_missing()))


@pytest.fixture(scope="session")
def vllm_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder for vLLM servers' logs, caches and temporary files (fails if vLLM is missing)."""
    from tests.vllm_server import vllm_executable, vllm_missing

    if vllm_executable() is None:
        pytest.fail(vllm_missing())
    return tmp_path_factory.mktemp("vllm")
