"""What runs on the Ray workers: image preparation (CPU tasks), the teachers' model stage
(HTTP actors, or Ray Data's vLLM engine processor) and the rows of the answer shards.

Every function here runs in a worker process: it gets its inputs from the batch and the
arguments it was built with, never from the driver's state. A worker reads API keys from its
own environment (see `check_keys`): Ray writes a runtime_env's env_vars into its logs.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import socket
from collections.abc import AsyncIterator
from typing import Any

from teacher_labeling.cluster.requests import RayRequest
from teacher_labeling.teachers import OpenAITeacher, TeacherConfig, TeacherError
from toolkit.errors import CroptuneError
from toolkit.images import ImageLoadError
from toolkit.schema import AttributeSchema

# Columns of an answer shard. Strings are "" when absent, so every shard has one schema.
SHARD_COLUMNS = ("key", "teacher", "item_id", "image", "text", "usage", "error", "kind")
# kind: answer | failed (the request failed) | unreadable (an image) | stopped (the teacher)


def prepare_batch(batch: dict[str, Any]) -> dict[str, list[Any]]:
    """Each request's images decoded, oriented, resized and encoded as its teacher sends them."""
    from teacher_labeling.image_pool import keep_freed_memory, prepare_images

    keep_freed_memory()  # as the image pool's workers: no page faults per photo
    out: dict[str, list[Any]] = {"key": [], "teacher": [], "item_id": [], "image": []}
    out.update(prepared=[], error=[])
    for key, teacher, item_id, image, payload in zip(
        batch["key"], batch["teacher"], batch["item_id"], batch["image"], batch["payload"],
        strict=True,
    ):  # fmt: skip
        ray_request: RayRequest = pickle.loads(payload)
        images, error = [], ""
        for shown in ray_request.shown:
            try:
                images.extend(prepare_images(shown.job))
            except ImageLoadError as exc:
                error = json.dumps({"message": f"{shown.name}: {exc}", "image": shown.image})
                break
        ray_request.request.images = [] if error else images
        out["key"].append(key)
        out["teacher"].append(teacher)
        out["item_id"].append(item_id)
        out["image"].append(int(image))
        out["prepared"].append(b"" if error else pickle.dumps(ray_request, protocol=5))
        out["error"].append(error)
    return out


def check_keys(configs: list[TeacherConfig]) -> None:
    """Fail, naming the variable and the worker, when a teacher's key is not in this worker's
    environment."""
    missing = sorted({c.api_key_env for c in configs if c.api_key_env} - set(os.environ))
    if missing:
        raise CroptuneError(
            f"Ray worker on {socket.gethostname()}: {', '.join(missing)} is not set in its "
            "environment. Set it where the workers start (KubeRay: env from a Secret in the "
            "worker group; `ray start`: export it first); croptune does not pass keys in "
            "runtime_env, which Ray writes into its logs (docs/scale.md)"
        )


class AskTeachers:
    """A Ray Data actor: asks the HTTP teachers its batches' requests, concurrently.

    Each actor has its own request engine per teacher (the teacher's max_concurrency, its
    retries and replicas), made inside the actor's event loop on first use.
    """

    def __init__(self, teachers: bytes) -> None:
        configs, schema = pickle.loads(teachers)
        check_keys(configs)
        self._schema: AttributeSchema = schema
        self._teachers = {c.name: OpenAITeacher(c, schema) for c in configs}

    async def __call__(self, batch: dict[str, Any]) -> AsyncIterator[dict[str, list[Any]]]:
        """The batch's answer-shard rows (one per request, in order)."""
        rows = await asyncio.gather(
            *(
                self._ask(key, teacher, item_id, int(image), prepared, error)
                for key, teacher, item_id, image, prepared, error in zip(
                    batch["key"], batch["teacher"], batch["item_id"], batch["image"],
                    batch["prepared"], batch["error"], strict=True,
                )
            )
        )  # fmt: skip
        yield shard_columns(rows)

    async def _ask(
        self, key: str, teacher: str, item_id: str, image: int, prepared: bytes, error: str
    ) -> dict[str, Any]:
        from teacher_labeling.engine import TeacherStopped

        row = {"key": key, "teacher": teacher, "item_id": item_id, "image": image}
        if error:
            return {**row, "text": "", "usage": "", "error": error, "kind": "unreadable"}
        ray_request: RayRequest = pickle.loads(prepared)
        try:
            answer = await self._teachers[teacher].answer(ray_request.request, ray_request.item)
        except TeacherStopped as exc:
            return {**row, "text": "", "usage": "", "error": str(exc), "kind": "stopped"}
        except TeacherError as exc:
            return {**row, "text": "", "usage": "", "error": str(exc), "kind": "failed"}
        usage = json.dumps(answer.usage)
        return {**row, "text": answer.text, "usage": usage, "error": "", "kind": "answer"}


def shard_columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Answer-shard rows as columns."""
    return {name: [row[name] for row in rows] for name in SHARD_COLUMNS}


def vllm_request(row: dict[str, Any], teachers: bytes) -> dict[str, Any]:
    """A row for Ray Data's vLLM engine: the request's chat messages and sampling parameters
    (an unreadable request gets a one-token placeholder, reported from its error after)."""
    configs, schema = pickle.loads(teachers)
    teacher = OpenAITeacher(next(c for c in configs if c.name == row["teacher"]), schema)
    kept = {k: row[k] for k in ("key", "teacher", "item_id", "image", "error")}
    if row["error"]:
        return {**kept, "messages": [{"role": "user", "content": "."}],
                "sampling_params": {"max_tokens": 1}}  # fmt: skip
    ray_request: RayRequest = pickle.loads(row["prepared"])
    parameters = teacher.request_parameters(ray_request.request)
    return {
        **kept,
        "messages": teacher.messages(ray_request.request),
        "sampling_params": sampling_params(parameters),
    }


def sampling_params(parameters: dict[str, Any]) -> dict[str, Any]:
    """vLLM SamplingParams of a teacher's chat parameters (a strict JSON schema as guided JSON)."""
    params: dict[str, Any] = {
        "temperature": parameters["temperature"],
        "max_tokens": parameters["max_tokens"],
    }
    response_format = parameters.get("response_format")
    if response_format is not None:
        params["structured_outputs"] = {"json": response_format["json_schema"]["schema"]}
    return params


def vllm_shard_row(row: dict[str, Any]) -> dict[str, Any]:
    """An answer-shard row of what Ray Data's vLLM engine stage gave for one request."""
    shard = {k: row[k] for k in ("key", "teacher", "item_id")} | {"image": int(row["image"])}
    if row.get("error"):
        return {**shard, "text": "", "usage": "", "error": row["error"], "kind": "unreadable"}
    usage = {
        "prompt_tokens": int(row.get("num_input_tokens") or 0),
        "completion_tokens": int(row.get("num_generated_tokens") or 0),
        "attempts": 1,
    }
    if row.get("finish_reason") == "length":
        usage["truncated"] = 1
    text = row.get("generated_text") or ""
    return {**shard, "text": text, "usage": json.dumps(usage), "error": "", "kind": "answer"}
