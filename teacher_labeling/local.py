"""A teacher run in-process: a transformers vision-language model, no server needed.

Useful for small teachers, offline runs and tests. Requests are answered one at a
time per model (generate is not re-entrant and a model fills its device); larger
runs belong on a vLLM server behind the `openai` kind. Loading, encoding, generating and
decoding are toolkit.generation's, the same as the in-process student's.
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
from toolkit.generation import chat_messages, encode_chats, generate, load_vlm
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
            model, processor = load_vlm(model_id, shard=True)  # a large teacher: all GPUs
        except Exception as exc:  # noqa: BLE001 - any load failure stops the run, with its cause
            raise CroptuneError(
                f"local teacher {self.name!r}: cannot load model {model_id!r} "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        if self.config.coords == "qwen2.5-vl":
            _check_qwen_processor(self.name, model_id, processor)
        self._processor, self._model = processor, model
        logger.info("%s: loaded %s on %s", self.name, model_id, model.device)

    def messages(self, request: TeacherRequest) -> list[dict[str, Any]]:
        """The chat messages of a request: one image part per image, then the instruction."""
        return chat_messages(request.prompt, len(request.images))

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
        """The processor's model inputs for one request (the model must be loaded).

        Encoded as the in-process student's prompts are (toolkit.generation.encode_chats):
        the chat template's one <bos>, the processor's per-call image options, and for
        qwen2.5-vl the config's pixel limits.
        """
        chat = (list(request.images), self.messages(request))
        images_kwargs = self.processor_kwargs().get("images_kwargs")
        return encode_chats(self._processor, [chat], images_kwargs)

    def _generate(self, request: TeacherRequest) -> TeacherAnswer:
        inputs = self.encode(request)
        if self.config.coords == "qwen2.5-vl" and request.image is not None:
            _check_kept_size(request, inputs, self._processor)
        (result,) = generate(
            self._model, self._processor, inputs, self.config.max_tokens, self.config.temperature
        )
        usage: dict[str, Any] = {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": len(result.tokens),
        }
        if result.truncated:  # the token limit, or a runaway repetition stopped early
            usage["truncated"] = 1  # the parser repairs what it can of a cut-off answer
        if result.stopped:
            logger.info("%s: %s", self.name, result.stopped)
        return TeacherAnswer(text=result.text, usage=usage)

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
