"""A real OpenAI-compatible HTTP server on 127.0.0.1, for tests and benchmarks.

Tests talk to it with the real `openai` client, so retries, timeouts, headers and response
parsing are the library's own rather than a mock's:

    with FakeOpenAI(RedSquareBoxes("pixels")) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="test")
        client.chat.completions.create(model="m", messages=[...])
        assert len(server.requests) == 1

What the server answers is decided by a responder, `responder(ChatRequest) -> Reply | str`;
the ready-made ones ("scripts") below compose: `Latency(200, FailThen(1, 429, RedSquareBoxes()))`.

As a subprocess (benchmarks, kill tests) the first stdout line is `PORT <n>`:

    python -m tests.fake_openai --port 0 --latency-ms 200 --script red-square-pixels --log calls.jsonl
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import hashlib
import io
import json
import re
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

CHAT_PATH = "/v1/chat/completions"
COORDS = ("pixels", "qwen2.5-vl", "norm1000", "norm1")
_DATA_URL = re.compile(r"data:image/[\w.+-]+;base64,(.*)", re.DOTALL)

# OpenAI's (type, code) for the statuses tests produce, so error bodies look like the real ones.
_ERROR_KINDS = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
}


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Recorded:
    """One HTTP request as it reached the server (headers with lower-case names)."""

    path: str
    headers: dict[str, str]
    body_json: Any  # None when the body is not JSON (uploads, GETs)
    time: float  # time.time() on arrival
    method: str = "POST"


@dataclass
class Reply:
    """What the server answers to one chat completion request.

    A status >= 400 answers an OpenAI error body with `error` as its message; `body`
    replaces whatever would be sent (malformed responses); `delay_s` is slept first.
    """

    content: str = ""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    usage: dict[str, int] | None = None  # None: about 4 characters a token, 85 per image
    finish_reason: str = "stop"
    body: bytes | str | dict | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        if self.error is not None and self.status < 400:
            raise ValueError(f"an error reply needs an error status, not {self.status}")

    @classmethod
    def fail(
        cls, status: int = 500, message: str | None = None, *, retry_after_s: float | None = None
    ) -> Reply:
        """An OpenAI-style error reply, optionally with a Retry-After header."""
        headers = {} if retry_after_s is None else {"Retry-After": f"{retry_after_s:g}"}
        return cls(status=status, error=message or HTTPStatus(status).phrase, headers=headers)


class InvalidRequest(ValueError):
    """Raised by a responder (or ChatRequest) for a request OpenAI would answer with 400."""


@dataclass
class ChatRequest:
    """One chat completion request body, as a responder sees it."""

    body: dict[str, Any]
    attempt: int = 1  # how often this exact body has reached the server, this time included
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def model(self) -> str:
        return self.body.get("model", "")

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.body.get("messages", [])

    @property
    def response_format(self) -> dict[str, Any] | None:
        return self.body.get("response_format")

    def _parts(self) -> Iterator[dict[str, Any]]:
        for message in self.messages:
            content = message.get("content")
            if isinstance(content, str):
                yield {"type": "text", "text": content}
            elif isinstance(content, list):
                yield from (part for part in content if isinstance(part, dict))

    @property
    def texts(self) -> list[str]:
        return [part.get("text", "") for part in self._parts() if part.get("type") == "text"]

    @property
    def image_urls(self) -> list[str]:
        urls = [part.get("image_url") for part in self._parts() if part.get("type") == "image_url"]
        return [url.get("url", "") if isinstance(url, dict) else str(url) for url in urls]

    @cached_property
    def images(self) -> list[Image.Image]:
        """The images of the request, decoded from their data URLs, in order."""
        images = []
        for url in self.image_urls:
            match = _DATA_URL.match(url)
            if match is None:
                # The fake has no network to fetch from, so only inline images can be seen.
                raise InvalidRequest(f"image_url is not a base64 data URL: {url[:60]!r}")
            try:
                image = Image.open(io.BytesIO(base64.b64decode(match.group(1))))
                image.load()
            except Exception as error:
                raise InvalidRequest(f"invalid image data: {error}") from error
            images.append(image)
        return images


Responder = Callable[[ChatRequest], "Reply | str"]


def _as_reply(answer: Reply | str) -> Reply:
    return answer if isinstance(answer, Reply) else Reply(content=answer)


# ----------------------------------------------------------------------------- scripts


class FixedAnswer:
    """Answers the same text to every request."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __call__(self, request: ChatRequest) -> Reply:
        return Reply(content=self.text)


