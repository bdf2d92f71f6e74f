"""The bundle manifest as one typed contract (toolkit.bundle.BundleManifest) and one
open_model for every --model / --bundle value (issue 15: "an untyped bundle contract")."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import yaml

from croptune.models import open_model
from finetune.models import model_kind, student_weights
from finetune.predict import load_bundle
from tests.bundles import manifest_data as bundle_manifest
from tests.bundles import write_manifest
from toolkit.bundle import BundleManifest, read_manifest
from toolkit.crops import CropConfig
from toolkit.errors import CroptuneError
from toolkit.schema import load_schema

# The top-level keys `croptune export` wrote before the manifest was typed: bundles on disk,
# docs/serving.md's client and vLLM tests read them, so the typed model writes the same.
EXPORT_KEYS = [
    "croptune_version", "base_model", "base_folder", "student", "family", "lora_name",
    "adapter", "merged", "prompt", "schema", "crop", "dataset", "image_budget", "image_tokens",
    "dtype", "mm_processor_kwargs", "box_source", "detector", "lora", "training", "metrics",
    "evaluations", "lint",
]  # fmt: skip


def manifest_data() -> dict:
    """A croptune.yaml with every key predict reads (as tests/test_predict.py writes it)."""
    return bundle_manifest(base_model="org/base", budget=5)


def _drop(data: dict, dotted: str) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        data = data[key]
    del data[last]


def _set(data: dict, dotted: str, value: object) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        data = data[key]
    data[last] = value


# ------------------------------------------------------------------ reading validates


@pytest.mark.parametrize(
    "field",
    [
        # predict used 9 images per example without a word
        "image_budget",
        # predict let the student answer 1024 tokens
        "prompt.decoding.max_new_tokens",
        # predict cut no crops ("none"), whatever the bundle was trained with
        "box_source",
        # predict named the student "croptune"
        "lora_name",
        # predict assumed originals+crops
        "dataset.strategy",
        # predict resized the originals to 1024 pixels
        "prompt.originals_max_side",
        # predict took a missing crop config for "trained without crops" and sent no crops
        "crop",
        # the instructions check was skipped, so a changed prompt went unnoticed
        "prompt.instructions",
    ],
)
def test_a_missing_field_is_an_error_naming_bundle_field_and_fix(tmp_path, field):
    data = manifest_data()
    _drop(data, field)
    folder = write_manifest(tmp_path / "bundle", data)
    with pytest.raises(CroptuneError) as caught:
        load_bundle(folder)
    message = str(caught.value)
    assert str(folder) in message and field in message and "export it again" in message


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        # a recorded null: exported without the dataset's facts; nothing to default to
        ("image_budget", None, "image_budget"),
        ("dataset.strategy", None, "dataset.strategy"),
        ("prompt.originals_max_side", None, "prompt.originals_max_side"),
        # a box source predict does not know
        ("box_source", "yolo", "box_source"),
        # an image budget no example can have
        ("image_budget", 0, "image_budget"),
        # an answer length that is no number
        ("prompt.decoding.max_new_tokens", "many", "max_new_tokens"),
        # a typo in a hand-edited manifest is named, not ignored
        ("image_budgt", 4, "image_budgt"),
    ],
)
def test_an_invalid_field_is_an_error_naming_it(tmp_path, field, value, named):
    data = manifest_data()
    _set(data, field, value)
    folder = write_manifest(tmp_path / "bundle", data)
    with pytest.raises(CroptuneError, match="export it again") as caught:
        load_bundle(folder)
    assert str(folder) in str(caught.value) and named in str(caught.value)


def test_the_checks_load_bundle_had_stay(tmp_path):
    # no croptune.yaml at all
    with pytest.raises(CroptuneError, match="not a croptune bundle"):
        load_bundle(tmp_path)
    # exported without the dataset: the schema check comes first, naming --dataset
    write_manifest(tmp_path / "a", {"base_model": "x"})
    with pytest.raises(CroptuneError, match="records no schema.*--dataset DIR"):
        load_bundle(tmp_path / "a")
    # trained with other instructions than this croptune writes
    data = manifest_data()
    data["prompt"]["instructions"] = "Describe the product."
    with pytest.raises(CroptuneError, match="other instructions"):
        load_bundle(write_manifest(tmp_path / "b", data))


def test_a_complete_manifest_loads_typed_values(tmp_path):
    bundle = load_bundle(write_manifest(tmp_path / "bundle", manifest_data()))
    assert isinstance(bundle.manifest, BundleManifest)
    assert (bundle.dataset.max_images_per_item, bundle.dataset.max_image_side) == (5, 1024)
    assert (bundle.max_new_tokens, bundle.box_source, bundle.lora_name) == (
        64,
        "none",
        "croptune-tiny",
    )
    assert bundle.crop == CropConfig() and bundle.schema.name == "compliance"


# ------------------------------------------------------------------ export -> load


def _safetensors(path: Path, shapes: dict[str, list[int]]) -> None:
    """A float32 safetensors file of zeros (a real header; the lint reads only that)."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 4 * shape[0] * shape[1]
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + bytes(offset))


