"""The bundle's manifest built from what training left in the adapter folder (train config,
train stats, the dataset's recorded facts, evaluate's metrics), with path-free names."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune.export.lint import (
    LintProblem,
    lint_summary,
    max_lora_rank,
    safetensors_shapes,
    tensor_ranks,
)
from finetune.models import (
    ADAPTER_CONFIG,
    base_model_of,
    is_local_path,
    local_base,
    preset_model,
    read_yaml,
)
from toolkit.bundle import (
    ADAPTER_DIR,
    BUNDLE_FILE,
    DEFAULT_MAX_NEW_TOKENS,
    MERGED_DIR,
    BundleManifest,
    DatasetFacts,
    Decoding,
    DetectorFacts,
    LoraFacts,
    PromptSpec,
    TrainingFacts,
)
from toolkit.errors import CroptuneError

if TYPE_CHECKING:
    from finetune.students.presets import StudentPreset

logger = logging.getLogger(__name__)

CHAT_TEMPLATE_FILE = "chat_template.jinja"
STUDENT_LABEL = "student (this adapter)"  # the evaluated entry of the exported adapter
_HF_CACHE_SNAPSHOT = re.compile(r"models--([^/\\]+?)--([^/\\]+)[/\\]snapshots[/\\]")


def base_model_id(adapter_dir: Path, override: str | None = None) -> str:
    """The base model's public id for the bundle: never a path of this machine."""
    if override:
        if is_local_path(override):
            raise CroptuneError(
                f"--base-model {override!r} is a local path; give the hub id of the base "
                "model (what `vllm serve` and from_pretrained load), e.g. google/gemma-3-4b-it"
            )
        return override
    base = base_model_of(adapter_dir)
    if base and not is_local_path(base):
        return base
    match = _HF_CACHE_SNAPSHOT.search(base or "")
    if match:  # a hub cache snapshot folder names its repository
        return f"{match.group(1)}/{match.group(2)}"
    preset = preset_model(read_yaml(Path(adapter_dir) / "train_config.yaml").get("student"))
    hint = f" (the student preset names {preset})" if preset and not is_local_path(preset) else ""
    raise CroptuneError(
        f"the adapter in {adapter_dir} was trained on a local model folder, whose path must "
        f"not go into the bundle; pass --base-model with its hub id{hint}"
    )


def _preset(student: str | None) -> StudentPreset | None:
    from finetune.students import load_preset

    try:
        return load_preset(student) if student else None
    except CroptuneError:
        return None


def _dataset_facts(train_config: dict[str, Any], dataset_dir: Path | None) -> dict[str, Any]:
    """The dataset's recorded config, schema, crop config and stats, if still on disk."""
    folder = dataset_dir or (Path(train_config["dataset"]) if train_config.get("dataset") else None)
    path = folder / "croptune_dataset.json" if folder else None
    if path is None or not path.is_file():
        logger.warning(
            "the dataset's croptune_dataset.json was not found; the bundle will lack the "
            "prompt, schema and crop config (pass --dataset DIR if the dataset moved)"
        )
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def _mm_processor_kwargs(
    train_config: dict[str, Any], preset: StudentPreset | None
) -> dict[str, Any]:
    """Image-processor settings the server must use to see images as training did."""
    family = preset.family if preset is not None else "gemma3"
    if family == "qwen2_5_vl":
        return {
            "min_pixels": train_config.get("image_min_pixels")
            or (preset.min_pixels if preset is not None else None),
            "max_pixels": train_config.get("image_max_pixels")
            or (preset.max_pixels if preset is not None else None),
        }
    if train_config.get("pan_and_scan"):
        return {
            "do_pan_and_scan": True,
            "pan_and_scan_max_num_crops": train_config.get("pan_and_scan_max_crops", 4),
        }
    return {}


def _lora_facts(adapter_dir: Path, train_config: dict[str, Any]) -> LoraFacts:
    config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    ranks = [config.get("r") or 0, *(config.get("rank_pattern") or {}).values()]
    weights = adapter_dir / "adapter_model.safetensors"
    if weights.is_file():  # the tensors are what the server must hold
        ranks += tensor_ranks(safetensors_shapes(weights))
    return LoraFacts(
        r=config.get("r"),
        alpha=config.get("lora_alpha"),
        target_modules=config.get("target_modules"),
        adapt=train_config.get("adapt", "language"),
        max_lora_rank=max_lora_rank(max(ranks)),
    )


def _model_label(name: str, adapter_dir: Path, base_local: str, base_id: str) -> str:
    """A name for an evaluated model that says what it is without a path of this machine."""
    if not is_local_path(name):
        return name
    target = Path(name).expanduser().resolve()
    if target == adapter_dir.resolve():
        return STUDENT_LABEL
    if base_local and target == Path(base_local).expanduser().resolve():
        return f"{base_id} (base, zero-shot)"
    if (target / BUNDLE_FILE).is_file() or (target / ADAPTER_CONFIG).is_file():
        return f"adapter '{target.name}'"
    return f"local model '{target.name}'"


