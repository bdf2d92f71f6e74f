"""The command line: every DESIGN command is there, errors are one paragraph, no traceback."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

CROPTUNE = str(Path(sys.executable).parent / "croptune")

# DESIGN's CLI, as (words, is it built in this version).
COMMANDS = [
    (["demo"], True),
    (["catalog", "validate"], True),
    (["label"], True),
    (["crop"], True),
    (["relabel"], True),
    (["labels", "export"], True),
    (["report"], True),
    (["dataset", "build"], True),
    (["train"], True),
    (["evaluate"], True),
    (["export"], True),
    (["detector", "train"], True),
    (["predict"], True),
]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([CROPTUNE, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_help_lists_every_command():
    result = run("--help")
    assert result.returncode == 0
    for words, _ in COMMANDS:
        assert re.search(rf"^\s+{words[0]}\s", result.stdout, re.MULTILINE), words


@pytest.mark.parametrize("words", [w for w, _ in COMMANDS], ids=" ".join)
def test_every_command_has_help(words):
    result = run(*words, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # a run folder that does not exist
        pytest.param(["crop", "--run", "no-such-run"], "not a croptune run", id="crop-missing-run"),
        # a label config that does not exist
        pytest.param(
            ["label", "cat.jsonl", "--config", "missing.yaml", "--run", "r"],
            "does not exist",
            id="label-missing-config",
        ),
        # a crop override with a bad value is named
        pytest.param(["crop", "--run", "r", "margin=lots"], "margin", id="crop-bad-override"),
        # a train override naming an unknown key
        pytest.param(["train", "no_such_key=1"], "no_such_key", id="train-unknown-key"),
        # a bundle folder that is not a bundle
        pytest.param(
            ["predict", "cat.jsonl", "--bundle", "b", "--out", "o.jsonl"],
            "not a croptune bundle",
            id="predict-missing-bundle",
        ),
    ],
)
def test_user_errors_are_one_paragraph_without_traceback(tmp_path, args, message):
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("croptune: ")


def test_verbose_shows_the_traceback(tmp_path):
    result = run("--verbose", "crop", "--run", "no-such-run", cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" in result.stderr


def test_version_prints_the_installed_version():
    from importlib.metadata import version

    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"croptune {version('croptune')}"


def test_help_is_fast_because_heavy_libraries_load_lazily():
    code = (
        "import sys, croptune.cli, teacher_labeling.teachers, finetune.train, finetune.export.writer;"
        "heavy = {'torch', 'transformers', 'trl', 'peft', 'ultralytics', 'datasets'} & set(sys.modules);"
        "print(sorted(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr
