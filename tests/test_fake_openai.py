"""The fake OpenAI server is faithful: the real openai client talks to it and parses its answers."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import openai
import pytest
from openai.types.chat import ChatCompletion
from PIL import Image

from tests.fake_openai import (
    AttributesFromImage,
    FailThen,
    FakeOpenAI,
    FixedAnswer,
    Latency,
    RedSquareBoxes,
    Reply,
    Sequence,
)

REPO = Path(__file__).resolve().parents[1]


def _data_url(image, fmt="PNG"):
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buffer.getvalue()).decode()}"


def _messages(text, *urls):
    parts = [{"type": "text", "text": text}]
    parts += [{"type": "image_url", "image_url": {"url": url}} for url in urls]
    return [{"role": "user", "content": parts}]


def _red_square(size=(200, 100), box=(20, 10, 60, 50)):
    image = Image.new("RGB", size, (240, 240, 240))
    image.paste((255, 0, 0), box)  # box is x1, y1, x2, y2 with x2, y2 exclusive
    return image


def _client(server, **kwargs):
    return openai.OpenAI(base_url=server.base_url, api_key="test", **kwargs)


def _ask(client, *urls, text="find it"):
    return client.chat.completions.create(model="teacher", messages=_messages(text, *urls))


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_chat_completion_delivers_both_images(use_async):
    gradient = np.arange(40 * 30 * 3, dtype=np.uint8).reshape(30, 40, 3)
    png = Image.fromarray(gradient)
    jpeg = Image.new("RGB", (50, 20), (30, 90, 200))
    seen = []

    def responder(request):
        seen.append(request)
        return "seen"

    messages = _messages("two photos", _data_url(jpeg, "JPEG"), _data_url(png, "PNG"))
    with FakeOpenAI(responder) as server:
        if use_async:

            async def ask():
                async with openai.AsyncOpenAI(base_url=server.base_url, api_key="test") as client:
                    return await client.chat.completions.create(model="teacher", messages=messages)

            completion = asyncio.run(ask())
        else:
            completion = _client(server).chat.completions.create(model="teacher", messages=messages)

    assert isinstance(completion, ChatCompletion)
    assert completion.choices[0].message.content == "seen"
    assert completion.choices[0].finish_reason == "stop"
    # 10 characters of text -> 3 tokens, plus 85 an image; "seen" -> 1 token.
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (3 + 170, 1)
    assert completion.usage.total_tokens == 174
    (request,) = seen
    assert (request.model, request.texts, request.attempt) == ("teacher", ["two photos"], 1)
    assert [image.format for image in request.images] == ["JPEG", "PNG"]
    assert [image.size for image in request.images] == [(50, 20), (40, 30)]
    assert np.array_equal(np.asarray(request.images[1]), gradient)  # PNG: exact pixels
    jpeg_pixels = np.asarray(request.images[0], dtype=np.int16)
    assert np.abs(jpeg_pixels - (30, 90, 200)).max() <= 3  # JPEG: lossy, but that colour
    # The client says which flavour it is: "false", or "async:asyncio".
    assert (server.requests[0].headers["x-stainless-async"] != "false") == use_async


EXPECTED_BOXES = {
    "pixels": [20, 10, 60, 50],
    "qwen2.5-vl": [20, 10, 60, 50],
    "norm1000": [100, 100, 300, 500],
    "norm1": [0.1, 0.1, 0.3, 0.5],
}


@pytest.mark.parametrize("coords", EXPECTED_BOXES)
def test_red_square_boxes_in_each_convention(coords):
    with FakeOpenAI(RedSquareBoxes(coords)) as server:
        client = _client(server)
        found = _ask(client, _data_url(_red_square())).choices[0].message.content
        empty = _ask(client, _data_url(Image.new("RGB", (30, 30), "white"))).choices[0]
    assert json.loads(found) == [{"bbox_2d": EXPECTED_BOXES[coords], "label": "red square"}]
    assert json.loads(empty.message.content) == []


def test_red_square_boxes_are_relative_to_each_received_image_and_can_be_fenced():
    small = _red_square(size=(100, 50), box=(10, 5, 30, 25))
    with FakeOpenAI(RedSquareBoxes("pixels", fence=True)) as server:
        content = _ask(_client(server), _data_url(_red_square()), _data_url(small))
    text = content.choices[0].message.content
    assert text.startswith("```json\n") and text.endswith("\n```")
    assert json.loads(text.removeprefix("```json").removesuffix("```")) == [
        {"bbox_2d": [20, 10, 60, 50], "label": "red square", "image": 0},
        {"bbox_2d": [10, 5, 30, 25], "label": "red square", "image": 1},
    ]


def test_attributes_follow_the_image_colour():
    palette = {(255, 0, 0): {"colour": "red"}, (0, 0, 255): {"colour": "blue"}}
    blue = _data_url(Image.new("RGB", (32, 32), (10, 20, 230)), "JPEG")
    with FakeOpenAI(AttributesFromImage(palette)) as server:
        answer = _ask(_client(server), blue).choices[0].message.content
    assert json.loads(answer) == {"colour": "blue"}


def test_wrong_api_key_is_an_authentication_error():
    with FakeOpenAI(FixedAnswer("[]"), api_key="right") as server:
        with pytest.raises(openai.AuthenticationError) as caught:
            openai.OpenAI(base_url=server.base_url, api_key="wrong").models.list()
        assert _ask(openai.OpenAI(base_url=server.base_url, api_key="right")).choices
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"


def test_429_with_retry_after_is_retried_after_that_long():
    responder = FailThen(1, Reply.fail(429, retry_after_s=1), FixedAnswer("ok"))
    with FakeOpenAI(responder) as server:
        completion = _ask(_client(server, max_retries=1))
    first, retry = server.requests
    assert completion.choices[0].message.content == "ok"
    assert 0.9 <= retry.time - first.time < 2.0
    assert first.body_json == retry.body_json
    assert (first.headers["x-stainless-retry-count"], retry.headers["x-stainless-retry-count"]) == (
        "0",
        "1",
    )


def test_500_is_an_internal_server_error_without_retries():
    with FakeOpenAI(FailThen(1, 500, FixedAnswer("ok"))) as server:
        with pytest.raises(openai.InternalServerError) as caught:
            _ask(_client(server, max_retries=0))
        assert _ask(_client(server, max_retries=0)).choices[0].message.content == "ok"
    assert caught.value.body["type"] == "server_error"


def test_a_reply_slower_than_the_client_timeout_is_a_timeout():
    started = time.monotonic()
    with FakeOpenAI(FixedAnswer("late")) as server:
        server.responder = Latency(10_000, FixedAnswer("late"))
        with pytest.raises(openai.APITimeoutError):
            _ask(_client(server, max_retries=0, timeout=0.3))
    # Stopping the server wakes the sleeping reply instead of waiting the 10 s out.
    assert time.monotonic() - started < 3


def test_sequence_answers_per_attempt_of_the_same_body():
    with FakeOpenAI(Sequence(["first", Reply("second", finish_reason="length")])) as server:
        client = _client(server)
        answers = [_ask(client).choices[0] for _ in range(3)]
        other = _ask(client, text="another body").choices[0]
    assert [answer.message.content for answer in answers] == ["first", "second", "second"]
    assert answers[1].finish_reason == "length"
    assert other.message.content == "first"


def test_unknown_paths_are_404():
    with FakeOpenAI() as server, pytest.raises(openai.NotFoundError) as caught:
        _client(server).models.list()
    assert caught.value.code == "unknown_url"


def test_64_concurrent_requests_are_served_concurrently():
    async def ask_all(server):
        async with openai.AsyncOpenAI(base_url=server.base_url, api_key="test") as client:
            calls = [
                client.chat.completions.create(model="m", messages=_messages(f"item {index}"))
                for index in range(64)
            ]
            return await asyncio.gather(*calls)

    with FakeOpenAI(Latency(200, FixedAnswer("ok"))) as server:
        started = time.monotonic()
        completions = asyncio.run(ask_all(server))
        elapsed = time.monotonic() - started
    assert len(completions) == 64 and len(server.requests) == 64
    assert elapsed < 3, f"64 requests of 200 ms took {elapsed:.1f} s: the server is not concurrent"


def _batch_line(custom_id, image):
    body = {"model": "teacher", "messages": _messages("boxes?", _data_url(image))}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def test_batch_flow_end_to_end():
    boxes = {"a": (0, 0, 10, 10), "b": (5, 6, 25, 30), "c": (40, 20, 80, 60)}
    lines = [_batch_line(custom_id, _red_square(box=box)) for custom_id, box in boxes.items()]
    jsonl = "".join(json.dumps(line) + "\n" for line in lines).encode()
    with FakeOpenAI(RedSquareBoxes("pixels"), batch_polls_to_complete=3) as server:
        client = _client(server)
        upload = client.files.create(file=("requests.jsonl", jsonl), purpose="batch")
        assert (upload.purpose, upload.bytes) == ("batch", len(jsonl))
        assert client.files.content(upload.id).content == jsonl
        batch = client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        statuses = [batch.status]
        while batch.status not in ("completed", "failed"):
            batch = client.batches.retrieve(batch.id)
            statuses.append(batch.status)
        output = client.files.content(batch.output_file_id).text
    assert statuses == ["validating", "in_progress", "in_progress", "completed"]
    assert batch.request_counts.model_dump() == {"total": 3, "completed": 3, "failed": 0}
    assert batch.error_file_id is None
    results = [json.loads(line) for line in output.splitlines()]
    assert sorted(result["custom_id"] for result in results) == ["a", "b", "c"]
    for result in results:
        assert result["error"] is None and result["response"]["status_code"] == 200
        completion = ChatCompletion.model_validate(result["response"]["body"])
        answer = json.loads(completion.choices[0].message.content)
        assert answer[0]["bbox_2d"] == list(boxes[result["custom_id"]])


def test_batch_failures_cancel_and_invalid_input():
    def responder(request):
        return Reply.fail(400, "no red here") if request.texts == ["bad"] else "[]"

    good = {"custom_id": "good", "method": "POST", "url": "/v1/chat/completions"}
    bad = dict(good, custom_id="bad", body={"model": "m", "messages": _messages("bad")})
    good["body"] = {"model": "m", "messages": _messages("good")}
    jsonl = f"{json.dumps(good)}\n{json.dumps(bad)}\n".encode()
    with FakeOpenAI(responder, batch_polls_to_complete=1) as server:
        client = _client(server)
        upload = client.files.create(file=("requests.jsonl", jsonl), purpose="batch")
        batch = client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        batch = client.batches.retrieve(batch.id)
        errors = [
            json.loads(line) for line in client.files.content(batch.error_file_id).text.splitlines()
        ]
        cancelled = client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert client.batches.cancel(cancelled.id).status == "cancelling"
        assert client.batches.retrieve(cancelled.id).status == "cancelled"
        broken = client.files.create(file=("broken.jsonl", b"{not json\n"), purpose="batch")
        failed = client.batches.create(
            input_file_id=broken.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        failed = client.batches.retrieve(failed.id)
    assert batch.status == "completed"
    assert batch.request_counts.model_dump() == {"total": 2, "completed": 1, "failed": 1}
    (error,) = errors
    assert error["custom_id"] == "bad" and error["response"]["status_code"] == 400
    assert error["response"]["body"]["error"]["message"] == "no red here"
    assert failed.status == "failed" and failed.errors.data[0].line == 1


def test_subprocess_mode_prints_its_port_and_logs_each_request(tmp_path):
    log = tmp_path / "calls.jsonl"
    command = [sys.executable, "-m", "tests.fake_openai", "--port", "0", "--latency-ms", "50"]
    command += ["--script", "red-square-pixels", "--api-key", "secret", "--log", str(log)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        port = int(process.stdout.readline().removeprefix("PORT "))
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="secret")
        image = _red_square()
        answer = _ask(client, _data_url(image)).choices[0].message.content
        _ask(client, _data_url(image, "JPEG"), _data_url(image))
        with pytest.raises(openai.NotFoundError):
            client.models.list()
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert json.loads(answer) == [{"bbox_2d": [20, 10, 60, 50], "label": "red square"}]
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert [call["path"] for call in calls] == ["/v1/chat/completions"] * 2 + ["/v1/models"]
    pixels = hashlib.sha256(image.tobytes()).hexdigest()
    assert calls[0]["images"] == [pixels]
    assert len(calls[1]["images"]) == 2 and calls[1]["images"][1] == pixels
    assert all(len(call["sha256"]) == 64 for call in calls)
