"""Load a student (optionally with a LoRA adapter) and generate answers for multi-image prompts."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from toolkit.errors import CroptuneError

logger = logging.getLogger(__name__)

# Files save_pretrained writes for a processor; an adapter folder holding them is self-contained.
_PROCESSOR_FILES = ("processor_config.json", "tokenizer_config.json")


def load_student(model: str, adapter: Path | None = None) -> tuple[Any, Any]:
    """Load a student (hub id, path or 'croptune:tiny') and an optional LoRA adapter, for eval."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from finetune.students import resolve_student, silence_known_warnings

    silence_known_warnings()

    base = resolve_student(model)
    # fp32 on CPU (bf16 matmuls are slow there); the checkpoint's own dtype on a GPU.
    on_gpu = torch.cuda.is_available()
    try:
        loaded = AutoModelForImageTextToText.from_pretrained(
            base, dtype="auto" if on_gpu else torch.float32, attn_implementation="eager"
        )
    except OSError as exc:
        raise CroptuneError(f"cannot load student model {model!r}: {exc}") from exc
    processor_source = base
    if adapter is not None:
        loaded = _attach_adapter(loaded, Path(adapter))
        if all((Path(adapter) / name).is_file() for name in _PROCESSOR_FILES):
            processor_source = str(adapter)
    processor = AutoProcessor.from_pretrained(processor_source)
    if on_gpu:
        loaded = loaded.to("cuda")
    return loaded.eval(), processor


def _attach_adapter(model: Any, adapter: Path) -> Any:
    from peft import PeftModel

    if not (adapter / "adapter_config.json").is_file():
        raise CroptuneError(f"{adapter} is not a LoRA adapter folder (no adapter_config.json)")
    return PeftModel.from_pretrained(model, str(adapter), is_trainable=False)


def _render_prompt(processor: Any, messages: list[dict[str, Any]]) -> str:
    # Same rendering as TRL's collator at training time: the template only needs the image
    # placeholders; the processor expands each into the image's soft tokens afterwards.
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def generate_answers(
    model: Any,
    processor: Any,
    examples: list[tuple[list[Any], list[dict[str, Any]]]],
    max_new_tokens: int = 256,
    batch_size: int = 4,
) -> list[str]:
    """Greedy answers for (images, prompt messages) examples, one stripped string each."""
    import torch

    answers: list[str] = []
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        texts = [_render_prompt(processor, messages) for _, messages in batch]
        images = [list(imgs) for imgs, _ in batch]
        inputs = processor(
            text=texts,
            images=images if any(images) else None,
            padding=True,
            padding_side="left",  # new tokens then start at the same column for every row
            add_special_tokens=False,  # the chat template already starts with <bos>
            return_tensors="pt",
        ).to(model.device)
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        decoded = processor.batch_decode(new_tokens, skip_special_tokens=True)
        answers += [text.strip() for text in decoded]
        logger.debug("generated %d/%d answers", len(answers), len(examples))
    return answers
