"""`croptune config show` and `croptune init`: the keys of each stage's config, and the
starter configs with an example catalog."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from toolkit.errors import CroptuneError

if TYPE_CHECKING:
    from collections.abc import Callable

    from pydantic import BaseModel


@dataclass(frozen=True)
class StageConfig:
    """One config a stage reads: what reads it, and its class (imported when asked for)."""

    reader: str
    load: Callable[[], type[BaseModel]]


# The loaders import their class when `config show` asks, so `croptune --help` stays fast.


def _label_config() -> type[BaseModel]:
    from teacher_labeling.teachers import LabelConfig

    return LabelConfig


def _crop_config() -> type[BaseModel]:
    from toolkit.crops import CropConfig

    return CropConfig


def _dataset_config() -> type[BaseModel]:
    from toolkit.dataset import DatasetConfig

    return DatasetConfig


def _train_config() -> type[BaseModel]:
    from finetune.train import TrainConfig

    return TrainConfig


def _detector_config() -> type[BaseModel]:
    from finetune.detector import DetectorConfig

    return DetectorConfig


def _endpoint_config() -> type[BaseModel]:
    from teacher_labeling.endpoint import EndpointConfig

    return EndpointConfig


def _judge_config() -> type[BaseModel]:
    from teacher_labeling.judge import JudgeConfig

    return JudgeConfig


def _teacher_config() -> type[BaseModel]:
    from teacher_labeling.teachers import TeacherConfig

    return TeacherConfig


_ENDPOINT_OF_EVALUATE = StageConfig(
    "an endpoint YAML: `croptune evaluate --model FILE.yaml`", _endpoint_config
)
_JUDGE = StageConfig("--judge of `croptune evaluate`", _judge_config)
_TEACHER = StageConfig(
    "--teacher-config of `croptune predict` (one teacher, or a label config with one box teacher)",
    _teacher_config,
)

# STAGE -> the configs it reads. `endpoint`, `judge` and `teacher` name one config each, for
# `--format yaml` of a stage that reads two.
STAGE_CONFIGS: dict[str, list[StageConfig]] = {
    "label": [StageConfig("--config of `croptune label` and `croptune relabel`", _label_config)],
    "crop": [StageConfig("--config of `croptune crop`", _crop_config)],
    "dataset": [StageConfig("--config of `croptune dataset build`", _dataset_config)],
    "train": [StageConfig("--config of `croptune train`", _train_config)],
    "detector": [StageConfig("--config of `croptune detector train`", _detector_config)],
    "evaluate": [_ENDPOINT_OF_EVALUATE, _JUDGE],
    "predict": [
        StageConfig("an endpoint YAML: `croptune predict --endpoint FILE.yaml`", _endpoint_config),
        _TEACHER,
    ],
    "endpoint": [_ENDPOINT_OF_EVALUATE],
    "judge": [_JUDGE],
    "teacher": [_TEACHER],
}
STAGES = ("label", "crop", "dataset", "train", "detector", "evaluate", "predict")


def stage_configs(stage: str) -> list[tuple[str, type[BaseModel]]]:
    """(what reads it, config class) of each config of a stage; a misspelt stage is named."""
    import difflib

    if stage not in STAGE_CONFIGS:
        close = difflib.get_close_matches(stage, list(STAGE_CONFIGS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise CroptuneError(
            f"unknown stage {stage!r}{hint} (stages: {', '.join(STAGES)}; also endpoint, "
            "judge, teacher)"
        )
    return [(config.reader, config.load()) for config in STAGE_CONFIGS[stage]]


def show(
    stage: str = typer.Argument(
        ...,
        metavar="STAGE",
        help="label | crop | dataset | train | detector | evaluate | predict (or endpoint, "
        "judge, teacher: one config of evaluate/predict).",
    ),
    format: str = typer.Option(
        "text",
        "--format",
        help="text: every key (nested ones dotted) with its type, default and help; yaml: a "
        "commented starter YAML holding every key at its default.",
    ),
) -> None:
    """Every key of a stage's config with its type, default and help text."""
    from toolkit.config.docs import describe_config, starter_yaml

    if format not in ("text", "yaml"):
        raise CroptuneError(f"unknown --format {format!r}; use text or yaml")
    configs = stage_configs(stage)
    blocks = []
    for reader, cls in configs:
        title = f"{cls.__name__} ({cls.__module__}): {reader}"
        if format == "yaml":
            blocks.append(f"# {title}\n# {_doc_line(cls, title)}\n{starter_yaml(cls)}")
        else:
            blocks.append(f"{title}\n{_doc_line(cls, title)}\n\n{describe_config(cls)}\n")
    typer.echo(("---\n" if format == "yaml" else "\n").join(blocks), nl=False)


