"""Files written whole or not at all, and JSON Lines read line by line."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_write(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """A handle on a temporary sibling of path, renamed onto path only if the block succeeds.

    A killed or failing writer never leaves half a file under the final name.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # pid and thread id: several processes or worker threads may write the same target.
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}-{threading.get_ident()}")
    binary = "b" in mode  # text is UTF-8 with \n line ends on every platform
    try:
        with open(
            tmp, mode, encoding=None if binary else "utf-8", newline=None if binary else "\n"
        ) as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_once(target: Path, data: bytes) -> None:
    """Write a content-addressed file unless present; never leaves half a file under its name."""
    if target.exists():
        return
    with atomic_write(target, "wb") as handle:
        handle.write(data)


def json_lines(lines: Iterable[str]) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) of each non-blank line; the value is the
    json.JSONDecodeError itself for a line that is not JSON (the caller decides what that means)."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, exc
