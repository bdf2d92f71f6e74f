"""Where LoRA goes in each student family: the per-part target table and its lookup."""

from __future__ import annotations

from dataclasses import dataclass

from toolkit.errors import CroptuneError


@dataclass(frozen=True)
class LoraTarget:
    """Where LoRA goes for one part of a model: a module-name regex and/or bare parameters."""

    modules: str | None = None  # peft target_modules regex (re.fullmatch on module names)
    parameters: tuple[str, ...] = ()  # peft target_parameters: weights that are not in a Linear


_LANGUAGE_LAYERS = (
    r"model\.language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
)
# The single source of truth for LoRA placement, per family and part of the model. Each regex was
# checked against named_modules() of the tiny builds of the real config classes
# (tests/test_students_qwen.py re-checks them). Plain names like "q_proj" or "all-linear" also
# hit the vision tower, whose LoRA weights vLLM ignores unless the server runs with
# --enable-tower-connector-lora: the default ("language") stays on the language model.
LORA_TARGETS: dict[str, dict[str, LoraTarget]] = {
    "gemma3": {
        # Attention and MLP projections of the decoder; not lm_head, not the embeddings.
        "language": LoraTarget(modules=_LANGUAGE_LAYERS),
        # SigLIP encoder layers; the patch embedding is a Conv2d and stays frozen. transformers 5
        # loads the checkpoints' vision_tower.vision_model.* as model.vision_tower.*; the
        # optional group keeps the regex valid for the older nesting.
        "vision": LoraTarget(
            modules=r"model\.vision_tower\.(vision_model\.)?encoder\.layers\.\d+\."
            r"(self_attn\.(q|k|v|out)_proj|mlp\.fc(1|2))"
        ),
        # Gemma 3's projector is a bare nn.Parameter (x @ W after pooling), not a Linear.
        "projector": LoraTarget(
            parameters=("model.multi_modal_projector.mm_input_projection_weight",)
        ),
    },
    "qwen2_5_vl": {
        "language": LoraTarget(modules=_LANGUAGE_LAYERS),
        # ViT blocks (fused qkv); the patch embedding is a Conv3d and stays frozen.
        "vision": LoraTarget(
            modules=r"model\.visual\.blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(gate|up|down)_proj)"
        ),
        # The patch merger's 2-layer MLP (Linear, GELU, Linear) into the language model.
        "projector": LoraTarget(modules=r"model\.visual\.merger\.mlp\.(0|2)"),
    },
}


def lora_targets(family: str, parts: list[str] | tuple[str, ...]) -> tuple[str, list[str]]:
    """The peft target_modules regex and target_parameters for these parts of a family."""
    table = LORA_TARGETS[family]
    unknown = [part for part in parts if part not in table]
    if unknown:
        raise CroptuneError(f"unknown LoRA part(s) {unknown} for {family}; known: {list(table)}")
    targets = [table[part] for part in parts]
    regexes = [t.modules for t in targets if t.modules]
    # One alternation of the parts' regexes; fullmatch needs a whole name to match one of them.
    modules = regexes[0] if len(regexes) == 1 else "|".join(f"(?:{r})" for r in regexes)
    return modules, [name for t in targets for name in t.parameters]
