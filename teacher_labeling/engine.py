"""The request engine: one pool per teacher with concurrency, rate limits, retries, timeouts.

Built on `openai.AsyncOpenAI` with the client's own retries OFF: croptune retries itself so
every attempt passes through the rate limiters and is counted, and so a fatal answer
(bad key, wrong model) stops the teacher at once instead of being retried.

A teacher may be served by several replicas (one `base_url` list): each attempt goes to the
replica with the fewest requests in flight (ties in turn). A replica that refuses
connections, or fails REPLICA_FAILURES_TO_OPEN times in a row (5xx, timeouts), is taken out
of rotation (a circuit breaker) with a warning naming it; its work moves to the others
without costing the requests a retry, and after REPLICA_COOLDOWN_S one request probes it,
so a replica that comes back is used again. An answer received is never asked again: each
attempt goes to one replica only.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Sequence
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
# 5xx/timeouts in a row after which a replica leaves the rotation (a refused connection: at once).
REPLICA_FAILURES_TO_OPEN = 3
# Seconds a replica stays out of rotation before one request probes it again.
REPLICA_COOLDOWN_S = 30.0
# Moves of one request to another replica, per replica, that do not count as its retries.
MOVES_PER_REPLICA = 2
START_HINT = (
    "Start the server (vLLM is ready when its log says 'Application startup complete.'), or "
    "set startup_wait_s to wait for one that is starting"
)


class TeacherStopped(CroptuneError):
    """A teacher answered in a way no retry fixes (bad key, wrong model): it is stopped."""


class RequestFailed(Exception):
    """One request failed for good (after its retries); the item is marked failed."""


class EndpointUnreachable(CroptuneError):
    """Nothing answers at an endpoint's URL (check_endpoint): its url and the reason."""

    def __init__(self, message: str, url: str | None, reason: str) -> None:
        super().__init__(message)
        self.url = url
        self.reason = reason


@dataclass
class Completion:
    """An answer: its text, token usage, why generation ended, and attempts it took."""

    text: str
    usage: dict[str, int]
    finish_reason: str | None
    attempts: int


@dataclass
class ReplicaStats:
    """One server of a teacher: its URL, attempts sent to it, answers, failures, last error."""

    url: str | None  # None: the OpenAI API
    requests: int = 0
    answered: int = 0
    failures: int = 0
    removed: int = 0  # times it was taken out of rotation
    last_error: str | None = None

    @property
    def where(self) -> str:
        """The URL, or "the OpenAI API"."""
        return self.url or "the OpenAI API"

    def describe(self) -> str:
        """One line of counts: requests, answered, failed (last error), times taken out."""
        text = f"{self.requests} requests, {self.answered} answered, {self.failures} failed"
        if self.removed:
            text += f", out of rotation {self.removed} time(s)"
        if self.last_error:
            text += f" (last error: {self.last_error})"
        return text


@dataclass
class EngineStats:
    """Counts of one engine: requests, attempts, retries, failures, tokens, per replica."""

    requests: int = 0
    attempts: int = 0
    retries: int = 0
    failed: int = 0
    moved: int = 0  # attempts sent to another replica after theirs failed (not retries)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retry_reasons: dict[str, int] = field(default_factory=dict)
    replicas: list[ReplicaStats] = field(default_factory=list)


def resolve_api_key(
    name: str, api_key_env: str | None, base_url: str | Sequence[str] | None
) -> str:
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


class _Replica:
    """One replica's client and circuit: in rotation (retry_at None), or out until retry_at."""

    def __init__(self, client: Any, url: str | None) -> None:
        self.client = client
        self.stats = ReplicaStats(url)
        self.in_flight = 0
        self.failures_in_a_row = 0
        self.retry_at: float | None = None
        self.probing = False  # one request is asking it whether it is back

    def usable(self, now: float) -> bool:
        """In rotation, or out of it with its cool-down over and no probe in flight."""
        return self.retry_at is None or (now >= self.retry_at and not self.probing)


@dataclass
class _Tries:
    """One request's attempts so far: all sent, its own retries, and moves between replicas."""

    sent: int = 0
    retries: int = 0
    moves: int = 0
    failed_on: _Replica | None = None


