"""OpenAI's Batch API for the attributes teacher: upload, create, poll, collect, resume.

Every batch id is stored (with the requests it carries) the moment it is created, so a run
interrupted while waiting picks the same batch up again instead of paying twice.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from typing import Any

from teacher_labeling.cost import Price, Spend
from teacher_labeling.labeling import (
    LabelSummary,
    _LabelRun,
    _pending_requests,
    _store_answer,
    label_items,
)
from teacher_labeling.parse import AnswerParseError, parse_attributes
from teacher_labeling.teachers import FusionConfig, OpenAITeacher, Teacher
from toolkit.images import load_image
from toolkit.progress import ProgressBar
from toolkit.store import RunStore

logger = logging.getLogger(__name__)

ENDPOINT = "/v1/chat/completions"
MAX_REQUESTS_PER_BATCH = 50_000  # OpenAI's limit per batch file
MAX_BYTES_PER_BATCH = 150_000_000  # under OpenAI's 200 MB file limit
DONE = {"completed", "failed", "expired", "cancelled"}


def label_with_batches(
    store: RunStore,
    teachers: list[Teacher],
    limit: int | None = None,
    prices: dict[str, Price] | None = None,
    progress: bool = False,
    poll_interval_s: float = 30.0,
    fusion: FusionConfig | None = None,
) -> LabelSummary:
    """Label with the Batch API for OpenAI attributes teachers, the usual path for the rest."""
    batched = [
        t for t in teachers if isinstance(t, OpenAITeacher) and t.config.role == "attributes"
    ]
    others = [t for t in teachers if t not in batched]
    summary = (
        label_items(store, others, limit, progress, prices, fusion) if others else LabelSummary()
    )
    for teacher in batched:
        summary.spend.setdefault(teacher.name, Spend())
        asyncio.run(_run_teacher(store, teacher, limit, prices or {}, summary, poll_interval_s))
    return summary


async def _run_teacher(
    store: RunStore,
    teacher: OpenAITeacher,
    limit: int | None,
    prices: dict[str, Price],
    summary: LabelSummary,
    poll_interval_s: float,
) -> None:
    client = teacher.engine.client
    try:
        waiting = [b for b in store.open_batches(teacher.name)]
        in_flight = {cid for b in waiting for cid in b["requests"]}
        for lines, requests in _batch_files(store, teacher, limit, prices, in_flight):
            waiting.append(await _submit(store, client, teacher, lines, requests))
        for batch in waiting:
            await _collect(store, client, teacher, batch, prices, summary, poll_interval_s)
    finally:
        await teacher.close()


def _batch_files(  # noqa: C901 - one loop, its skips commented
    store: RunStore,
    teacher: OpenAITeacher,
    limit: int | None,
    prices: dict[str, Price],
    in_flight: set[str],
) -> Any:
    """(JSONL lines, {custom_id: [item ids]}) chunks of the teacher's unanswered requests."""
    run = _LabelRun(store, [teacher], prices, FusionConfig(), 0, ProgressBar("batch", 0, False))
    lines: list[str] = []
    requests: dict[str, list[str]] = {}
    size = 0
    for item in store.items(limit=limit):
        for pending in _pending_requests(run, item, relabel=False):
            key = pending.request.cache_key
            if pending.cached is not None:
                _store_answer(run, item, pending, pending.cached["text"], pending.cached["usage"])
                continue
            if key in in_flight:
                continue
            if key in requests:
                requests[key].append(item.item_id)  # the same question for another item
                continue
            rows = {r.index: r for r in store.images(item.item_id)}
            pending.request.images = [load_image(rows[i].uri).image for i in pending.image_indices]
            body = {
                "model": teacher.config.model,
                "messages": teacher.messages(pending.request),
                **teacher.request_parameters(pending.request),
            }
            line = json.dumps({"custom_id": key, "method": "POST", "url": ENDPOINT, "body": body})
            if lines and (
                len(lines) >= MAX_REQUESTS_PER_BATCH or size + len(line) > MAX_BYTES_PER_BATCH
            ):
                yield lines, requests
                lines, requests, size = [], {}, 0
            lines.append(line)
            requests[key] = [item.item_id]
            size += len(line) + 1
    if lines:
        yield lines, requests


