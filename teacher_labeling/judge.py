"""LLM judge: is each predicted value visible on the listing's photos, and is it right?

The paper's buckets (Nulli et al., 2026), one per predicted field value:

- ``verifiable_correct``: the information is visible (or readable) on the images and the
  prediction matches it;
- ``verifiable_incorrect``: it is visible and the prediction differs;
- ``unverifiable``: the images do not show it, so it can be neither confirmed nor refuted.

One request per item: its images, then an instruction holding the predicted values as a
flat JSON object of claims, ``{"group.field": value}`` (nested objects flattened as in
``toolkit.metrics``; a list field gives one claim per element, ``"group.field[i]"``). The
judge answers ``{"group.field": bucket}``. Requests go through the client layer the teachers
use (`teacher_labeling.client`: request engine with concurrency, rate limits, retries; image
encoding); the judge needs no attribute schema.

A judge config (YAML) names the endpoint with the endpoint keys of a teacher config::

    endpoint:
      model: gpt-4.1
      api_key_env: OPENAI_API_KEY     # the NAME of the variable; keys are never stored
      max_concurrency: 8
      requests_per_minute: 300
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from teacher_labeling.client import (
    AnsweringSettings,
    build_engine,
    check_ready,
    user_message,
)
from teacher_labeling.cost import image_tokens, text_tokens
from teacher_labeling.parse import AnswerParseError, extract_json
from toolkit.config import load_stage_config
from toolkit.errors import CroptuneError
from toolkit.metrics import flatten_fields

if TYPE_CHECKING:
    from teacher_labeling.engine import RequestEngine

logger = logging.getLogger(__name__)

Bucket = Literal["verifiable_correct", "verifiable_incorrect", "unverifiable"]
BUCKETS: tuple[Bucket, ...] = get_args(Bucket)
JUDGE_NAME = "judge"

JUDGE_INSTRUCTIONS = """You are checking product information that a model extracted from \
the {n_images} photos of one product listing shown above.

Each key of the JSON object below names one extracted value. For EVERY key choose one bucket:
- "verifiable_correct": the information can be seen or read on the photos (printed on the \
product, its packaging or its labels, or plainly shown) and the extracted value matches it \
(ignore case, spacing and how a unit is spelled);
- "verifiable_incorrect": the information is visible on the photos but the extracted value \
differs from it;
- "unverifiable": the photos do not show this information, so it can be neither confirmed nor \
refuted.

Answer with ONE JSON object that maps every key below to "verifiable_correct", \
"verifiable_incorrect" or "unverifiable", and nothing else.

Extracted values:
{claims}"""

_BUCKET_SPELLING = re.compile(r"[\s-]+")


class JudgeEndpointConfig(AnsweringSettings):
    """The judge's OpenAI-compatible endpoint: a teacher's endpoint keys, and its answer format."""

    name: str = Field(JUDGE_NAME, description="Name used in messages")


class JudgeConfig(BaseModel):
    """The LLM judge: which OpenAI-compatible endpoint answers, and how hard it may be pushed."""

    model_config = ConfigDict(extra="forbid")

    endpoint: JudgeEndpointConfig = Field(
        description="The judge's endpoint: model, base_url, api_key_env, max_concurrency, "
        "requests_per_minute, tokens_per_minute, timeout_s, max_retries, temperature, "
        "max_tokens, jpeg_quality, structured_output (name defaults to 'judge')"
    )

    @model_validator(mode="before")
    @classmethod
    def _openai_kind(cls, data: Any) -> Any:
        # A teacher entry copied here may name its kind: only an endpoint can judge.
        endpoint = data.get("endpoint") if isinstance(data, dict) else None
        if isinstance(endpoint, dict) and endpoint.get("kind", "openai") != "openai":
            raise ValueError("the judge needs an OpenAI-compatible endpoint (kind: openai)")
        return data


def load_judge_config(path: Path | str) -> JudgeConfig:
    """A judge config from YAML, validated."""
    return load_stage_config(JudgeConfig, Path(path), [], stage="evaluate")


@dataclass
class JudgeItem:
    """One listing to judge: its images and the predicted attributes (None: unparseable)."""

    item_id: str
    images: list[Image.Image]
    predicted: dict[str, Any] | None


@dataclass
class JudgeResult:
    """The judge's buckets for one item's claims, or why the item could not be judged."""

    item_id: str
    claims: dict[str, Any]
    buckets: dict[str, Bucket] = field(default_factory=dict)
    error: str | None = None
    usage: dict[str, int] = field(default_factory=dict)

    @property
    def unanswered(self) -> list[str]:
        """Claims the judge gave no (known) bucket for."""
        return [key for key in self.claims if key not in self.buckets]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready result."""
        return {
            "item_id": self.item_id,
            "claims": self.claims,
            "buckets": self.buckets,
            "unanswered": self.unanswered,
            "error": self.error,
        }


