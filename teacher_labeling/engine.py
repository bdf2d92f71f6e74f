"""The request engine: one pool per teacher with concurrency, rate limits, retries, timeouts.

Built on `openai.AsyncOpenAI` with the client's own retries OFF: croptune retries itself so
every attempt passes through the rate limiters and is counted, and so a fatal answer
(bad key, wrong model) stops the teacher at once instead of being retried.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from toolkit.errors import CroptuneError

logger = logging.getLogger(__name__)

# Statuses worth another attempt: rate limited, server trouble, request timeout, conflict.
RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}
# Statuses that will not get better by retrying: the teacher is misconfigured.
FATAL_STATUS = {400, 401, 403, 404}
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 60.0
RETRY_AFTER_CAP_S = 300.0


class TeacherStopped(CroptuneError):
    """A teacher answered in a way no retry fixes (bad key, wrong model): it is stopped."""


class RequestFailed(Exception):
    """One request failed for good (after its retries); the item is marked failed."""


@dataclass
class Completion:
    """An answer: its text, token usage, why generation ended, and attempts it took."""

    text: str
    usage: dict[str, int]
    finish_reason: str | None
    attempts: int


@dataclass
class EngineStats:
    """Counts of one engine: requests, attempts, retries, failures, tokens."""

    requests: int = 0
    attempts: int = 0
    retries: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retry_reasons: dict[str, int] = field(default_factory=dict)


def resolve_api_key(name: str, api_key_env: str | None, base_url: str | None) -> str:
    """The API key from the environment variable the config names (never from the config)."""
    if api_key_env:
        value = os.environ.get(api_key_env)
        if not value:
            raise CroptuneError(
                f"teacher {name!r}: the environment variable {api_key_env} is not set; "
                f"export {api_key_env}=<your key> (croptune reads keys only from the environment)"
            )
        return value
    if base_url is None:
        raise CroptuneError(
            f"teacher {name!r} calls OpenAI but names no key variable; "
            "add `api_key_env: OPENAI_API_KEY` to its config"
        )
    return "EMPTY"  # a self-hosted server (vLLM) started without --api-key accepts any key


def retry_after_seconds(headers: Any) -> float | None:
    """The server's Retry-After (seconds or HTTP date, or retry-after-ms), if it sent one."""
    if headers is None:
        return None
    milliseconds = headers.get("retry-after-ms")
    if milliseconds:
        try:
            return max(0.0, float(milliseconds) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None  # neither seconds nor an HTTP date: ignore it
    return max(0.0, parsed.timestamp() - time.time())


def backoff_seconds(attempt: int, retry_after: float | None, rng: random.Random) -> float:
    """Wait before attempt `attempt + 1`: the server's Retry-After, else exponential with jitter."""
    if retry_after is not None:
        return min(retry_after, RETRY_AFTER_CAP_S)
    ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt)
    return ceiling * (0.5 + 0.5 * rng.random())  # "equal jitter": never zero, never in lockstep


def describe_error(exc: BaseException) -> str:
    """A one-line reason for an API error, with the status and the server's message."""
    import openai

    if isinstance(exc, openai.APIStatusError):
        message = exc.message
        body = exc.body
        if isinstance(body, dict):
            inner = body.get("error", body)
            if isinstance(inner, dict) and inner.get("message"):
                message = inner["message"]
        return f"HTTP {exc.status_code}: {message}"
    if isinstance(exc, openai.APITimeoutError):
        return "timed out"
    if isinstance(exc, openai.APIConnectionError):
        return f"connection error: {exc.__cause__ or exc}"
    return f"{type(exc).__name__}: {exc}"


