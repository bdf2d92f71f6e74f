"""A wheel built from the repository installs into a fresh venv and works outside the repo.

The installed croptune (not the editable source) writes its starter configs and example
catalog with `croptune init`, validates that catalog, and loads every starter config: what
package data the wheel lacks fails here. Offline: the new venv sees this venv's packages
through a .pth file, and the wheel is installed with --no-deps --no-index.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from importlib.metadata import version as installed_version
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _sources() -> list[str]:
    """What setuptools builds the wheel from: pyproject.toml's packages (its one list)."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = project["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = sorted({pattern.split("*")[0].split(".")[0] for pattern in patterns})
    return ["pyproject.toml", "README.md", *packages]


SOURCES = _sources()

CHECK = """
import sys
from pathlib import Path

import croptune.cli
import toolkit
from toolkit.config import load_stage_config
from toolkit.config.docs import packaged_configs

venv = Path(sys.argv[1]).resolve()
assert Path(toolkit.__file__).resolve().is_relative_to(venv), toolkit.__file__
assert Path(croptune.cli.__file__).resolve().is_relative_to(venv), croptune.cli.__file__
from finetune.detector import DetectorConfig
from finetune.train import load_train_config
from teacher_labeling.endpoint import load_endpoint_config
from teacher_labeling.teachers import load_label_config
from toolkit.crops import CropConfig
from toolkit.dataset import DatasetConfig

demo = Path("demo")
assert sorted(packaged_configs()) == sorted(
    p.name for p in demo.glob("*.yaml") if p.name not in ("dataset.yaml", "detector.yaml")
)
loaders = {
    "label": load_label_config,
    "crop": lambda p: load_stage_config(CropConfig, p, []),
    "dataset": lambda p: load_stage_config(DatasetConfig, p, []),
    "detector": lambda p: load_stage_config(DetectorConfig, p, []),
    "train": lambda p: load_train_config(p, []),
    "endpoint": load_endpoint_config,
}
for path in sorted(demo.glob("*.yaml")):
    stage = path.name.split("-")[0].split(".")[0]
    loaders[stage](path)
    print("loaded", path.name)
"""


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing from the repo
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.slow
def test_the_wheel_installs_and_runs_init_and_validate_outside_the_repo(tmp_path):
    source = tmp_path / "source"  # a copy, so no build/ or egg-info lands in the checkout
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(
                REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    built = _run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps",
                  "--no-build-isolation", "-w", str(tmp_path / "dist")], cwd=tmp_path)  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("croptune-*.whl")

    venv = tmp_path / "venv"
    made = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                   cwd=tmp_path).stdout.strip()  # fmt: skip
    # This venv's packages (torch, pydantic, pip, ...) resolve the wheel's dependencies.
    Path(purelib, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index",
                      str(wheel)], cwd=tmp_path)  # fmt: skip
    assert installed.returncode == 0, installed.stderr

    work = tmp_path / "work"  # outside the repository
    work.mkdir()
    croptune = str(venv / "bin" / "croptune")
    init = _run([croptune, "--no-progress", "init", "demo"], cwd=work)
    assert init.returncode == 0, init.stderr
    assert "croptune catalog validate demo/catalog/catalog.jsonl" in init.stdout
    validate = _run([croptune, "--no-progress", "catalog", "validate",
                     "demo/catalog/catalog.jsonl"], cwd=work)  # fmt: skip
    assert validate.returncode == 0, validate.stdout + validate.stderr
    assert "demo/catalog/catalog.jsonl: 12 items" in validate.stdout

    checked = _run([str(python), "-c", CHECK, str(venv)], cwd=work)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.count("loaded ") == len(list((work / "demo").glob("*.yaml")))
    version = _run([croptune, "--version"], cwd=work)
    # The wheel's metadata: the version this checkout's pyproject.toml gives.
    assert version.stdout.strip() == f"croptune {installed_version('croptune')}"
