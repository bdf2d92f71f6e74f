"""For tests that run `croptune label` as a user does: its command line and its stored requests."""

from __future__ import annotations

import hashlib
import io
import sqlite3
import sys
from pathlib import Path
from typing import Any

from PIL import Image

from toolkit.images import encode_jpeg, load_image

CROPTUNE = str(Path(sys.executable).parent / "croptune")


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
