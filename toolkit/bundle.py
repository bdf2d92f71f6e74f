"""The serving bundle's manifest, BUNDLE/croptune.yaml: the one typed contract that
`croptune export` writes and predict, evaluate and the model card read."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from toolkit.config import dump_yaml
from toolkit.config.load import config_error
from toolkit.crops import CropConfig
from toolkit.errors import CroptuneError
from toolkit.schema import AttributeSchema

BUNDLE_FILE = "croptune.yaml"
ADAPTER_DIR = "adapter"  # BUNDLE/adapter: the LoRA adapter with the training processor
MERGED_DIR = "merged"  # BUNDLE/merged: the base with the adapter merged in (--merge)
OFFLINE_BASE_DIR = "base"  # BUNDLE/base: the base model, when no hub has it
DETECTOR_DIR = "detector"  # BUNDLE/detector: the region-proposal detector (--detector)
DEFAULT_MAX_NEW_TOKENS = 1024  # the answer length export records
BoxSourceName = Literal["detector", "teacher", "none"]
BOX_SOURCES: tuple[str, ...] = get_args(BoxSourceName)
EXPORT_AGAIN = "export it again with `croptune export --adapter ADAPTER --out BUNDLE`"

LISTING_TEXT = (
    "when the item has a title or text: the instructions, then '\\n\\nListing text:\\n', "
    "then the stripped title and text joined by '\\n'"
)
IMAGES_TEXT = (
    "one image part per image, all BEFORE the one text part: the kept originals in catalog "
    "order (oriented, RGB, longer side at most originals_max_side), then the crops in image "
    "order (longer side at most crops_max_side when set)"
)
MESSAGES_TEXT = "one user message; no system message; the answer is the reply"


class _Part(BaseModel):
    """A section of croptune.yaml: unknown keys are named, not ignored."""

    model_config = ConfigDict(extra="forbid")


class Decoding(_Part):
    """How the student's answer is generated."""

    temperature: float = Field(0, description="Sampling temperature (0: greedy, as evaluated)")
    max_new_tokens: int = Field(..., ge=1, description="Answer length limit in tokens")


class PromptSpec(_Part):
    """The request the student was trained on: instructions, image order, decoding."""

    instructions: str | None = Field(
        ...,
        description="The exact training instructions (null: exported without the dataset's "
        "croptune_dataset.json)",
    )
    listing_text: str = Field(LISTING_TEXT, description="How the listing text joins the prompt")
    images: str = Field(IMAGES_TEXT, description="Which images go into the request, in order")
    order: list[str] = Field(
        default_factory=lambda: ["originals", "crops", "text"],
        description="The order of the request's parts",
    )
    messages: str = Field(MESSAGES_TEXT, description="The chat messages of one request")
    chat_template: str | None = Field(
        None, description="The training chat template, relative to the bundle (null: the base's)"
    )
    originals_max_side: int | None = Field(
        ..., ge=1, description="Longer side of the originals in pixels, as the dataset resized them"
    )
    crops_max_side: int | None = Field(
        None,
        ge=1,
        description="Longer side of the crops in pixels, as the dataset resized them (null: "
        "crops as cut, as datasets built before croptune resized crops)",
    )
    decoding: Decoding = Field(..., description="Generation settings")


class DatasetFacts(_Part):
    """How the training dataset was built."""

    strategy: Literal["originals", "crops", "originals+crops"] | None = Field(
        ..., description="Which images each example showed (null: not recorded)"
    )
    max_image_side: int | None = Field(None, description="Longer side of the originals")
    stats: dict[str, Any] | None = Field(None, description="The dataset's build statistics")
    splits: dict[str, int | None] = Field(
        default_factory=dict, description="Examples per split the training saw"
    )


class LoraFacts(_Part):
    """The adapter's LoRA settings and the vLLM server flag they need."""

    r: int | None = Field(..., description="LoRA rank (adapter_config.json: r)")
    alpha: int | float | None = Field(
        ..., description="LoRA alpha (adapter_config.json: lora_alpha)"
    )
    target_modules: list[str] | str | None = Field(..., description="Modules LoRA adapts")
    adapt: str = Field("language", description="The model parts trained (train config: adapt)")
    max_lora_rank: int = Field(..., description="The vLLM --max-lora-rank that serves it")


class TrainingFacts(_Part):
    """What training recorded (train_stats.json); null where it recorded nothing."""

    steps: int | None = Field(None, description="Optimizer steps")
    first_loss: float | None = Field(None, description="First logged training loss")
    last_loss: float | None = Field(None, description="Last logged training loss")
    eval_loss: float | None = Field(None, description="Validation loss")
    seconds: float | None = Field(None, description="Training wall time")
    bf16: bool | None = Field(None, description="Whether training ran in bfloat16")


class DetectorFacts(_Part):
    """The bundle's region-proposal detector (`croptune detector train`)."""

    path: str = Field(DETECTOR_DIR, description="Its folder, relative to the bundle")
    weights: str = Field(..., description="Its weights file, relative to the bundle")
    imgsz: int | None = Field(None, description="Inference image size it was trained at")
    classes: list[str] | str | None = Field(None, description="The classes it proposes")
    box_source: str | None = Field(None, description="Whose boxes it was trained on")
    metrics: dict[str, Any] | None = Field(None, description="Its held-out metrics")
    coverage: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Share of its held-out teacher boxes that lay inside a crop cut from its "
        "boxes, as `detector train` measured it (what predict's crops show; null: not "
        "measured, e.g. exported by an older croptune or nothing held out)",
    )


