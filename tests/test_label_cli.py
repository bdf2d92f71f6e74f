"""`croptune label` as a user runs it: a real server process, a killed run, secrets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.label_runs import (
    CROPTUNE,
    asked_per_image,
    fake_server_process,
    label_command,
    sent_hash,
    stored_requests,
)
from toolkit.store import RunStore

ROOT = Path(__file__).parent.parent
SECRET = "sk-test-SECRET-f00dcafe1234"


@pytest.fixture
def server(tmp_path):
    """The fake OpenAI server as its own process (latency 150 ms, red-square boxes)."""
    log = tmp_path / "server.jsonl"
    with fake_server_process(log, SECRET) as base_url:
        yield base_url, log


def _catalog(folder: Path, n: int) -> Path:
    """n one-photo items, each with its red square somewhere else (no two alike)."""
    (folder / "img").mkdir(parents=True)
    lines = []
    for i in range(n):
        array = np.full((120, 160, 3), (30, 60 + i, 120), dtype=np.uint8)
        x, y = 5 + (i * 7) % 130, 5 + (i * 11) % 90
        array[y : y + 20, x : x + 20] = (255, 0, 0)
        Image.fromarray(array).save(folder / "img" / f"{i}.png")
        lines.append(
            json.dumps({"item_id": f"I{i:02d}", "images": [f"img/{i}.png"], "title": f"t{i}"})
        )
    (folder / "catalog.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "catalog.jsonl"


def _config(path: Path, base_url: str, concurrency: int = 4) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "teachers": [
                    {
                        "name": "qwen",
                        "role": "boxes",
                        "base_url": base_url,
                        "model": "qwen-test",
                        "api_key_env": "CROPTUNE_TEST_KEY",
                        "coords": "pixels",
                        "max_concurrency": concurrency,
                        "timeout_s": 10,
                        "max_retries": 2,
                    },
                ]
            }
        )  # fmt: skip
    )
    return path


def _env() -> dict[str, str]:
    return {**os.environ, "CROPTUNE_TEST_KEY": SECRET}


def _answered(run: Path) -> set[str]:
    """Items whose boxes answer is stored, read without disturbing the writer."""
    return {r[0] for r in stored_requests(run, "item_id", "status='ok'")}


def test_killed_label_run_resumes_and_never_asks_finished_work_again(tmp_path, server):
    base_url, log = server
    catalog = _catalog(tmp_path / "catalog", 40)
    config = _config(tmp_path / "label.yaml", base_url)
    run = tmp_path / "run"
    command = label_command(catalog, config, run)

    first = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(_answered(run)) < 10 and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)  # no clean-up of any kind
    first.wait()
    finished_before_kill = _answered(run)
    assert 10 <= len(finished_before_kill) < 40, "kill the run midway"

    second = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr

    with RunStore(run, create=False) as store:
        uris = {item.item_id: store.images(item.item_id)[0].uri for item in store.items()}
        for item_id in uris:
            assert len(store.boxes(item_id)) == 1, item_id  # every item ends up labeled
    asked = asked_per_image(log)
    for item_id, uri in uris.items():
        times = asked.get(sent_hash(uri), 0)
        if item_id in finished_before_kill:
            assert times == 1, f"{item_id} was finished before the kill but asked {times} times"
        else:
            assert times in (1, 2), item_id  # at most once more: it was in flight at the kill
    assert sum(asked.values()) - len(uris) <= 4  # re-asked: at most the requests in flight


def test_api_key_never_reaches_the_run_folder_logs_or_exports(tmp_path, server):
    base_url, _ = server
    catalog = _catalog(tmp_path / "catalog", 3)
    config = _config(tmp_path / "label.yaml", base_url)
    run = tmp_path / "run"
    outputs = []
    for args in (
        ["--verbose", "label", str(catalog), "--config", str(config), "--run", str(run)],
        ["label", str(catalog), "--config", str(config), "--run", str(run), "--dry-run"],
        [
            "labels",
            "export",
            "--run",
            str(run),
            "--format",
            "jsonl",
            "--out",
            str(tmp_path / "labels.jsonl"),
        ],
    ):
        result = subprocess.run(
            [CROPTUNE, *args], env=_env(), capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
        outputs += [result.stdout, result.stderr]
    assert all(SECRET not in text for text in outputs)
    files = [p for p in [*run.rglob("*"), tmp_path / "labels.jsonl"] if p.is_file()]
    assert any(p.name == "run.sqlite" for p in files)
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), f"the key leaked into {path}"
    exported = [json.loads(line) for line in (tmp_path / "labels.jsonl").read_text().splitlines()]
    assert [len(e["boxes"]) for e in exported] == [1, 1, 1]


def test_wrong_key_stops_with_one_message_and_exit_1(tmp_path, server):
    base_url, _ = server
    catalog = _catalog(tmp_path / "catalog", 3)
    config = _config(tmp_path / "label.yaml", base_url)
    env = {**os.environ, "CROPTUNE_TEST_KEY": "sk-wrong"}
    result = subprocess.run(
        label_command(catalog, config, tmp_path / "run"),
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    # The endpoint check (GET /models) finds the key wrong before any image is sent.
    assert f"teacher 'qwen': {base_url} refused GET /models: HTTP 401" in result.stderr
    assert "Traceback" not in result.stderr
    assert "sk-wrong" not in result.stderr


def test_missing_key_variable_fails_before_any_work(tmp_path, server):
    base_url, log = server
    catalog = _catalog(tmp_path / "catalog", 2)
    config = _config(tmp_path / "label.yaml", base_url)
    env = {k: v for k, v in os.environ.items() if k != "CROPTUNE_TEST_KEY"}
    result = subprocess.run(
        [CROPTUNE, "label", str(catalog), "--config", str(config), "--run", str(tmp_path / "run")],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert "CROPTUNE_TEST_KEY is not set" in result.stderr
    assert not log.exists() or log.read_text() == ""


@pytest.mark.parametrize(
    ("prices", "shown"),
    [
        # a self-hosted model nobody priced: unknown, not $0.00
        (None, "price unknown"),
        # priced in the config (a free server says so with 0)
        ({"qwen-test": {"input": 0, "output": 0}}, "~$0.00"),
        ({"qwen-test": {"input": 1000, "output": 1000}}, "~$"),
    ],
)
def test_dry_run_says_price_unknown_for_a_model_without_a_price(tmp_path, server, prices, shown):
    base_url, _ = server
    catalog = _catalog(tmp_path / "catalog", 2)
    config = _config(tmp_path / "label.yaml", base_url)
    if prices:
        data = yaml.safe_load(config.read_text())
        config.write_text(yaml.safe_dump({**data, "prices": prices}))
    result = subprocess.run(
        [*label_command(catalog, config, tmp_path / "run"), "--dry-run"],
        env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if "requests to send" in line)
    assert shown in row, row
    if prices is None:
        assert "$0.00" not in result.stdout


def test_flat_reference_attributes_are_grouped_and_every_warning_reaches_the_console(tmp_path):
    """A catalog whose attributes lack the schema's groups: mapped where unambiguous, and
    what was moved or dropped is summarised by cause on the console, not only in the store."""
    folder = tmp_path / "catalog"
    (folder / "img").mkdir(parents=True)
    lines = []
    for i in range(4):
        Image.new("RGB", (60, 40), (10 * i, 100, 100)).save(folder / "img" / f"{i}.png")
        flat = {"brand": f"Acme{i}", "gtin": f"400638133393{i}", "shoe_size": "42"}
        lines.append(
            json.dumps({"item_id": f"F{i}", "images": [f"img/{i}.png"], "attributes": flat})
        )
    (folder / "catalog.jsonl").write_text("\n".join(lines) + "\n")
    config = Path(__file__).resolve().parent.parent / "toolkit" / "configs" / "label-reference.yaml"
    run = tmp_path / "run"
    result = subprocess.run(
        [CROPTUNE, "--no-progress", "label", str(folder / "catalog.jsonl"), "--config", str(config),
         "--run", str(run)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with RunStore(run, create=False) as store:
        assert store.final_attributes("F2") == {
            "attributes": {"brand": "Acme2"},
            "identifiers": {"gtin": "4006381333932"},
        }
    err = result.stderr
    assert "warning(s), by cause" in err
    assert "4 x reference: field 'brand' given at the top level" in err
    assert (
        "4 x reference: unknown field 'shoe_size' dropped (no group has it) "
        "(4 item(s): F0, F1, F2, ...)"
    ) in err


def test_a_run_where_every_request_fails_exits_1_with_failures_grouped_by_cause(tmp_path):
    from tests.fake_openai import FakeOpenAI, FixedAnswer

    catalog = _catalog(tmp_path / "catalog", 5)
    with FakeOpenAI(FixedAnswer("I can see a red square but no text at all, sorry.")) as server:
        config = _config(tmp_path / "label.yaml", server.base_url)
        result = subprocess.run(
            [CROPTUNE, "--no-progress", "label", str(catalog), "--config", str(config), "--run",
             str(tmp_path / "run")],
            env=_env(), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert result.returncode == 1, result.stderr
    err = result.stderr
    # One line for the one cause, with the count and the items, not five lines.
    assert "5 failed request(s), by cause" in err
    assert (
        "5 x qwen: boxes: no JSON object or list in the answer: ... (5 item(s): I00, I01, I02, ...)"
    ) in err
    assert err.count("no JSON object") == 1
    assert "label produced nothing: all 5 request(s) failed" in err


def test_dry_run_checks_the_endpoint_like_a_real_run(tmp_path):
    """An estimate for a teacher that cannot answer is no estimate: the same checks, at once."""
    from tests.vllm_server import free_port

    catalog = _catalog(tmp_path / "catalog", 2)
    url = f"http://127.0.0.1:{free_port()}/v1"
    config = _config(tmp_path / "label.yaml", url)
    result = subprocess.run(
        [*label_command(catalog, config, tmp_path / "run"), "--dry-run"],
        env=_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"teacher 'qwen': nothing answers at {url}" in result.stderr
