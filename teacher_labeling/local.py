"""A teacher run in-process: a transformers vision-language model, no server needed.

Useful for small teachers, offline runs and tests. Requests are answered one at a
time per model (generate is not re-entrant and a model fills its device); larger
runs belong on a vLLM server behind the `openai` kind.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

from teacher_labeling.conventions import QWEN_FACTOR
from teacher_labeling.teachers import (
    Teacher,
    TeacherAnswer,
    TeacherConfig,
    TeacherError,
    TeacherRequest,
)
from toolkit.errors import CroptuneError
from toolkit.schema import AttributeSchema
from toolkit.store import ItemRow

logger = logging.getLogger(__name__)


class LocalTeacher(Teacher):
    """A transformers vision-language model run in-process (AutoModelForImageTextToText)."""

    def __init__(self, config: TeacherConfig, schema: AttributeSchema) -> None:
        super().__init__(config, schema)
        self._model: Any = None
        self._processor: Any = None
        # The thread lock guards the model itself: a cancelled request's generate goes on
        # in its worker thread, and the next one must still wait for it.
        self._thread_lock = threading.Lock()
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    @property
    def loaded(self) -> bool:
        """Whether the model and processor are in memory."""
        return self._model is not None

    def check_ready(self) -> None:
        """Fail fast, without loading anything, when the model is a local path that is missing."""
        model = self.config.model
        # Hub ids are "name" or "org/name" (and may hold dots: "Qwen/Qwen2.5-VL-7B-Instruct").
        looks_local = model.startswith(("/", ".", "~")) or model.count("/") > 1 or "\\" in model
        if looks_local and not Path(model).expanduser().exists():
            raise CroptuneError(f"local teacher {self.name!r}: model path {model!r} does not exist")

    def load(self) -> None:
        """Load the processor and model (once; blocking: call it from a worker thread)."""
        with self._thread_lock:
            self._load_locked()

    def _load_locked(self) -> None:
        if self._model is not None:
            return
        model_id = self.config.model
        self.check_ready()
        try:
            import torch
            from transformers import AutoModelForImageTextToText, AutoProcessor

            on_gpu = torch.cuda.is_available()
            processor = AutoProcessor.from_pretrained(model_id)
            model = AutoModelForImageTextToText.from_pretrained(
                model_id,
                dtype="auto" if on_gpu else torch.float32,
                **({"device_map": "auto"} if on_gpu else {}),
            )
        except Exception as exc:  # noqa: BLE001 - any load failure stops the run, with its cause
            raise CroptuneError(
                f"local teacher {self.name!r}: cannot load model {model_id!r} "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        if self.config.coords == "qwen2.5-vl":
            _check_qwen_processor(self.name, model_id, processor)
        model.eval()
        self._processor, self._model = processor, model
        logger.info("%s: loaded %s on %s", self.name, model_id, model.device)

    def messages(self, request: TeacherRequest) -> list[dict[str, Any]]:
        """The chat messages of a request: one image part per image, then the instruction."""
        content: list[dict[str, Any]] = [{"type": "image"} for _ in request.images]
        content.append({"type": "text", "text": request.prompt})
        return [{"role": "user", "content": content}]

    def processor_kwargs(self) -> dict[str, Any]:
        """Extra processor arguments: for qwen2.5-vl, the config's pixel limits.

        croptune sends boxes images already at a smart_resize fixed point under the
        config's min/max_pixels; the model's processor must resize with the same limits
        (not its own preprocessor_config defaults), or it would resize them again and the
        answer's pixel boxes would be in an image croptune never saw. The per-call
        `min_pixels`/`max_pixels` arguments are deprecated in transformers 5: `size`
        with shortest_edge/longest_edge (pixel counts, not sides) is the current spelling.
        """
        if self.config.coords != "qwen2.5-vl":
            return {}
        size = {"shortest_edge": self.config.min_pixels, "longest_edge": self.config.max_pixels}
        return {"images_kwargs": {"size": size}}

    async def answer(self, request: TeacherRequest, item: ItemRow) -> TeacherAnswer:
        """The model's greedy (or sampled, if temperature > 0) answer to one request."""
        async with self._async_lock():
            return await asyncio.to_thread(self._answer_blocking, request)

    def _async_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:  # a new asyncio.run: a new lock
            self._lock, self._lock_loop = asyncio.Lock(), loop
        return self._lock

    def _answer_blocking(self, request: TeacherRequest) -> TeacherAnswer:
        with self._thread_lock:
            self._load_locked()  # CroptuneError: the run stops, every request would fail
            try:
                return self._generate(request)
            except TeacherError:
                raise
            except Exception as exc:  # noqa: BLE001 - one failed request; the item goes on
                raise TeacherError(
                    f"local model {self.config.model!r} failed: {type(exc).__name__}: {exc}"
                ) from exc

    def encode(self, request: TeacherRequest) -> Any:
        """The processor's model inputs for one request (the model must be loaded)."""
        processor = self._processor
        text = processor.apply_chat_template(
            self.messages(request), add_generation_prompt=True, tokenize=False
        )
        return processor(
            text=[text],
            images=list(request.images) or None,
            return_tensors="pt",
            # The chat template already starts with <bos> (Gemma); the tokenizer's own
            # would be a second one, which the model never saw in training.
            add_special_tokens=False,
            **self.processor_kwargs(),
        )

    def _generate(self, request: TeacherRequest) -> TeacherAnswer:
        import torch

        processor, model = self._processor, self._model
        inputs = self.encode(request)
        if self.config.coords == "qwen2.5-vl" and request.image is not None:
            _check_kept_size(request, inputs, processor)
        inputs = inputs.to(model.device)
        if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
            inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        sampling: dict[str, Any] = (
            {"do_sample": True, "temperature": self.config.temperature}
            if self.config.temperature > 0
            # Greedy; unset the checkpoint's sampling knobs so transformers does not warn.
            else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        )
        prompt_length = int(inputs["input_ids"].shape[1])
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=self.config.max_tokens, **sampling)
        new_tokens = output[0, prompt_length:]
        answer = processor.batch_decode(
            new_tokens.unsqueeze(0), skip_special_tokens=True, clean_up_tokenization_spaces=False
        )[0]
        usage: dict[str, Any] = {
            "prompt_tokens": prompt_length,
            "completion_tokens": int(new_tokens.shape[0]),
        }
        if usage["completion_tokens"] >= self.config.max_tokens and not _ended(model, new_tokens):
            usage["truncated"] = 1  # the parser repairs what it can of a cut-off answer
        return TeacherAnswer(text=answer, usage=usage)

    async def close(self) -> None:
        """Drop the model and processor (they load again on next use)."""
        async with self._async_lock():
            await asyncio.to_thread(self._unload)

    def _unload(self) -> None:
        with self._thread_lock:
            self._model = self._processor = None


