"""Teachers: who labels an item (attributes) or an image (boxes), and how they are asked."""

from __future__ import annotations

import asyncio
import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from teacher_labeling.client import (
    ENCODED_IMAGES,
    AnsweringSettings,
    build_engine,
    check_ready,
    user_message,
)
from teacher_labeling.cluster.config import RayConfig
from teacher_labeling.conventions import (
    QWEN_MAX_PIXELS,
    QWEN_MIN_PIXELS,
    Coords,
    from_pixels,
    sent_size,
)
from teacher_labeling.cost import Price, image_tokens, price_for, text_tokens
from teacher_labeling.prompts import attributes_prompt, boxes_prompt
from toolkit.boxes import BoxConvention
from toolkit.config import ConfigPath, load_stage_config
from toolkit.errors import CroptuneError
from toolkit.schema import AttributeSchema, listing_text
from toolkit.store import ItemRow

if TYPE_CHECKING:
    from teacher_labeling.engine import ReplicaStats, RequestEngine

Role = Literal["boxes", "attributes", "both"]


class NotBuiltError(CroptuneError):
    """A documented capability that this version of croptune does not have yet."""


class TeacherConfig(AnsweringSettings):
    """One teacher: what it labels, where it is served, how hard it may be pushed."""

    name: str = Field(description="Free name, recorded as the source of its boxes and labels")
    role: Role = Field(description="boxes | attributes | both (the reference teacher)")
    kind: Literal["openai", "reference", "local"] = Field(
        "openai",
        description="openai: any OpenAI-compatible endpoint; reference: the catalog's own "
        "reference labels and boxes; local: a transformers model in-process",
    )
    model: Annotated[str, ConfigPath(when=("kind", "local"))] = Field(
        "reference",
        description="Model name sent to the endpoint; kind local: a hub id or a local model "
        "folder (relative to the config file)",
    )
    coords: Coords = Field("pixels", description="Box convention of the teacher's answers")
    min_pixels: int = Field(QWEN_MIN_PIXELS, description="qwen2.5-vl: server processor min_pixels")
    max_pixels: int = Field(QWEN_MAX_PIXELS, description="qwen2.5-vl: server processor max_pixels")
    model_source: str | None = Field(
        None,
        description="Ray with the vllm engine (ray.engines): the hub id or folder of the weights "
        "the engine replicas load (default: model); answers are keyed as the served model's",
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Ray with the vllm engine: vLLM engine arguments of the replicas, e.g. "
        "{max_model_len: 8192, tensor_parallel_size: 2, limit_mm_per_prompt: {image: 8}}",
    )


class FusionConfig(BaseModel):
    """Fusion of the boxes of two or more box teachers."""

    model_config = ConfigDict(extra="forbid")

    policy: Literal["weighted", "union", "intersection"] = Field(
        "weighted",
        description="weighted: score-weighted mean of matched boxes; union: their enclosing box; "
        "intersection: only boxes every box teacher found",
    )
    iou_threshold: float = Field(0.5, gt=0, le=1, description="IoU at which two boxes match")