@pytest.fixture
def adapter_and_dataset(tmp_path):
    """An adapter folder as `croptune train` leaves it (weights are zeros) and its dataset's
    recorded facts; the base is a hub id, so nothing is built or loaded."""
    schema = load_schema("compliance")
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    facts = {
        "config": {"strategy": "originals+crops", "max_images_per_item": 6, "max_image_side": 896},
        "schema": schema.model_dump(mode="json"),
        "crop_config": CropConfig().model_dump(mode="json"),
        "stats": {"images_per_example": {"median": 3, "mean": 3.2, "max": 6}},
    }
    (dataset / "croptune_dataset.json").write_text(json.dumps(facts))
    adapter = tmp_path / "train" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"],
                    "base_model_name_or_path": "org/base"})
    )  # fmt: skip
    name = "base_model.model.model.language_model.layers.0.self_attn.q_proj"
    _safetensors(
        adapter / "adapter_model.safetensors",
        {f"{name}.lora_A.weight": [8, 16], f"{name}.lora_B.weight": [16, 8]},
    )
    (adapter / "train_config.yaml").write_text(
        yaml.safe_dump({"model": "org/base", "dataset": str(dataset), "adapt": "language"})
    )
    (adapter / "train_stats.json").write_text(
        json.dumps({"steps": 4, "losses": [2.5, 1.5], "dataset": {"train": {"examples": 10}}})
    )
    return adapter, dataset


def test_export_then_load_gives_equal_typed_values(adapter_and_dataset, tmp_path):
    from finetune.export.card import model_card
    from finetune.export.writer import export_bundle

    adapter, _ = adapter_and_dataset
    folder = export_bundle(adapter, tmp_path / "bundle", lora_name="kettles")
    raw = yaml.safe_load((folder / "croptune.yaml").read_text())
    assert list(raw) == EXPORT_KEYS  # the same keys, in the same order, as before
    written = read_manifest(folder)
    bundle = load_bundle(folder)
    assert bundle.manifest == written
    assert bundle.dataset.max_images_per_item == written.image_budget == 6
    assert bundle.dataset.max_image_side == written.prompt.originals_max_side == 896
    assert bundle.dataset.strategy == written.dataset.strategy == "originals+crops"
    assert bundle.max_new_tokens == written.prompt.decoding.max_new_tokens == 1024
    assert (bundle.box_source, bundle.lora_name, bundle.crop) == ("none", "kettles", CropConfig())
    assert written.lora is not None and (written.lora.r, written.lora.alpha) == (8, 16)
    assert written.training is not None and written.training.last_loss == 1.5
    # the card the export wrote is the card of the manifest as read back
    assert (folder / "README.md").read_text() == model_card(written)
    # writing what was read changes nothing on disk
    (tmp_path / "copy").mkdir()
    again = written.write(tmp_path / "copy")
    assert again.read_text() == (folder / "croptune.yaml").read_text()


# ------------------------------------------------------------------ open_model