class Sequence:
    """Answers the k-th reply to the k-th attempt of the same body; the last one then repeats."""

    def __init__(self, replies: list[Reply | str]) -> None:
        if not replies:
            raise ValueError("Sequence needs at least one reply")
        self.replies = [_as_reply(reply) for reply in replies]

    def __call__(self, request: ChatRequest) -> Reply:
        return self.replies[min(request.attempt, len(self.replies)) - 1]


class FailThen:
    """Fails the first `n` attempts of each distinct body, then lets `then` answer.

    `fail` is a Reply (e.g. `Reply.fail(429, retry_after_s=1)`, or `Reply(delay_s=30)` to
    outlast the client's timeout) or just a status code.
    """

    def __init__(self, n: int, fail: Reply | int, then: Responder) -> None:
        self.n, self.then = n, then
        self.fail = Reply.fail(fail) if isinstance(fail, int) else fail

    def __call__(self, request: ChatRequest) -> Reply | str:
        return self.fail if request.attempt <= self.n else self.then(request)


class Latency:
    """Delays every answer of `inner` by `ms` more milliseconds (a slow model, or a timeout)."""

    def __init__(self, ms: float, inner: Responder) -> None:
        self.ms, self.inner = ms, inner

    def __call__(self, request: ChatRequest) -> Reply:
        reply = _as_reply(self.inner(request))
        return dataclasses.replace(reply, delay_s=reply.delay_s + self.ms / 1000)


def red_box(image: Image.Image, coords: str = "pixels") -> list[float] | None:
    """The box around the pure-red pixels of `image` in a teacher convention, or None.

    pixels / qwen2.5-vl: pixels of this image, x2 and y2 exclusive; norm1000: ints 0..1000;
    norm1: fractions 0..1.
    """
    if coords not in COORDS:
        raise ValueError(f"unknown coordinate convention {coords!r}")
    rgb = np.asarray(image.convert("RGB"))
    mask = (rgb[..., 0] > 200) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)
    if not mask.any():
        return None
    ys, xs = np.nonzero(mask)
    x1, y1, x2, y2 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    width, height = image.size
    fractions = (x1 / width, y1 / height, x2 / width, y2 / height)
    if coords == "norm1000":
        return [round(value * 1000) for value in fractions]
    if coords == "norm1":
        return [round(value, 4) for value in fractions]
    return [x1, y1, x2, y2]


def _fenced(text: str, fence: bool) -> str:
    # Qwen models wrap their JSON in a markdown fence; parsers must cope.
    return f"```json\n{text}\n```" if fence else text


class RedSquareBoxes:
    """A boxes teacher that sees only red: the box of the red pixels in each received image.

    Answers `[{"bbox_2d": [x1, y1, x2, y2], "label": "red square"}]` relative to the image
    the server received (not the original), `[]` without red. With several images each
    entry also carries its `"image"` index.
    """

    def __init__(self, coords: str = "pixels", *, fence: bool = False, label: str = "red square"):
        if coords not in COORDS:
            raise ValueError(f"unknown coordinate convention {coords!r}")
        self.coords, self.fence, self.label = coords, fence, label

    def __call__(self, request: ChatRequest) -> Reply:
        answer = []
        for index, image in enumerate(request.images):
            box = red_box(image, self.coords)
            if box is not None:
                entry: dict[str, Any] = {"bbox_2d": box, "label": self.label}
                if len(request.images) > 1:
                    entry["image"] = index
                answer.append(entry)
        return Reply(content=_fenced(json.dumps(answer), self.fence))