def judge_claims(predicted: Any) -> dict[str, Any]:
    """The predicted values to judge: {"group.field": value}, list elements as "group.field[i]"."""
    claims: dict[str, Any] = {}
    for key, value in flatten_fields(predicted).items():
        if isinstance(value, list):
            claims.update({f"{key}[{i}]": element for i, element in enumerate(value)})
        else:
            claims[key] = value
    return claims


def judge_prompt(claims: dict[str, Any], n_images: int) -> str:
    """The judge's instruction for one item (its images are sent before it)."""
    return JUDGE_INSTRUCTIONS.format(
        n_images=n_images, claims=json.dumps(claims, ensure_ascii=False, indent=1)
    )


def judge_response_format(claims: Iterable[str]) -> dict[str, Any]:
    """A strict json_schema response_format: every claim key, each one of the buckets."""
    keys = list(claims)
    return {
        "type": "json_schema",
        "json_schema": {
            "name": "judgement",
            "strict": True,
            "schema": {
                "type": "object",
                "properties": {key: {"type": "string", "enum": list(BUCKETS)} for key in keys},
                "required": keys,
                "additionalProperties": False,
            },
        },
    }


def _bucket(value: Any) -> Bucket | None:
    if isinstance(value, dict):  # {"bucket": "..."} with a reason beside it
        value = value.get("bucket")
    if not isinstance(value, str):
        return None
    spelled = _BUCKET_SPELLING.sub("_", value.strip().casefold())
    return next((bucket for bucket in BUCKETS if bucket == spelled), None)


