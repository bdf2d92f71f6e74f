"""Teachers: who labels an item (attributes) or an image (boxes), and how they are asked."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from teacher_labeling.conventions import QWEN_MAX_PIXELS, QWEN_MIN_PIXELS, Coords, from_pixels
from teacher_labeling.prompts import attributes_prompt, boxes_prompt
from toolkit.errors import CroptuneError
from toolkit.schema import AttributeSchema, listing_text
from toolkit.store import ItemRow

Role = Literal["boxes", "attributes", "both"]


class NotBuiltError(CroptuneError):
    """A documented capability that this version of croptune does not have yet."""


class TeacherConfig(BaseModel):
    """One teacher: what it labels, where it is served, how hard it may be pushed."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Free name, recorded as the source of its boxes and labels")
    role: Role = Field(description="boxes | attributes | both (the reference teacher)")
    kind: Literal["openai", "reference", "local"] = Field(
        "openai",
        description="openai: any OpenAI-compatible endpoint; reference: the catalog's own "
        "reference labels and boxes; local: a transformers model in-process",
    )
    base_url: str | None = Field(None, description="OpenAI-compatible base URL; omit for OpenAI")
    model: str = Field("reference", description="Model name sent to the endpoint")
    api_key_env: str | None = Field(
        None, description="NAME of the environment variable holding the key (never the key)"
    )
    coords: Coords = Field("pixels", description="Box convention of the teacher's answers")
    min_pixels: int = Field(QWEN_MIN_PIXELS, description="qwen2.5-vl: server processor min_pixels")
    max_pixels: int = Field(QWEN_MAX_PIXELS, description="qwen2.5-vl: server processor max_pixels")
    max_concurrency: int = Field(32, ge=1, description="Requests in flight at once")
    requests_per_minute: int = Field(600, ge=1, description="Request rate limit")
    tokens_per_minute: int = Field(2_000_000, ge=1, description="Token rate limit")
    timeout_s: float = Field(120, gt=0, description="Per-request timeout in seconds")
    max_retries: int = Field(6, ge=0, description="Retries of 429/5xx/timeouts before giving up")
    temperature: float = Field(0.0, ge=0, description="Sampling temperature")
    max_tokens: int = Field(2048, ge=1, description="Answer length limit in tokens")

    @model_validator(mode="after")
    def _no_inline_keys(self) -> TeacherConfig:
        if self.api_key_env and not self.api_key_env.replace("_", "").isalnum():
            raise ValueError(
                "api_key_env must be the NAME of an environment variable (e.g. OPENAI_API_KEY), "
                "not the key itself"
            )
        return self


class LabelConfig(BaseModel):
    """The labeling stage: teachers, the attribute schema, image limits."""

    model_config = ConfigDict(extra="forbid")

    teachers: list[TeacherConfig] = Field(description="Teachers asked for every item")
    schema_: str = Field("compliance", alias="schema", description="Built-in schema or a file path")
    max_image_pixels: int = Field(
        64_000_000,
        description="Images with more pixels are refused as possible decompression bombs",
    )
    allow_outside_paths: bool = Field(
        False, description="Allow catalog image paths that leave the catalog folder"
    )

    @model_validator(mode="after")
    def _unique_names(self) -> LabelConfig:
        names = [t.name for t in self.teachers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"teacher names must be unique; repeated: {', '.join(duplicates)}")
        if not self.teachers:
            raise ValueError("at least one teacher is needed")
        return self


def load_label_config(path: Path | str) -> LabelConfig:
    """A labeling config from YAML, validated."""
    path = Path(path)
    if not path.is_file():
        raise CroptuneError(f"label config {path} does not exist")
    try:
        return LabelConfig.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    except yaml.YAMLError as exc:
        raise CroptuneError(f"label config {path} is not valid YAML: {exc}") from exc
    except ValidationError as exc:
        raise CroptuneError(f"label config {path} is not valid:\n{exc}") from exc


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
            parameters={"task": "attributes", **self._parameters()},
        )

    def boxes_request(
        self,
        item: ItemRow,
        index: int,
        image: Image.Image,
        image_hash: str,
        original_size: tuple[int, int] | None = None,
    ) -> TeacherRequest:
        """The one-image question for boxes (image: as sent; its hash: of the original)."""
        return TeacherRequest(
            teacher=self.name,
            model=self.config.model,
            item_id=item.item_id,
            image=index,
            prompt=boxes_prompt(self.config.coords),
            images=[image],
            image_hashes=[image_hash],
            parameters={"task": "boxes", "coords": self.config.coords, **self._parameters()},
            original_size=original_size,
        )

    def _parameters(self) -> dict[str, Any]:
        return {"temperature": self.config.temperature, "max_tokens": self.config.max_tokens}

    @abstractmethod
    def answer(self, request: TeacherRequest, item: ItemRow) -> TeacherAnswer:
        """Answer one request (raises TeacherError when it cannot)."""


class ReferenceTeacher(Teacher):
    """Answers from the catalog's own reference attributes and boxes (human labels, the demo).

    It writes its answer as text in its coordinate convention, so what it says goes
    through the same parsers and store path as a real teacher's answer.
    """

    def answer(self, request: TeacherRequest, item: ItemRow) -> TeacherAnswer:
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


def build_teacher(config: TeacherConfig, schema: AttributeSchema) -> Teacher:
    """The teacher implementation for a config."""
    if config.kind == "reference":
        return ReferenceTeacher(config, schema)
    raise NotBuiltError(
        f"teacher {config.name!r}: kind {config.kind!r} is not built yet in this croptune "
        "(only 'reference' is); OpenAI-compatible and local teachers are planned"
    )
