"""Configs one can discover: `config show`, one override parser, paths relative to the config,
and `croptune init` writing the packaged starter configs and an example catalog."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, Field

from croptune.cli.config import STAGES, stage_configs
from finetune.detector import DetectorConfig
from finetune.train import TrainConfig, load_train_config, save_train_config
from teacher_labeling.endpoint import EndpointConfig
from teacher_labeling.judge import JudgeConfig
from teacher_labeling.teachers import LabelConfig, TeacherConfig, load_label_config
from toolkit.config import load_stage_config
from toolkit.config.docs import config_keys, missing_help, packaged_configs, starter_yaml
from toolkit.crops import CropConfig
from toolkit.dataset import DatasetConfig
from toolkit.errors import CroptuneError

REPO = Path(__file__).resolve().parent.parent
CROPTUNE = str(Path(sys.executable).parent / "croptune")
LABEL_REFERENCE = REPO / "toolkit" / "configs" / "label-reference.yaml"


def croptune(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CROPTUNE, "--no-progress", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


# ------------------------------------------------------------------------- help text

EVERY_CONFIG = sorted(
    {cls for stage in STAGES for _, cls in stage_configs(stage)}, key=lambda c: c.__name__
)


@pytest.mark.parametrize("cls", EVERY_CONFIG, ids=lambda c: c.__name__)
def test_every_config_key_has_help_text(cls):
    keys = config_keys(cls)
    assert keys, cls  # something was walked
    assert missing_help(cls) == []


def test_a_key_without_help_is_found_nested_too():
    class Inner(BaseModel):
        documented: int = Field(1, description="has help")
        bare: int = 2

    class Outer(BaseModel):
        inner: Inner = Field(default_factory=Inner, description="a section")
        entries: list[Inner] = Field(default_factory=list)

    assert missing_help(Outer) == ["inner.bare", "entries", "entries[].bare"]


def test_every_stage_has_a_config():
    assert set(STAGES) == {"label", "crop", "dataset", "train", "detector", "evaluate", "predict"}
    assert all(stage_configs(stage) for stage in STAGES)


# ----------------------------------------------------------------------- config show


@pytest.mark.parametrize(
    ("stage", "lines"),
    [
        # a plain key: type with bounds, default, help on the next line
        ("crop", ["margin  (float, >= 0, <= 2; default 0.1)",
                  "    Margin added around each box, as a fraction of its longer side."]),
        # nested section and list entries, dotted
        ("label", ["fusion.policy  (weighted | union | intersection; default weighted)",
                   "teachers[].max_concurrency  (int, >= 1; default 32)",
                   "prices.<name>.input  (float, >= 0; required)"]),
        # required paths; a name-or-path key
        ("train", ["dataset  (path; required)", "model  (name or path; default null)"]),
        ("dataset", ["image_tokens  (int, >= 1; default 256)"]),
        ("detector", ["model  (name or path; default yolo11n.yaml)"]),
        # two configs: the endpoint YAML and the judge's
        ("evaluate", ["EndpointConfig (teacher_labeling.endpoint)", "JudgeConfig (",
                      "endpoint.model  (str; required)"]),
        ("predict", ["EndpointConfig (", "TeacherConfig (", "coords  ("]),
    ],
)  # fmt: skip
def test_config_show_lists_every_key_with_type_default_and_help(stage, lines):
    result = croptune("config", "show", stage)
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    for line in lines:
        assert any(o.startswith(line) for o in out), (line, result.stdout[:2000])
    # every key of every config of the stage is there
    for _, cls in stage_configs(stage):
        for key in config_keys(cls):
            assert any(o.startswith(f"{key.key}  (") for o in out), key.key


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # a misspelt stage: the closest one named
        (["config", "show", "evalute"], "unknown stage 'evalute'; did you mean 'evaluate'?"),
        # not a stage at all: the stages listed
        (["config", "show", "serve"], "stages: label, crop, dataset, train, detector"),
        # an unknown format
        (["config", "show", "crop", "--format", "json"], "unknown --format 'json'; use text or yaml"),
    ],
)  # fmt: skip
def test_config_show_names_a_bad_argument(args, message):
    result = croptune(*args)
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("cls", "required", "expected"),
    [
        # no required keys: the starter is the defaults
        (CropConfig, [], CropConfig()),
        (DatasetConfig, [], DatasetConfig()),
        (DetectorConfig, [], DetectorConfig()),
        # required keys are commented out; given as overrides the rest is the defaults
        (TrainConfig, ["dataset=/d", "output_dir=/o"], TrainConfig(dataset="/d", output_dir="/o")),
        (EndpointConfig, ["model=m"], EndpointConfig(model="m")),
        # a list entry: its required keys set through an index
        (LabelConfig, ["teachers.0.name=t", "teachers.0.role=both", "teachers.0.kind=reference"],
         LabelConfig(teachers=[TeacherConfig(name="t", role="both", kind="reference")])),
        # the judge fills its endpoint's name and role itself
        (JudgeConfig, ["endpoint.model=gpt-4.1"],
         JudgeConfig(endpoint={"model": "gpt-4.1"})),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else None,
)  # fmt: skip
def test_starter_yaml_loads_back_to_the_defaults(tmp_path, cls, required, expected):
    path = tmp_path / "starter.yaml"
    path.write_text(starter_yaml(cls))
    assert load_stage_config(cls, path, required) == expected
    # every key is written (required ones as `# key:`)
    for key in config_keys(cls):
        last = key.key.rsplit(".", 1)[-1].removeprefix("<name>")
        if last and "<name>" not in key.key:
            assert re.search(rf"^\s*(- |# )?{re.escape(last)}:", path.read_text(), re.M), key.key


def test_a_starter_missing_a_required_key_says_which(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text(starter_yaml(TrainConfig))
    with pytest.raises(
        CroptuneError, match=r"train config .* is not valid: dataset: Field required"
    ):
        load_stage_config(TrainConfig, path, ["output_dir=/o"], stage="train")


def test_config_show_yaml_is_a_file_to_start_from(tmp_path):
    result = croptune("config", "show", "detector", "--format", "yaml")
    assert result.returncode == 0, result.stderr
    (tmp_path / "detector.yaml").write_text(result.stdout)
    assert load_stage_config(DetectorConfig, tmp_path / "detector.yaml", []) == DetectorConfig()
    assert "# Confidence a proposal needs at inference" in result.stdout


# ------------------------------------------------------------------ overrides, one parser


@pytest.mark.parametrize(
    ("cls", "stage", "overrides", "message"),
    [
        # a misspelt key: the closest key named
        (CropConfig, "crop", ["margn=0.2"],
         "unknown crop config key 'margn' in override 'margn=0.2' (did you mean 'margin'?); "
         "`croptune config show crop` lists every key"),
        # a misspelt nested key
        (LabelConfig, "label", ["fusion.polcy=union"],
         "unknown label config key 'fusion.polcy' in override 'fusion.polcy=union' "
         "(did you mean 'fusion.policy'?)"),
        # a nested key written at the top
        (LabelConfig, "label", ["policy=union"], "(did you mean 'fusion.policy'?)"),
        # a key of a list entry
        (LabelConfig, "label", ["teachers.0.modle=x"], "(did you mean 'teachers.0.model'?)"),
        # an index past the list
        (LabelConfig, "label", ["teachers.3.model=x"],
         "override 'teachers.3.model=x': teachers has 1 entry; index them 0..0"),
        # the training config (finetune.train has no parser of its own any more)
        (TrainConfig, "train", ["dataset=d", "output_dir=o", "lora_rank=8"],
         "unknown train config key 'lora_rank' in override 'lora_rank=8' (did you mean 'lora_r'?)"),
        # a dotted key into a plain value
        (TrainConfig, "train", ["lora_alpha.x=1"],
         "override 'lora_alpha.x=1': lora_alpha takes no dotted keys (only sft_args.<key> do)"),
        (DetectorConfig, "detector", ["epochz=3"], "(did you mean 'epochs'?)"),
        (DatasetConfig, "dataset", ["tset_ratio=0.3"], "(did you mean 'test_ratio'?)"),
        # nothing close: no guess, the listing command named
        (CropConfig, "crop", ["zzz=1"],
         "unknown crop config key 'zzz' in override 'zzz=1'; `croptune config show crop`"),
        # a whole list as the value: its entries' keys are checked too
        (LabelConfig, "label", ["teachers=[{name: x, role: boxes, kind: reference, cords: pixels}]"],
         "unknown label config key in override 'teachers=[{name: x, role: boxes, kind: reference, "
         "cords: pixels}]': 'teachers[0].cords' (did you mean 'teachers[0].coords'?)"),
        # a misspelt option is not taken for an override
        (CropConfig, "crop", ["--wrkers"],
         "'--wrkers' is neither an option of this command nor a key=value override"),
    ],
)  # fmt: skip
def test_a_bad_override_is_named_with_the_closest_key(cls, stage, overrides, message):
    data_file = LABEL_REFERENCE if cls is LabelConfig else None
    with pytest.raises(CroptuneError) as caught:
        load_stage_config(cls, data_file, overrides, stage=stage)
    assert message in str(caught.value)


def test_every_unknown_key_of_a_file_is_named_at_once(tmp_path):
    path = tmp_path / "label.yaml"
    path.write_text(
        "teachers:\n  - {name: a, role: both, kind: reference, api_key: X}\n"
        "  - {name: b, role: boxes, modle: m}\nshema: compliance\n"
    )
    with pytest.raises(CroptuneError) as caught:
        load_label_config(path)
    message = str(caught.value)
    assert message.startswith(f"unknown label config keys in {path}: ")
    assert "'teachers[0].api_key' (did you mean 'teachers[0].api_key_env'?)" in message
    assert "'teachers[1].modle' (did you mean 'teachers[1].model'?)" in message
    assert "'shema' (did you mean 'schema'?)" in message


@pytest.mark.parametrize(
    ("overrides", "check"),
    [
        # an entry of a list from the file
        (["teachers.0.max_concurrency=4"], lambda c: c.teachers[0].max_concurrency == 4),
        # a nested section
        (["fusion.policy=union"], lambda c: c.fusion.policy == "union"),
        # --key=value works as key=value
        (["--max_image_pixels=1000"], lambda c: c.max_image_pixels == 1000),
        # a whole list in YAML syntax
        (["teachers=[{name: x, role: boxes, kind: reference}]"],
         lambda c: [t.name for t in c.teachers] == ["x"]),
    ],
)  # fmt: skip
def test_label_takes_overrides_like_every_stage(overrides, check):
    config = load_label_config(LABEL_REFERENCE, overrides)
    assert check(config)
    assert config.schema_ == "compliance"  # the rest of the file stays


@pytest.mark.parametrize(
    ("words", "stage", "suggested"),
    [
        (["label", "cat.jsonl", "--config", str(LABEL_REFERENCE), "--run", "r"], "label",
         "schema"),
        (["relabel", "--run", "r", "--config", str(LABEL_REFERENCE)], "label", "schema"),
        (["crop", "--run", "r"], "crop", "fill"),
        (["dataset", "build", "--run", "r", "--out", "d"], "dataset", "seed"),
        (["train", "dataset=d", "output_dir=o"], "train", "seed"),
        (["detector", "train", "--run", "r", "--out", "o"], "detector", "seed"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)  # fmt: skip
def test_every_stage_command_names_a_misspelt_key_and_exits_1(tmp_path, words, stage, suggested):
    typo = {"seed": "seeed", "schema": "shema", "fill": "fil"}[suggested]
    result = croptune(*words, f"{typo}=1", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(
        f"croptune: unknown {stage} config key '{typo}' in override '{typo}=1' "
        f"(did you mean '{suggested}'?); `croptune config show {stage}` lists every key"
    )
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "r").exists()  # nothing was started


@pytest.mark.parametrize(
    ("words", "stage"),
    [(["label"], "label"), (["relabel"], "label"), (["crop"], "crop"),
     (["dataset", "build"], "dataset"), (["train"], "train"), (["detector", "train"], "detector")],
    ids=lambda v: v if isinstance(v, str) else None,
)  # fmt: skip
def test_help_says_that_overrides_exist(words, stage):
    result = croptune(*words, "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "KEY=VALUE arguments override the" in text
    assert f"croptune config show {stage}" in text


@pytest.fixture(scope="module")
def labeled_demo(tmp_path_factory):
    """`croptune init` + label + crop, run from another folder with a config in a subfolder
    whose schema path is relative to it."""
    root = tmp_path_factory.mktemp("demo-run")
    assert croptune("init", "demo", "--items", "6", cwd=root).returncode == 0
    (root / "demo" / "schemas").mkdir()
    (root / "demo" / "schemas" / "mine.yaml").write_text(
        (REPO / "toolkit" / "schemas" / "compliance.yaml").read_text()
    )
    (root / "demo" / "cfg").mkdir()
    (root / "demo" / "cfg" / "label.yaml").write_text(
        "teachers: [{name: reference, role: both, kind: reference}]\nschema: ../schemas/mine.yaml\n"
    )
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    labeled = croptune("label", "../demo/catalog/catalog.jsonl", "--config", "../demo/cfg/label.yaml",
                       "--run", "../demo/runs/catalog", cwd=elsewhere)  # fmt: skip
    assert labeled.returncode == 0, labeled.stderr
    cropped = croptune("crop", "--run", "../demo/runs/catalog", "--config", "../demo/crop.yaml",
                       cwd=elsewhere)  # fmt: skip
    assert cropped.returncode == 0, cropped.stderr
    return root


def test_a_config_in_a_subfolder_works_from_another_folder_and_is_saved_absolute(labeled_demo):
    saved = yaml.safe_load((labeled_demo / "demo" / "runs" / "catalog" / "label_config.yaml")
                           .read_text())  # fmt: skip
    assert saved["schema"] == str(labeled_demo / "demo" / "schemas" / "mine.yaml")


@pytest.mark.parametrize(
    ("config_text", "args", "strategy"),
    [
        # the file's strategy holds: --strategy's default no longer replaces it
        ("strategy: crops\n", [], "crops"),
        # --strategy, given, wins over the file
        ("strategy: crops\n", ["--strategy", "originals"], "originals"),
        # an override wins over both
        ("strategy: crops\n", ["--strategy", "originals", "strategy=originals+crops"],
         "originals+crops"),
        # neither: the default
        ("", [], "originals+crops"),
    ],
)  # fmt: skip
def test_dataset_build_strategy_comes_from_the_file_unless_given(
    labeled_demo, tmp_path, config_text, args, strategy
):
    (tmp_path / "dataset.yaml").write_text(config_text + "image_tokens: 16\n")
    result = croptune("dataset", "build", "--run", str(labeled_demo / "demo" / "runs" / "catalog"),
                      "--out", str(tmp_path / "ds"), "--config", str(tmp_path / "dataset.yaml"),
                      *args, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    saved = yaml.safe_load((tmp_path / "ds" / "dataset_config.yaml").read_text())
    assert (saved["strategy"], saved["image_tokens"]) == (strategy, 16)


# ----------------------------------------------------- paths relative to the config file


def _tree(root: Path) -> None:
    (root / "cfg" / "models" / "base").mkdir(parents=True)
    (root / "cfg" / "weights" / "qwen").mkdir(parents=True)
    (root / "cfg" / "arch.yaml").write_text("nc: 1\n")
    (root / "elsewhere").mkdir()


@pytest.mark.parametrize(
    ("cls", "text", "overrides", "read", "expected"),
    [
        # plain Path fields, also leaving the folder
        (TrainConfig, "dataset: data/ds\noutput_dir: ../out\n", [],
         lambda c: (c.dataset, c.output_dir), ("{cfg}/data/ds", "{root}/out")),
        # an override is a command-line path: relative to the current directory
        (TrainConfig, "dataset: data/ds\noutput_dir: out\n", ["dataset=mine/ds"],
         lambda c: (c.dataset, c.output_dir), ("{cwd}/mine/ds", "{cfg}/out")),
        # absolute and ~ paths stay where they point
        (TrainConfig, "dataset: /abs/ds\noutput_dir: ~/runs\n", [],
         lambda c: (c.dataset, c.output_dir), ("/abs/ds", "{home}/runs")),
        # bool | Path: true stays true, a folder is resolved
        (TrainConfig, "dataset: d\noutput_dir: o\nresume_from_checkpoint: true\n", [],
         lambda c: c.resume_from_checkpoint, True),
        (TrainConfig, "dataset: d\noutput_dir: o\nresume_from_checkpoint: o/checkpoint-5\n", [],
         lambda c: c.resume_from_checkpoint, "{cfg}/o/checkpoint-5"),
        # a base model: a folder next to the config is resolved, a hub id is not
        (TrainConfig, "dataset: d\noutput_dir: o\nmodel: models/base\n", [],
         lambda c: c.model, "{cfg}/models/base"),
        (TrainConfig, "dataset: d\noutput_dir: o\nmodel: google/gemma-3-4b-it\n", [],
         lambda c: c.model, "google/gemma-3-4b-it"),
        # a schema file (by its suffix, even before it exists); a built-in name stays
        (LabelConfig, "teachers: [{name: r, role: both, kind: reference}]\nschema: s.yaml\n", [],
         lambda c: c.schema_, "{cfg}/s.yaml"),
        (LabelConfig, "teachers: [{name: r, role: both, kind: reference}]\n", [],
         lambda c: c.schema_, "compliance"),
        # a local teacher's model folder; an API teacher's model is a name sent to the server
        (LabelConfig, "teachers: [{name: l, role: boxes, kind: local, model: weights/qwen},\n"
                      "  {name: o, role: attributes, model: weights/qwen}]\n", [],
         lambda c: [t.model for t in c.teachers], ["{cfg}/weights/qwen", "weights/qwen"]),
        # detector: .pt weights are a path; an architecture name stays unless the file is there
        (DetectorConfig, "model: w/best.pt\n", [], lambda c: c.model, "{cfg}/w/best.pt"),
        (DetectorConfig, "model: yolo11n.yaml\n", [], lambda c: c.model, "yolo11n.yaml"),
        (DetectorConfig, "model: arch.yaml\n", [], lambda c: c.model, "{cfg}/arch.yaml"),
    ],
)  # fmt: skip
def test_relative_paths_resolve_against_the_config_folder(
    tmp_path, monkeypatch, cls, text, overrides, read, expected
):
    _tree(tmp_path)
    (tmp_path / "cfg" / "config.yaml").write_text(text)
    monkeypatch.chdir(tmp_path / "elsewhere")  # not the config's folder
    config = load_stage_config(cls, Path("../cfg/config.yaml"), overrides)
    places = {"cfg": tmp_path / "cfg", "root": tmp_path, "cwd": tmp_path / "elsewhere",
              "home": Path.home()}  # fmt: skip

    def fill(value):
        if isinstance(value, str):
            return value.format(**places) if "{" in value else value
        if isinstance(value, (list, tuple)):
            return type(value)(fill(v) for v in value)
        return value

    got = read(config)
    got = type(got)(str(v) for v in got) if isinstance(got, (list, tuple)) else got
    assert (str(got) if isinstance(got, Path) else got) == fill(expected)


def test_saved_configs_hold_absolute_paths(tmp_path, monkeypatch):
    from croptune.pipeline import save_resolved_config

    monkeypatch.chdir(tmp_path)
    # Built in code with relative paths (as the demo does): saved absolute.
    config = TrainConfig(dataset="runs/ds", output_dir="runs/train", model="google/gemma-3-4b-it")
    save_train_config(config, tmp_path / "train_config.yaml")
    saved = yaml.safe_load((tmp_path / "train_config.yaml").read_text())
    assert saved["dataset"] == str(tmp_path / "runs" / "ds")
    assert saved["output_dir"] == str(tmp_path / "runs" / "train")
    assert saved["model"] == "google/gemma-3-4b-it"  # a hub id is no path
    # Read back from another folder: the same places.
    monkeypatch.chdir(tmp_path.parent)
    again = load_train_config(tmp_path / "train_config.yaml", [])
    assert again.dataset == tmp_path / "runs" / "ds"

    label = LabelConfig(teachers=[TeacherConfig(name="r", role="both", kind="reference")],
                        schema="schemas/mine.yaml")  # fmt: skip
    monkeypatch.chdir(tmp_path)
    save_resolved_config(label, tmp_path / "label_config.yaml")
    saved = yaml.safe_load((tmp_path / "label_config.yaml").read_text())
    assert saved["schema"] == str(tmp_path / "schemas" / "mine.yaml")


# ------------------------------------------------------------------------ croptune init


def test_init_writes_starter_configs_and_an_example_catalog(tmp_path):
    result = croptune("init", "demo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    demo = tmp_path / "demo"
    # every packaged starter config, plus the generated dataset and detector ones
    names = {p.name for p in demo.glob("*.yaml")}
    assert names == set(packaged_configs()) | {"dataset.yaml", "detector.yaml"}
    for name, text in packaged_configs().items():
        assert (demo / name).read_text() == text
    lines = (demo / "catalog" / "catalog.jsonl").read_text().splitlines()
    assert len(lines) == 12
    photos = list((demo / "catalog").rglob("*.jpg"))
    assert photos and f"12 items, {len(photos)} photos" in result.stdout
    # what it wrote and what to run next
    assert result.stdout.startswith(f"wrote {len(names) + 1 + len(photos)} files to demo:")
    assert "croptune catalog validate demo/catalog/catalog.jsonl" in result.stdout
    assert "croptune train --config demo/train-tiny.yaml" in result.stdout
    # the written catalog validates; the generated configs load
    validated = croptune("catalog", "validate", "demo/catalog/catalog.jsonl", cwd=tmp_path)
    assert validated.returncode == 0, validated.stdout + validated.stderr
    assert load_stage_config(DatasetConfig, demo / "dataset.yaml", []) == DatasetConfig()
    assert load_stage_config(DetectorConfig, demo / "detector.yaml", []) == DetectorConfig()
    # the tiny training config points into the folder it was written to
    train = load_train_config(demo / "train-tiny.yaml", [])
    assert train.dataset == demo / "runs" / "catalog" / "dataset"


@pytest.mark.parametrize(
    ("existing", "force", "code", "message"),
    [
        # an edited config is never overwritten silently
        ({"crop.yaml": "margin: 0.5\n"}, False, 1,
         "demo already holds 1 of the files croptune init writes (crop.yaml); nothing was "
         "written. Pass --force to overwrite them"),
        # a photo of the example catalog counts as well
        ({"catalog/img/EX0001_0.jpg": "x"}, False, 1, "(catalog/img/EX0001_0.jpg)"),
        # --force replaces and says so
        ({"crop.yaml": "margin: 0.5\n"}, True, 0, ", 1 of them replaced (--force)"),
        # other files in the folder are no obstacle and stay
        ({"notes.txt": "mine"}, False, 0, "wrote "),
    ],
)  # fmt: skip
def test_init_refuses_to_overwrite_without_force(tmp_path, existing, force, code, message):
    for rel, text in existing.items():
        (tmp_path / "demo" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "demo" / rel).write_text(text)
    result = croptune("init", "demo", *(["--force"] if force else []), cwd=tmp_path)
    assert result.returncode == code, result.stderr
    assert message in (result.stdout + result.stderr)
    written = {p.relative_to(tmp_path / "demo").as_posix() for p in (tmp_path / "demo").rglob("*")
               if p.is_file()}  # fmt: skip
    if code:
        assert written == set(existing)  # nothing else was written
        for rel, text in existing.items():
            assert (tmp_path / "demo" / rel).read_text() == text
    else:
        assert "crop.yaml" in written and "catalog/catalog.jsonl" in written
        assert (tmp_path / "demo" / "crop.yaml").read_text() == packaged_configs()["crop.yaml"]
        if "notes.txt" in existing:
            assert (tmp_path / "demo" / "notes.txt").read_text() == "mine"