def without_paths(value: Any) -> Any:
    """A copy with every absolute path string cut to its last part (file or folder name)."""
    if isinstance(value, dict):
        return {key: without_paths(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_paths(item) for item in value]
    if isinstance(value, str) and (Path(value).is_absolute() or value.startswith("~")):
        return Path(value).name
    return value


def _evaluations(
    metrics: dict[str, Any] | list[dict[str, Any]] | None,
    adapter_dir: Path,
    base_local: str,
    base_id: str,
) -> list[dict[str, Any]]:
    """Evaluated models with path-free labels; the student's entry is marked."""
    entries = [metrics] if isinstance(metrics, dict) else list(metrics or [])
    labelled = []
    for entry in entries:
        name = str(entry.get("label") or entry.get("name") or entry.get("model") or "model")
        label = _model_label(name, adapter_dir, base_local, base_id)
        labelled.append({**without_paths(entry), "model": label})
    students = [e for e in labelled if e["model"] == STUDENT_LABEL]
    if not students and len(labelled) == 1:
        labelled[0]["model"] = STUDENT_LABEL
    return labelled


def bundle_manifest(
    adapter_dir: Path,
    base_model: str,
    metrics: dict[str, Any] | list[dict[str, Any]] | None = None,
    lint: list[LintProblem] | None = None,
    lora_name: str | None = None,
    dataset_dir: Path | None = None,
    merged: bool = False,
    *,
    base_folder: str | None = None,
    detector: DetectorFacts | None = None,
) -> BundleManifest:
    """croptune.yaml for an adapter folder: everything a server or `predict` needs besides
    weights. base_folder: the bundle's copy of a base no hub has; detector: the shipped one
    (the box source then is the detector)."""
    from toolkit.schema import AttributeSchema, extraction_prompt

    adapter_dir = Path(adapter_dir)
    train_config = read_yaml(adapter_dir / "train_config.yaml")
    train_stats = _read_json(adapter_dir / "train_stats.json")
    facts = _dataset_facts(train_config, dataset_dir)
    schema = AttributeSchema.model_validate(facts["schema"]) if facts.get("schema") else None
    dataset_config = facts.get("config", {})
    preset = _preset(train_config.get("student"))
    evaluations = _evaluations(metrics, adapter_dir, local_base(adapter_dir), base_model)
    student_metrics = next((e for e in evaluations if e["model"] == STUDENT_LABEL), None)
    losses = train_stats.get("losses") or [None]
    return BundleManifest(
        croptune_version=_version(),
        base_model=base_model,
        base_folder=base_folder,
        student=train_config.get("student"),
        family=preset.family if preset is not None else None,
        lora_name=lora_name or _default_lora_name(train_config.get("student")),
        adapter=ADAPTER_DIR,
        merged=MERGED_DIR if merged else None,
        prompt=PromptSpec(
            instructions=extraction_prompt(schema) if schema else None,
            chat_template=f"{ADAPTER_DIR}/{CHAT_TEMPLATE_FILE}"
            if (adapter_dir / CHAT_TEMPLATE_FILE).is_file()
            else None,
            originals_max_side=dataset_config.get("max_image_side"),
            # A dataset config without resize_crops predates it: its crops were kept as cut.
            crops_max_side=dataset_config.get("max_image_side")
            if dataset_config.get("resize_crops")
            else None,
            decoding=Decoding(max_new_tokens=DEFAULT_MAX_NEW_TOKENS),
        ),
        schema_=schema,
        crop=facts.get("crop_config"),
        dataset=DatasetFacts(
            strategy=dataset_config.get("strategy"),
            max_image_side=dataset_config.get("max_image_side"),
            stats=facts.get("stats"),
            splits={
                name: split.get("examples") if isinstance(split, dict) else split
                for name, split in (train_stats.get("dataset") or {}).items()
            },
        ),
        image_budget=dataset_config.get("max_images_per_item"),
        image_tokens=preset.image_tokens if preset is not None else None,
        # The weights' dtype training and evaluation used. vLLM's "auto" turns a float32
        # checkpoint into bfloat16 for Gemma 3, which moves logprobs by ~0.02 on the tiny one.
        dtype=preset.torch_dtype if preset is not None else None,
        mm_processor_kwargs=_mm_processor_kwargs(train_config, preset),
        # Where crops come from at inference: the shipped detector, else "none": the caller
        # brings boxes (a teacher) or sends originals only.
        box_source="detector" if detector else "none",
        detector=detector,
        lora=_lora_facts(adapter_dir, train_config),
        training=TrainingFacts(
            steps=train_stats.get("steps"),
            first_loss=losses[0],
            last_loss=losses[-1],
            eval_loss=train_stats.get("eval_loss"),
            seconds=train_stats.get("seconds"),
            bf16=train_stats.get("bf16"),
        ),
        metrics=student_metrics,
        evaluations=evaluations or None,
        lint=lint_summary(lint or []),
    )


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def _default_lora_name(student: str | None) -> str:
    return f"croptune-{student}" if student else "croptune"


def read_metrics(path: Path) -> list[dict[str, Any]] | None:
    """The entries of an evaluate metrics.json (a list, or one object), or None if absent."""
    if not Path(path).is_file():
        return None
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CroptuneError(f"metrics file {path} is not valid JSON: {exc}") from exc
    return [data] if isinstance(data, dict) else list(data)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("croptune")
    except PackageNotFoundError:
        return "unknown"
