"""For tests that run `croptune label` as a user does: its command line and its stored requests."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from toolkit.images import encode_jpeg, load_image

CROPTUNE = str(Path(sys.executable).parent / "croptune")
ROOT = Path(__file__).parent.parent


@contextlib.contextmanager
def fake_server_process(log: Path, api_key: str, latency_ms: int = 150) -> Iterator[str]:
    """The fake OpenAI server as its own process (red-square boxes, every request logged to
    log); yields its base URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_openai", "--port", "0", "--latency-ms",
         str(latency_ms), "--script", "red-square-pixels", "--api-key", api_key, "--log", str(log)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        port = int(process.stdout.readline().split()[1])
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        process.wait(timeout=10)


def asked_per_image(log: Path) -> dict[str, int]:
    """Image hash -> how often the fake server was asked about it (its JSON Lines log)."""
    asked: dict[str, int] = {}
    for line in log.read_text().splitlines():
        for image_hash in json.loads(line).get("images", []):
            asked[image_hash] = asked.get(image_hash, 0) + 1
    return asked


def label_command(catalog: Path, config: Path, run: Path) -> list[str]:
    """`croptune --no-progress label CATALOG --config CONFIG --run RUN`."""
    return [
        CROPTUNE,
        "--no-progress",
        "label",
        str(catalog),
        "--config",
        str(config),
        "--run",
        str(run),
    ]


def stored_requests(run: Path, columns: str, where: str = "1") -> list[tuple[Any, ...]]:
    """Rows of a run's requests table, read-only so a running label is not disturbed
    ([] before the run folder or its table exists)."""
    path = run / "run.sqlite"
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(f"SELECT {columns} FROM requests WHERE {where}").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def sent_hash(uri: str) -> str:
    """The hash the fake server logs for a photo croptune sends: its RGB pixels as received
    (JPEG q90)."""
    received = Image.open(io.BytesIO(encode_jpeg(load_image(uri).image, 90))).convert("RGB")
    return hashlib.sha256(received.tobytes()).hexdigest()