class LabelConfig(BaseModel):
    """The labeling stage: teachers, the attribute schema, image limits."""

    model_config = ConfigDict(extra="forbid")

    teachers: list[TeacherConfig] = Field(description="Teachers asked for every item")
    schema_: Annotated[str, ConfigPath(suffixes=(".yaml", ".yml", ".json"))] = Field(
        "compliance",
        alias="schema",
        description="Built-in schema name (compliance) or a YAML/JSON schema file (relative to "
        "the config file)",
    )
    max_image_pixels: int = Field(
        64_000_000,
        description="Images with more pixels are refused as possible decompression bombs",
    )
    allow_outside_paths: bool = Field(
        False, description="Allow catalog image paths that leave the catalog folder"
    )
    box_convention: BoxConvention = Field(
        "pixels",
        description="How the catalog's reference boxes are given: pixels (of the oriented "
        "image), norm1 (0..1 fractions) or norm1000 (0..1000 per axis); converted to pixels "
        "at ingest (`catalog validate --box-convention`)",
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Catalog field -> the catalog's own column name, e.g. {item_id: id, "
        "images: image_paths} (`catalog validate --column item_id=id`)",
    )
    prices: dict[str, Price] = Field(
        default_factory=dict,
        description="USD per 1M input/output tokens per model, added to the built-in table",
    )
    fusion: FusionConfig = Field(
        default_factory=lambda: FusionConfig(),
        description="How boxes of several teachers are fused",
    )
    ray: RayConfig = Field(
        default_factory=lambda: RayConfig(),
        description="How `label --engine ray` runs the teachers on a Ray cluster (docs/scale.md)",
    )

    @model_validator(mode="after")
    def _check_teachers(self) -> LabelConfig:
        names = [t.name for t in self.teachers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"teacher names must be unique; repeated: {', '.join(duplicates)}")
        kinds = {t.name: t.kind for t in self.teachers}
        for name in self.ray.engines:
            if name not in kinds:
                raise ValueError(
                    f"ray.engines names teacher {name!r}, which is not configured (teachers: "
                    f"{', '.join(kinds)})"
                )
            if self.ray.engine_of(name) == "vllm" and kinds[name] != "openai":
                raise ValueError(
                    f"ray.engines: teacher {name!r} is kind {kinds[name]}; only an openai "
                    "teacher (a served model) can run as vLLM engines"
                )
        if not self.teachers:
            raise ValueError("at least one teacher is needed")
        return self


def load_label_config(path: Path | str, overrides: list[str] | None = None) -> LabelConfig:
    """A labeling config from YAML and key=value overrides, validated."""
    return load_stage_config(LabelConfig, Path(path), list(overrides or []), stage="label")


@dataclass
class TeacherRequest:
    """One question to a teacher: the instruction, the images as sent, and its cache key."""

    teacher: str
    model: str
    item_id: str
    image: int | None  # the image index for a boxes request, None for a whole-item request
    prompt: str
    images: list[Image.Image]
    image_hashes: list[str]
    parameters: dict[str, Any] = field(default_factory=dict)
    original_size: tuple[int, int] | None = None  # boxes requests: the oriented original's size
    sent_size: tuple[int, int] | None = None  # boxes requests: the size the photo is sent at

    @property
    def cache_key(self) -> str:
        """Hash of (model, prompt, image hashes, parameters): equal questions share answers."""
        blob = json.dumps(
            [self.model, self.prompt, self.image_hashes, self.parameters], sort_keys=True
        )
        return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class TeacherAnswer:
    """A teacher's raw answer text and its token usage."""

    text: str
    usage: dict[str, Any] = field(default_factory=dict)


class TeacherError(Exception):
    """A teacher could not answer one request; the item goes on without it."""


