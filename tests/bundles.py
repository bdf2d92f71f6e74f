"""A bundle's croptune.yaml as `croptune export` writes it, for tests of what reads it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from toolkit.crops import CropConfig
from toolkit.schema import extraction_prompt, load_schema


def manifest_data(
    *,
    base_model: str = "croptune:tiny",
    crop: CropConfig | None = None,
    strategy: str = "originals+crops",
    budget: int = 9,
    box_source: str = "none",
    **extra: object,
) -> dict:
    """A croptune.yaml's data with every key predict reads (compliance schema, 16 image tokens)."""
    schema = load_schema("compliance")
    crop = crop if crop is not None else CropConfig()
    return {
        "croptune_version": "test",
        "base_model": base_model,
        "lora_name": "croptune-tiny",
        "prompt": {
            "instructions": extraction_prompt(schema),
            "originals_max_side": 1024,
            "decoding": {"temperature": 0, "max_new_tokens": 64},
        },
        "schema": schema.model_dump(mode="json"),
        "crop": crop.model_dump(mode="json"),
        "dataset": {"strategy": strategy, "max_image_side": 1024},
        "image_budget": budget,
        "image_tokens": 16,
        "box_source": box_source,
        "detector": None,
        **extra,
    }


def write_manifest(folder: Path, data: dict) -> Path:
    """folder/croptune.yaml holding data (keys in their order); the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "croptune.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return folder


@dataclass
class TinyPipeline:
    """What tiny_pipeline made: its folder, the trained adapter and the exported bundle."""

    workdir: Path
    adapter: Path
    bundle: Path


def tiny_pipeline(workdir: Path, n_items: int = 30, max_steps: int = 60) -> TinyPipeline:
    """Example catalog -> reference labels -> crops -> dataset -> tiny LoRA -> bundle.

    The tiny student (171k parameters, random weights) learns nothing in 60 steps; what
    this gives is a real bundle of every stage in ~30 s, for the tests that serve one.
    Layout: workdir/catalog/catalog.jsonl, workdir/run, workdir/dataset, workdir/bundle.
    """
    from croptune.pipeline import run_crop, run_dataset, run_label
    from croptune.synthetic.catalog import make_example_catalog
    from finetune.export.writer import export_bundle
    from finetune.train import TrainConfig, train
    from teacher_labeling.teachers import LabelConfig, TeacherConfig
    from toolkit.dataset import DatasetConfig

    catalog = make_example_catalog(workdir / "catalog", n_items=n_items, seed=0)
    teacher = TeacherConfig(name="reference", role="both", kind="reference", coords="pixels")
    run_label(catalog, LabelConfig(teachers=[teacher]), workdir / "run")
    run_crop(workdir / "run", CropConfig())
    run_dataset(workdir / "run", workdir / "dataset", DatasetConfig(seed=0))
    result = train(
        TrainConfig(
            student="tiny",
            dataset=str(workdir / "dataset"),
            output_dir=str(workdir / "train"),
            max_steps=max_steps,
            per_device_train_batch_size=2,
            gradient_accumulation_steps=1,
            learning_rate=2e-3,
            warmup_ratio=0.0,
            logging_steps=5,
            eval_steps=max(1, max_steps // 2),
            gradient_checkpointing=False,
            seed=0,
        )
    )
    bundle = export_bundle(result.adapter_dir, workdir / "bundle")
    return TinyPipeline(workdir=workdir, adapter=result.adapter_dir, bundle=bundle)