def _doc_line(cls: type[BaseModel], heading: str) -> str:
    """The first line of a config class's docstring, which heads what `heading` names."""
    if not cls.__doc__:
        raise TypeError(f"{cls.__name__} has no docstring to head {heading} with")
    return cls.__doc__.splitlines()[0]


def _init_files(items: int, seed: int) -> dict[Path, bytes]:
    """What `croptune init` writes: relative path -> content."""
    import tempfile

    from croptune.synthetic.catalog import make_example_catalog
    from finetune.detector import DetectorConfig
    from toolkit.config.docs import packaged_configs, starter_yaml
    from toolkit.dataset import DatasetConfig

    files = {Path(name): text.encode() for name, text in packaged_configs().items()}
    generated: dict[str, tuple[type[BaseModel], str, str]] = {
        "dataset.yaml": (DatasetConfig, "dataset build --run RUN --out DATASET", "dataset"),
        "detector.yaml": (DetectorConfig, "detector train --run RUN --out DETECTOR", "detector"),
    }
    for name, (cls, command, stage) in generated.items():
        header = (
            f"# {_doc_line(cls, name)} Every key at its default.\n"
            f"#   croptune {command} --config {name} [key=value ...]\n"
            f"# Written by `croptune config show {stage} --format yaml`.\n"
        )
        files[Path(name)] = (header + starter_yaml(cls)).encode()
    quiet = logging.getLogger("croptune.synthetic")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # its "wrote ... to /tmp/..." names the scratch folder
    try:
        with tempfile.TemporaryDirectory() as tmp:
            make_example_catalog(Path(tmp) / "catalog", n_items=items, seed=seed)
            for path in sorted(Path(tmp).rglob("*")):
                if path.is_file():
                    files[path.relative_to(tmp)] = path.read_bytes()
    finally:
        quiet.setLevel(level)
    return files


def init(
    folder: Path = typer.Argument(..., metavar="DIR", help="Folder to write into (created)."),
    force: bool = typer.Option(False, "--force", help="Overwrite files that are already there."),
    items: int = typer.Option(12, "--items", min=4, help="Items in the example catalog."),
    seed: int = typer.Option(0, "--seed", help="Seed of the example catalog."),
) -> None:
    """Write the starter configs and an example catalog (with its photos) into DIR."""
    import shlex

    files = _init_files(items, seed)
    # Configs first, then the catalog: what a user most likely edited is named first.
    ordered = sorted(files, key=lambda rel: (len(rel.parts), rel))
    existing = [str(rel) for rel in ordered if (folder / rel).exists()]
    if existing and not force:
        shown = ", ".join(existing[:5]) + (", ..." if len(existing) > 5 else "")
        raise CroptuneError(
            f"{folder} already holds {len(existing)} of the files croptune init writes "
            f"({shown}); nothing was written. Pass --force to overwrite them, or give another "
            "folder"
        )
    for rel, content in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(content)
    configs = sorted(str(rel) for rel in files if rel.parent == Path("."))
    photos = sum(1 for rel in files if rel.parts[0] == "catalog" and rel.suffix != ".jsonl")
    replaced = f", {len(existing)} of them replaced (--force)" if existing else ""
    typer.echo(f"wrote {len(files)} files to {folder}{replaced}:")
    typer.echo(f"  configs: {', '.join(configs)}")
    typer.echo(f"  example catalog: catalog/catalog.jsonl ({items} items, {photos} photos)")

    def at(*parts: str) -> str:
        return shlex.quote(str(folder.joinpath(*parts)))

    run_dir, dataset = at("runs", "catalog"), at("runs", "catalog", "dataset")
    typer.echo(
        "next (relative paths inside the configs are resolved against their folder):\n"
        f"  croptune catalog validate {at('catalog', 'catalog.jsonl')}\n"
        f"  croptune label {at('catalog', 'catalog.jsonl')} --config "
        f"{at('label-reference.yaml')} --run {run_dir}\n"
        f"  croptune crop --run {run_dir} --config {at('crop.yaml')}\n"
        f"  croptune dataset build --run {run_dir} --out {dataset} --config "
        f"{at('dataset.yaml')} image_tokens=16\n"
        f"  croptune train --config {at('train-tiny.yaml')}\n"
        f"  croptune evaluate --model {at('runs', 'catalog', 'train-tiny', 'adapter')} "
        f"--dataset {dataset}\n"
        "  croptune config show STAGE   (every key of a stage's config)"
    )
