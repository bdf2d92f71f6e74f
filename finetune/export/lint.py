"""The vLLM lint of a PEFT LoRA adapter: every way it breaks vLLM's LoRA rules (config keys
and tensor names), each with the fix."""

from __future__ import annotations

import json
import re
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from finetune.train.config import VLLM_MAX_LORA_RANKS
from toolkit.bundle import LintEntry, LintSummary
from toolkit.errors import CroptuneError

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


def lint_summary(problems: list[LintProblem]) -> LintSummary:
    """The lint result as recorded in croptune.yaml."""
    errors = sum(1 for p in problems if p.level == "error")
    return LintSummary(
        vllm_servable=errors == 0,
        errors=errors,
        warnings=len(problems) - errors,
        problems=[LintEntry(**p.as_dict()) for p in problems],
    )
