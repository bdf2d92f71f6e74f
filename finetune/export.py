"""The serving bundle (adapter + processor, croptune.yaml, model card, merged model) and the
vLLM lint of LoRA adapters."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from finetune.train import VLLM_MAX_LORA_RANKS
from toolkit.config import dump_yaml
from toolkit.errors import CroptuneError

logger = logging.getLogger(__name__)

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
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
CHAT_TEMPLATE_FILE = "chat_template.jinja"
BUNDLE_FILE = "croptune.yaml"
OFFLINE_BASE_DIR = "base"  # BUNDLE/base: the base model, when no hub has it
DEFAULT_MAX_NEW_TOKENS = 1024

# Module names vLLM treats as the vision tower or the projector (Gemma 3, Qwen2.5-VL, LLaVA).
VISION_KEYWORDS = ("vision_tower", "visual", "multi_modal_projector", "merger")
# Example vision/projector module names, old and new transformers layouts, to test a
# target_modules pattern against without loading the base model.
_VISION_MODULE_EXAMPLES = (
    "model.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj",
    "model.vision_tower.vision_model.encoder.layers.0.self_attn.out_proj",
    "model.vision_tower.vision_model.encoder.layers.0.mlp.fc1",
    "vision_tower.vision_model.encoder.layers.0.self_attn.q_proj",
    "model.multi_modal_projector.linear_1",
    "model.visual.blocks.0.attn.qkv",
    "model.visual.blocks.0.attn.proj",
    "model.visual.blocks.0.mlp.gate_proj",
    "model.visual.blocks.0.mlp.down_proj",
    "model.visual.merger.mlp.0",
    "visual.blocks.0.attn.qkv",
    "visual.merger.mlp.0",
)
# peft init_lora_weights values that rewrite the base weights (the adapter then only works on
# the modified base, not the hub base vLLM loads), unless converted when saving.
_BASE_CHANGING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")
# modules_to_save vLLM accepts: the heads of sequence-classification models.
_ALLOWED_MODULES_TO_SAVE = ("classifier", "score")
# peft tensor name endings vLLM parses (vllm.lora.utils.parse_fine_tuned_lora_name).
_LORA_TENSOR = re.compile(r"\.(lora_[AB]\.weight|lora_embedding_[AB])$")
_ENV_SECRET = re.compile(r"(API_?KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)$", re.IGNORECASE)
_VOCABULARY_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt")
_HF_CACHE_SNAPSHOT = re.compile(r"models--([^/\\]+?)--([^/\\]+)[/\\]snapshots[/\\]")
# The vLLM version each rule below was checked against (tests/test_vllm_serving.py
# loads an adapter breaking each rule into a real server and asserts what the lint says).
VLLM_CHECKED = "0.32.0"
_FIX_LANGUAGE_ONLY = (
    "retrain with `adapt: language` (LoRA on the language model only, the default), or export "
    "with --merge and serve merged/, which holds the vision weights as trained. Not "
    f"--enable-tower-connector-lora: with it vLLM {VLLM_CHECKED} crashes its engine at the first "
    "image request on Gemma 3 (`einsum(): subscript b has size ...` in siglip.py)"
)


@dataclass(frozen=True)
class LintProblem:
    """One reason vLLM would refuse (error) or silently change (warning) an adapter."""

    rule: str
    level: Literal["error", "warning"]
    message: str  # names the file, the key and the value
    fix: str

    def __str__(self) -> str:
        return f"{self.level} [{self.rule}] {self.message}. Fix: {self.fix}."

    def as_dict(self) -> dict[str, str]:
        """JSON/YAML-ready fields."""
        return asdict(self)


# --------------------------------------------------------------------------- lint


def lint_adapter(adapter_dir: Path) -> list[LintProblem]:
    """Every way a PEFT LoRA folder breaks vLLM's LoRA rules (config and tensor names)."""
    adapter_dir = Path(adapter_dir)
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.is_file() and (adapter_dir / "config.json").is_file():
        raise CroptuneError(
            f"{adapter_dir} holds a whole model (such as `croptune train` writes with tuning: "
            "full), not a LoRA adapter: `croptune export` bundles LoRA adapters for vLLM's "
            "--lora-modules. "
            f"Score it with `croptune evaluate --model {adapter_dir}`; serve it as a model of "
            "its own (`vllm serve` on the folder), or train with tuning: lora to export"
        )
    if not config_path.is_file():
        raise CroptuneError(
            f"{adapter_dir} is not a LoRA adapter folder (no adapter_config.json); pass the "
            "`adapter` folder that `croptune train` wrote"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CroptuneError(f"{config_path} is not valid JSON: {exc}") from exc
    problems = lint_adapter_config(config)
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        old_format = (adapter_dir / "adapter_model.bin").is_file()
        problems.append(
            LintProblem(
                "files",
                "error",
                "adapter_model.safetensors is missing"
                + (" (there is a pickled adapter_model.bin)" if old_format else ""),
                "save the adapter with peft's save_pretrained (safetensors is its default)",
            )
        )
        return problems
    try:
        shapes = safetensors_shapes(weights)
    except ValueError as exc:
        problems.append(LintProblem("files", "error", str(exc), "save the adapter again"))
        return problems
    return problems + lint_tensor_names(shapes, config)


def lint_adapter_config(config: dict[str, Any]) -> list[LintProblem]:
    """vLLM's rules applied to the content of an adapter_config.json."""
    where = "adapter_config.json"
    problems: list[LintProblem] = []

    def add(rule: str, level: Literal["error", "warning"], message: str, fix: str) -> None:
        problems.append(LintProblem(rule, level, f"{where}: {message}", fix))

    peft_type = config.get("peft_type", "LORA")
    if peft_type != "LORA":
        add(
            "peft-type",
            "error",
            f"peft_type = {peft_type!r}; vLLM serves LoRA adapters only",
            "train a LoRA adapter (croptune train does)",
        )
    # Any rank up to the server's --max-lora-rank loads (rank 4 under --max-lora-rank 8 serves
    # the same logprobs as peft), and so do rank_pattern/alpha_pattern: the server's flag, not
    # the adapter, must be one of VLLM_MAX_LORA_RANKS. The card picks it (lora.max_lora_rank).
    ranks = [config.get("r"), *(config.get("rank_pattern") or {}).values()]
    bad = [r for r in ranks if not isinstance(r, int) or isinstance(r, bool) or r < 1]
    too_big = [r for r in ranks if r not in bad and r > VLLM_MAX_LORA_RANKS[-1]]
    if bad or too_big:
        rank = (bad or too_big)[0]
        add(
            "rank",
            "error",
            f"r = {rank!r}: vLLM loads ranks from 1 up to its --max-lora-rank, at most "
            f"{VLLM_MAX_LORA_RANKS[-1]} (a larger one gets HTTP 500 'LoRA rank {rank} is greater "
            "than max_lora_rank')",
            f"retrain with lora_r of at most {VLLM_MAX_LORA_RANKS[-1]}",
        )
    to_save = [m for m in config.get("modules_to_save") or [] if m not in _ALLOWED_MODULES_TO_SAVE]
    if to_save:
        add(
            "modules-to-save",
            "error",
            f"modules_to_save = {json.dumps(config['modules_to_save'])}; vLLM refuses to load "
            'it (\'vLLM only supports modules_to_save being either None or ["classifier", '
            '"score"] for classification models\')',
            "retrain with modules_to_save unset (croptune's default); to teach new tokens, "
            "extend the base model instead",
        )
    if config.get("use_dora"):
        add(
            "dora",
            "error",
            "use_dora = true; vLLM refuses to load it ('vLLM does not yet support DoRA.')",
            "retrain with use_dora: false, or merge the adapter (--merge) and serve merged/",
        )
    bias = config.get("bias", "none")
    if bias != "none":
        add(
            "bias",
            "error",
            f"bias = {bias!r}; vLLM refuses to load it ('Adapter bias is not supported.')",
            "retrain with bias: none (croptune's default)",
        )
    if config.get("lora_bias"):
        add(
            "lora-bias",
            "error",
            "lora_bias = true; vLLM refuses to load it ('vLLM does not support LoRA bias "
            "(lora_bias).')",
            "retrain with lora_bias: false",
        )
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(_BASE_CHANGING_INITS):
        add(
            "init",
            "error",
            f"init_lora_weights = {init!r} rewrites the base model's weights, so the adapter "
            "is wrong on the unmodified base; vLLM refuses to load it ('vLLM does not support "
            f"init_lora_weights={init!r}')",
            "retrain with init_lora_weights: true, or convert the adapter when saving (peft "
            "save_pretrained(..., path_initial_model_for_weight_conversion=...))",
        )
    if config.get("target_parameters"):
        add(
            "target-parameters",
            "error",
            f"target_parameters = {json.dumps(config['target_parameters'])}; vLLM loads LoRA on "
            "modules only and refuses the adapter ('expected target modules in {...} but "
            "received [...]')",
            "retrain with `adapt: language` or `language+vision` (Gemma 3's projector is a "
            "bare parameter that only target_parameters reaches)",
        )
    if config.get("trainable_token_indices"):
        add(
            "trainable-tokens",
            "error",
            "trainable_token_indices is set; vLLM does not load trainable-token deltas",
            "retrain without trainable_token_indices",
        )
    if config.get("layer_replication"):
        add(
            "layer-replication",
            "error",
            "layer_replication is set; vLLM cannot replicate layers of the base",
            "retrain without layer_replication",
        )
    matched = _vision_matches(config.get("target_modules"), config.get("exclude_modules"))
    if matched:
        add(
            "vision-target",
            "warning",
            f"target_modules = {json.dumps(config.get('target_modules'))} also matches "
            f"vision-tower/projector layers (e.g. {matched[0]}); vLLM loads the adapter and "
            "ignores the LoRA weights there without a word (the served model sees images as "
            "the base does) unless the server runs with --enable-tower-connector-lora",
            _FIX_LANGUAGE_ONLY,
        )
    return problems


def lint_tensor_names(
    shapes: dict[str, list[int]], config: dict[str, Any] | None = None
) -> list[LintProblem]:
    """vLLM's rules applied to the tensor names (and LoRA ranks) of adapter_model.safetensors."""
    config = config or {}
    where = "adapter_model.safetensors"
    problems: list[LintProblem] = []
    allowed = tuple(f".{m}." for m in _ALLOWED_MODULES_TO_SAVE)
    foreign = [
        name
        for name in shapes
        if not _LORA_TENSOR.search(name) and not any(a in f".{name}" for a in allowed)
    ]
    if foreign:
        problems.append(
            LintProblem(
                "tensor-names",
                "error",
                f"{where}: {len(foreign)} tensor(s) are not LoRA A/B weights, which vLLM "
                f"refuses (e.g. {foreign[0]}: {_foreign_reason(foreign[0])})",
                "retrain with croptune's defaults (plain LoRA: no DoRA, bias, modules_to_save "
                "or trainable tokens)",
            )
        )
    vision = [n for n in shapes if any(k in n.split(".") for k in VISION_KEYWORDS)]
    if vision:
        problems.append(
            LintProblem(
                "vision-weights",
                "warning",
                f"{where}: {len(vision)} LoRA tensor(s) sit on the vision tower/projector "
                f"(e.g. {vision[0]}); vLLM loads the adapter and ignores them without a word "
                "unless the server runs with --enable-tower-connector-lora, so it would serve a "
                "different model",
                _FIX_LANGUAGE_ONLY,
            )
        )
    too_big = sorted(r for r in tensor_ranks(shapes) if r > VLLM_MAX_LORA_RANKS[-1])
    if too_big:
        problems.append(
            LintProblem(
                "tensor-rank",
                "error",
                f"{where}: LoRA A matrices of rank {too_big}; vLLM's largest --max-lora-rank is "
                f"{VLLM_MAX_LORA_RANKS[-1]}",
                f"retrain with lora_r of at most {VLLM_MAX_LORA_RANKS[-1]}",
            )
        )
    return problems


def tensor_ranks(shapes: dict[str, list[int]]) -> set[int]:
    """The ranks of an adapter's LoRA A matrices (several with rank_pattern)."""
    return {
        shape[0]
        for name, shape in shapes.items()
        if name.endswith((".lora_A.weight", ".lora_embedding_A")) and shape
    }


def _foreign_reason(name: str) -> str:
    if "lora_magnitude_vector" in name:
        return "a DoRA magnitude"
    if "modules_to_save" in name or (name.endswith(".weight") and ".lora_" not in name):
        return "a fully trained module (modules_to_save)"
    if name.endswith(".bias"):
        return "a bias"
    if "trainable_tokens" in name or "token_adapter" in name:
        return "trainable tokens"
    return "not a lora_A/lora_B weight"


def max_lora_rank(rank: Any) -> int:
    """The smallest --max-lora-rank choice of vLLM that serves an adapter of this rank."""
    if not isinstance(rank, int):
        return VLLM_MAX_LORA_RANKS[1]
    return next((r for r in VLLM_MAX_LORA_RANKS if r >= rank), VLLM_MAX_LORA_RANKS[-1])


def _vision_matches(targets: Any, excluded: Any) -> list[str]:
    """Example vision/projector module names that peft's target_modules would adapt."""

    def hits(pattern: Any, name: str) -> bool:
        if not pattern:
            return False
        if isinstance(pattern, str):
            if pattern == "all-linear":
                return True
            try:
                return re.fullmatch(pattern, name) is not None
            except re.error:
                return False
        # A list matches a module whose name is, or ends with ".", one of its entries.
        return any(name == p or name.endswith(f".{p}") for p in pattern)

    found = [n for n in _VISION_MODULE_EXAMPLES if hits(targets, n) and not hits(excluded, n)]
    if not found and isinstance(targets, str) and targets != "all-linear":
        # A regex naming a vision part literally, even if our examples miss its layout.
        found = [k for k in VISION_KEYWORDS if k in targets]
    return found


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape, read from a .safetensors header (no tensor is loaded)."""
    with open(path, "rb") as handle:
        head = handle.read(8)
        size = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        if not 2 <= size <= 100_000_000:
            raise ValueError(f"{path.name} is not a safetensors file")
        try:
            header = json.loads(handle.read(size))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path.name} has an unreadable safetensors header") from exc
    return {k: list(v.get("shape", [])) for k, v in header.items() if k != "__metadata__"}


def lint_summary(problems: list[LintProblem]) -> dict[str, Any]:
    """The lint result as recorded in croptune.yaml."""
    errors = sum(1 for p in problems if p.level == "error")
    return {
        "vllm_servable": errors == 0,
        "errors": errors,
        "warnings": len(problems) - errors,
        "problems": [p.as_dict() for p in problems],
    }


# --------------------------------------------------------------------------- base model


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def _is_local_path(name: str) -> bool:
    return (
        Path(name).is_absolute()
        or name.startswith(("./", "../", "~", ".\\"))
        or "\\" in name
        or Path(name).exists()
    )


def base_model_of(adapter_dir: Path) -> str:
    """The base model an adapter was trained on, as loadable here (hub id, path or tiny name)."""
    train_config = _read_yaml(Path(adapter_dir) / "train_config.yaml")
    base = train_config.get("model") or _preset_model(train_config.get("student"))
    if base:
        return base
    adapter_config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    return adapter_config.get("base_model_name_or_path") or ""


def base_model_id(adapter_dir: Path, override: str | None = None) -> str:
    """The base model's public id for the bundle: never a path of this machine."""
    if override:
        if _is_local_path(override):
            raise CroptuneError(
                f"--base-model {override!r} is a local path; give the hub id of the base "
                "model (what `vllm serve` and from_pretrained load), e.g. google/gemma-3-4b-it"
            )
        return override
    base = base_model_of(adapter_dir)
    if base and not _is_local_path(base):
        return base
    match = _HF_CACHE_SNAPSHOT.search(base or "")
    if match:  # a hub cache snapshot folder names its repository
        return f"{match.group(1)}/{match.group(2)}"
    preset = _preset_model(_read_yaml(Path(adapter_dir) / "train_config.yaml").get("student"))
    hint = f" (the student preset names {preset})" if preset and not _is_local_path(preset) else ""
    raise CroptuneError(
        f"the adapter in {adapter_dir} was trained on a local model folder, whose path must "
        f"not go into the bundle; pass --base-model with its hub id{hint}"
    )


def _local_base(adapter_dir: Path) -> str:
    """Where the base sits on this machine (a tiny student's cache folder), or its id."""
    from finetune.students import resolve_student

    return resolve_student(base_model_of(adapter_dir))


def _preset_model(student: str | None) -> str | None:
    if not student:
        return None
    from finetune.students import load_preset

    try:
        return load_preset(student).model
    except CroptuneError:
        return student  # a path or hub id given directly


def _preset(student: str | None) -> Any:
    from finetune.students import load_preset

    try:
        return load_preset(student) if student else None
    except CroptuneError:
        return None


# --------------------------------------------------------------------------- manifest


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


def _mm_processor_kwargs(train_config: dict[str, Any], preset: Any) -> dict[str, Any]:
    """Image-processor settings the server must use to see images as training did."""
    family = getattr(preset, "family", "gemma3")
    if family == "qwen2_5_vl":
        return {
            "min_pixels": train_config.get("image_min_pixels")
            or getattr(preset, "min_pixels", None),
            "max_pixels": train_config.get("image_max_pixels")
            or getattr(preset, "max_pixels", None),
        }
    if train_config.get("pan_and_scan"):
        return {
            "do_pan_and_scan": True,
            "pan_and_scan_max_num_crops": train_config.get("pan_and_scan_max_crops", 4),
        }
    return {}


def _lora_facts(adapter_dir: Path, train_config: dict[str, Any]) -> dict[str, Any]:
    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    ranks = [config.get("r") or 0, *(config.get("rank_pattern") or {}).values()]
    weights = adapter_dir / "adapter_model.safetensors"
    if weights.is_file():  # the tensors are what the server must hold
        ranks += tensor_ranks(safetensors_shapes(weights))
    return {
        "r": config.get("r"),
        "alpha": config.get("lora_alpha"),
        "target_modules": config.get("target_modules"),
        "adapt": train_config.get("adapt", "language"),
        "max_lora_rank": max_lora_rank(max(ranks)),
    }


def _model_label(name: str, adapter_dir: Path, base_local: str, base_id: str) -> str:
    """A name for an evaluated model that says what it is without a path of this machine."""
    if not _is_local_path(name):
        return name
    target = Path(name).expanduser().resolve()
    if target == adapter_dir.resolve():
        return "student (this adapter)"
    if base_local and target == Path(base_local).expanduser().resolve():
        return f"{base_id} (base, zero-shot)"
    if (target / BUNDLE_FILE).is_file() or (target / "adapter_config.json").is_file():
        return f"adapter '{target.name}'"
    return f"local model '{target.name}'"


def _without_paths(value: Any) -> Any:
    """A copy with every absolute path string cut to its last part (file or folder name)."""
    if isinstance(value, dict):
        return {key: _without_paths(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_paths(item) for item in value]
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
        labelled.append({**_without_paths(entry), "model": label})
    students = [e for e in labelled if e["model"] == "student (this adapter)"]
    if not students and len(labelled) == 1:
        labelled[0]["model"] = "student (this adapter)"
    return labelled


def bundle_manifest(
    adapter_dir: Path,
    base_model: str,
    metrics: dict[str, Any] | list[dict[str, Any]] | None = None,
    lint: list[LintProblem] | None = None,
    lora_name: str | None = None,
    dataset_dir: Path | None = None,
    merged: bool = False,
) -> dict[str, Any]:
    """The content of croptune.yaml: everything a server or `predict` needs besides weights."""
    from toolkit.schema import AttributeSchema, extraction_prompt

    adapter_dir = Path(adapter_dir)
    train_config = _read_yaml(adapter_dir / "train_config.yaml")
    train_stats = _read_json(adapter_dir / "train_stats.json")
    facts = _dataset_facts(train_config, dataset_dir)
    schema = facts.get("schema")
    dataset_config = facts.get("config", {})
    preset = _preset(train_config.get("student"))
    evaluations = _evaluations(metrics, adapter_dir, _local_base(adapter_dir), base_model)
    student_metrics = next((e for e in evaluations if e["model"] == "student (this adapter)"), None)
    lora = _lora_facts(adapter_dir, train_config)
    return {
        "croptune_version": _version(),
        "base_model": base_model,
        # A folder of the bundle holding the base, for bases no hub has (croptune's tiny ones).
        "base_folder": None,
        "student": train_config.get("student"),
        "family": getattr(preset, "family", None),
        "lora_name": lora_name or _default_lora_name(train_config.get("student")),
        "adapter": "adapter",
        "merged": "merged" if merged else None,
        "prompt": {
            "instructions": extraction_prompt(AttributeSchema.model_validate(schema))
            if schema
            else None,
            "listing_text": "when the item has a title or text: the instructions, then "
            "'\\n\\nListing text:\\n', then the stripped title and text joined by '\\n'",
            "images": "one image part per image, all BEFORE the one text part: the kept "
            "originals in catalog order (oriented, RGB, longer side at most "
            "originals_max_side), then the crops in image order",
            "order": ["originals", "crops", "text"],
            "messages": "one user message; no system message; the answer is the reply",
            "chat_template": f"adapter/{CHAT_TEMPLATE_FILE}"
            if (adapter_dir / CHAT_TEMPLATE_FILE).is_file()
            else None,
            "originals_max_side": dataset_config.get("max_image_side"),
            "decoding": {"temperature": 0, "max_new_tokens": DEFAULT_MAX_NEW_TOKENS},
        },
        "schema": schema,
        "crop": facts.get("crop_config"),
        "dataset": {
            "strategy": dataset_config.get("strategy"),
            "max_image_side": dataset_config.get("max_image_side"),
            "stats": facts.get("stats"),
            "splits": {
                name: split.get("examples") if isinstance(split, dict) else split
                for name, split in (train_stats.get("dataset") or {}).items()
            },
        },
        "image_budget": dataset_config.get("max_images_per_item"),
        "image_tokens": getattr(preset, "image_tokens", None),
        # The weights' dtype training and evaluation used. vLLM's "auto" turns a float32
        # checkpoint into bfloat16 for Gemma 3, which moves logprobs by ~0.02 on the tiny one.
        "dtype": getattr(preset, "torch_dtype", None),
        "mm_processor_kwargs": _mm_processor_kwargs(train_config, preset),
        # Where crops come from at inference: "detector" (BUNDLE/detector, set by export),
        # else "none": the caller brings boxes (a teacher) or sends originals only.
        "box_source": "none",
        "detector": None,
        "lora": lora,
        "training": {
            "steps": train_stats.get("steps"),
            "first_loss": (train_stats.get("losses") or [None])[0],
            "last_loss": (train_stats.get("losses") or [None])[-1],
            "eval_loss": train_stats.get("eval_loss"),
            "seconds": train_stats.get("seconds"),
            "bf16": train_stats.get("bf16"),
        },
        "metrics": student_metrics,
        "evaluations": evaluations or None,
        "lint": lint_summary(lint or []),
    }


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


# --------------------------------------------------------------------------- export


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
) -> Path:
    """Write the serving bundle of DESIGN for an adapter folder made by `croptune train`.

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
        _write_adapter(adapter_dir, staging / "adapter", base_id)
        base_folder = _write_offline_base(adapter_dir, staging / OFFLINE_BASE_DIR, base_id)
        detector = _write_detector(detector_dir, staging / "detector") if detector_dir else None
        manifest = bundle_manifest(
            adapter_dir, base_id, metrics, problems, lora_name, dataset_dir, merged=merge
        )
        if base_folder:
            manifest["base_folder"] = OFFLINE_BASE_DIR
        if detector:
            manifest["box_source"] = "detector"
            manifest["detector"] = detector
        (staging / BUNDLE_FILE).write_text(
            dump_yaml(manifest),
            encoding="utf-8",
        )
        if merge:
            _write_merged(adapter_dir, staging / "merged", base_id)
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
    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base_id
    (target / "adapter_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
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
    source = Path(_local_base(adapter_dir))
    target.mkdir(parents=True)
    for path in source.iterdir():
        if path.is_file() and not path.name.startswith("."):  # not the build-complete marker
            shutil.copy2(path, target)
    from finetune.students import checkpoint_name_problems

    misnamed = checkpoint_name_problems(target)
    if misnamed:
        raise CroptuneError(
            f"the base model in {source} names weights as vLLM cannot load them (e.g. "
            f"{misnamed[0]}); delete that folder so croptune builds it again"
        )
    _name_model_folder(target, base_id)
    return target


def _write_detector(source: Path, target: Path) -> dict[str, Any]:
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
    settings = _read_yaml(source / CONFIG_FILE)
    settings.pop("run", None)  # the training machine's run folder
    (target / CONFIG_FILE).write_text(dump_yaml(settings), encoding="utf-8")
    return {
        "path": "detector",
        "weights": f"detector/{WEIGHTS_FILE}",
        "imgsz": settings.get("imgsz"),
        "classes": settings.get("classes"),
        "box_source": settings.get("box_source"),
        "metrics": settings.get("metrics"),
    }


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
        checkpoint["train_args"] = _without_paths(args)
    for key in ("model", "ema"):
        model = checkpoint.get(key)
        if model is not None and isinstance(getattr(model, "args", None), dict):
            model.args = _without_paths(model.args)
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

    from finetune.students import resolve_student, save_model_folder, silence_known_warnings

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
    train_config = _read_yaml(adapter_dir / "train_config.yaml")
    paths = {
        "the home folder": Path.home(),
        "the adapter folder": adapter_dir,
        "the training output folder": Path(train_config.get("output_dir") or adapter_dir.parent),
        "the dataset folder": Path(dataset_dir or train_config.get("dataset") or adapter_dir),
        "the bundle's own location": out.parent,
        "the working folder": Path.cwd(),
    }
    base = _local_base(adapter_dir)
    if base and _is_local_path(base):
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


# --------------------------------------------------------------------------- model card


def serve_command(manifest: dict[str, Any]) -> str:
    """The `vllm serve` command for the bundle, run from the bundle folder."""
    lora = manifest.get("lora") or {}
    base = manifest["base_model"]
    if manifest.get("base_folder"):  # the bundle's copy, under the base's own name
        base = f"./{manifest['base_folder']} --served-model-name {base}"
    lines = [
        f"vllm serve {base}",
        "--enable-lora",
        f"--lora-modules {manifest['lora_name']}=./adapter",
        f"--max-lora-rank {lora.get('max_lora_rank') or 8}",
    ]
    template = (manifest.get("prompt") or {}).get("chat_template")
    if template:
        lines.append(f"--chat-template ./{template}")
    # No --enable-tower-connector-lora for vision/projector adapters: it crashes vLLM's engine
    # on Gemma 3 (see _FIX_LANGUAGE_ONLY); the card points to merged/ instead.
    return " \\\n    ".join(lines + _model_flags(manifest))


def merged_serve_command(manifest: dict[str, Any]) -> str:
    """The `vllm serve` command for the bundle's merged/ model, run from the bundle folder."""
    lines = [
        f"vllm serve ./{manifest.get('merged') or 'merged'}",
        f"--served-model-name {manifest['lora_name']}",
    ]
    return " \\\n    ".join(lines + _model_flags(manifest))


def _model_flags(manifest: dict[str, Any]) -> list[str]:
    """The flags that make vLLM see inputs as training did: images, length, dtype, processor."""
    flags = [
        f"--limit-mm-per-prompt '{json.dumps({'image': manifest.get('image_budget') or 9})}'",
        f"--max-model-len {_max_model_len(manifest)}",
    ]
    if manifest.get("dtype"):
        flags.append(f"--dtype {manifest['dtype']}")
    if manifest.get("mm_processor_kwargs"):
        flags.append(f"--mm-processor-kwargs '{json.dumps(manifest['mm_processor_kwargs'])}'")
    return flags


def _max_model_len(manifest: dict[str, Any]) -> int:
    """A context length that fits the image budget, the prompt and the answer."""
    per_image = manifest.get("image_tokens") or 256
    kwargs = manifest.get("mm_processor_kwargs") or {}
    if kwargs.get("do_pan_and_scan"):
        per_image *= 1 + int(kwargs.get("pan_and_scan_max_num_crops", 4))
    needed = (manifest.get("image_budget") or 9) * per_image + 1024 + DEFAULT_MAX_NEW_TOKENS
    length = 4096
    while length < needed:
        length *= 2
    return length


CLIENT_SNIPPET = '''\
import base64, io, json
from pathlib import Path

import yaml
from openai import OpenAI
from PIL import Image, ImageOps

MANIFEST = yaml.safe_load(Path("croptune.yaml").read_text())  # run from the bundle folder
PROMPT = MANIFEST["prompt"]
client = OpenAI(base_url="http://localhost:8000/v1", api_key="EMPTY")


def data_url(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")  # lossless: the pixels the student was trained on
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def load_original(path):
    image = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    side = PROMPT["originals_max_side"]
    if side and max(image.size) > side:
        scale = side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    return image


def extract(originals, crops=(), title=None, text=None):
    """originals: photo paths in catalog order; crops: PIL crops cut as in training."""
    images = [load_original(path) for path in originals] + list(crops)
    prompt = PROMPT["instructions"]
    listing = "\\n".join(part.strip() for part in (title, text) if part and part.strip())
    if listing:
        prompt += "\\n\\nListing text:\\n" + listing
    content = [{"type": "image_url", "image_url": {"url": data_url(im)}} for im in images]
    content.append({"type": "text", "text": prompt.strip()})
    reply = client.chat.completions.create(
        model=MANIFEST["lora_name"],  # the LoRA name given to --lora-modules
        messages=[{"role": "user", "content": content}],
        temperature=0,
        max_tokens=PROMPT["decoding"]["max_new_tokens"],
    )
    return json.loads(reply.choices[0].message.content)


if __name__ == "__main__":
    print(extract(["photo_0.jpg", "photo_1.jpg"], title="Acme kettle 1.7 l"))
'''


def _license_note(base: str) -> str:
    if base.startswith("croptune:"):
        return (
            f"`{base}` is a toy model croptune builds offline with random weights: it proves "
            "the plumbing and reads nothing. No hub has it, so the bundle carries it in "
            "`base/`, which the command below serves."
        )
    if base.lower().startswith("google/gemma"):
        return (
            f"This adapter is a derivative of `{base}` and is subject to the Gemma Terms of Use "
            "(https://ai.google.dev/gemma/terms) and its prohibited use policy."
        )
    return (
        f"This adapter is a derivative of `{base}`; the base model's licence (see its model "
        "card) applies to it and to the merged model."
    )


def _metrics_table(evaluations: list[dict[str, Any]]) -> list[str]:
    if not evaluations:
        return [
            "Not evaluated: run `croptune evaluate --model ADAPTER --dataset DIR` before "
            "exporting, or pass `--metrics metrics.json`."
        ]
    lines = [
        "| model | split | examples | JSON valid | precision | recall | F1 | s/example |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for entry in evaluations:
        micro = entry.get("micro") or {}
        lines.append(
            f"| {entry.get('model')} | {entry.get('split', '')} | {entry.get('examples', '')} | "
            f"{_fmt(entry.get('json_valid_rate'), 2)} | {_fmt(micro.get('precision'))} | "
            f"{_fmt(micro.get('recall'))} | {_fmt(micro.get('f1'))} | "
            f"{_fmt(entry.get('seconds_per_example'), 2)} |"
        )
    lines += ["", "Field-level micro precision/recall/F1 over (group, field, value) units."]
    return lines


def _fmt(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "n/a"


def model_card(manifest: dict[str, Any]) -> str:
    """The bundle's README: what it is, its data and scores, how to serve and call it."""
    base = manifest["base_model"]
    name = manifest["lora_name"]
    lora = manifest.get("lora") or {}
    dataset = manifest.get("dataset") or {}
    stats = dataset.get("stats") or {}
    per_example = stats.get("images_per_example") or {}
    schema = manifest.get("schema") or {}
    crop = manifest.get("crop") or {}
    training = manifest.get("training") or {}
    lint = manifest.get("lint") or {}
    front = {
        "base_model": base,
        "library_name": "peft",
        "pipeline_tag": "image-text-to-text",
        "tags": ["croptune", "lora", "vision-language", "product-attributes"],
    }
    if base.lower().startswith("google/gemma"):
        front["license"] = "gemma"
    splits = dataset.get("splits") or stats.get("examples") or {}
    groups = schema.get("groups") or {}
    lines = [
        "---",
        dump_yaml(front).strip(),
        "---",
        "",
        f"# {name}: croptune student (LoRA on {base})",
        "",
        "Reads all photos of one product listing (the originals plus targeted crops of their "
        "printed text) and answers with ONE JSON object: identifiers, attributes, origin and "
        "regulatory information, only what is visible. Recipe: Nulli et al. (2026), "
        "*Adapting Vision-Language Models for E-commerce Understanding at Scale*.",
        "",
        "| file | what |",
        "|---|---|",
        "| `adapter/` | the PEFT LoRA adapter plus the training processor, tokenizer and chat "
        "template |",
        "| `croptune.yaml` | base model, prompt, schema, crop config, image budget, metrics, "
        "vLLM lint |",
    ]
    if manifest.get("detector"):
        lines.append(
            "| `detector/` | the region-proposal detector (ultralytics) whose boxes the crops "
            "are cut from at inference |"
        )
    if manifest.get("merged"):
        lines.append(
            "| `merged/` | the base with the adapter merged in (safetensors + processor) |"
        )
    if manifest.get("base_folder"):
        lines.append(
            f"| `{manifest['base_folder']}/` | the base model itself (no hub has it), "
            "loadable by vLLM and transformers |"
        )
    lines += [
        "",
        "## Base model and licence",
        "",
        f"- base: `{base}` (family {manifest.get('family') or 'n/a'}, "
        f"{manifest.get('image_tokens') or 'n/a'} image tokens per image)",
        f"- LoRA: rank {lora.get('r')}, alpha {lora.get('alpha')}, adapted: {lora.get('adapt')}",
        f"- {_license_note(base)}",
        "",
        "## Training data",
        "",
        f"- examples per split: {', '.join(f'{k} {v}' for k, v in splits.items()) or 'n/a'}",
        f"- images per example (strategy {dataset.get('strategy') or 'n/a'}, budget "
        f"{manifest.get('image_budget') or 'n/a'}): median {per_example.get('median', 'n/a')}, "
        f"mean {per_example.get('mean', 'n/a')}, max {per_example.get('max', 'n/a')}",
        f"- crops: {crop.get('strategy') or 'none recorded'}",
        f"- schema `{schema.get('name') or 'n/a'}`: "
        + (", ".join(f"{g} ({len(f)} fields)" for g, f in groups.items()) or "n/a"),
        f"- training: {training.get('steps')} steps, loss {_fmt(training.get('first_loss'))} -> "
        f"{_fmt(training.get('last_loss'))}, validation loss {_fmt(training.get('eval_loss'))}",
        "",
        "## Metrics (held-out items)",
        "",
        *_metrics_table(manifest.get("evaluations") or []),
        "",
        "## Serve with vLLM",
        "",
        "From this folder (`--max-lora-rank` is the adapter's rank, `--limit-mm-per-prompt` "
        "the image budget, `--chat-template` the template the student was trained with):",
        "",
        "```bash",
        serve_command(manifest),
        "```",
        "",
    ]
    adapt = str(lora.get("adapt") or "language")
    if adapt != "language":
        lines += [
            f"This adapter also trained the {adapt.removeprefix('language+')} part(s). vLLM "
            "loads the adapter but ignores LoRA weights there without a word, so the command "
            "above serves a model that sees images as the base does. "
            + (
                "Serve `merged/` below, which holds them as trained."
                if manifest.get("merged")
                else "Export with `--merge` and serve `merged/`, which holds them as trained."
            )
            + f" (`--enable-tower-connector-lora` crashed vLLM {VLLM_CHECKED}'s engine at the "
            "first image request on Gemma 3.)",
            "",
        ]
    if manifest.get("merged"):
        lines += [
            "Or serve the merged model, no LoRA machinery (the same model name):",
            "",
            "```bash",
            merged_serve_command(manifest),
            "```",
            "",
        ]
    lines += [
        "## Call it",
        "",
        "The model name is the LoRA name. Images go first, as data URLs, originals then crops, "
        "then the prompt of `croptune.yaml` (the exact training instructions):",
        "",
        "```python",
        CLIENT_SNIPPET.rstrip(),
        "```",
        "",
        "The crops must be cut the way training cut them (`croptune.yaml: crop`), from boxes "
        + (
            "proposed by `detector/`"
            if manifest.get("detector")
            else "you bring (this bundle has no detector: give a box teacher's boxes, or send "
            "the originals only and lose the small print)"
        )
        + ". `croptune predict --bundle . CATALOG --out preds.jsonl` does boxes -> crops -> "
        "request in one command; croptune's `docs/serving.md` shows the crop functions.",
        "",
        "With transformers: `AutoProcessor.from_pretrained('adapter')` and "
        f"`PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained('{base}'), "
        "'adapter')`.",
        "",
        "## Intended use and limits",
        "",
        "- Drafting catalog attributes and compliance fields from listing photos for human "
        "review. Not a compliance decision: a mark the photos do not show is not there for "
        "the model, and a printed mark is not proof of certification.",
        "- It reads what is visible; small print needs the crops (trained with them, it does "
        "worse without).",
        "- Scores above are on held-out items of the training catalog; measure on yours.",
        "",
        "## vLLM lint",
        "",
        f"{'Servable' if lint.get('vllm_servable', True) else 'NOT servable'} by vLLM: "
        f"{lint.get('errors', 0)} error(s), {lint.get('warnings', 0)} warning(s).",
    ]
    lines += [f"- {p['level']} [{p['rule']}] {p['message']}" for p in lint.get("problems") or []]
    return "\n".join(lines) + "\n"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("croptune")
    except PackageNotFoundError:
        return "unknown"
