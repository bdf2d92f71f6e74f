"""Several replicas of one teacher: requests spread over them, a replica that dies left out
(its work retried on the others, nothing answered twice), a teacher whose replicas all died
stopped, a replica that comes back used again, and one cache whichever replica answered.

Real `openai` clients against real HTTP servers on 127.0.0.1 (tests/fake_openai.py), real
SQLite run stores, and the `croptune` command where exit codes and console lines matter.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import sqlite3
import subprocess
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml

from teacher_labeling.engine import RequestEngine, openai_client
from teacher_labeling.teachers import LabelConfig, TeacherConfig
from tests.fake_openai import ChatRequest, FakeOpenAI, RedSquareBoxes, Reply
from tests.label_runs import label_command
from tests.test_label_cli import _catalog
from tests.vllm_server import free_port
from toolkit.errors import CroptuneError


class Replica:
    """A replica's responder: answers after latency_s and counts what it answered; after
    die_after answers its server shuts down (a killed vLLM), so the requests then in flight
    get no answer and later ones find nothing listening."""

    def __init__(
        self, server: FakeOpenAI, latency_s: float = 0.05, die_after: int | None = None
    ) -> None:
        self.server, self.latency_s, self.die_after = server, latency_s, die_after
        self.inner = RedSquareBoxes("pixels")
        self.answered: list[str] = []  # one key per request answered: its messages' hash
        self.dead = False
        self.killer: threading.Thread | None = None
        self._lock = threading.Lock()
        server.responder = self

    def __call__(self, request: ChatRequest) -> Reply:
        # The model at work, in the server's own handler thread: other requests are in flight
        # meanwhile. Answers are counted only when they are sent (a reply without delay).
        time.sleep(self.latency_s)
        with self._lock:
            if (
                not self.dead
                and self.die_after is not None
                and len(self.answered) >= self.die_after
            ):
                self.dead = True
                self.killer = threading.Thread(target=self._die, daemon=True)
                self.killer.start()
            if self.dead:
                return Reply(delay_s=60)  # the stopping server hangs up instead of answering
            self.answered.append(_request_key(request.messages))
        return self.inner(request)

    def _die(self) -> None:
        # A moment for the answers already given to leave their sockets: the server then
        # cuts every connection, and an answer cut mid-write would rightly be asked again.
        time.sleep(0.2)
        self.server.stop()


def _request_key(messages: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()


def _replicas(stack: ExitStack, die_after: list[int | None]) -> tuple[list[Replica], list[str]]:
    """Running replicas (one per die_after entry) and their URLs."""
    replicas = [Replica(stack.enter_context(FakeOpenAI()), die_after=n) for n in die_after]
    stack.callback(lambda: [r.killer.join(10) for r in replicas if r.killer is not None])
    return replicas, [r.server.base_url for r in replicas]


def _label_config(path: Path, base_url: str | list[str], max_retries: int = 0) -> Path:
    """A boxes teacher on base_url; no retries by default, so a request whose replica died
    under it is seen to be moved to another without spending a retry it does not have."""
    teacher = {
        "name": "qwen", "role": "boxes", "base_url": base_url, "model": "qwen-test",
        "coords": "pixels", "max_concurrency": 6, "timeout_s": 10, "max_retries": max_retries,
        "requests_per_minute": 60_000,
    }  # fmt: skip
    path.write_text(yaml.safe_dump({"teachers": [teacher]}))
    return path


def _label(tmp_path: Path, catalog: Path, base_url: str | list[str]) -> subprocess.CompletedProcess:
    config = _label_config(tmp_path / "label.yaml", base_url)
    return subprocess.run(
        label_command(catalog, config, tmp_path / "run"), capture_output=True, text=True,
        timeout=300, env={**os.environ, "COLUMNS": "250"},  # summary rows unwrapped
    )  # fmt: skip


def _rows(run: Path, query: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{run / 'run.sqlite'}?mode=ro", uri=True)
    try:
        return sorted(conn.execute(query).fetchall(), key=repr)
    finally:
        conn.close()


STORED = "SELECT cache_key, teacher, model, item_id, image, status, response, usage FROM requests"
BOXES = "SELECT item_id, image, x1, y1, x2, y2, label, source, cache_key FROM boxes"


# ------------------------------------------------------------------------- the engine


@pytest.mark.parametrize(
    ("concurrency", "exact"),
    [
        # one request at a time: each replica in turn, exactly a third each
        (1, [10, 10, 10]),
        # six in flight: the least busy replica each time, every one of them used
        (6, None),
    ],
)
def test_requests_spread_over_three_replicas_and_each_is_counted(concurrency, exact):
    with ExitStack() as stack:
        replicas, urls = _replicas(stack, [None, None, None])

        async def go() -> RequestEngine:
            clients = [openai_client(url, "k", 10.0) for url in urls]
            engine = RequestEngine(
                "qwen", "m", clients, max_concurrency=concurrency, requests_per_minute=60_000
            )
            questions = [[{"role": "user", "content": f"q{i}"}] for i in range(30)]
            await asyncio.gather(*(engine.complete(q, 10) for q in questions))
            await engine.close()
            return engine

        engine = asyncio.run(go())
    served = [len(r.answered) for r in replicas]
    assert sum(served) == 30 and all(served)
    if exact is not None:
        assert served == exact
        assert engine.stats.replicas[0].describe() == "10 requests, 10 answered, 0 failed"
    # the engine's own per-replica counts are the servers'
    assert [(s.url, s.requests, s.answered, s.failures) for s in engine.stats.replicas] == [
        (url, n, n, 0) for url, n in zip(urls, served, strict=True)
    ]


def test_a_replica_that_comes_back_after_the_cool_down_is_used_again(caplog):
    port = free_port()
    gone = f"http://127.0.0.1:{port}/v1"  # nothing listens there yet
    now = [0.0]  # the engine's clock, moved by hand: no test waits for a cool-down
    with ExitStack() as stack:
        (alive,), (url,) = _replicas(stack, [None])

        async def ask(engine: RequestEngine, n: int) -> None:
            for i in range(n):
                await engine.complete([{"role": "user", "content": f"{now[0]}-{i}"}], 10)

        async def go() -> RequestEngine:
            clients = [openai_client(u, "k", 10.0) for u in (gone, url)]
            engine = RequestEngine("qwen", "m", clients, cooldown_s=30, clock=lambda: now[0])
            with caplog.at_level(logging.INFO, logger="teacher_labeling.engine"):
                # the first request finds `gone` refusing: taken out, answered by the other
                await ask(engine, 3)
                assert engine.stats.replicas[0].removed == 1 and len(alive.answered) == 3
                back = stack.enter_context(FakeOpenAI(port=port))
                returned = Replica(back)
                now[0] = 29.0  # within the cool-down: still left out
                await ask(engine, 2)
                assert returned.answered == []
                now[0] = 31.0  # past it: one request probes it, then it is in turn again
                await ask(engine, 4)
                assert len(returned.answered) == 2 and len(alive.answered) == 7
            await engine.close()
            return engine

        engine = asyncio.run(go())
    gone_stats, alive_stats = engine.stats.replicas
    assert (gone_stats.requests, gone_stats.answered, gone_stats.failures) == (3, 2, 1)
    assert engine.stats.retries == 0 and engine.stats.moved == 1  # the move cost no retry
    assert gone_stats.describe().startswith(
        "3 requests, 2 answered, 1 failed, out of rotation 1 time(s) (last error: connection error"
    )
    warning = next(r for r in caplog.records if r.levelno == logging.WARNING)
    assert f"teacher 'qwen': replica {gone} taken out of rotation (connection error" in (
        warning.getMessage()
    )
    assert f"replica {gone} answers again" in caplog.text


def test_repeated_server_errors_take_a_replica_out_without_failing_any_request():
    with ExitStack() as stack:
        (healthy,), (url,) = _replicas(stack, [None])
        broken = stack.enter_context(FakeOpenAI(lambda request: Reply.fail(503, "overloaded")))

        async def go() -> RequestEngine:
            clients = [openai_client(u, "k", 10.0) for u in (broken.base_url, url)]
            engine = RequestEngine("qwen", "m", clients, max_retries=6, sleep=_no_sleep)
            questions = [[{"role": "user", "content": f"q{i}"}] for i in range(12)]
            for question in questions:  # one at a time, so the replica's turns are known
                await engine.complete(question, 10)
            await engine.close()
            return engine

        engine = asyncio.run(go())
    assert len(healthy.answered) == 12 and engine.stats.failed == 0
    broken_stats = engine.stats.replicas[0]
    # three 503s in a row take it out; the cool-down is longer than this test
    assert (broken_stats.failures, broken_stats.removed) == (3, 1)
    assert broken_stats.last_error == "HTTP 503: overloaded"
    # two 503s were the requests' own retries; the third moved on without costing one
    assert (engine.stats.retries, engine.stats.moved) == (2, 1)


async def _no_sleep(_: float) -> None:
    return None


# ------------------------------------------------------------------------- croptune label


@pytest.mark.parametrize(
    ("dies", "warning"),
    [
        # the second replica answers 3 requests, then its server is shut down mid-run
        ("killed mid-run", "teacher 'qwen': replica {url} taken out of rotation (connection error"),
        # the second replica is not there at all: warned at the start, left out at once
        ("dead from the start", "teacher 'qwen': replica {url} does not answer (connection error"),
    ],
)
def test_a_dead_replica_is_left_out_and_its_work_retried_on_the_others(tmp_path, dies, warning):
    catalog = _catalog(tmp_path / "catalog", 24)
    with ExitStack() as stack:
        replicas, urls = _replicas(stack, [None, 3, None])
        if dies == "dead from the start":
            replicas[1].server.stop()
        result = _label(tmp_path, catalog, urls)
    assert result.returncode == 0, result.stderr
    assert warning.format(url=urls[1]) in result.stderr
    run = tmp_path / "run"
    # every item labeled, each with its box
    assert {row[0] for row in _rows(run, BOXES)} == {f"I{i:02d}" for i in range(24)}
    assert len(_rows(run, BOXES)) == 24
    # no request answered twice, across all replicas (counted at the servers)
    answered = [key for r in replicas for key in r.answered]
    assert len(answered) == len(set(answered)) == 24
    assert len(replicas[1].answered) == (3 if dies == "killed mid-run" else 0)
    # the label summary has a row per replica, with what each answered
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if "│" in line}
    for replica, url in zip(replicas, urls, strict=True):
        assert f"{len(replica.answered)} answered" in rows[f"qwen: replica {url}"]


@pytest.mark.parametrize(
    ("when", "message"),
    [
        # every replica dies mid-run: the teacher stops once, naming each with its last error
        ("mid-run", "teacher 'qwen' stopped: nothing answers at any of its 3 replicas any more ("),
        # none answers before the first request: the endpoint check fails, naming each
        ("at the start", "teacher 'qwen': nothing answers at any of its 3 replicas ("),
    ],
)
def test_a_teacher_whose_replicas_are_all_dead_stops_naming_them(tmp_path, when, message):
    catalog = _catalog(tmp_path / "catalog", 24)
    with ExitStack() as stack:
        replicas, urls = _replicas(stack, [2, 2, 2])
        if when == "at the start":
            for replica in replicas:
                replica.server.stop()
        result = _label(tmp_path, catalog, urls)
    assert result.returncode == 1, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    stop = result.stderr[result.stderr.index(message) :]
    for url in urls:
        assert f"{url}: connection error" in stop  # each replica, with its last error
    if when == "mid-run":
        # finished work is kept: every answer a replica gave is in the store
        answered = {key for r in replicas for key in r.answered}
        assert len(answered) == 6
        assert len(_rows(tmp_path / "run", STORED + " WHERE status='ok'")) == 6


def test_replicas_label_a_run_exactly_as_one_server_does(tmp_path):
    from croptune.pipeline import run_label
    from teacher_labeling.teachers import load_label_config

    catalog = _catalog(tmp_path / "catalog", 12)
    stores = {}
    with ExitStack() as stack:
        _, urls = _replicas(stack, [None, None, None])
        for name, base_url in (("one", urls[0]), ("replicas", urls)):
            config = load_label_config(_label_config(tmp_path / f"{name}.yaml", base_url))
            run_label(catalog, config, tmp_path / name)
            stores[name] = (_rows(tmp_path / name, STORED), _rows(tmp_path / name, BOXES))
    assert len(stores["one"][0]) == 12 and len(stores["one"][1]) == 12
    # the same requests under the same cache keys, the same answers, the same boxes
    assert stores["replicas"] == stores["one"]


# ------------------------------------------------------------------------- the config


@pytest.mark.parametrize(
    ("base_url", "message"),
    [
        # no URL in the list
        ([], "teachers.0.base_url: lists no URL"),
        # one replica twice (a trailing slash is the same URL)
        (["http://a:8000/v1", "http://a:8000/v1/"], "teachers.0.base_url: lists http://a:8000/v1 more"),
        # a number where URLs go
        ([8000], "teachers.0.base_url: must be a URL, or a list of the URLs"),
        # a mapping
        ({"url": "http://a/v1"}, "teachers.0.base_url: must be a URL, or a list of the URLs"),
    ],
)  # fmt: skip
def test_a_bad_replica_list_is_refused_naming_the_field(tmp_path, base_url, message):
    from teacher_labeling.teachers import load_label_config

    config = tmp_path / "label.yaml"
    config.write_text(
        yaml.safe_dump({"teachers": [{"name": "qwen", "role": "boxes", "base_url": base_url}]})
    )
    with pytest.raises(CroptuneError, match="is not valid") as caught:
        load_label_config(config)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("base_url", "replicas", "endpoint"),
    [
        # one URL, as before
        ("http://a/v1", ["http://a/v1"], "http://a/v1"),
        # replicas: the first names the endpoint in cache keys
        (["http://a/v1", "http://b/v1"], ["http://a/v1", "http://b/v1"], "http://a/v1"),
        # omitted: the OpenAI API
        (None, [None], None),
    ],
)
def test_base_url_is_one_url_or_a_list_of_replicas(base_url, replicas, endpoint):
    config = TeacherConfig(name="t", role="boxes", model="m", base_url=base_url)
    assert (config.base_urls, config.endpoint_url) == (replicas, endpoint)


def test_config_show_documents_replicas():
    from toolkit.config.docs import describe_config

    text = describe_config(LabelConfig)
    assert "teachers[].base_url  (str | list of str | null; default null)" in text
    assert "replicas" in text.split("teachers[].base_url")[1].split("teachers[].model")[0]