def _entries(value: dict[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    """(key, verdict) pairs; an answer nested by group is read as dotted keys."""
    for key, inner in value.items():
        name = f"{prefix}{key}"
        if isinstance(inner, dict) and "bucket" not in inner:
            yield from _entries(inner, f"{name}.")
        else:
            yield name, inner


def parse_judgement(text: str, keys: Collection[str] | None = None) -> dict[str, Bucket]:
    """The buckets in a judge's answer (fenced, wrapped in prose or truncated are repaired).

    keys: the claims asked about; other keys are ignored. Entries with an unknown bucket
    are ignored too; both with one logged warning. Raises AnswerParseError for no JSON object.
    """
    value, _ = extract_json(text)
    if not isinstance(value, dict):
        raise AnswerParseError(f"expected a JSON object of buckets, got {type(value).__name__}")
    buckets: dict[str, Bucket] = {}
    unknown_keys: list[str] = []
    unknown_buckets: list[str] = []
    for key, verdict in _entries(value):
        if keys is not None and key not in keys:
            unknown_keys.append(key)
            continue
        bucket = _bucket(verdict)
        if bucket is None:
            unknown_buckets.append(f"{key}={str(verdict)[:40]!r}")
            continue
        buckets[key] = bucket
    if unknown_keys:
        logger.warning("judge answer: ignored keys not asked about: %s", ", ".join(unknown_keys))
    if unknown_buckets:
        logger.warning("judge answer: ignored unknown buckets: %s", ", ".join(unknown_buckets))
    return buckets


def _question(
    config: JudgeEndpointConfig, item: JudgeItem, claims: dict[str, Any]
) -> tuple[list[dict[str, Any]], int]:
    """The chat messages of one item's judgement and its estimated prompt tokens."""
    from toolkit.images import pixel_hash

    images = [image if image.mode == "RGB" else image.convert("RGB") for image in item.images]
    prompt = judge_prompt(claims, len(images))
    messages = user_message(images, [pixel_hash(image) for image in images], prompt, config)
    tokens = text_tokens(prompt) + sum(image_tokens(config.model, *image.size) for image in images)
    return messages, tokens


async def _judge_one(
    config: JudgeEndpointConfig, engine: RequestEngine, item: JudgeItem
) -> JudgeResult:
    from teacher_labeling.engine import RequestFailed

    claims = judge_claims(item.predicted)
    result = JudgeResult(item_id=item.item_id, claims=claims)
    if not claims:
        return result  # nothing predicted: nothing to judge, no request
    # Hashing and encoding photos takes tens of ms each: off the event loop.
    messages, prompt_tokens = await asyncio.to_thread(_question, config, item, claims)
    completion_tokens = config.expected_output_tokens or 16 * len(claims) + 16
    params: dict[str, Any] = {"temperature": config.temperature, "max_tokens": config.max_tokens}
    if config.structured_output:
        params["response_format"] = judge_response_format(claims)
    try:
        completion = await engine.complete(messages, prompt_tokens + completion_tokens, **params)
    except RequestFailed as exc:
        result.error = str(exc)
        logger.warning("judge: item %s failed: %s", item.item_id, exc)
        return result
    result.usage = {**completion.usage, "attempts": completion.attempts}
    try:
        result.buckets = parse_judgement(completion.text, claims)
    except AnswerParseError as exc:
        result.error = f"unusable judge answer: {exc}"
        logger.warning("judge: item %s: %s", item.item_id, result.error)
    return result


async def judge_items(
    config: JudgeConfig,
    items: list[JudgeItem],
    on_result: Callable[[JudgeResult], None] | None = None,
) -> list[JudgeResult]:
    """The judge's buckets for every item, in item order; a failed item gets an error.

    Raises CroptuneError when the key variable is missing (before any request) or the
    endpoint refuses the judge for good (bad key, unknown model: HTTP 400/401/403/404).
    """
    from teacher_labeling.engine import TeacherStopped, describe_error

    endpoint = config.endpoint
    check_ready(f"teacher {endpoint.name!r}", endpoint)  # named as when it was a teacher
    engine = build_engine(endpoint)

    # Items wait here before their photos are encoded, so a large split is not held in
    # memory as data URLs all at once; twice the request slots keeps the endpoint busy.
    gate = asyncio.Semaphore(2 * endpoint.max_concurrency)

    async def one(item: JudgeItem) -> JudgeResult:
        async with gate:
            result = await _judge_one(endpoint, engine, item)
        if on_result is not None:
            on_result(result)
        return result

    try:
        outcomes = await asyncio.gather(*(one(item) for item in items), return_exceptions=True)
    finally:
        await engine.client.close()
    stopped = next((o for o in outcomes if isinstance(o, TeacherStopped)), None)
    if stopped is not None:
        reason = describe_error(stopped.__cause__) if stopped.__cause__ else str(stopped)
        done = sum(isinstance(o, JudgeResult) for o in outcomes)
        raise CroptuneError(
            f"the LLM judge stopped after {done} of {len(items)} items: {reason} "
            f"(model {endpoint.model!r} at {endpoint.base_url or 'the OpenAI API'}); check the "
            f"judge config's model, base_url and the key variable {endpoint.api_key_env}"
        ) from stopped
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return list(outcomes)  # type: ignore[arg-type]


def judge_items_sync(
    config: JudgeConfig,
    items: list[JudgeItem],
    on_result: Callable[[JudgeResult], None] | None = None,
) -> list[JudgeResult]:
    """judge_items from synchronous code (runs its own event loop)."""
    return asyncio.run(judge_items(config, items, on_result))


def bucket_rates(results: list[JudgeResult]) -> dict[str, Any]:
    """Fractions of judged field values per bucket (None when none was judged), and counts."""
    counts = Counter(bucket for result in results for bucket in result.buckets.values())
    judged = sum(counts.values())
    rates: dict[str, Any] = {
        bucket: round(counts[bucket] / judged, 4) if judged else None for bucket in BUCKETS
    }
    rates["judged_fields"] = judged
    rates["unanswered_fields"] = sum(
        len(result.unanswered) for result in results if result.error is None
    )
    rates["failed_items"] = sum(result.error is not None for result in results)
    return rates
