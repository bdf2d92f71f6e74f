"""What predict reads from a serving bundle (croptune.yaml, validated): how training built
its examples."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from toolkit.bundle import (
    BUNDLE_FILE,
    EXPORT_AGAIN,
    BoxSourceName,
    BundleManifest,
    read_manifest_data,
    validate_manifest,
)
from toolkit.config.load import config_error
from toolkit.crops import CropConfig
from toolkit.dataset import DatasetConfig
from toolkit.errors import CroptuneError
from toolkit.schema import AttributeSchema, extraction_prompt

EXPORT_WITH_DATASET = "export it again with --dataset DIR (the training dataset folder)"
# Below this measured share of teacher boxes inside the detector's crops, predict warns: the
# student then misses the close-ups of much of the small print it was trained with.
COVERAGE_TARGET = 0.9


@dataclass
class Bundle:
    """What predict reads from a serving bundle: how training built its examples."""

    path: Path
    manifest: BundleManifest
    schema: AttributeSchema
    crop: CropConfig | None  # None: the dataset was built without a crop stage
    dataset: DatasetConfig  # strategy, image budget, originals' longer side
    image_tokens: int | None
    box_source: BoxSourceName
    max_new_tokens: int
    lora_name: str

    @property
    def detector_dir(self) -> Path | None:
        """BUNDLE/detector when the bundle ships one."""
        detector = self.manifest.detector
        folder = self.path / detector.path if detector else None
        return folder if folder is not None and folder.is_dir() else None

    @property
    def detector_coverage(self) -> float | None:
        """The shipped detector's measured held-out coverage (None: none, or not measured)."""
        return self.manifest.detector.coverage if self.manifest.detector else None

    def coverage_note(self) -> tuple[int, str]:
        """The log level and line predict gives about the detector's measured coverage."""
        coverage = self.detector_coverage
        if coverage is None:
            return logging.INFO, (
                "the bundle's detector records no measured coverage (croptune.yaml: "
                "detector.coverage): how many teacher boxes its crops hold is unknown; train "
                "it with held-out items (`croptune detector train`) and export again"
            )
        measured = (
            f"the bundle's detector crops held {coverage:.0%} of the held-out teacher boxes "
            "when it was trained"
        )
        if coverage < COVERAGE_TARGET:
            return logging.WARNING, (
                f"{measured} (below {COVERAGE_TARGET:.0%}): the student will miss close-ups "
                "of the rest; a better detector (more photos, epochs, a lower conf) or "
                "--box-source teacher gives it more"
            )
        return logging.INFO, measured

    @property
    def uses_crops(self) -> bool:
        """Whether training showed crops (a crop stage ran and the strategy uses them)."""
        return self.crop is not None and self.dataset.strategy != "originals"


def load_bundle(path: Path | str) -> Bundle:
    """A bundle written by `croptune export`, its croptune.yaml validated and checked for
    what predict needs (a missing field is an error naming it, never a default)."""
    path = Path(path)
    data = read_manifest_data(path)
    # Checked before the other fields: a bundle without the dataset's facts lacks them all.
    manifest = validate_manifest(BundleManifest, data, path) if data.get("schema") else None
    schema = manifest.schema_ if manifest else None
    if manifest is None or schema is None:
        raise CroptuneError(
            f"bundle {path} records no schema, prompt or crop config (it was exported without "
            f"the dataset's croptune_dataset.json); {EXPORT_WITH_DATASET}"
        )
    recorded = manifest.prompt.instructions
    if recorded is not None and recorded.strip() != extraction_prompt(schema).strip():
        raise CroptuneError(
            f"bundle {path} was trained with other instructions than this croptune writes "
            f"(croptune {manifest.croptune_version}); predict with the croptune "
            "version that trained it, so the student sees its training prompt"
        )
    needed = {
        "image_budget": manifest.image_budget,
        "dataset.strategy": manifest.dataset.strategy,
        "prompt.originals_max_side": manifest.prompt.originals_max_side,
    }
    missing = [name for name, value in needed.items() if value is None]
    if missing:
        raise CroptuneError(
            f"bundle {path} records no {', '.join(missing)} in {BUNDLE_FILE} (how training "
            f"built its examples); {EXPORT_WITH_DATASET}"
        )
    crops_side = manifest.prompt.crops_max_side
    if crops_side is not None and crops_side != manifest.prompt.originals_max_side:
        raise CroptuneError(
            f"bundle {path}: prompt.crops_max_side {crops_side} differs from "
            f"prompt.originals_max_side {manifest.prompt.originals_max_side} in {BUNDLE_FILE}; "
            f"croptune fits both to one max_image_side; {EXPORT_AGAIN}"
        )
    try:
        dataset_config = DatasetConfig(
            strategy=manifest.dataset.strategy,
            max_images_per_item=manifest.image_budget,
            max_image_side=manifest.prompt.originals_max_side,
            resize_crops=crops_side is not None,
        )
    except ValidationError as exc:
        error = config_error(exc, f"bundle {path}: the dataset settings in {BUNDLE_FILE}")
        raise CroptuneError(f"{error}; {EXPORT_AGAIN}") from exc
    return Bundle(
        path=path,
        manifest=manifest,
        schema=schema,
        crop=manifest.crop,
        dataset=dataset_config,
        image_tokens=manifest.image_tokens,
        box_source=manifest.box_source,
        max_new_tokens=manifest.prompt.decoding.max_new_tokens,
        lora_name=manifest.lora_name,
    )
