"""The request engine's pure parts (retry timing, errors) and its limits on a real server."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from teacher_labeling.cost import DEFAULT_PRICES, Price, image_tokens, price_for, request_cost
from teacher_labeling.engine import (
    RequestEngine,
    RequestFailed,
    TeacherStopped,
    backoff_seconds,
    openai_client,
    resolve_api_key,
    retry_after_seconds,
)
from tests.fake_openai import FailThen, FakeOpenAI, FixedAnswer, Latency, Reply
from toolkit.errors import CroptuneError


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        # seconds, as OpenAI sends it
        pytest.param({"retry-after": "2"}, 2.0, id="seconds"),
        # milliseconds take precedence (OpenAI sends both)
        pytest.param({"retry-after-ms": "1500", "retry-after": "2"}, 1.5, id="milliseconds"),
        # a negative value means "now"
        pytest.param({"retry-after": "-3"}, 0.0, id="negative"),
        # garbage is ignored
        pytest.param({"retry-after": "soon"}, None, id="garbage"),
        # no header
        pytest.param({}, None, id="absent"),
    ],
)
def test_retry_after_seconds(headers, expected):
    assert retry_after_seconds(headers) == expected


def test_retry_after_http_date():
    import email.utils

    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= retry_after_seconds({"retry-after": date}) <= 31


def test_backoff_is_exponential_with_jitter_and_honours_retry_after():
    rng = random.Random(0)
    for attempt in range(8):
        wait = backoff_seconds(attempt, None, rng)
        ceiling = min(60.0, 2**attempt)
        assert ceiling / 2 <= wait <= ceiling
    assert backoff_seconds(3, 7.0, rng) == 7.0  # the server knows best
    assert backoff_seconds(0, 10_000, rng) == 300.0  # but not forever


def test_api_key_only_from_the_named_variable(monkeypatch):
    monkeypatch.setenv("MY_KEY", "k-123")
    assert resolve_api_key("t", "MY_KEY", None) == "k-123"
    monkeypatch.delenv("MY_KEY")
    with pytest.raises(CroptuneError, match="MY_KEY is not set"):
        resolve_api_key("t", "MY_KEY", None)
    assert resolve_api_key("t", None, "http://127.0.0.1:8000/v1") == "EMPTY"  # vLLM without a key


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        pytest.param("gpt-4.1", DEFAULT_PRICES["gpt-4.1"], id="exact"),
        # dated snapshot: the longest listed prefix
        pytest.param("gpt-4.1-mini-2025-04-14", DEFAULT_PRICES["gpt-4.1-mini"], id="snapshot"),
        # self-hosted model: no known price (not $0.00: the user says so with `prices:`)
        pytest.param("Qwen/Qwen2.5-VL-32B-Instruct", None, id="self-hosted"),
    ],
)
def test_price_for(model, expected):
    assert price_for(model, {}) == expected


def test_costs_and_image_tokens():
    assert request_cost(Price(input=2, output=8), 1_000_000, 500_000) == pytest.approx(6.0)
    assert request_cost(Price(input=2, output=8), 1_000_000, 0, batch=True) == pytest.approx(1.0)
    assert image_tokens("Qwen/Qwen2.5-VL-32B-Instruct", 644, 476, "qwen2.5-vl") == 23 * 17
    # 1600x1200 "high" detail: shortest side 768 -> 1024x768 -> 2x2 tiles
    assert image_tokens("gpt-4.1", 1600, 1200) == 85 + 170 * 4


def _engine(server, **kwargs):
    client = openai_client(server.base_url, "k", kwargs.pop("timeout_s", 5.0))
    return RequestEngine("t", "m", client, **kwargs)


MESSAGES = [{"role": "user", "content": "hi"}]


def test_retries_429_with_retry_after_then_succeeds():
    reply = Reply(status=429, headers={"Retry-After": "0.3"}, error="slow down")
    with FakeOpenAI(FailThen(2, reply, FixedAnswer("ok"))) as server:

        async def go():
            engine = _engine(server, max_retries=3)
            return await engine.complete(MESSAGES, 10), engine.stats

        completion, stats = asyncio.run(go())
        times = [r.time for r in server.requests if r.path.endswith("/chat/completions")]
    assert completion.text == "ok" and completion.attempts == 3
    assert stats.retries == 2 and stats.retry_reasons == {"429": 2}
    assert times[1] - times[0] >= 0.28 and times[2] - times[1] >= 0.28  # waited as told


@pytest.mark.parametrize(
    ("fail", "retries", "message"),
    [
        # server errors are retried, then the request fails with the reason
        pytest.param(Reply(status=500, error="boom"), 2, "HTTP 500", id="500"),
        # 503 likewise
        pytest.param(Reply(status=503, error="overloaded"), 1, "HTTP 503", id="503"),
        # a reply slower than the timeout is retried, then fails as a timeout
        pytest.param(Reply(delay_s=1.0, content="late"), 1, "timed out", id="timeout"),
        # a 200 whose body is not JSON (a proxy's error page) is retried like a 5xx
        pytest.param(
            Reply(body="<html>bad gateway</html>"), 1, "malformed response", id="not-json"
        ),
    ],
)
def test_retryable_failures_give_up_after_max_retries(fail, retries, message):
    with FakeOpenAI(FailThen(100, fail, FixedAnswer("never"))) as server:

        async def go():
            engine = _engine(server, max_retries=retries, timeout_s=0.3)
            engine._sleep = _no_sleep
            await engine.complete(MESSAGES, 10)

        with pytest.raises(RequestFailed, match=message):
            asyncio.run(go())
        attempts = [r for r in server.requests if r.path.endswith("/chat/completions")]
    assert len(attempts) == retries + 1


async def _no_sleep(_: float) -> None:
    return None


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_fatal_status_stops_the_teacher_without_retrying(status):
    with FakeOpenAI(FixedAnswer("x")) as server:
        server.responder = lambda request: Reply(status=status, error="no such model")

        async def go():
            engine = _engine(server, max_retries=5)
            with pytest.raises(TeacherStopped, match=f"HTTP {status}"):
                await engine.complete(MESSAGES, 10)
            with pytest.raises(TeacherStopped):  # later requests are refused at once
                await engine.complete(MESSAGES, 10)

        asyncio.run(go())
        attempts = [r for r in server.requests if r.path.endswith("/chat/completions")]
    assert len(attempts) == 1


def test_a_200_without_choices_is_an_empty_answer_not_a_crash():
    with FakeOpenAI(lambda request: Reply(body={"id": "x", "object": "chat.completion"})) as server:

        async def go():
            return await _engine(server).complete(MESSAGES, 10)

        completion = asyncio.run(go())
    assert completion.text == "" and completion.usage == {
        "prompt_tokens": 0,
        "completion_tokens": 0,
    }


def test_concurrency_limit_is_respected():
    with FakeOpenAI(Latency(200, FixedAnswer("ok"))) as server:

        async def go():
            engine = _engine(server, max_concurrency=4)
            started = time.perf_counter()
            await asyncio.gather(*(engine.complete(MESSAGES, 10) for _ in range(12)))
            return time.perf_counter() - started

        elapsed = asyncio.run(go())
    # 12 requests, 4 at a time, 200 ms each: three waves, never fewer
    assert elapsed >= 0.55


def test_requests_per_minute_limit_spaces_requests():
    with FakeOpenAI(FixedAnswer("ok")) as server:

        async def go():
            engine = _engine(server, requests_per_minute=120)  # 2 per second
            await asyncio.gather(*(engine.complete(MESSAGES, 10) for _ in range(6)))

        asyncio.run(go())
        times = sorted(r.time for r in server.requests if r.path.endswith("/chat/completions"))
    # aiolimiter's leaky bucket lets a burst of the per-second share through, then spaces them
    assert times[-1] - times[0] >= 1.0


def _dead_url() -> str:
    """A loopback URL nothing listens on."""
    from tests.vllm_server import free_port

    return f"http://127.0.0.1:{free_port()}/v1"


def test_a_server_gone_for_every_retry_stops_the_teacher_naming_its_url():
    url = _dead_url()

    async def go():
        engine = RequestEngine(
            "qwen",
            "m",
            openai_client(url, "k", 2.0),
            max_retries=1,
            sleep=lambda s: asyncio.sleep(0),
        )
        with pytest.raises(TeacherStopped) as caught:
            await engine.complete(MESSAGES, 10)
        with pytest.raises(TeacherStopped):  # the rest are refused at once, not retried
            await engine.complete(MESSAGES, 10)
        return str(caught.value), engine.stats

    message, stats = asyncio.run(go())
    assert f"teacher 'qwen' stopped: nothing answers at {url} any more" in message
    assert "finished work is kept" in message
    assert stats.attempts == 2  # one request, its one retry; the second never went out


@pytest.mark.parametrize(
    ("server_kind", "model", "message"),
    [
        # nothing listens there: the URL, and what to do about a server still starting
        ("dead", "m", "nothing answers at {url} (connection error"),
        # a wrong key: the server's own words and the variable's name
        ("wrong-key", "m", "{url} refused GET /models: HTTP 401: Incorrect API key provided."),
        # a server without /models (a minimal one): not checked, no error
        ("no-models", "m", None),
    ],
)
def test_check_endpoint_names_the_url_and_the_servers_message(
    monkeypatch, server_kind, model, message
):
    from teacher_labeling.engine import check_endpoint

    monkeypatch.setenv("THE_KEY", "wrong")
    if server_kind == "dead":
        url = _dead_url()
        with pytest.raises(CroptuneError) as caught:
            check_endpoint("teacher 'qwen'", url, model, "k", timeout_s=2)
        assert message.format(url=url) in str(caught.value)
        assert "startup_wait_s" in str(caught.value)
        return
    with FakeOpenAI(FixedAnswer("x"), api_key="right" if server_kind == "wrong-key" else None) as s:
        url = s.base_url
        if message is None:
            assert check_endpoint("teacher 'qwen'", url, model, "k") is None
            return
        with pytest.raises(CroptuneError) as caught:
            check_endpoint("teacher 'qwen'", url, model, "wrong", key_env="THE_KEY")
    assert message.format(url=url) in str(caught.value)
    assert "$THE_KEY" in str(caught.value) and "wrong" not in str(caught.value).split("$THE_KEY")[1]


def test_check_endpoint_waits_for_a_server_that_is_starting():
    """startup_wait_s: connection errors are retried until the server answers."""
    from teacher_labeling.engine import check_endpoint

    url = _dead_url()
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    slept: list[float] = []
    server: list[FakeOpenAI] = []

    def sleep(seconds: float) -> None:  # the server comes up during the second wait
        slept.append(seconds)
        if len(slept) == 2:
            server.append(FakeOpenAI(FixedAnswer("x"), port=port).__enter__())

    try:
        assert check_endpoint("t", url, "m", "k", timeout_s=2, wait_s=30, sleep=sleep) is None
    finally:
        for running in server:
            running.__exit__(None, None, None)
    assert len(slept) == 2
