"""In-process generation with a transformers vision-language model: load, encode, generate, decode.

The one path of every model croptune runs in-process: the local teacher
(teacher_labeling.local) and the student (finetune.infer). Prompts are encoded as TRL's
collator encodes them at training time (the chat template renders the image placeholders
and the one <bos>; the processor expands the images; no tokenizer special tokens), with the
per-call image options a saved processor needs (Gemma 3's pan & scan); generation is greedy
unless a temperature is given and stops a row that falls into a runaway repetition.

torch and transformers are imported inside the functions: importing this module is light.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

# A runaway answer: the last tokens repeat one pattern of at most REPEAT_MAX_PERIOD tokens at
# least REPEAT_MIN_TIMES times over REPEAT_MIN_SPAN tokens or more (a nesting loop such as
# {"attributes":{"attributes":... is a 4-token pattern). No schema answer repeats itself so.
REPEAT_MAX_PERIOD = 32
REPEAT_MIN_TIMES = 6
REPEAT_MIN_SPAN = 96
# The tail that decides: a row is a runaway exactly when its last REPEAT_WINDOW tokens are one
# (every period up to REPEAT_MAX_PERIOD fits REPEAT_MIN_TIMES times in it, over >= the span).
REPEAT_WINDOW = max(REPEAT_MIN_SPAN, REPEAT_MIN_TIMES * REPEAT_MAX_PERIOD)

# (images, chat messages): the messages hold one {"type": "image"} part per image.
Chat = tuple[Sequence[Any], list[dict[str, Any]]]


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


class RepetitionStop:
    """A transformers StoppingCriteria: ends a row once its new tokens repeat in a runaway."""

    def __init__(self, prompt_length: int) -> None:
        self.prompt_length = prompt_length

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        """One bool per row: whether that row's new tokens now end in a runaway."""
        import torch

        # Only the deciding tail is copied and scanned: bounded work per step, however long.
        start = max(self.prompt_length, input_ids.shape[1] - REPEAT_WINDOW)
        done = [runaway_repetition(row) is not None for row in input_ids[:, start:].tolist()]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def load_vlm(
    source: str,
    processor_source: str | None = None,
    attn_implementation: str | None = None,
    shard: bool = False,
    wrap: Callable[[Any], Any] | None = None,
) -> tuple[Any, Any]:
    """(model in eval mode, processor) of an AutoModelForImageTextToText checkpoint.

    float32 on CPU (bf16 matmuls are slow there), the checkpoint's own dtype on a GPU. shard:
    spread the model over the GPUs (device_map "auto"); else it is moved to one GPU after
    `wrap` (e.g. attaching a LoRA adapter) ran on it. Loading errors propagate as raised.
    """
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    on_gpu = torch.cuda.is_available()
    kwargs: dict[str, Any] = {"dtype": "auto" if on_gpu else torch.float32}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if shard and on_gpu:
        kwargs["device_map"] = "auto"
    model = AutoModelForImageTextToText.from_pretrained(source, **kwargs)
    if wrap is not None:
        model = wrap(model)
    if on_gpu and not shard:
        # transformers' wrapper around Module.to hides its signature (it reads "cuda" as self).
        model = model.to("cuda")  # type: ignore[arg-type]
    processor = AutoProcessor.from_pretrained(processor_source or source)
    return model.eval(), processor


def chat_messages(prompt: str, images: int) -> list[dict[str, Any]]:
    """One user message: an image part per image, then the prompt text."""
    content: list[dict[str, Any]] = [{"type": "image"} for _ in range(images)]
    content.append({"type": "text", "text": prompt})
    return [{"role": "user", "content": content}]


def image_processor_kwargs(processor: Any) -> dict[str, Any]:
    """Per-call image options a saved processor needs (Gemma 3's pan & scan), else {}.

    Gemma3Processor's call defaults say do_pan_and_scan=False and beat the image
    processor's own setting, so the option must travel with every call (training collator,
    inference; vLLM: --mm-processor-kwargs).
    """
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is None or not getattr(image_processor, "do_pan_and_scan", False):
        return {}
    return {
        "do_pan_and_scan": True,
        "pan_and_scan_max_num_crops": image_processor.pan_and_scan_max_num_crops,
    }


def encode_chats(
    processor: Any, chats: Sequence[Chat], images_kwargs: Mapping[str, Any] | None = None
) -> Any:
    """The processor's model inputs for a batch of chats, left-padded, ready to generate from.

    Rendered as TRL's collator renders them at training time: the chat template writes the
    image placeholders and its <bos>; the tokenizer adds no special tokens of its own (a
    second <bos> is a prompt no Gemma was trained on). images_kwargs: extra image options
    (on top of the processor's own per-call ones), e.g. a teacher's pixel limits.
    """
    texts = [
        processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        for _, messages in chats
    ]
    images = [list(imgs) for imgs, _ in chats]
    options = {**image_processor_kwargs(processor), **(images_kwargs or {})} if any(images) else {}
    return processor(
        text=texts,
        images=images if any(images) else None,
        **({"images_kwargs": options} if options else {}),
        padding=True,
        padding_side="left",  # new tokens then start at the same column for every row
        add_special_tokens=False,
        return_tensors="pt",
    )


@dataclass(frozen=True)
class Generation:
    """One row's generated answer: its text, new tokens and how generation ended."""

    text: str  # decoded, special tokens skipped, not stripped
    tokens: list[int]  # the new tokens up to and including the end token, without padding
    prompt_tokens: int  # the prompt's length in tokens (padding included)
    ended: bool  # it stopped on an end-of-sequence token
    stopped: str | None  # why it was cut short before its end: a runaway repetition

    @property
    def truncated(self) -> bool:
        """Whether the answer was cut off (token limit or runaway) rather than finished."""
        return not self.ended


def generate(
    model: Any, processor: Any, inputs: Any, max_new_tokens: int, temperature: float = 0.0
) -> list[Generation]:
    """Greedy (sampled when temperature > 0) generation from encoded inputs, one per row.

    A row that falls into a runaway repetition is stopped there (`stopped` says so).
    """
    import torch
    from transformers import StoppingCriteriaList

    inputs = inputs.to(model.device)
    if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    sampling: dict[str, Any] = (
        {"do_sample": True, "temperature": temperature}
        if temperature > 0
        # Greedy; unset the checkpoint's sampling knobs so transformers does not warn.
        else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    )
    prompt_length = int(inputs["input_ids"].shape[1])
    with torch.inference_mode():
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            stopping_criteria=StoppingCriteriaList([RepetitionStop(prompt_length)]),
            **sampling,
        )
    new_tokens = output[:, prompt_length:]
    texts = processor.batch_decode(
        new_tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False
    )
    eos_ids = _eos_ids(model)
    pad = getattr(processor.tokenizer, "pad_token_id", None)
    results = []
    for text, row in zip(texts, new_tokens.tolist(), strict=True):
        end = next((n for n, token in enumerate(row) if token in eos_ids), None)
        if end is not None:
            row = row[: end + 1]
        else:
            while row and row[-1] == pad:  # rows stopped early are padded to the longest
                row.pop()
        loop = runaway_repetition(row)
        stopped = (
            f"runaway repetition: a {loop[0]}-token pattern {loop[1]} times, after "
            f"{len(row)} tokens"
            if loop
            else None
        )
        if stopped:
            logger.debug("generation stopped: %s", stopped)
        results.append(Generation(text, row, prompt_length, end is not None, stopped))
    return results


def _eos_ids(model: Any) -> set[int]:
    """The end-of-sequence token ids generation stops on."""
    eos = model.generation_config.eos_token_id
    return set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