def mean_rgb(image: Image.Image) -> tuple[int, int, int]:
    """The mean colour of an image, rounded to ints."""
    mean = np.asarray(image.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(axis=0)
    return tuple(int(round(channel)) for channel in mean)


class AttributesFromImage:
    """An attributes teacher answering a JSON object chosen from the request's first image.

    `attributes` is a callable(image) -> dict, or a {(r, g, b): dict} mapping whose entry
    nearest to the image's mean colour is answered (nearest, so JPEG noise does not matter).
    Lets a test check that each answer is routed back to the item whose image was sent.
    """

    def __init__(
        self,
        attributes: Mapping[tuple[int, int, int], dict] | Callable[[Image.Image], dict],
        *,
        fence: bool = False,
    ) -> None:
        self.attributes, self.fence = attributes, fence

    def __call__(self, request: ChatRequest) -> Reply:
        if not request.images:
            raise InvalidRequest("AttributesFromImage needs an image in the request")
        image = request.images[0]
        if callable(self.attributes):
            answer = self.attributes(image)
        else:
            colour = np.array(mean_rgb(image))
            key = min(self.attributes, key=lambda rgb: float(((np.array(rgb) - colour) ** 2).sum()))
            answer = self.attributes[key]
        return Reply(content=_fenced(json.dumps(answer), self.fence))


def describe_image(image: Image.Image) -> dict[str, Any]:
    """What the `attributes-echo` script answers: the image's mean colour and size."""
    return {
        "colour": "#{:02x}{:02x}{:02x}".format(*mean_rgb(image)),
        "width": image.width,
        "height": image.height,
    }


def script(name: str) -> Responder:
    """The responder a CLI `--script` name stands for."""
    name = name.replace("_", "-")
    for prefix in ("red-square-", "boxes-"):
        if name.startswith(prefix):
            return RedSquareBoxes(name.removeprefix(prefix))
    if name == "fixed-empty-list":
        return FixedAnswer("[]")
    if name == "fixed-empty-object":  # an attributes answer with nothing in it
        return FixedAnswer("{}")
    if name == "attributes-echo":
        return AttributesFromImage(describe_image)
    raise ValueError(f"unknown script {name!r}")


# ----------------------------------------------------------------------------- server


def _new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


def _error_body(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    kind, default_code = _ERROR_KINDS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None)
    )
    error = {"message": message, "type": kind, "param": param, "code": code or default_code}
    return {"error": error}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _form_fields(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """multipart/form-data as {name: (filename, bytes)}, byte-exact (the email module is not)."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if match is None:
        raise InvalidRequest("expected a multipart/form-data body")
    fields = {}
    for part in body.split(b"--" + match.group(1).encode())[1:-1]:
        head, _, data = part.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        name = re.search(rb'(?:^|;)\s*name="([^"]*)"', head, re.MULTILINE | re.IGNORECASE)
        filename = re.search(rb'filename="([^"]*)"', head)
        if name is not None:
            fields[name.group(1).decode()] = (
                filename.group(1).decode() if filename else None,
                data.removesuffix(b"\r\n"),
            )
    return fields


@dataclass
class _Incoming:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any
    log: dict[str, Any] = field(default_factory=dict)  # extra fields for the --log line


@dataclass
class _Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


def _json_response(status: int, payload: Any) -> _Response:
    return _Response(status, json.dumps(payload).encode())


def _error(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> _Response:
    return _json_response(status, _error_body(status, message, param, code))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: httpx reuses its connections
    disable_nagle_algorithm = True  # headers and body are separate writes; Nagle would add ~40 ms

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        incoming = _Incoming(
            method=self.command,
            path=urlsplit(self.path).path,
            headers={name.lower(): value for name, value in self.headers.items()},
            body=self.rfile.read(length),  # always drained, so the next request parses
            json=None,
        )
        with contextlib.suppress(ValueError):
            incoming.json = json.loads(incoming.body) if incoming.body else None
        fake: FakeOpenAI = self.server.fake
        response = fake._handle(incoming)
        if response.delay_s and fake._closing.wait(response.delay_s):
            self.close_connection = True  # the server is stopping: hang up, as a dead server would
            return
        self.send_response(response.status)
        headers = {
            "Content-Type": response.content_type,
            "Content-Length": str(len(response.body)),
            "x-request-id": _new_id("req_"),
            **response.headers,
        }
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(response.body)

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _serve

    def setup(self) -> None:
        super().setup()
        self.server.connections.add(self.connection)

    def finish(self) -> None:
        self.server.connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # requests are recorded, not printed


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # idle keep-alive connections would make close() wait forever
    request_queue_size = 1024  # 64+ clients connect at once; the default backlog of 5 drops SYNs

    def __init__(self, address: tuple[str, int], fake: FakeOpenAI) -> None:
        super().__init__(address, _Handler)
        self.fake = fake
        self.connections: set[socket.socket] = set()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out and hung up is business as usual here.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FakeOpenAI:
    """An OpenAI-compatible server on a background thread: chat completions, files, batches.

    Args:
        responder: answers each chat completion request (`ChatRequest -> Reply | str`).
        api_key: if set, requests without `Authorization: Bearer <api_key>` get 401.
        batch_polls_to_complete: the retrieve that completes a batch (earlier ones: in_progress).
        log: a JSON Lines file getting one line per request (path, time, body and image hashes).
    """

    def __init__(
        self,
        responder: Responder = RedSquareBoxes(),
        *,
        api_key: str | None = None,
        batch_polls_to_complete: int = 2,
        host: str = "127.0.0.1",
        port: int = 0,
        log: str | Path | None = None,
    ) -> None:
        self.responder, self.api_key = responder, api_key
        self.batch_polls_to_complete = batch_polls_to_complete
        self.log = Path(log) if log is not None else None
        self._address = (host, port)
        self._lock = threading.Lock()  # requests, attempts, log
        self._batch_lock = threading.RLock()  # files and batches
        self._requests: list[Recorded] = []
        self._attempts: dict[str, int] = {}
        self._files: dict[str, tuple[dict[str, Any], bytes]] = {}
        self._batches: dict[str, dict[str, Any]] = {}
        self._polls: dict[str, int] = {}
        self._closing = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def start(self) -> FakeOpenAI:
        self._closing.clear()
        self._server = _Server(self._address, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._closing.set()  # wakes delayed replies
        self._server.shutdown()
        self._server.server_close()
        # Keep-alive connections outlive the listening socket; cut them as a dead server would.
        for connection in list(self._server.connections):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        self._thread.join()
        self._server = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the server is not started")
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://{self._address[0]}:{self.port}/v1"

    @property
    def requests(self) -> list[Recorded]:
        """A snapshot of every request received so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    # -- dispatch

    def _routes(self) -> list[tuple[str, str, Callable[..., _Response]]]:
        return [
            ("POST", CHAT_PATH, self._chat),
            ("POST", "/v1/files", self._upload),
            ("GET", "/v1/files/(?P<file_id>[^/]+)", self._file),
            ("GET", "/v1/files/(?P<file_id>[^/]+)/content", self._file_content),
            ("POST", "/v1/batches", self._create_batch),
            ("GET", "/v1/batches/(?P<batch_id>[^/]+)", self._retrieve_batch),
            ("POST", "/v1/batches/(?P<batch_id>[^/]+)/cancel", self._cancel_batch),
        ]

    def _handle(self, incoming: _Incoming) -> _Response:
        arrived = time.time()
        with self._lock:
            self._requests.append(
                Recorded(incoming.path, incoming.headers, incoming.json, arrived, incoming.method)
            )
        response = self._route(incoming)
        if self.log is not None:
            line = {
                "method": incoming.method,
                "path": incoming.path,
                "time": arrived,
                "status": response.status,
                "sha256": _sha256(incoming.body),
                **incoming.log,
            }
            with self._lock, self.log.open("a") as log:
                log.write(json.dumps(line) + "\n")
        return response

    def _route(self, incoming: _Incoming) -> _Response:
        if (
            self.api_key is not None
            and incoming.headers.get("authorization") != f"Bearer {self.api_key}"
        ):
            return _error(401, "Incorrect API key provided.")
        for method, pattern, handler in self._routes():
            match = re.fullmatch(pattern, incoming.path)
            if match and method == incoming.method:
                try:
                    return handler(incoming, **match.groupdict())
                except InvalidRequest as error:
                    return _error(400, str(error))
        return _error(
            404, f"Unknown request URL: {incoming.method} {incoming.path}.", code="unknown_url"
        )

    # -- chat completions

    def _attempt(self, body: dict[str, Any]) -> int:
        key = _sha256(json.dumps(body, sort_keys=True).encode())
        with self._lock:
            self._attempts[key] = self._attempts.get(key, 0) + 1
            return self._attempts[key]

    def _complete(self, chat: ChatRequest) -> tuple[Reply, bytes]:
        """Runs the responder: its reply and the body to send for it."""
        try:
            reply = _as_reply(self.responder(chat))
        except InvalidRequest as error:
            reply = Reply.fail(400, str(error))
        except Exception as error:
            traceback.print_exc()  # a broken responder is a test bug: show it
            reply = Reply.fail(500, f"responder raised {error!r}")
        if reply.body is not None:
            raw = json.dumps(reply.body) if isinstance(reply.body, dict) else reply.body
            return reply, raw.encode() if isinstance(raw, str) else raw
        if reply.status >= 400:
            message = reply.error or HTTPStatus(reply.status).phrase
            return reply, json.dumps(_error_body(reply.status, message)).encode()
        completion = {
            "id": _new_id("chatcmpl-"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": chat.model,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply.content, "refusal": None},
                    "logprobs": None,
                    "finish_reason": reply.finish_reason,
                }
            ],
            "usage": reply.usage or _estimate_usage(chat, reply.content),
        }
        return reply, json.dumps(completion).encode()

    def _chat(self, incoming: _Incoming) -> _Response:
        body = incoming.json
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            raise InvalidRequest("expected a JSON body with 'messages'")
        if body.get("stream"):
            raise InvalidRequest("the fake server does not stream")
        chat = ChatRequest(body, attempt=self._attempt(body), headers=incoming.headers)
        if self.log is not None:
            # Pixel hashes tell a parent process which images were asked about, whatever the codec.
            incoming.log["images"] = [_sha256(im.convert("RGB").tobytes()) for im in chat.images]
        reply, payload = self._complete(chat)
        return _Response(reply.status, payload, headers=dict(reply.headers), delay_s=reply.delay_s)

    # -- files

    def _store_file(self, filename: str, purpose: str, content: bytes) -> dict[str, Any]:
        obj = {
            "id": _new_id("file-"),
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }
        with self._batch_lock:
            self._files[obj["id"]] = (obj, content)
        return obj

    def _upload(self, incoming: _Incoming) -> _Response:
        fields = _form_fields(incoming.headers.get("content-type", ""), incoming.body)
        if "file" not in fields or "purpose" not in fields:
            raise InvalidRequest("expected multipart fields 'file' and 'purpose'")
        filename, content = fields["file"]
        obj = self._store_file(filename or "upload", fields["purpose"][1].decode(), content)
        return _json_response(200, obj)

    def _file(self, incoming: _Incoming, file_id: str) -> _Response:
        with self._batch_lock:
            if file_id not in self._files:
                return _error(404, f"No such File object: {file_id}", "id")
            return _json_response(200, self._files[file_id][0])

    def _file_content(self, incoming: _Incoming, file_id: str) -> _Response:
        with self._batch_lock:
            if file_id not in self._files:
                return _error(404, f"No such File object: {file_id}", "id")
            return _Response(200, self._files[file_id][1], content_type="application/octet-stream")

    # -- batches

    def _create_batch(self, incoming: _Incoming) -> _Response:
        body = incoming.json if isinstance(incoming.json, dict) else {}
        if body.get("endpoint") != CHAT_PATH:
            raise InvalidRequest(f"the fake server batches only {CHAT_PATH}")
        with self._batch_lock:
            if body.get("input_file_id") not in self._files:
                return _error(
                    404, f"No such File object: {body.get('input_file_id')}", "input_file_id"
                )
            batch = {
                "id": _new_id("batch_"),
                "object": "batch",
                "endpoint": body["endpoint"],
                "errors": None,
                "input_file_id": body["input_file_id"],
                "completion_window": body.get("completion_window", "24h"),
                "status": "validating",
                "output_file_id": None,
                "error_file_id": None,
                "created_at": int(time.time()),
                "in_progress_at": None,
                "expires_at": int(time.time()) + 24 * 3600,
                "finalizing_at": None,
                "completed_at": None,
                "failed_at": None,
                "expired_at": None,
                "cancelling_at": None,
                "cancelled_at": None,
                "request_counts": {"total": 0, "completed": 0, "failed": 0},
                "metadata": body.get("metadata"),
                "model": None,
            }
            self._batches[batch["id"]] = batch
            self._polls[batch["id"]] = 0
            return _json_response(200, batch)

    def _retrieve_batch(self, incoming: _Incoming, batch_id: str) -> _Response:
        with self._batch_lock:
            batch = self._batches.get(batch_id)
            if batch is None:
                return _error(404, f"No such Batch object: {batch_id}", "batch_id")
            if batch["status"] in ("validating", "in_progress"):
                self._polls[batch_id] += 1
                batch["status"] = "in_progress"
                batch["in_progress_at"] = batch["in_progress_at"] or int(time.time())
                if self._polls[batch_id] >= self.batch_polls_to_complete:
                    self._run_batch(batch)
            elif batch["status"] == "cancelling":
                batch.update(status="cancelled", cancelled_at=int(time.time()))
            return _json_response(200, batch)

    def _cancel_batch(self, incoming: _Incoming, batch_id: str) -> _Response:
        with self._batch_lock:
            batch = self._batches.get(batch_id)
            if batch is None:
                return _error(404, f"No such Batch object: {batch_id}", "batch_id")
            if batch["status"] in ("validating", "in_progress"):
                batch.update(status="cancelling", cancelling_at=int(time.time()))
            return _json_response(200, batch)

    def _run_batch(self, batch: dict[str, Any]) -> None:
        """Answers every line of the input file with the responder (delays are not slept)."""
        lines, errors = [], []
        content = self._files[batch["input_file_id"]][1].decode()
        for number, text in enumerate(content.splitlines(), start=1):
            line = _parse_batch_line(text, batch["endpoint"])
            if line is not None:
                lines.append(line)
            elif text.strip():
                message = "expected a JSON object with custom_id, method, url and body"
                errors.append(
                    {"code": "invalid_request", "line": number, "message": message, "param": None}
                )
        now = int(time.time())
        if errors:
            batch.update(status="failed", failed_at=now, errors={"object": "list", "data": errors})
            return
        succeeded, failed = [], []
        for line in lines:
            chat = ChatRequest(line["body"], attempt=self._attempt(line["body"]))
            reply, raw = self._complete(chat)
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = raw.decode(errors="replace")  # a malformed body stays malformed
            out = {
                "id": _new_id("batch_req_"),
                "custom_id": line["custom_id"],
                "response": {
                    "status_code": reply.status,
                    "request_id": _new_id("req_"),
                    "body": payload,
                },
                "error": None,
            }
            (succeeded if reply.status < 400 else failed).append(json.dumps(out))
        # Like OpenAI: successes in the output file, failures in the error file, each only if any.
        for key, outs in (("output_file_id", succeeded), ("error_file_id", failed)):
            if outs:
                name = f"{batch['id']}_{key.split('_')[0]}.jsonl"
                batch[key] = self._store_file(
                    name, "batch_output", ("\n".join(outs) + "\n").encode()
                )["id"]
        batch.update(
            status="completed",
            finalizing_at=now,
            completed_at=now,
            request_counts={
                "total": len(lines),
                "completed": len(succeeded),
                "failed": len(failed),
            },
        )


