"""Load a student (optionally with a LoRA adapter) and generate answers for multi-image prompts."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from toolkit.answers import Example, GeneratedAnswer
from toolkit.errors import CroptuneError
from toolkit.progress import ProgressBar

logger = logging.getLogger(__name__)

# Files save_pretrained writes for a processor; an adapter folder holding them is self-contained.
_PROCESSOR_FILES = ("processor_config.json", "tokenizer_config.json")
# A runaway answer: the last tokens repeat one pattern of at most REPEAT_MAX_PERIOD tokens at
# least REPEAT_MIN_TIMES times over REPEAT_MIN_SPAN tokens or more (a nesting loop such as
# {"attributes":{"attributes":... is a 4-token pattern). No schema answer repeats itself so.
REPEAT_MAX_PERIOD = 32
REPEAT_MIN_TIMES = 6
REPEAT_MIN_SPAN = 96
# The tail that decides: a row is a runaway exactly when its last REPEAT_WINDOW tokens are one
# (every period up to REPEAT_MAX_PERIOD fits REPEAT_MIN_TIMES times in it, over >= the span).
REPEAT_WINDOW = max(REPEAT_MIN_SPAN, REPEAT_MIN_TIMES * REPEAT_MAX_PERIOD)


def runaway_repetition(tokens: Sequence[int]) -> tuple[int, int] | None:
    """(period, times) of a pattern the tokens end by repeating, if it is a runaway; else None."""
    n = len(tokens)
    for period in range(1, REPEAT_MAX_PERIOD + 1):
        if n < period * 2:
            break
        times = 1
        while (times + 1) * period <= n and tokens[
            n - (times + 1) * period : n - times * period
        ] == tokens[n - period :]:
            times += 1
        if times >= REPEAT_MIN_TIMES and times * period >= REPEAT_MIN_SPAN:
            return period, times
    return None


class _RepetitionStop:
    """A transformers StoppingCriteria: ends a row once its new tokens repeat in a runaway."""

    def __init__(self, prompt_length: int) -> None:
        self.prompt_length = prompt_length

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        # Only the deciding tail is copied and scanned: bounded work per step, however long.
        start = max(self.prompt_length, input_ids.shape[1] - REPEAT_WINDOW)
        done = [runaway_repetition(row) is not None for row in input_ids[:, start:].tolist()]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


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
    except (OSError, ValueError) as exc:  # ValueError: a folder that holds no known model
        raise CroptuneError(f"cannot load student model {model!r}: {exc}") from exc
    processor_source = base
    if adapter is not None:
        loaded = _attach_adapter(loaded, Path(adapter))
        if all((Path(adapter) / name).is_file() for name in _PROCESSOR_FILES):
            processor_source = str(adapter)
    processor = AutoProcessor.from_pretrained(processor_source)
    if on_gpu:
        # transformers' wrapper around Module.to hides its signature (it reads "cuda" as self).
        loaded = loaded.to("cuda")  # type: ignore[arg-type]
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


def _generate_batch(
    model: Any, processor: Any, batch: Sequence[Example], max_new_tokens: int
) -> list[tuple[str, str | None]]:
    """(answer, why generation was cut short or None) per example: greedy, batched."""
    import torch
    from transformers import StoppingCriteriaList

    from finetune.train import image_processor_kwargs

    texts = [_render_prompt(processor, messages) for _, messages in batch]
    images = [list(imgs) for imgs, _ in batch]
    # Pan & scan saved with a Gemma 3 processor only applies when passed per call.
    image_kwargs = image_processor_kwargs(processor) if any(images) else {}
    inputs = processor(
        text=texts,
        images=images if any(images) else None,
        **({"images_kwargs": image_kwargs} if image_kwargs else {}),
        padding=True,
        padding_side="left",  # new tokens then start at the same column for every row
        add_special_tokens=False,  # the chat template already starts with <bos>
        return_tensors="pt",
    ).to(model.device)
    prompt_length = inputs["input_ids"].shape[1]
    with torch.inference_mode():
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            stopping_criteria=StoppingCriteriaList([_RepetitionStop(prompt_length)]),
        )
    new_tokens = output[:, prompt_length:]
    decoded = processor.batch_decode(new_tokens, skip_special_tokens=True)
    pad = processor.tokenizer.pad_token_id
    results = []
    for text, row in zip(decoded, new_tokens.tolist(), strict=True):
        while row and row[-1] == pad:  # rows that ended early are padded to the longest
            row.pop()
        loop = runaway_repetition(row)
        stopped = (
            f"runaway repetition: a {loop[0]}-token pattern {loop[1]} times, after "
            f"{len(row)} tokens"
            if loop
            else None
        )
        results.append((text.strip(), stopped))
    return results


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
