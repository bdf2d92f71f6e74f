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


@pytest.fixture(scope="session")
def tiny_student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real-architecture Gemma 3 student built offline once per test session."""
    from finetune.students import build_tiny_gemma3

    return build_tiny_gemma3(tmp_path_factory.mktemp("tiny-gemma3"), seed=0)