def _parse_batch_line(text: str, endpoint: str) -> dict[str, Any] | None:
    """One line of a batch input file, or None if OpenAI would reject it."""
    try:
        line = json.loads(text)
    except ValueError:
        return None
    valid = (
        isinstance(line, dict)
        and isinstance(line.get("custom_id"), str)
        and isinstance(line.get("body"), dict)
        and line.get("url") == endpoint
    )
    return line if valid else None


def _estimate_usage(chat: ChatRequest, content: str) -> dict[str, int]:
    # Roughly 4 characters a token, and a flat 85 tokens an image (OpenAI's low-detail cost).
    prompt = -(-sum(len(text) for text in chat.texts) // 4) + 85 * len(chat.image_urls)
    completion = -(-len(content) // 4)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


# ----------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> None:
    """Serves until killed; prints `PORT <n>` first so a parent process knows where."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.fake_openai", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument(
        "--script",
        default="red-square-pixels",
        help="red-square-{pixels,qwen2.5-vl,norm1000,norm1} (or boxes_<coords>), fixed-empty-list, fixed-empty-object, attributes-echo",
    )
    parser.add_argument("--fence", action="store_true", help="wrap JSON answers in ```json fences")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--batch-polls", type=int, default=2)
    parser.add_argument("--log", default=None, help="append one JSON line per request to this file")
    args = parser.parse_args(argv)

    responder = script(args.script)
    if args.fence and hasattr(responder, "fence"):
        responder.fence = True
    if args.latency_ms:
        responder = Latency(args.latency_ms, responder)
    # SIGTERM unwinds through the context manager, so the socket closes cleanly.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with FakeOpenAI(
        responder,
        api_key=args.api_key,
        batch_polls_to_complete=args.batch_polls,
        host=args.host,
        port=args.port,
        log=args.log,
    ) as server:
        print(f"PORT {server.port}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