class LintEntry(_Part):
    """One problem the vLLM lint found (finetune.export.lint.LintProblem)."""

    rule: str = Field(..., description="The rule's name")
    level: Literal["error", "warning"] = Field(..., description="error: vLLM refuses it")
    message: str = Field(..., description="What breaks the rule, naming file, key and value")
    fix: str = Field(..., description="How to fix it")


class LintSummary(_Part):
    """The vLLM lint's verdict on the adapter."""

    vllm_servable: bool = Field(..., description="Whether vLLM loads the adapter")
    errors: int = Field(..., ge=0, description="Problems vLLM refuses")
    warnings: int = Field(..., ge=0, description="Problems vLLM silently changes")
    problems: list[LintEntry] = Field(default_factory=list, description="Each problem")


class BundleWeights(BaseModel):
    """What opening the bundle's student needs: the base model (its merged/ or adapter/
    folders are found by name). Reads any croptune.yaml; keys it does not name are ignored."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    croptune_version: str | None = Field(None, description="The croptune that exported it")
    base_model: str | None = Field(
        None, description="The base model's public id (hub id, or croptune:tiny); never a path"
    )
    base_folder: str | None = Field(
        None, description="A bundle folder holding the base, for bases no hub has (tiny ones)"
    )


class BundleManifest(BundleWeights):
    """croptune.yaml in full: everything a server or `croptune predict` needs but weights."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    student: str | None = Field(None, description="The student preset trained (train: student)")
    family: str | None = Field(None, description="The model family (gemma3, qwen2_5_vl)")
    lora_name: str = Field(..., min_length=1, description="The model name servers and clients use")
    adapter: str = Field(ADAPTER_DIR, description="The adapter folder, relative to the bundle")
    merged: str | None = Field(None, description="The merged model folder (null: no --merge)")
    prompt: PromptSpec = Field(..., description="The request the student was trained on")
    schema_: AttributeSchema | None = Field(
        ..., alias="schema", description="The attribute schema of the answers (null: unknown)"
    )
    crop: CropConfig | None = Field(
        ..., description="The crop config training's crops were cut with (null: no crop stage)"
    )
    dataset: DatasetFacts = Field(..., description="How the training examples were built")
    image_budget: int | None = Field(
        ..., ge=1, description="Most images per example (the dataset's max_images_per_item)"
    )
    image_tokens: int | None = Field(None, description="Image tokens per image of the family")
    dtype: str | None = Field(None, description="The weights' dtype training used")
    mm_processor_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Image-processor settings the server must use"
    )
    box_source: BoxSourceName = Field(
        ...,
        description="Where predict's boxes come from: detector (BUNDLE/detector), "
        "teacher (box_teacher or --teacher-config) or none (originals only)",
    )
    box_teacher: dict[str, Any] | None = Field(
        None, description="A box teacher's config for box_source teacher (added by hand)"
    )
    detector: DetectorFacts | None = Field(None, description="The shipped detector, if any")
    lora: LoraFacts | None = Field(None, description="The adapter's LoRA settings")
    training: TrainingFacts | None = Field(None, description="What training recorded")
    metrics: dict[str, Any] | None = Field(None, description="The student's evaluation")
    evaluations: list[dict[str, Any]] | None = Field(
        None, description="Every evaluated model (student, base, teachers), path-free"
    )
    lint: LintSummary | None = Field(None, description="The vLLM lint's verdict")

    @field_validator("crop", mode="before")
    @classmethod
    def _saved_crop(cls, value: Any) -> Any:
        """A crop config as recorded by this croptune or an older one."""
        return CropConfig.from_saved(value) if isinstance(value, Mapping) else value

    def to_yaml(self) -> str:
        """The manifest as croptune.yaml text (box_teacher only when set)."""
        data = self.model_dump(mode="json", by_alias=True)
        if self.box_teacher is None:
            data.pop("box_teacher")
        return dump_yaml(data)

    def write(self, bundle: Path) -> Path:
        """Write BUNDLE/croptune.yaml; returns its path."""
        path = Path(bundle) / BUNDLE_FILE
        path.write_text(self.to_yaml(), encoding="utf-8")
        return path


ManifestT = TypeVar("ManifestT", bound=BundleWeights)


def read_manifest(bundle: Path | str) -> BundleManifest:
    """BUNDLE/croptune.yaml, validated in full (a CroptuneError names the bundle, the field
    and the fix)."""
    return validate_manifest(BundleManifest, read_manifest_data(bundle), bundle)


def read_weights(bundle: Path | str) -> BundleWeights:
    """What BUNDLE/croptune.yaml says about the student's weights (its base model)."""
    return validate_manifest(BundleWeights, read_manifest_data(bundle), bundle)


def validate_manifest(kind: type[ManifestT], data: dict[str, Any], bundle: Path | str) -> ManifestT:
    """croptune.yaml's mapping as `kind`; a CroptuneError names the bundle, field and fix."""
    try:
        return kind.model_validate(data)
    except ValidationError as exc:
        error = config_error(exc, f"bundle {bundle}: {BUNDLE_FILE}")
        raise CroptuneError(f"{error}; {EXPORT_AGAIN}") from exc


def read_manifest_data(bundle: Path | str) -> dict[str, Any]:
    """The mapping in BUNDLE/croptune.yaml, unvalidated."""
    path = Path(bundle) / BUNDLE_FILE
    if not path.is_file():
        raise CroptuneError(
            f"{bundle} is not a croptune bundle (no {BUNDLE_FILE}); write one with "
            "`croptune export --adapter DIR --out BUNDLE`"
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise CroptuneError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise CroptuneError(f"{path} must hold a mapping of keys to values; {EXPORT_AGAIN}")
    return data