class Teacher(ABC):
    """A source of attributes and/or boxes; subclasses say how a request is answered."""

    def __init__(self, config: TeacherConfig, schema: AttributeSchema) -> None:
        self.config = config
        self.schema = schema

    @property
    def name(self) -> str:
        """The teacher's name, recorded as the source of what it labels."""
        return self.config.name

    @property
    def does_attributes(self) -> bool:
        """Whether the teacher labels attributes."""
        return self.config.role in ("attributes", "both")

    @property
    def does_boxes(self) -> bool:
        """Whether the teacher labels boxes."""
        return self.config.role in ("boxes", "both")

    def attributes_request(
        self, item: ItemRow, images: list[Image.Image], hashes: list[str]
    ) -> TeacherRequest:
        """The whole-item question for attributes, over all its usable images."""
        return TeacherRequest(
            teacher=self.name,
            model=self.config.model,
            item_id=item.item_id,
            image=None,
            prompt=attributes_prompt(self.schema, listing_text(item.title, item.text)),
            images=images,
            image_hashes=hashes,
            parameters={
                "task": "attributes",
                **self._parameters(),
                **self._item_parameters(item, None),
            },
        )

    def boxes_request(
        self,
        item: ItemRow,
        index: int,
        image: Image.Image | None,
        image_hash: str,
        original_size: tuple[int, int] | None = None,
    ) -> TeacherRequest:
        """The one-image question for boxes, with its own cache key (image: as sent, or None
        to be set before it is asked; its hash: of the original)."""
        config = self.config
        parameters: dict[str, Any] = {"task": "boxes", "coords": config.coords}
        parameters.update(self._parameters())
        if config.coords == "qwen2.5-vl":
            # The sent size follows these limits: they are part of the question.
            parameters["pixels"] = [config.min_pixels, config.max_pixels]
        parameters.update(self._item_parameters(item, index))
        return TeacherRequest(
            teacher=self.name,
            model=config.model,
            item_id=item.item_id,
            image=index,
            prompt=boxes_prompt(config.coords),
            images=[image] if image is not None else [],
            image_hashes=[image_hash],
            parameters=parameters,
            original_size=original_size,
            sent_size=(
                sent_size(config.coords, *original_size, config.min_pixels, config.max_pixels)
                if original_size is not None
                else None
            ),
        )

    def _parameters(self) -> dict[str, Any]:
        # The endpoint is part of the question: two servers may serve different weights
        # under one model name. Replicas serve the same weights: named by the first URL, so
        # they share answers whichever of them gave one.
        parameters: dict[str, Any] = {
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
            "endpoint": self.config.endpoint_url,
        }
        if self.config.image_format != "jpeg":  # keys of JPEG-era answers stay as they were
            parameters["image_format"] = self.config.image_format
        return parameters

    def _item_parameters(self, item: ItemRow, index: int | None) -> dict[str, Any]:
        """What of the item itself is part of a question (index None: the attributes one);
        nothing by default: a question is its model, prompt, images and settings."""
        return {}

    @abstractmethod
    async def answer(self, request: TeacherRequest, item: ItemRow) -> TeacherAnswer:
        """Answer one request (raises TeacherError when it cannot)."""

    def price(self, prices: dict[str, Price]) -> Price | None:
        """What the teacher's tokens cost (0 for the reference and local teachers, None when
        no price is known for its model)."""
        return (
            price_for(self.config.model, prices)
            if self.config.kind == "openai"
            else Price(input=0, output=0)
        )

    def estimate_tokens(
        self, request: TeacherRequest, sizes: list[tuple[int, int]]
    ) -> tuple[int, int]:
        """(prompt, completion) tokens a request is expected to take, for limits and dry runs."""
        prompt = text_tokens(request.prompt) + sum(
            image_tokens(self.config.model, w, h, self.config.coords) for w, h in sizes
        )
        default_output = 300 if request.image is not None else 400
        return prompt, self.config.expected_output_tokens or default_output

    def check_ready(self) -> None:  # noqa: B027 - an optional hook: nothing to check by default
        """Fail fast (before any work) when the teacher cannot answer (a missing key, a dead
        server, an unserved model); nothing to check by default."""

    def replica_stats(self) -> list[ReplicaStats]:
        """Requests, answers and failures per server of the teacher (none by default)."""
        return []

    async def close(self) -> None:  # noqa: B027 - an optional hook: nothing to release by default
        """Release connections or models held by the teacher."""


class ReferenceTeacher(Teacher):
    """Answers from the catalog's own reference attributes and boxes (human labels, the demo).

    It writes its answer as text in its coordinate convention, so what it says goes
    through the same parsers and store path as a real teacher's answer.
    """

    # Its answer is the item's own labels, so they are part of the question: a photo two
    # listings share gets each listing's boxes, not whichever listing was asked first.
    def _item_parameters(self, item: ItemRow, index: int | None) -> dict[str, Any]:
        """The item's reference attributes (index None) or its reference boxes on that photo."""
        if index is None:
            return {"reference": _digest(item.reference_attributes)}
        own = [[box["xyxy"], box.get("label", "")] for box in item.reference_boxes
               if box["image"] == index]  # fmt: skip
        return {"reference": _digest(own)}

    async def answer(self, request: TeacherRequest, item: ItemRow) -> TeacherAnswer:
        """The item's reference attributes, or the reference boxes of the requested image."""
        if request.image is None:
            if not item.reference_attributes:
                raise TeacherError("the catalog has no reference attributes for this item")
            return TeacherAnswer(text=json.dumps(item.reference_attributes, ensure_ascii=False))
        sent = request.images[0].size
        original = request.original_size or sent
        entries = []
        for box in item.reference_boxes:
            if box["image"] != request.image:
                continue
            xyxy = from_pixels(tuple(box["xyxy"]), self.config.coords, sent, original)
            entries.append({"bbox_2d": [round(v, 6) for v in xyxy], "label": box.get("label", "")})
        return TeacherAnswer(text=json.dumps(entries))


