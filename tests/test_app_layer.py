"""The app layer croptune/: what its pieces share stays one piece and keeps each caller's words.

- label and its --dry-run ingest through one path (pipeline._ingested), so the estimate
  prices exactly what the run then sends; relabel and its --dry-run share one guard;
- `config show` reads a typed registry (cli.config.STAGE_CONFIGS) of the stage configs;
- options several commands declare alike come from one factory (cli.common) and keep the
  help text each command had.
"""

from __future__ import annotations

from typing import Any

import pytest
import typer
from pydantic import BaseModel

from croptune.cli import app
from croptune.cli.config import STAGE_CONFIGS, STAGES, stage_configs
from croptune.pipeline import estimate_label, estimate_relabel, run_label, run_relabel
from croptune.synthetic.catalog import make_example_catalog
from teacher_labeling.teachers import LabelConfig, TeacherConfig
from toolkit.errors import CroptuneError
from toolkit.store import RunStore

REFERENCE = TeacherConfig(name="reference", role="both", kind="reference", coords="pixels")


def test_the_dry_run_prices_exactly_what_the_run_then_sends(tmp_path):
    catalog = make_example_catalog(tmp_path / "catalog", n_items=4, seed=1)
    config = LabelConfig(teachers=[REFERENCE])
    run = tmp_path / "run"

    ingest, pending = estimate_label(catalog, config, run)
    assert ingest.stored == 4 and pending.cached == 0
    with RunStore(run, create=False) as store:  # the estimate set the run up as label does
        assert store.get_meta("schema_json") and store.get_meta("catalog")
    assert (run / "label_config.yaml").exists()

    ingest, result = run_label(catalog, config, run)
    assert (ingest.stored, ingest.unchanged) == (0, 4)
    assert result.asked == sum(pending.per_teacher.values()) > 0

    _, after = estimate_label(catalog, config, run)
    assert after.per_teacher == {} and after.cached == result.asked


def test_relabel_and_its_dry_run_refuse_the_same_runs(tmp_path):
    catalog = make_example_catalog(tmp_path / "catalog", n_items=4, seed=1)
    run = tmp_path / "run"
    run_label(catalog, LabelConfig(teachers=[REFERENCE]), run)
    for relabel in (lambda c: run_relabel(run, c), lambda c: estimate_relabel(run, c)):
        with pytest.raises(CroptuneError, match="has no crops yet"):
            relabel(LabelConfig(teachers=[REFERENCE]))
        boxes_only = REFERENCE.model_copy(update={"role": "boxes"})
        with pytest.raises(CroptuneError, match="needs an attributes teacher"):
            relabel(LabelConfig(teachers=[boxes_only]))


def test_the_stage_config_registry_names_pydantic_classes_with_a_summary_line():
    for stage, configs in STAGE_CONFIGS.items():
        for config in configs:
            cls = config.load()
            assert issubclass(cls, BaseModel), (stage, cls)
            assert cls.__doc__ and cls.__doc__.splitlines()[0], cls
    # the single-config names are the configs of the stage that reads two
    assert STAGE_CONFIGS["endpoint"] == STAGE_CONFIGS["evaluate"][:1]
    assert STAGE_CONFIGS["judge"] == STAGE_CONFIGS["evaluate"][1:]
    assert STAGE_CONFIGS["teacher"] == STAGE_CONFIGS["predict"][1:]
    assert set(STAGES) < set(STAGE_CONFIGS)
    names = {stage: [cls.__name__ for _, cls in stage_configs(stage)] for stage in STAGES}
    assert names["label"] == ["LabelConfig"] and names["train"] == ["TrainConfig"]
    assert names["predict"] == ["EndpointConfig", "TeacherConfig"]


def _command(*path: str) -> Any:
    command: Any = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return command


def _option_help(*path: str) -> dict[str, str | None]:
    return {p.opts[0]: getattr(p, "help", None) for p in _command(*path).params if p.opts}


SHARED_OPTIONS = {
    ("catalog", "validate"): {
        "--allow-outside-paths": "Accept image paths that leave the catalog folder.",
        "--column": "Read croptune's FIELD from the catalog's COLUMN, e.g. --column "
        "item_id=id (repeatable); the label config's columns.",
    },
    ("predict",): {
        "--allow-outside-paths": "Accept image paths that leave the catalog folder.",
        "--column": "Read croptune's FIELD from the catalog's COLUMN, e.g. --column "
        "item_id=id (repeatable), as on `croptune catalog validate`.",
        "--limit": "Only the first N items.",
        "--batch-size": "Items per generate call.",
        "--max-new-tokens": "Answer length limit (default: the bundle's).",
    },
    ("evaluate",): {
        "--limit": "Only the first N examples.",
        "--batch-size": "Examples per generate call (in-process models).",
        "--max-new-tokens": "Answer length limit, for every model.",
    },
    ("label",): {
        "--limit": "Only the first N items.",
        "--dry-run": "Estimate requests, tokens and cost; send nothing.",
    },
    ("relabel",): {"--dry-run": "Estimate requests, tokens and cost; send nothing."},
}


@pytest.mark.parametrize("path", list(SHARED_OPTIONS), ids=" ".join)
def test_shared_options_keep_each_commands_help(path):
    helps = _option_help(*path)
    for flag, text in SHARED_OPTIONS[path].items():
        assert helps[flag] == text, (path, flag)


def test_shared_options_keep_their_defaults():
    defaults = {
        name: {p.opts[0]: p.default for p in _command(name).params if p.opts}
        for name in ("evaluate", "predict")
    }
    assert defaults["evaluate"]["--max-new-tokens"] == 256
    assert defaults["predict"]["--max-new-tokens"] is None
    assert defaults["evaluate"]["--batch-size"] == defaults["predict"]["--batch-size"] == 4