def _check_qwen_processor(name: str, model_id: str, processor: Any) -> None:
    """coords qwen2.5-vl needs a processor that resizes by smart_resize with factor 28."""
    image_processor = getattr(processor, "image_processor", None)
    size = getattr(image_processor, "size", None)
    patch = getattr(image_processor, "patch_size", None)
    merge = getattr(image_processor, "merge_size", None)
    has_limits = size is not None and "longest_edge" in dict(size) and "shortest_edge" in dict(size)
    if not has_limits or patch is None or merge is None or patch * merge != QWEN_FACTOR:
        raise CroptuneError(
            f"local teacher {name!r}: coords 'qwen2.5-vl' needs a Qwen2.5-VL style processor "
            f"(smart_resize to multiples of {QWEN_FACTOR} within min/max pixels), but "
            f"{model_id!r} has {type(image_processor).__name__} (patch {patch}, merge {merge}); "
            "choose the coords convention of this model"
        )


def _check_kept_size(request: TeacherRequest, inputs: Any, processor: Any) -> None:
    """A boxes image must reach the model at the size sent, or its pixel boxes mean nothing."""
    patch = processor.image_processor.patch_size
    for image, grid in zip(request.images, inputs["image_grid_thw"].tolist(), strict=True):
        seen = (grid[2] * patch, grid[1] * patch)
        if seen != image.size:
            raise TeacherError(
                f"the processor resized the {image.size[0]}x{image.size[1]} image to "
                f"{seen[0]}x{seen[1]}; its boxes would not match the image sent "
                "(are min_pixels/max_pixels the model's?)"
            )


def _ended(model: Any, new_tokens: Any) -> bool:
    """Whether generation stopped on an end-of-sequence token."""
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    return bool(new_tokens.numel()) and int(new_tokens[-1]) in eos_ids
