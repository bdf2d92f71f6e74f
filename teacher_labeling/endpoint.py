"""A model behind any OpenAI-compatible endpoint, answering evaluation examples.

Typically the student served by vLLM with its LoRA (`vllm serve BASE --enable-lora
--lora-modules croptune=BUNDLE/adapter`: the model name is then `croptune`), or any other
hosted model to compare against. Requests go through the client layer the teachers use
(`teacher_labeling.client`: request engine, image encoding), and every
answer is cached in a RunStore under (model, prompt, image hashes, parameters, endpoint), so
evaluating again asks nothing twice.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from teacher_labeling.client import EndpointSettings, build_engine, check_ready, image_part
from teacher_labeling.cost import image_tokens, text_tokens
from teacher_labeling.teachers import TeacherRequest
from toolkit.answers import Example, GeneratedAnswer
from toolkit.config import load_stage_config
from toolkit.errors import CroptuneError
from toolkit.images import pixel_hash, to_rgb
from toolkit.progress import ProgressBar
from toolkit.store import RunStore

if TYPE_CHECKING:
    from teacher_labeling.engine import RequestEngine

logger = logging.getLogger(__name__)

ENDPOINT_SUFFIXES = (".yaml", ".yml")
CACHE_ITEM = "evaluate"  # the store's item column: evaluation answers belong to no catalog item

# The seconds of each HTTP attempt of the request being answered in this task.
_ATTEMPT_SECONDS: contextvars.ContextVar[list[float] | None] = contextvars.ContextVar(
    "attempt_seconds", default=None
)


class EndpointConfig(EndpointSettings):
    """A model behind an OpenAI-compatible endpoint, answering evaluation examples.

    The endpoint keys of a teacher (`teacher_labeling.client.EndpointSettings`);
    `max_tokens` is replaced by evaluate's `--max-new-tokens`.
    """

    name: str = Field("", description="Row name in the comparison table (default: the model)")
    model: str = Field(
        description="Model name sent to the endpoint (vLLM with --lora-modules croptune=...: "
        "the LoRA name, croptune)"
    )
    image_format: Literal["jpeg", "png"] = Field(
        "png",
        description="Encoding of the images sent: png (default: lossless, the pixels a student "
        "was trained on) or jpeg (smaller requests, e.g. for a hosted API model)",
    )

    @model_validator(mode="after")
    def _default_name(self) -> EndpointConfig:
        if not self.name:
            self.name = self.model
        return self


def is_endpoint_config(value: str) -> bool:
    """Whether a --model value names an endpoint YAML file (rather than a model)."""
    return value.lower().endswith(ENDPOINT_SUFFIXES) and Path(value).is_file()


def load_endpoint_config(path: Path | str) -> EndpointConfig:
    """An endpoint config from YAML, validated."""
    return load_stage_config(EndpointConfig, Path(path), [], stage="evaluate")


class _TimedClient:
    """An AsyncOpenAI client that records each chat completion attempt's seconds.

    The latency of an example is its answered attempt, not the time it queued for a
    concurrency slot or slept between retries.
    """

    def __init__(self, client: Any) -> None:
        self._client = client
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self._create))

    async def _create(self, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await self._client.chat.completions.create(**kwargs)
        finally:
            record = _ATTEMPT_SECONDS.get()
            if record is not None:
                record.append(time.perf_counter() - started)

    async def close(self) -> None:
        """Close the HTTP client."""
        await self._client.close()


class EndpointBackend:
    """Answers evaluation examples with a model behind an OpenAI-compatible endpoint."""

    kind = "endpoint"

    def __init__(
        self,
        config: EndpointConfig,
        cache_dir: Path | None = None,
        max_new_tokens: int | None = None,
        client: Any = None,
    ) -> None:
        if max_new_tokens is not None:
            config = config.model_copy(update={"max_tokens": max_new_tokens})
        self.config = config
        self.name = config.name
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._client = client
        self._checked = False
        self.asked = 0

    def identity(self) -> dict[str, Any]:
        """What identifies its answers: the server, the model and the request settings (never
        the key)."""
        c = self.config
        endpoint = [
            c.endpoint_url,  # replicas of one model answer alike: the first URL names them
            c.model,
            c.max_tokens,
            c.temperature,
            c.image_format,
            c.jpeg_quality,
        ]
        return {"kind": self.kind, "name": self.name, "endpoint": endpoint}

    def prepare(self) -> None:
        """Check the key variable before anything is sent."""
        self.check_ready()

    def check_ready(self) -> None:
        """Fail fast (before any model is loaded) on a missing key, a dead server or an
        unserved model; once per backend."""
        if self._client is None and not self._checked:
            check_ready(f"endpoint {self.name!r}", self.config)
            self._checked = True

    def request(self, images: list[Any], messages: list[dict[str, Any]]) -> TeacherRequest:
        """The question of one example, with its cache key (images must be RGB)."""
        n_placeholders = sum(
            1
            for message in messages
            if isinstance(message.get("content"), list)
            for part in message["content"]
            if part.get("type") == "image"
        )
        if n_placeholders != len(images):
            raise CroptuneError(
                f"an example has {len(images)} images but {n_placeholders} image placeholders "
                "in its prompt; rebuild the dataset with `croptune dataset build`"
            )
        return TeacherRequest(
            teacher=self.name,
            model=self.config.model,
            item_id=CACHE_ITEM,
            image=None,
            prompt=json.dumps(messages, sort_keys=True, ensure_ascii=False),
            images=images,
            image_hashes=[pixel_hash(image) for image in images],
            parameters={
                "task": "evaluate",
                "temperature": self.config.temperature,
                "max_tokens": self.config.max_tokens,
                "image_format": self.config.image_format,
                "jpeg_quality": self.config.jpeg_quality,
                # Two servers may serve different weights under one model name (replicas
                # do not: they are named by the first URL).
                "endpoint": self.config.endpoint_url,
            },
        )

    def messages(
        self, request: TeacherRequest, messages: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """The chat messages as sent: each image placeholder becomes its image as a data URL."""
        images = iter(zip(request.images, request.image_hashes, strict=True))
        sent = []
        for message in messages:
            content = message.get("content")
            if not isinstance(content, list):
                sent.append({"role": message["role"], "content": content or ""})
                continue
            parts: list[dict[str, Any]] = []
            for part in content:
                if part.get("type") == "image":
                    image, image_hash = next(images)
                    parts.append(image_part(image, image_hash, self.config))
                elif part.get("type") == "text":
                    parts.append({"type": "text", "text": part.get("text") or ""})
            sent.append({"role": message["role"], "content": parts})
        return sent

    def answer(self, examples: Sequence[Example], progress: bool = False) -> list[GeneratedAnswer]:
        """One answer per example; cached answers are not asked again."""
        self.check_ready()
        if self.cache_dir is None:
            return asyncio.run(self._answer_all(examples, None, progress))
        with RunStore(self.cache_dir) as store:
            return asyncio.run(self._answer_all(examples, store, progress))

    async def _answer_all(
        self, examples: Sequence[Example], store: RunStore | None, progress: bool
    ) -> list[GeneratedAnswer]:
        engine = self._engine()
        answers: list[GeneratedAnswer | None] = [None] * len(examples)
        queue = iter(enumerate(examples))

        with ProgressBar(f"answer ({self.name})", len(examples), progress) as bar:

            async def worker() -> None:
                # One shared iterator: each example goes to exactly one worker, and only
                # max_concurrency examples have their images encoded at any time.
                for index, (images, messages) in queue:
                    answers[index] = await self._answer_one(engine, store, images, messages)
                    bar.advance()

            workers = min(self.config.max_concurrency, len(examples)) or 1
            try:
                await asyncio.gather(*(worker() for _ in range(workers)))
            finally:
                if self._client is None:
                    await engine.close()
        return [answer for answer in answers if answer is not None]

    def _engine(self) -> RequestEngine:
        """A request engine for this answer() call (made inside its event loop)."""
        return build_engine(self.config, self._client, wrap=_TimedClient)

    async def _answer_one(
        self,
        engine: RequestEngine,
        store: RunStore | None,
        images: list[Any],
        messages: list[dict[str, Any]],
    ) -> GeneratedAnswer:
        from teacher_labeling.engine import RequestFailed

        rgb = [to_rgb(image) for image in images]
        request = await asyncio.to_thread(self.request, rgb, messages)
        key = request.cache_key
        cached = store.cached_response(key) if store is not None else None
        if cached is not None:
            return GeneratedAnswer(
                text=cached["text"], seconds=cached["usage"].get("seconds"), cached=True
            )
        sent = await asyncio.to_thread(self.messages, request, messages)
        estimated = (
            text_tokens(request.prompt)
            + sum(image_tokens(self.config.model, *image.size) for image in rgb)
            + self.config.max_tokens
        )
        attempts: list[float] = []
        token = _ATTEMPT_SECONDS.set(attempts)
        try:
            completion = await engine.complete(
                sent,
                estimated,
                temperature=self.config.temperature,
                max_tokens=self.config.max_tokens,
            )
        except RequestFailed as exc:
            if store is not None:
                store.record_failure(key, self.name, self.config.model, CACHE_ITEM, None, str(exc))
            logger.warning("%s: an example failed: %s", self.name, exc)
            return GeneratedAnswer(text="", seconds=None, error=str(exc))
        finally:
            _ATTEMPT_SECONDS.reset(token)
        self.asked += 1
        seconds = attempts[-1] if attempts else None
        usage = {
            **completion.usage,
            "attempts": completion.attempts,
            "seconds": seconds,
            "finish_reason": completion.finish_reason,
        }
        if store is not None:
            store.record_answer(
                key, self.name, self.config.model, CACHE_ITEM, None, completion.text, usage
            )
        return GeneratedAnswer(text=completion.text, seconds=seconds)

    def close(self) -> None:
        """Nothing held between answer() calls (each call opens and closes its client)."""