def _layout(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


BUNDLE = "base_model: org/base\n"


@pytest.mark.parametrize(
    ("files", "base_model", "kind", "expected"),
    [
        # a bundle exported with --merge: its merged model, no adapter
        ({"croptune.yaml": BUNDLE, "merged/config.json": "{}",
          "adapter/adapter_config.json": "{}"}, None, "bundle", ("{root}/merged", None)),
        # a bundle without merged/: its base + adapter/
        ({"croptune.yaml": BUNDLE, "adapter/adapter_config.json": "{}"}, None, "bundle",
         ("org/base", "{root}/adapter")),
        # predict --base-model: the adapter on that base, even where merged/ exists
        ({"croptune.yaml": BUNDLE, "merged/config.json": "{}",
          "adapter/adapter_config.json": "{}"}, "./local-base", "bundle",
         ("./local-base", "{root}/adapter")),
        # an adapter folder: the base its adapter_config.json names + itself
        ({"adapter_config.json": '{"base_model_name_or_path": "org/base"}'}, None, "adapter",
         ("org/base", "{root}")),
        # an adapter folder whose train_config.yaml names the base (wins over adapter_config)
        ({"adapter_config.json": '{"base_model_name_or_path": "/tmp/x"}',
          "train_config.yaml": "model: org/trained-on\n"}, None, "adapter",
         ("org/trained-on", "{root}")),
        # a model folder (a merged model, `tuning: full` output)
        ({"config.json": "{}"}, None, "model", ("{root}", None)),
    ],
)  # fmt: skip
def test_open_model_classifies_each_kind(tmp_path, files, base_model, kind, expected):
    root = _layout(tmp_path / "model", files)
    model, adapter = (None if e is None else e.format(root=root) for e in expected)
    assert model_kind(str(root)) == kind
    weights = student_weights(str(root), base_model)
    assert (weights.model, None if weights.adapter is None else str(weights.adapter)) == (
        model,
        adapter,
    )
    backend = open_model(str(root), base_model=base_model, name="student", max_new_tokens=32)
    assert (backend.kind, backend.name, backend.max_new_tokens) == ("transformers", "student", 32)
    assert (backend.model, None if backend.adapter is None else str(backend.adapter)) == (
        model,
        adapter,
    )


def test_open_model_opens_an_endpoint_yaml(tmp_path):
    path = tmp_path / "endpoint.yaml"
    path.write_text(yaml.safe_dump({"name": "served", "base_url": "http://127.0.0.1:9/v1",
                                    "model": "croptune"}))  # fmt: skip
    backend = open_model(str(path), tmp_path / "cache", max_new_tokens=48)
    assert (backend.kind, backend.name) == ("endpoint", "served")


@pytest.mark.parametrize(
    ("files", "value", "message"),
    [
        # a path that does not exist (hub ids never start with / . ~)
        ({}, "{tmp}/nope", "does not exist"),
        # an endpoint YAML that does not exist
        ({}, "{tmp}/endpoint.yaml", "endpoint config .* does not exist"),
        # a folder that is no model, adapter or bundle
        ({"notes.txt": "x"}, "{tmp}/model", "is not a model folder"),
        # a bundle without merged/ whose croptune.yaml names no base
        ({"croptune.yaml": "lora_name: x\n", "adapter/adapter_config.json": "{}"},
         "{tmp}/model", "names no base_model"),
        # a bundle without merged/ or adapter/
        ({"croptune.yaml": BUNDLE}, "{tmp}/model", "holds no adapter/adapter_config.json"),
        # a bundle whose croptune.yaml names the base wrongly (a list)
        ({"croptune.yaml": "base_model: [a, b]\n", "adapter/adapter_config.json": "{}"},
         "{tmp}/model", "base_model.*export it again"),
    ],
)  # fmt: skip
def test_open_model_refuses_what_names_no_model(tmp_path, files, value, message):
    _layout(tmp_path / "model", files)
    with pytest.raises(CroptuneError, match=message):
        open_model(value.format(tmp=tmp_path))


def test_predict_and_evaluate_open_a_bundle_alike(tmp_path, monkeypatch):
    """One open_model: predict's student is evaluate's, named by the bundle's LoRA name and
    answering at its recorded length (predict had its own bundle_backend)."""
    import finetune.predict
    from croptune.pipeline import run_predict

    folder = write_manifest(tmp_path / "bundle", manifest_data())
    _layout(folder, {"adapter/adapter_config.json": "{}"})
    seen = {}

    def capture(bundle, catalog, out, backend, boxes, **kwargs):
        seen["backend"] = backend
        return None

    monkeypatch.setattr(finetune.predict, "predict_catalog", capture)
    run_predict(tmp_path / "catalog.jsonl", folder, tmp_path / "preds.jsonl")
    predicted = seen["backend"]
    evaluated = open_model(str(folder))
    assert (predicted.model, predicted.adapter) == (evaluated.model, evaluated.adapter)
    assert (predicted.name, predicted.max_new_tokens) == ("croptune-tiny", 64)