def client_url(client: Any) -> str | None:
    """A client's base URL without the trailing slash, if it has one."""
    # Any AsyncOpenAI-like client may be given (a wrapper, a test's): the URL is optional.
    url = getattr(client, "base_url", None)
    return str(url).rstrip("/") if url else None


class RequestEngine:
    """Sends one teacher's chat completions with its limits; one engine per teacher.

    client: an AsyncOpenAI-like client, or a list of them (one per replica of the teacher);
    urls: their URLs as the config spells them (default: each client's base_url).
    The limits (concurrency, rates, retries) are the teacher's, shared by its replicas.
    """

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
        urls: Sequence[str | None] | None = None,
        cooldown_s: float = REPLICA_COOLDOWN_S,
        failures_to_open: int = REPLICA_FAILURES_TO_OPEN,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from aiolimiter import AsyncLimiter

        clients = list(client) if isinstance(client, list | tuple) else [client]
        if not clients:
            raise ValueError(f"teacher {name!r}: a request engine needs at least one client")
        if urls is None:
            urls = [client_url(c) for c in clients]
        self.name = name
        self.model = model
        self.client = clients[0]  # the first replica's (the Batch API uses one endpoint)
        self.max_retries = max_retries
        self._replicas = [_Replica(c, u) for c, u in zip(clients, urls, strict=True)]
        self.stats = EngineStats(replicas=[r.stats for r in self._replicas])
        self.stopped: str | None = None
        self._slots = asyncio.Semaphore(max_concurrency)
        # Per-second buckets: a per-minute limit spent in the first second of each minute
        # is how servers that count in shorter windows still answer 429.
        self._requests = AsyncLimiter(max(1.0, requests_per_minute / 60), 1)
        self._tokens = AsyncLimiter(max(1.0, tokens_per_minute / 60), 1)
        self._tokens_per_second = max(1.0, tokens_per_minute / 60)
        self._sleep = sleep
        self._rng = random.Random(seed)
        self._cooldown_s = cooldown_s
        self._failures_to_open = failures_to_open
        self._clock = clock
        self._turn = 0  # where the next tie between equally busy replicas is broken

    @property
    def clients(self) -> list[Any]:
        """Every replica's client, in the order of the config's URLs."""
        return [r.client for r in self._replicas]

    async def complete(
        self, messages: list[dict[str, Any]], estimated_tokens: int, **params: Any
    ) -> Completion:
        """One chat completion, retried on 429/5xx/timeouts; raises RequestFailed or TeacherStopped."""
        if self.stopped:
            raise TeacherStopped(self.stopped)
        self.stats.requests += 1
        tries = _Tries()
        async with self._slots:
            while True:
                if self.stopped:
                    raise TeacherStopped(self.stopped)
                await self._requests.acquire()
                await self._tokens.acquire(max(1.0, min(estimated_tokens, self._tokens_per_second)))
                replica = self._pick(tries.failed_on)
                probe = replica.probing
                self.stats.attempts += 1
                tries.sent += 1
                replica.stats.requests += 1
                replica.in_flight += 1
                error: Exception | None = None
                try:
                    response = await replica.client.chat.completions.create(
                        model=self.model, messages=messages, **params
                    )
                except Exception as exc:  # classified below; anything unknown is re-raised
                    error = exc
                finally:
                    replica.in_flight -= 1
                    if probe:
                        replica.probing = False  # whatever came of it: booked below
                if error is None:
                    replica.stats.answered += 1
                    self._answers(replica)
                    return self._completion(response, tries.sent)
                wait = self._classify(error, tries, replica, probe)
                tries.failed_on = replica
                if wait is None:  # moved to another replica: no wait, not one of its retries
                    tries.moves += 1
                    continue
                tries.retries += 1
                await self._sleep(wait)

    def _pick(self, failed_on: _Replica | None) -> _Replica:
        """The replica for the next attempt: the least busy usable one, ties in turn."""
        now = self._clock()
        usable = [r for r in self._replicas if r.usable(now)]
        others = [r for r in usable if r is not failed_on]
        usable = others or usable  # a retry prefers another replica than the one that failed
        if not usable:
            # Every replica is out of rotation: ask the one due back first (a counted retry,
            # so a teacher whose servers are all gone stops after its retries).
            return min(self._replicas, key=lambda r: (r.retry_at or 0.0, r.in_flight))
        count = len(self._replicas)
        position = {id(r): i for i, r in enumerate(self._replicas)}
        chosen = min(usable, key=lambda r: (r.in_flight, (position[id(r)] - self._turn) % count))
        self._turn = (position[id(chosen)] + 1) % count
        if chosen.retry_at is not None:
            chosen.probing = True  # its cool-down is over: this request asks whether it is back
        return chosen

    def _answers(self, replica: _Replica) -> None:
        """Book a replica that answered (even with an error status): it is alive."""
        replica.failures_in_a_row = 0
        if replica.retry_at is not None:
            replica.retry_at = None
            logger.info(
                "teacher %r: replica %s answers again; it is back in rotation",
                self.name,
                replica.stats.where,
            )

    def _fails(self, replica: _Replica, reason: str, refused: bool, probe: bool) -> None:
        """Book a replica's failed attempt; take it out of rotation when it looks gone."""
        replica.stats.failures += 1
        replica.stats.last_error = reason
        replica.failures_in_a_row += 1
        if len(self._replicas) < 2:
            return  # nowhere else to send its work: the request's own retries decide
        now = self._clock()
        if replica.retry_at is not None:
            if probe:  # still gone: wait another cool-down before the next probe
                replica.retry_at = now + self._cooldown_s
            return
        if not refused and replica.failures_in_a_row < self._failures_to_open:
            return
        replica.retry_at = now + self._cooldown_s
        replica.stats.removed += 1
        left = sum(1 for r in self._replicas if r.retry_at is None)
        logger.warning(
            "teacher %r: replica %s taken out of rotation (%s%s); %s, and it is tried again in "
            "%.0f s",
            self.name,
            replica.stats.where,
            reason,
            "" if refused else f", {replica.failures_in_a_row} failures in a row",
            f"its requests go to the other {left} replica(s)"
            if left
            else "no replica is left in rotation: requests retry on the ones due back first",
            self._cooldown_s,
        )

    def _classify(
        self, exc: Exception, tries: _Tries, replica: _Replica, probe: bool
    ) -> float | None:
        """Seconds to wait before retrying exc, None to move it to another replica at once,
        or raise RequestFailed/TeacherStopped."""
        import openai

        reason = describe_error(exc)
        status = exc.status_code if isinstance(exc, openai.APIStatusError) else None
        if status in FATAL_STATUS:
            self.stopped = (
                f"teacher {self.name!r} stopped: {reason} (model {self.model!r}"
                + (f" at {replica.stats.url}" if replica.stats.url else "")
                + "); "
                "check the model name, base_url and the key variable; finished work is kept"
            )
            raise TeacherStopped(self.stopped) from exc
        refused = isinstance(exc, openai.APIConnectionError) and not isinstance(
            exc, openai.APITimeoutError
        )
        # The replica's fault (it may be gone), as opposed to an answer about the request.
        fault = isinstance(exc, openai.APIConnectionError) or (status is not None and status >= 500)
        if isinstance(exc, ValueError) and not isinstance(exc, openai.OpenAIError):
            # A 200 whose body is not JSON (a proxy's error page): the client raises a plain
            # JSONDecodeError. Worth another attempt, like a 5xx.
            fault, reason = True, f"malformed response body: {exc}"
        retryable = fault or status in RETRYABLE_STATUS
        if status is not None and not fault:
            self._answers(replica)  # a 429 or 409 is an answer: the replica is there
        if not retryable:
            if isinstance(exc, openai.OpenAIError):
                self.stats.failed += 1
                raise RequestFailed(reason) from exc
            raise exc
        key = str(status) if status else type(exc).__name__
        self.stats.retry_reasons[key] = self.stats.retry_reasons.get(key, 0) + 1
        if fault:
            self._fails(replica, reason, refused, probe)
            if replica.retry_at is not None and self._moves_left(tries, replica):
                self.stats.moved += 1
                logger.debug(
                    "%s: %s at %s; asking another replica", self.name, reason, replica.stats.where
                )
                return None
        if tries.retries >= self.max_retries:
            self.stats.failed += 1
            if len(self._replicas) > 1 and all(r.retry_at is not None for r in self._replicas):
                self.stopped = self._all_gone(tries.sent)
                raise TeacherStopped(self.stopped) from exc
            if refused and len(self._replicas) == 1:
                # Refused through every retry: the server is gone (a killed vLLM), and every
                # other request would spend the same retries. Stop once, with the URL.
                self.stopped = (
                    f"teacher {self.name!r} stopped: nothing answers at "
                    f"{replica.stats.where} any more ({reason}, {tries.sent} attempts); "
                    "finished work is kept: run the same command again once the server is back"
                )
                raise TeacherStopped(self.stopped) from exc
            raise RequestFailed(f"gave up after {tries.sent} attempts: {reason}") from exc
        self.stats.retries += 1
        headers = exc.response.headers if isinstance(exc, openai.APIStatusError) else None
        wait = backoff_seconds(tries.retries, retry_after_seconds(headers), self._rng)
        logger.debug(
            "%s: %s at %s; retrying in %.1f s", self.name, reason, replica.stats.where, wait
        )
        return wait

    def _moves_left(self, tries: _Tries, failed: _Replica) -> bool:
        """Whether a request may move on from `failed` without spending a retry."""
        if tries.moves >= MOVES_PER_REPLICA * len(self._replicas):
            return False  # bounded, so a request cannot circle the replicas for ever
        now = self._clock()
        return any(r.usable(now) for r in self._replicas if r is not failed)

    def _all_gone(self, attempts: int) -> str:
        """The stop message of a teacher none of whose replicas answers: each with its error."""
        last = "; ".join(
            f"{r.stats.where}: {r.stats.last_error or 'no error seen'}" for r in self._replicas
        )
        return (
            f"teacher {self.name!r} stopped: nothing answers at any of its "
            f"{len(self._replicas)} replicas any more ({last}; {attempts} attempts for the last "
            "request); finished work is kept: run the same command again once the servers are back"
        )

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

    async def close(self) -> None:
        """Close every replica's HTTP client."""
        for replica in self._replicas:
            await replica.client.close()


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
                reason = describe_error(exc)
                raise EndpointUnreachable(
                    f"{name}: nothing answers at {where} ({reason}){waited}. {START_HINT}",
                    base_url,
                    reason + waited,
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


def check_endpoints(
    name: str,
    base_urls: Sequence[str | None],
    model: str,
    api_key: str,
    timeout_s: float = 10.0,
    wait_s: float = 0.0,
    key_env: str | None = None,
) -> None:
    """check_endpoint on every replica of an endpoint, at once; CroptuneError unless one answers.

    A replica that does not answer (yet) is only warned about: the engine sends it work once
    it comes up. Anything else (a wrong key, a model not served) fails, naming that replica.
    """
    if len(base_urls) == 1:
        check_endpoint(name, base_urls[0], model, api_key, timeout_s, wait_s, key_env)
        return
    from concurrent.futures import ThreadPoolExecutor

    def check(url: str | None) -> EndpointUnreachable | None:
        try:
            check_endpoint(name, url, model, api_key, timeout_s, wait_s, key_env)
        except EndpointUnreachable as exc:
            return exc
        return None

    with ThreadPoolExecutor(len(base_urls)) as pool:
        results = list(pool.map(check, base_urls))  # the first other error is raised here
    dead = [exc for exc in results if exc is not None]
    if len(dead) == len(base_urls):
        each = "; ".join(f"{exc.url or 'the OpenAI API'}: {exc.reason}" for exc in dead)
        raise CroptuneError(
            f"{name}: nothing answers at any of its {len(dead)} replicas ({each}). {START_HINT}"
        )
    for exc in dead:
        logger.warning(
            "%s: replica %s does not answer (%s); the run starts on the other %d, and sends it "
            "work once it comes up",
            name,
            exc.url or "the OpenAI API",
            exc.reason,
            len(base_urls) - len(dead),
        )


def openai_client(base_url: str | None, api_key: str, timeout_s: float) -> Any:
    """An AsyncOpenAI client with its own retries off (the engine retries)."""
    from openai import AsyncOpenAI

    return AsyncOpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=0)
