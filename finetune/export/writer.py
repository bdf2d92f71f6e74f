"""`croptune export`: the bundle folder (adapter/, base/, merged/, detector/, croptune.yaml,
README.md), written beside its target and renamed, refused when it would leak a path or
secret of this machine."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import struct
from pathlib import Path
from typing import Any

from finetune.export.card import model_card
from finetune.export.lint import lint_adapter
from finetune.export.manifest import base_model_id, bundle_manifest, without_paths
from finetune.models import ADAPTER_CONFIG, base_model_of, is_local_path, local_base, read_yaml
from toolkit.bundle import (
    ADAPTER_DIR,
    BUNDLE_FILE,
    DETECTOR_DIR,
    MERGED_DIR,
    OFFLINE_BASE_DIR,
    DetectorFacts,
)
from toolkit.config import dump_yaml
from toolkit.errors import CroptuneError

logger = logging.getLogger(__name__)

# What save_pretrained writes for a processor (Gemma 3 and Qwen2.5-VL): they travel with the
# adapter so transformers and vLLM users get the training-time tokenizer and chat template.
PROCESSOR_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "processor_config.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "chat_template.jinja",
    "chat_template.json",
)
_ENV_SECRET = re.compile(r"(API_?KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)$", re.IGNORECASE)
_VOCABULARY_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt")


def export_bundle(
    adapter_dir: Path,
    out: Path,
    merge: bool = False,
    metrics: dict[str, Any] | list[dict[str, Any]] | None = None,
    *,
    force: bool = False,
    base_model: str | None = None,
    lora_name: str | None = None,
    dataset_dir: Path | None = None,
    detector_dir: Path | None = None,
    box_teacher: dict[str, Any] | None = None,
) -> Path:
    """Write the serving bundle of DESIGN for an adapter folder made by `croptune train`.

    box_teacher: a box teacher's config (no key: only the NAME of its variable) recorded as
    the bundle's box source (box_source: teacher) when it ships no detector.

    Refuses (CroptuneError) an adapter vLLM cannot serve unless `force`, and a bundle that
    would hold a secret or a local path of this machine. Written beside `out`, then renamed.
    """
    adapter_dir, out = Path(adapter_dir), Path(out)
    problems = lint_adapter(adapter_dir)
    errors = [p for p in problems if p.level == "error"]
    if errors and not force:
        raise CroptuneError(
            f"vLLM cannot serve the adapter in {adapter_dir}: "
            + " ".join(str(p) for p in errors)
            + " (--force writes the bundle anyway)"
        )
    for problem in problems:  # recorded in croptune.yaml; the CLI prints them
        logger.debug("%s", problem)
    _check_target(out)
    base_id = base_model_id(adapter_dir, base_model)
    staging = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _write_adapter(adapter_dir, staging / ADAPTER_DIR, base_id)
        base_folder = _write_offline_base(adapter_dir, staging / OFFLINE_BASE_DIR, base_id)
        detector = _write_detector(detector_dir, staging / DETECTOR_DIR) if detector_dir else None
        manifest = bundle_manifest(
            adapter_dir,
            base_id,
            metrics,
            problems,
            lora_name,
            dataset_dir,
            merged=merge,
            base_folder=OFFLINE_BASE_DIR if base_folder else None,
            detector=detector,
        )
        if box_teacher is not None and detector is None:
            manifest = manifest.model_copy(
                update={"box_source": "teacher", "box_teacher": dict(box_teacher)}
            )
        manifest.write(staging)
        if merge:
            _write_merged(adapter_dir, staging / MERGED_DIR, base_id)
        (staging / "README.md").write_text(model_card(manifest), encoding="utf-8")
        leaks = find_leaks(staging, _forbidden_strings(adapter_dir, dataset_dir, out))
        if leaks:
            raise CroptuneError(
                "the bundle would leak " + "; ".join(leaks) + "; nothing was written"
            )
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _check_target(out: Path) -> None:
    """Only an empty folder or an earlier bundle may be replaced."""
    if out.exists() and (
        not out.is_dir() or (any(out.iterdir()) and not (out / BUNDLE_FILE).is_file())
    ):
        raise CroptuneError(
            f"{out} exists and is not a croptune bundle; choose another --out or remove it"
        )


def _write_adapter(adapter_dir: Path, target: Path, base_id: str) -> None:
    """The LoRA weights, a config naming the base by id, and the training processor files."""
    target.mkdir(parents=True)
    shutil.copy2(adapter_dir / "adapter_model.safetensors", target)
    config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base_id
    (target / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2), encoding="utf-8")
    copied = [name for name in PROCESSOR_FILES if (adapter_dir / name).is_file()]
    for name in copied:
        shutil.copy2(adapter_dir / name, target)
    if (target / "tokenizer_config.json").is_file():
        _clean_tokenizer_config(target / "tokenizer_config.json", base_id)
    if not copied:
        logger.warning(
            "%s holds no processor/tokenizer files; users will load the base model's", adapter_dir
        )


def _write_offline_base(adapter_dir: Path, target: Path, base_id: str) -> Path | None:
    """A copy of a croptune-built base (no hub has it) that `vllm serve ./base` loads."""
    if not base_id.startswith("croptune:"):
        return None
    source = Path(local_base(adapter_dir))
    target.mkdir(parents=True)
    for path in source.iterdir():
        if path.is_file() and not path.name.startswith("."):  # not the build-complete marker
            shutil.copy2(path, target)
    from finetune.students.checkpoints import checkpoint_name_problems

    misnamed = checkpoint_name_problems(target)
    if misnamed:
        raise CroptuneError(
            f"the base model in {source} names weights as vLLM cannot load them (e.g. "
            f"{misnamed[0]}); delete that folder so croptune builds it again"
        )
    _name_model_folder(target, base_id)
    return target


def _write_detector(source: Path, target: Path) -> DetectorFacts:
    """The region-proposal detector of `croptune detector train`, without its training data."""
    from finetune.detector import CONFIG_FILE, METRICS_FILE, ONNX_FILE, WEIGHTS_FILE

    source = Path(source)
    if not (source / WEIGHTS_FILE).is_file():
        raise CroptuneError(
            f"{source} holds no {WEIGHTS_FILE}; pass the --out folder of `croptune detector train`"
        )
    target.mkdir(parents=True)
    for name in (WEIGHTS_FILE, ONNX_FILE, METRICS_FILE):
        if (source / name).is_file():
            shutil.copy2(source / name, target)
    _path_free_checkpoint(target / WEIGHTS_FILE)
    settings = read_yaml(source / CONFIG_FILE)
    settings.pop("run", None)  # the training machine's run folder
    (target / CONFIG_FILE).write_text(dump_yaml(settings), encoding="utf-8")
    return DetectorFacts(
        path=DETECTOR_DIR,
        weights=f"{DETECTOR_DIR}/{WEIGHTS_FILE}",
        imgsz=settings.get("imgsz"),
        classes=settings.get("classes"),
        box_source=settings.get("box_source"),
        metrics=settings.get("metrics"),
        coverage=(settings.get("metrics") or {}).get("coverage"),
    )


def _path_free_checkpoint(weights: Path) -> None:
    """Drop what an ultralytics checkpoint records of the training machine: its train_args
    (also kept on the model and its EMA as `args`) hold the dataset, project and run folders,
    its `git` entry the checkout's folder and commit."""
    with open(weights, "rb") as handle:
        if handle.read(2) != b"PK":
            return  # not a torch zip checkpoint (nothing of ultralytics' to clean)
    import torch

    from finetune.detector import prepare_ultralytics

    prepare_ultralytics()  # unpickling imports ultralytics' classes
    checkpoint = torch.load(weights, map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, dict):
        return
    checkpoint.pop("git", None)
    args = checkpoint.get("train_args")
    if isinstance(args, dict):
        checkpoint["train_args"] = without_paths(args)
    for key in ("model", "ema"):
        model = checkpoint.get(key)
        if model is not None and isinstance(getattr(model, "args", None), dict):
            model.args = without_paths(model.args)
    torch.save(checkpoint, weights)


