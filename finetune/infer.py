"""Load a student (optionally with a LoRA adapter) and generate answers for multi-image prompts.

Encoding, generation and decoding are toolkit.generation's, the same as the local teacher's.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from toolkit.answers import Example, GeneratedAnswer
from toolkit.errors import CroptuneError
from toolkit.generation import encode_chats, generate, load_vlm
from toolkit.progress import ProgressBar

logger = logging.getLogger(__name__)

# Files save_pretrained writes for a processor; an adapter folder holding them is self-contained.
_PROCESSOR_FILES = ("processor_config.json", "tokenizer_config.json")


def load_student(model: str, adapter: Path | None = None) -> tuple[Any, Any]:
    """Load a student (hub id, path or 'croptune:tiny') and an optional LoRA adapter, for eval."""
    from finetune.students import resolve_student
    from toolkit.noise import silence_known_warnings

    silence_known_warnings()

    base = resolve_student(model)
    processor_source = base
    if adapter is not None and all((Path(adapter) / n).is_file() for n in _PROCESSOR_FILES):
        processor_source = str(adapter)

    def attach(loaded: Any) -> Any:
        return _attach_adapter(loaded, Path(adapter)) if adapter is not None else loaded

    try:
        # Eager attention, as the presets train Gemma 3.
        return load_vlm(base, processor_source, attn_implementation="eager", wrap=attach)
    except (OSError, ValueError) as exc:  # ValueError: a folder that holds no known model
        raise CroptuneError(f"cannot load student model {model!r}: {exc}") from exc


def _attach_adapter(model: Any, adapter: Path) -> Any:
    from peft import PeftModel

    if not (adapter / "adapter_config.json").is_file():
        raise CroptuneError(f"{adapter} is not a LoRA adapter folder (no adapter_config.json)")
    return PeftModel.from_pretrained(model, str(adapter), is_trainable=False)


def generate_answers(
    model: Any,
    processor: Any,
    examples: list[Example],
    max_new_tokens: int = 256,
    batch_size: int = 4,
) -> list[str]:
    """Greedy answers for (images, prompt messages) examples, one stripped string each."""
    answers: list[str] = []
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        answers += [text for text, _ in _generate_batch(model, processor, batch, max_new_tokens)]
        logger.debug("generated %d/%d answers", len(answers), len(examples))
    return answers


def encode_examples(processor: Any, batch: Sequence[Example]) -> Any:
    """The model inputs of a batch of examples, encoded as at training time (left-padded)."""
    return encode_chats(processor, batch)


def _generate_batch(
    model: Any, processor: Any, batch: Sequence[Example], max_new_tokens: int
) -> list[tuple[str, str | None]]:
    """(answer, why generation was cut short or None) per example: greedy, batched."""
    inputs = encode_examples(processor, batch)
    return [(g.text.strip(), g.stopped) for g in generate(model, processor, inputs, max_new_tokens)]


class TransformersBackend:
    """A student answering in-process with transformers: batched greedy generation.

    `model` is a hub id, a local model folder (a merged model, a bundle's `merged/`) or
    'croptune:tiny'; `adapter` an optional LoRA adapter folder on top of it. The model is
    loaded on the first `answer` and kept until `close`.
    """

    kind = "transformers"

    def __init__(
        self,
        model: str,
        adapter: Path | None = None,
        name: str | None = None,
        batch_size: int = 4,
        max_new_tokens: int = 256,
    ) -> None:
        self.model = model
        self.adapter = Path(adapter) if adapter is not None else None
        self.name = name or (str(adapter) if adapter is not None else model)
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self._loaded: tuple[Any, Any] | None = None

    def identity(self) -> dict[str, Any]:
        """What identifies its answers: the weights (model, adapter) and the answer length."""
        identity: dict[str, Any] = {"kind": self.kind, "name": self.name, "model": str(self.model)}
        if self.adapter is not None:
            identity["adapter"] = str(self.adapter)
        identity["max_new_tokens"] = str(self.max_new_tokens)
        return identity

    def check_ready(self) -> None:
        """Nothing to check before loading: a model that does not load fails in prepare."""

    def prepare(self) -> None:
        """Load the model (once)."""
        self._load()

    def _load(self) -> tuple[Any, Any]:
        """The (model, processor), loaded on the first call."""
        if self._loaded is None:
            self._loaded = load_student(self.model, self.adapter)
        return self._loaded

    def answer(self, examples: Sequence[Example], progress: bool = False) -> list[GeneratedAnswer]:
        """Greedy answers; each example's seconds are its batch's time divided by the batch size."""
        model, processor = self._load()
        answers: list[GeneratedAnswer] = []
        with ProgressBar(f"answer ({self.name})", len(examples), progress) as bar:
            for start in range(0, len(examples), self.batch_size):
                batch = examples[start : start + self.batch_size]
                started = time.perf_counter()
                texts = _generate_batch(model, processor, batch, self.max_new_tokens)
                seconds = (time.perf_counter() - started) / len(batch)
                answers += [
                    GeneratedAnswer(text=text, seconds=seconds, stopped=stopped)
                    for text, stopped in texts
                ]
                bar.advance(len(batch))
        return answers

    def close(self) -> None:
        """Drop the loaded model so the next one fits in memory."""
        self._loaded = None
        gc.collect()