class RequestEngine:
    """Sends one teacher's chat completions with its limits; one engine per teacher."""

    def __init__(
        self,
        name: str,
        model: str,
        client: Any,
        max_concurrency: int = 32,
        requests_per_minute: int = 600,
        tokens_per_minute: int = 2_000_000,
        max_retries: int = 6,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        seed: int | None = None,
    ) -> None:
        from aiolimiter import AsyncLimiter

        self.name = name
        self.model = model
        self.client = client
        self.max_retries = max_retries
        self.stats = EngineStats()
        self.stopped: str | None = None
        self._slots = asyncio.Semaphore(max_concurrency)
        # Per-second buckets: a per-minute limit spent in the first second of each minute
        # is how servers that count in shorter windows still answer 429.
        self._requests = AsyncLimiter(max(1.0, requests_per_minute / 60), 1)
        self._tokens = AsyncLimiter(max(1.0, tokens_per_minute / 60), 1)
        self._tokens_per_second = max(1.0, tokens_per_minute / 60)
        self._sleep = sleep
        self._rng = random.Random(seed)

    async def complete(
        self, messages: list[dict[str, Any]], estimated_tokens: int, **params: Any
    ) -> Completion:
        """One chat completion, retried on 429/5xx/timeouts; raises RequestFailed or TeacherStopped."""
        if self.stopped:
            raise TeacherStopped(self.stopped)
        self.stats.requests += 1
        async with self._slots:
            for attempt in range(self.max_retries + 1):
                if self.stopped:
                    raise TeacherStopped(self.stopped)
                await self._requests.acquire()
                await self._tokens.acquire(max(1.0, min(estimated_tokens, self._tokens_per_second)))
                self.stats.attempts += 1
                try:
                    response = await self.client.chat.completions.create(
                        model=self.model, messages=messages, **params
                    )
                except Exception as exc:  # classified below; anything unknown is re-raised
                    wait = self._classify(exc, attempt)
                    await self._sleep(wait)
                    continue
                return self._completion(response, attempt + 1)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _classify(self, exc: Exception, attempt: int) -> float:
        """Seconds to wait before retrying exc, or raise RequestFailed/TeacherStopped."""
        import openai

        reason = describe_error(exc)
        status = exc.status_code if isinstance(exc, openai.APIStatusError) else None
        if status in FATAL_STATUS:
            where = self._where()
            self.stopped = (
                f"teacher {self.name!r} stopped: {reason} (model {self.model!r}"
                + (f" at {where}" if where else "")
                + "); "
                "check the model name, base_url and the key variable; finished work is kept"
            )
            raise TeacherStopped(self.stopped) from exc
        retryable = isinstance(exc, openai.APITimeoutError | openai.APIConnectionError) or (
            status is not None and (status in RETRYABLE_STATUS or status >= 500)
        )
        if isinstance(exc, ValueError) and not isinstance(exc, openai.OpenAIError):
            # A 200 whose body is not JSON (a proxy's error page): the client raises a plain
            # JSONDecodeError. Worth another attempt, like a 5xx.
            retryable, reason = True, f"malformed response body: {exc}"
        if not retryable:
            if isinstance(exc, openai.OpenAIError):
                self.stats.failed += 1
                raise RequestFailed(reason) from exc
            raise exc
        key = str(status) if status else type(exc).__name__
        self.stats.retry_reasons[key] = self.stats.retry_reasons.get(key, 0) + 1
        if attempt >= self.max_retries:
            self.stats.failed += 1
            if isinstance(exc, openai.APIConnectionError) and not isinstance(
                exc, openai.APITimeoutError
            ):
                # Refused through every retry: the server is gone (a killed vLLM), and every
                # other request would spend the same retries. Stop once, with the URL.
                self.stopped = (
                    f"teacher {self.name!r} stopped: nothing answers at "
                    f"{self._where() or 'the OpenAI API'} any more "
                    f"({reason}, {attempt + 1} attempts); finished work is kept: run the same "
                    "command again once the server is back"
                )
                raise TeacherStopped(self.stopped) from exc
            raise RequestFailed(f"gave up after {attempt + 1} attempts: {reason}") from exc
        self.stats.retries += 1
        headers = exc.response.headers if isinstance(exc, openai.APIStatusError) else None
        wait = backoff_seconds(attempt, retry_after_seconds(headers), self._rng)
        logger.debug("%s: %s; retrying in %.1f s", self.name, reason, wait)
        return wait

    def _where(self) -> str | None:
        """The client's base URL, as the config spells it (no trailing slash)."""
        # Any AsyncOpenAI-like client may be given (a wrapper, a test's): the URL is optional.
        url = getattr(self.client, "base_url", None)
        return str(url).rstrip("/") if url else None

    def _completion(self, response: Any, attempts: int) -> Completion:
        choice = response.choices[0] if response.choices else None
        text = (choice.message.content or "") if choice is not None else ""
        usage = response.usage
        counts = {
            "prompt_tokens": int(getattr(usage, "prompt_tokens", 0) or 0),
            "completion_tokens": int(getattr(usage, "completion_tokens", 0) or 0),
        }
        self.stats.prompt_tokens += counts["prompt_tokens"]
        self.stats.completion_tokens += counts["completion_tokens"]
        return Completion(
            text=text,
            usage=counts,
            finish_reason=getattr(choice, "finish_reason", None),
            attempts=attempts,
        )


def check_endpoint(
    name: str,
    base_url: str | None,
    model: str,
    api_key: str,
    timeout_s: float = 10.0,
    wait_s: float = 0.0,
    key_env: str | None = None,
    sleep: Callable[[float], Any] = time.sleep,
) -> list[str] | None:
    """The model names a server lists, once it answers and lists `model`; else CroptuneError.

    One GET /models: cheap, and it finds a dead URL, a wrong key or a model (a LoRA adapter
    vLLM refused) that is not served, before the first real request. A server without
    /models (HTTP 404) is not checked: None. Connection errors and 5xx are retried for
    `wait_s` seconds, for a vLLM still loading its model.
    """
    import openai

    where = base_url or "the OpenAI API"
    client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=0)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            listed = [entry.id for entry in client.models.list()]
            break
        except openai.APIStatusError as exc:
            if exc.status_code == 404:
                logger.debug("%s: %s lists no models (%s); not checked", name, where, exc)
                return None
            if exc.status_code < 500 or time.monotonic() >= deadline:
                key = f"the key in ${key_env}" if key_env else "no key variable (api_key_env)"
                raise CroptuneError(
                    f"{name}: {where} refused GET /models: {describe_error(exc)} (model "
                    f"{model!r}, {key}); check base_url and the key"
                ) from exc
        except (openai.APIConnectionError, openai.APITimeoutError) as exc:
            if time.monotonic() >= deadline:
                waited = f" for {wait_s:.0f} s" if wait_s else ""
                raise CroptuneError(
                    f"{name}: nothing answers at {where} ({describe_error(exc)}){waited}. "
                    "Start the server (vLLM is ready when its log says 'Application startup "
                    "complete.'), or set startup_wait_s to wait for one that is starting"
                ) from exc
        sleep(1.0)
    if model not in listed:
        raise CroptuneError(
            f"{name}: {where} does not serve model {model!r}; it serves "
            f"{', '.join(repr(m) for m in listed) or 'nothing'}. A LoRA adapter must be named by "
            f"vLLM's --lora-modules {model}=ADAPTER (or POST /v1/load_lora_adapter); when vLLM "
            "refuses one, its log says why ('Call to add_lora method failed: ...')"
        )
    return listed


def openai_client(base_url: str | None, api_key: str, timeout_s: float) -> Any:
    """An AsyncOpenAI client with its own retries off (the engine retries)."""
    from openai import AsyncOpenAI

    return AsyncOpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=0)