def _name_model_folder(target: Path, base_id: str) -> None:
    """A model folder's config and tokenizer config naming the base by id, not by a path."""
    config = json.loads((target / "config.json").read_text(encoding="utf-8"))
    if "_name_or_path" in config:
        config["_name_or_path"] = base_id
        (target / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    if (target / "tokenizer_config.json").is_file():
        _clean_tokenizer_config(target / "tokenizer_config.json", base_id)


def _clean_tokenizer_config(path: Path, base_id: str) -> None:
    """Drop what describes how the training machine loaded files, not the tokenizer."""
    config = json.loads(path.read_text(encoding="utf-8"))
    for key in ("is_local", "local_files_only"):
        config.pop(key, None)
    if "name_or_path" in config:
        config["name_or_path"] = base_id
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_merged(adapter_dir: Path, target: Path, base_id: str) -> None:
    """The base with the adapter merged in, saved as safetensors with the training processor."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from finetune.students import resolve_student
    from finetune.students.checkpoints import save_model_folder
    from toolkit.noise import silence_known_warnings

    silence_known_warnings()
    base = resolve_student(base_model_of(adapter_dir))
    try:
        # The checkpoint's own dtype: a bf16 base merges into a bf16 model of the same size.
        model = AutoModelForImageTextToText.from_pretrained(base, dtype="auto")
    except OSError as exc:
        raise CroptuneError(f"cannot load the base model {base_id!r} to merge: {exc}") from exc
    with torch.no_grad():
        merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    save_model_folder(merged, target)
    processor_source = (
        adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else Path(base)
    )
    AutoProcessor.from_pretrained(str(processor_source)).save_pretrained(str(target))
    _name_model_folder(target, base_id)


# --------------------------------------------------------------------------- leaks


def _forbidden_strings(adapter_dir: Path, dataset_dir: Path | None, out: Path) -> dict[str, str]:
    """Strings that must not appear in a bundle -> what they are (never the secret itself)."""
    train_config = read_yaml(adapter_dir / "train_config.yaml")
    paths = {
        "the home folder": Path.home(),
        "the adapter folder": adapter_dir,
        "the training output folder": Path(train_config.get("output_dir") or adapter_dir.parent),
        "the dataset folder": Path(dataset_dir or train_config.get("dataset") or adapter_dir),
        "the bundle's own location": out.parent,
        "the working folder": Path.cwd(),
    }
    base = local_base(adapter_dir)
    if base and is_local_path(base):
        paths["the base model folder"] = Path(base)
    for name in ("CROPTUNE_CACHE", "HF_HOME", "HF_HUB_CACHE", "TRANSFORMERS_CACHE"):
        if os.environ.get(name):
            paths[f"${name}"] = Path(os.environ[name])
    needles: dict[str, str] = {}
    for label, path in paths.items():
        for variant in {str(path), str(path.expanduser().resolve())}:
            # "/" or "/tmp" alone would match harmless text; a real folder has 2+ parts.
            if len(Path(variant).parts) >= 3 or (label == "the home folder" and variant != "/"):
                needles[variant] = f"a local path ({label})"
    for name, value in os.environ.items():
        if _ENV_SECRET.search(name) and len(value) >= 8:
            needles[value] = f"the value of ${name}"
    return needles


def find_leaks(bundle: Path, needles: dict[str, str]) -> list[str]:
    """'<what> in <file>' for every needle found in any file of the bundle.

    A .safetensors file is searched in its header only (names and metadata, not tensors).
    """
    found = []
    for path in sorted(p for p in Path(bundle).rglob("*") if p.is_file()):
        if path.name in _VOCABULARY_FILES:
            continue  # the base model's vocabulary, copied byte for byte: may hold "/home"
        if path.suffix == ".safetensors":
            with open(path, "rb") as handle:
                head = handle.read(8)
                size = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
                data = handle.read(min(size, 100_000_000))
        else:
            data = path.read_bytes()
        for needle, what in needles.items():
            if needle.encode() in data:
                found.append(f"{what} in {path.relative_to(bundle)}")
    return found