async def _submit(
    store: RunStore, client: Any, teacher: Teacher, lines: list[str], requests: dict[str, list[str]]
) -> dict[str, Any]:
    """Upload a JSONL file, create its batch, and record the batch id before anything else."""
    upload = await client.files.create(
        file=(
            "croptune-batch.jsonl",
            io.BytesIO(("\n".join(lines) + "\n").encode()),
            "application/jsonl",
        ),
        purpose="batch",
    )
    batch = await client.batches.create(
        input_file_id=upload.id, endpoint=ENDPOINT, completion_window="24h"
    )
    store.add_batch(batch.id, teacher.name, upload.id, requests)
    logger.info("%s: batch %s created with %d requests", teacher.name, batch.id, len(requests))
    return {"batch_id": batch.id, "requests": requests}


async def _collect(
    store: RunStore,
    client: Any,
    teacher: Teacher,
    batch: dict[str, Any],
    prices: dict[str, Price],
    summary: LabelSummary,
    poll_interval_s: float,
) -> None:
    """Wait for a batch to finish, then store every answer it holds."""
    batch_id, requests = batch["batch_id"], batch["requests"]
    started = time.monotonic()
    while True:
        status = await client.batches.retrieve(batch_id)
        if status.status in DONE:
            break
        logger.info(
            "%s: batch %s %s (%.0f s); interrupting is safe, a re-run resumes it",
            teacher.name, batch_id, status.status, time.monotonic() - started,
        )  # fmt: skip
        await asyncio.sleep(poll_interval_s)
    answered: set[str] = set()
    for file_id in (status.output_file_id, status.error_file_id):
        if file_id:
            content = await client.files.content(file_id)
            for line in content.text.splitlines():
                if line.strip():
                    answered.add(
                        _store_line(store, teacher, json.loads(line), requests, prices, summary)
                    )
    for custom_id, item_ids in requests.items():
        if custom_id not in answered:
            message = f"batch {batch_id} ended {status.status} without an answer for this item"
            for item_id in item_ids:  # every item that asked this question
                store.record_failure(
                    custom_id, teacher.name, teacher.config.model, item_id, None, message
                )
                summary.fail(item_id, teacher.name, message)
    store.close_batch(batch_id, status.status)


def _store_line(
    store: RunStore,
    teacher: Teacher,
    line: dict[str, Any],
    requests: dict[str, list[str]],
    prices: dict[str, Price],
    summary: LabelSummary,
) -> str:
    """Store one output line of a batch for every item that asked it; returns its custom id."""
    custom_id = line.get("custom_id", "")
    model = teacher.config.model
    response = line.get("response") or {}
    body = response.get("body") or {}
    for item_id in requests.get(custom_id, []):
        if line.get("error") or response.get("status_code") != 200:
            error = line.get("error") or body.get("error") or {}
            message = f"batch request failed: {error.get('message') or response.get('status_code')}"
            store.record_failure(custom_id, teacher.name, model, item_id, None, message)
            store.log_event("label", message, "error", item_id, teacher.name)
            summary.fail(item_id, teacher.name, message)
            continue
        text = (body.get("choices") or [{}])[0].get("message", {}).get("content") or ""
        usage = body.get("usage") or {}
        counts = {k: int(usage.get(k, 0) or 0) for k in ("prompt_tokens", "completion_tokens")}
        try:
            attributes, _ = parse_attributes(text, teacher.schema)
        except AnswerParseError as exc:
            store.record_failure(custom_id, teacher.name, model, item_id, None, str(exc), text)
            store.log_event("label", f"attributes: {exc}", "error", item_id, teacher.name)
            summary.fail(item_id, teacher.name, f"attributes: {exc}")
            continue
        store.record_answer(
            custom_id, teacher.name, model, item_id, None, text, counts, labels=attributes
        )
        summary.labels += 1
    if body.get("usage") and requests.get(custom_id):
        usage = body["usage"]
        summary.asked += 1
        summary.spend[teacher.name].add(
            teacher.price(prices),
            int(usage.get("prompt_tokens", 0)),
            int(usage.get("completion_tokens", 0)),
            batch=True,
        )
    return custom_id