def _digest(value: Any) -> str:
    """A short stable hash of JSON-able labels."""
    blob = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class OpenAITeacher(Teacher):
    """Any OpenAI-compatible chat completions endpoint: OpenAI (GPT-4.1), vLLM, others."""

    def __init__(self, config: TeacherConfig, schema: AttributeSchema, client: Any = None) -> None:
        super().__init__(config, schema)
        self._client = client
        self._engine: RequestEngine | None = None
        self._encoded = ENCODED_IMAGES

    @property
    def engine(self) -> RequestEngine:
        """The teacher's request engine (made on first use, inside the running event loop)."""
        if self._engine is None:
            self._engine = build_engine(self.config, self._client)
        return self._engine

    def check_ready(self) -> None:
        """Fail fast (before any work) on a missing key, a dead server or an unserved model."""
        if self._client is None:
            check_ready(f"teacher {self.name!r}", self.config)

    def messages(self, request: TeacherRequest) -> list[dict[str, Any]]:
        """The chat messages of a request: its images as data URLs, then the instruction."""
        return user_message(
            request.images, request.image_hashes, request.prompt, self.config, self._encoded
        )

    def request_parameters(self, request: TeacherRequest) -> dict[str, Any]:
        """Sampling parameters and, for attributes, the strict JSON schema."""
        params: dict[str, Any] = {
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
        }
        if request.image is None and self.config.structured_output:
            params["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": f"{self.schema.name}_attributes",
                    "strict": True,
                    "schema": self.schema.json_schema(strict=True),
                },
            }
        return params

    async def answer(self, request: TeacherRequest, item: ItemRow) -> TeacherAnswer:
        """The endpoint's answer to one request (retried per the config's limits)."""
        from teacher_labeling.engine import RequestFailed

        sizes = [image.size for image in request.images]
        prompt_tokens, completion_tokens = self.estimate_tokens(request, sizes)
        try:
            # Encoding a large photo takes tens of ms; in a thread it runs beside the event loop
            # (Pillow releases the GIL while encoding), so other requests keep flowing.
            messages = await asyncio.to_thread(self.messages, request)
            completion = await self.engine.complete(
                messages,
                prompt_tokens + completion_tokens,
                **self.request_parameters(request),
            )
        except RequestFailed as exc:
            raise TeacherError(str(exc)) from exc
        usage = {**completion.usage, "attempts": completion.attempts}
        if completion.finish_reason == "length":
            usage["truncated"] = 1  # the parser repairs what it can of a cut-off answer
        return TeacherAnswer(text=completion.text, usage=usage)

    def replica_stats(self) -> list[ReplicaStats]:
        """Requests, answers and failures per replica of its endpoint ([] before any request)."""
        return list(self._engine.stats.replicas) if self._engine is not None else []

    async def close(self) -> None:
        """Close the HTTP clients (one per replica)."""
        if self._engine is not None and self._client is None:
            await self._engine.close()


def build_teacher(config: TeacherConfig, schema: AttributeSchema) -> Teacher:
    """The teacher implementation for a config."""
    if config.kind == "reference":
        return ReferenceTeacher(config, schema)
    if config.kind == "openai":
        return OpenAITeacher(config, schema)
    if config.kind == "local":
        from teacher_labeling.local import LocalTeacher

        return LocalTeacher(config, schema)
    raise NotBuiltError(f"teacher {config.name!r}: unknown kind {config.kind!r}")
