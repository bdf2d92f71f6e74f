"""Every shipped YAML loads into its typed config (torchtune's rule)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from finetune.students import load_preset
from finetune.students.lora import LORA_TARGETS
from finetune.students.presets import list_presets
from finetune.train import load_train_config
from finetune.train.config import VLLM_MAX_LORA_RANKS, lora_target_of
from teacher_labeling.teachers import load_label_config
from toolkit.config import load_stage_config
from toolkit.crops import CropConfig
from toolkit.errors import CroptuneError
from toolkit.schema import load_schema

# The starter configs are package data (toolkit/configs), written out by `croptune init`.
CONFIGS = sorted((Path(__file__).parent.parent / "toolkit" / "configs").glob("*.yaml"))


def test_examples_ship_configs():
    names = {p.name for p in CONFIGS}
    assert {"label.yaml", "label-reference.yaml", "crop.yaml", "train-tiny.yaml"} <= names


def test_starter_configs_are_package_data():
    from toolkit.config.docs import packaged_configs

    # What an installed croptune reads (importlib.resources) is exactly the folder tested here.
    assert sorted(packaged_configs()) == [p.name for p in CONFIGS]
    pyproject = (Path(__file__).parent.parent / "pyproject.toml").read_text()
    assert '"configs/*.yaml"' in pyproject


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_loads(path):
    if path.name.startswith("label"):
        config = load_label_config(path)
        assert config.teachers
        for teacher in config.teachers:
            assert teacher.api_key_env is None or teacher.api_key_env.isupper()
        load_schema(config.schema_)
    elif path.name.startswith("crop"):
        load_stage_config(CropConfig, path, [])
    elif path.name.startswith("train"):
        config = load_train_config(path, [])
        # Written relative, resolved against the config's folder: `croptune init DIR` works.
        assert config.dataset.is_absolute() and config.dataset.is_relative_to(path.parent)
        assert config.output_dir.is_relative_to(path.parent)
        # the largest --max-lora-rank vLLM has
        assert 1 <= config.lora_r <= VLLM_MAX_LORA_RANKS[-1]
        # vLLM-servable default: LoRA on the language model only, for every family.
        assert config.lora_target is None and config.adapt == "language"
        family = load_preset(config.student).family
        assert lora_target_of(config, family) == (LORA_TARGETS[family]["language"].modules, [])
    elif path.name.startswith("endpoint"):
        from teacher_labeling.endpoint import load_endpoint_config

        config = load_endpoint_config(path)
        assert config.api_key_env is None or config.api_key_env.isupper()
    else:
        pytest.fail(f"no loader for shipped config {path.name}")


@pytest.mark.parametrize("name", list_presets())
def test_presets_load(name):
    assert load_preset(name).name == name


@pytest.mark.parametrize(
    ("overrides", "check"),
    [
        # a number
        pytest.param(["margin=0.25"], lambda c: c.margin == 0.25, id="float"),
        # a list value in YAML syntax
        pytest.param(["fill=[0, 0, 0]"], lambda c: c.fill == (0, 0, 0), id="list"),
        # later overrides win
        pytest.param(["min_side=10", "min_side=20"], lambda c: c.min_side == 20, id="last-wins"),
    ],
)
def test_stage_config_overrides(tmp_path, overrides, check):
    path = tmp_path / "crop.yaml"
    path.write_text("margin: 0.1\nmin_side: 32\n")
    assert check(load_stage_config(CropConfig, path, overrides))


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        # unknown key: named, not silently ignored
        pytest.param("", ["margn=0.2"], "margn", id="unknown-key"),
        # wrong type: the field is named
        pytest.param("", ["min_side=big"], "min_side", id="bad-type"),
        # not key=value
        pytest.param("", ["margin"], "key=value", id="not-key-value"),
        # YAML that is a list, not a mapping
        pytest.param("- a\n- b\n", [], "mapping", id="not-a-mapping"),
        # broken YAML
        pytest.param("margin: [0.1\n", [], "not valid YAML", id="broken-yaml"),
    ],
)
def test_stage_config_errors_name_the_problem(tmp_path, text, overrides, message):
    path = tmp_path / "crop.yaml"
    path.write_text(text)
    with pytest.raises(CroptuneError, match=message):
        load_stage_config(CropConfig, path, overrides)


ACCELERATE = sorted((Path(__file__).parent.parent / "examples" / "accelerate").glob("*.yaml"))


@pytest.mark.parametrize("path", ACCELERATE, ids=lambda p: p.name)
def test_accelerate_configs_load(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    assert config.mixed_precision == "bf16"
    assert config.num_processes >= 2  # a multi-GPU example
    assert f"--config_file examples/accelerate/{path.name}" in path.read_text()


def test_accelerate_ships_ddp_fsdp_and_zero3():
    assert {p.name for p in ACCELERATE} == {"ddp.yaml", "fsdp.yaml", "deepspeed_zero3.yaml"}


def test_dump_yaml_writes_shared_values_twice_not_as_anchors():
    from toolkit.config import dump_yaml

    shared = {"f1": 0.5, "fields": ["brand", "gtin"]}
    text = dump_yaml({"metrics": shared, "evaluations": [shared], "name": "Grüße"})
    assert "&" not in text and "*" not in text
    assert "Grüße" in text  # unicode as is
    assert yaml.safe_load(text) == {"metrics": shared, "evaluations": [shared], "name": "Grüße"}
