"""The serving bundle: adapter + croptune.yaml (+ merged model) + a model card."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import yaml

from toolkit.errors import CroptuneError

logger = logging.getLogger(__name__)

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
BUNDLE_FILE = "croptune.yaml"


def _read_yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {} if path.is_file() else {}


def _dataset_facts(train_config: dict[str, Any]) -> dict[str, Any]:
    """The dataset's recorded config, schema, crop config and stats, if still on disk."""
    dataset = train_config.get("dataset")
    path = Path(dataset) / "croptune_dataset.json" if dataset else None
    if path is None or not path.is_file():
        logger.warning(
            "dataset facts not found (%s); the bundle will lack prompt/schema/crops", path
        )
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def bundle_manifest(
    adapter_dir: Path, base_model: str, metrics: dict[str, Any] | None
) -> dict[str, Any]:
    """The content of croptune.yaml: everything predict needs besides the weights."""
    from toolkit.schema import AttributeSchema, extraction_prompt

    train_config = _read_yaml(adapter_dir / "train_config.yaml")
    facts = _dataset_facts(train_config)
    schema = facts.get("schema")
    dataset_config = facts.get("config", {})
    return {
        "croptune_version": _version(),
        "base_model": base_model,
        "student": train_config.get("student"),
        "prompt": {
            "instructions": extraction_prompt(AttributeSchema.model_validate(schema))
            if schema
            else None,
            "listing_text": "appended as '\\n\\nListing text:\\n<title>\\n<text>' when present",
            "images": "one image entry per image, originals first, then crops, before the text",
        },
        "schema": schema,
        "crop": facts.get("crop_config"),
        "dataset": {
            "strategy": dataset_config.get("strategy"),
            "max_image_side": dataset_config.get("max_image_side"),
            "stats": facts.get("stats"),
        },
        "image_budget": dataset_config.get("max_images_per_item"),
        "box_source": "none",
        "lora": {k: train_config.get(k) for k in ("lora_r", "lora_alpha", "lora_target")},
        # Where the model sat on the training machine says nothing to the serving side.
        "metrics": {**metrics, "model": "adapter"} if metrics else None,
    }


def export_bundle(
    adapter_dir: Path, out: Path, merge: bool = False, metrics: dict[str, Any] | None = None
) -> Path:
    """Write the serving bundle of DESIGN for an adapter folder made by `croptune train`."""
    missing = [name for name in ADAPTER_FILES if not (adapter_dir / name).is_file()]
    if missing:
        raise CroptuneError(
            f"{adapter_dir} is not a LoRA adapter folder (missing {', '.join(missing)}); "
            "pass the `adapter` folder that `croptune train` wrote"
        )
    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    base_model = base_model_of(adapter_dir)
    (out / "adapter").mkdir(parents=True, exist_ok=True)
    shutil.copy2(adapter_dir / "adapter_model.safetensors", out / "adapter")
    # The training machine's local path of the base must not leak into the bundle.
    adapter_config["base_model_name_or_path"] = base_model
    (out / "adapter" / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))
    manifest = bundle_manifest(adapter_dir, base_model, metrics)
    (out / BUNDLE_FILE).write_text(yaml.safe_dump(manifest, sort_keys=False, allow_unicode=True))
    if merge:
        _write_merged(adapter_dir, out / "merged")
    (out / "README.md").write_text(model_card(manifest))
    return out


def base_model_of(adapter_dir: Path) -> str:
    """The base model id an adapter was trained on (from its train config, else its own)."""
    train_config = _read_yaml(adapter_dir / "train_config.yaml")
    base = train_config.get("model") or _preset_model(train_config.get("student"))
    if base:
        return base
    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    return adapter_config.get("base_model_name_or_path") or ""


def _preset_model(student: str | None) -> str | None:
    if not student:
        return None
    from finetune.students import load_preset

    try:
        return load_preset(student).model
    except CroptuneError:
        return student  # a path or hub id given directly


def _write_merged(adapter_dir: Path, target: Path) -> None:
    """The base with the adapter merged in, saved as safetensors with its processor."""
    from finetune.infer import load_student

    model, processor = load_student(base_model_of(adapter_dir), adapter_dir)
    merged = model.merge_and_unload()
    merged.save_pretrained(str(target), safe_serialization=True)
    processor.save_pretrained(str(target))


def model_card(manifest: dict[str, Any]) -> str:
    """A README for the bundle: what it is, how to serve it, how it scored."""
    base = manifest["base_model"]
    rank = (manifest.get("lora") or {}).get("lora_r") or 8
    metrics = manifest.get("metrics") or {}
    micro = metrics.get("micro", {})
    stats = (manifest.get("dataset") or {}).get("stats") or {}
    lines = [
        f"# croptune student: LoRA adapter for {base}",
        "",
        "Extracts product identifiers, attributes, origin and regulatory information as JSON "
        "from all photos of a listing (originals + targeted crops), following Nulli et al. (2026).",
        "",
        "## Serve with vLLM",
        "```bash",
        f"vllm serve {base} --enable-lora --max-lora-rank {rank} \\",
        '  --lora-modules croptune=./adapter --limit-mm-per-prompt \'{"image": '
        f"{manifest.get('image_budget') or 9}}}'",
        "```",
        "Build the request with the prompt in `croptune.yaml` (images first, then the text) and "
        "the same crops as training (`croptune predict` does this).",
        "",
        "## Data",
        f"- strategy: {(manifest.get('dataset') or {}).get('strategy')}",
        f"- examples: {stats.get('examples')}",
        f"- images per example: {stats.get('images_per_example')}",
        "",
        "## Metrics (held-out items)",
        f"- field F1 {micro.get('f1')}, precision {micro.get('precision')}, "
        f"recall {micro.get('recall')}, JSON valid {metrics.get('json_valid_rate')}"
        if micro
        else "- not evaluated",
        "",
        "## Limits",
        "- Reads only what is visible; small print needs the crops.",
        f"- The base model's licence applies ({base}).",
        "",
    ]
    return "\n".join(lines)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("croptune")
    except PackageNotFoundError:
        return "unknown"
