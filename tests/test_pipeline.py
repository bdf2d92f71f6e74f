"""End to end through the real CLI: label -> crop -> dataset -> train -> evaluate -> export."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from croptune.synthetic.catalog import make_example_catalog
from toolkit.crops.pixels import crop_region
from toolkit.images import load_image
from toolkit.store import RunStore

CROPTUNE = str(Path(sys.executable).parent / "croptune")
EXAMPLES = Path(__file__).parent.parent / "toolkit" / "configs"  # the starter configs


def croptune(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [CROPTUNE, "--no-progress", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )
    assert result.returncode == 0, f"croptune {' '.join(args)} failed:\n{result.stderr[-3000:]}"
    return result


@pytest.mark.slow
def test_pipeline_end_to_end(tmp_path):
    catalog = make_example_catalog(tmp_path / "catalog", n_items=6, seed=3)
    items = [json.loads(line) for line in catalog.read_text().splitlines()]
    run, dataset, train_dir, bundle = (tmp_path / n for n in ("run", "dataset", "train", "bundle"))

    # Label: the reference teacher's answers land in the store unchanged.
    croptune("label", str(catalog), "--config", str(EXAMPLES / "label-reference.yaml"),
             "--run", str(run), cwd=tmp_path)  # fmt: skip
    with RunStore(run, create=False) as store:
        for item in items:
            assert store.final_attributes(item["item_id"]) == item["attributes"]
            stored = sorted((b.image, b.xyxy) for _, b in store.boxes(item["item_id"]))
            assert stored == sorted(
                (b["image"], tuple(map(float, b["xyxy"]))) for b in item["boxes"]
            )

    # Export: JSONL per item, and the boxes as a COCO detection dataset.
    croptune("labels", "export", "--run", str(run), "--format", "jsonl", "--out",
             str(tmp_path / "labels.jsonl"), cwd=tmp_path)  # fmt: skip
    lines = [json.loads(line) for line in (tmp_path / "labels.jsonl").read_text().splitlines()]
    assert [line["attributes"] for line in lines] == [item["attributes"] for item in items]
    croptune("labels", "export", "--run", str(run), "--format", "coco", "--out",
             str(tmp_path / "coco"), cwd=tmp_path)  # fmt: skip
    coco = json.loads((tmp_path / "coco" / "annotations.json").read_text())
    assert len(coco["annotations"]) == sum(len(item["boxes"]) for item in items)

    # Crop: every crop file holds exactly the pixels of its square in the oriented photo.
    croptune("crop", "--run", str(run), "--config", str(EXAMPLES / "crop.yaml"), cwd=tmp_path)
    n_crops = 0
    with RunStore(run, create=False) as store:
        for item in items:
            images = {r.index: r for r in store.images(item["item_id"])}
            for crop in store.crops(item["item_id"]):
                source = load_image(images[crop.image].uri).image
                expected = np.asarray(crop_region(source, crop.region, (255, 255, 255)))
                assert np.array_equal(
                    np.asarray(Image.open(run / crop.path).convert("RGB")), expected
                )
                n_crops += 1
    assert n_crops > 0

    # Dataset: every example's target is its item's attributes; originals then crops.
    croptune("dataset", "build", "--run", str(run), "--out", str(dataset), cwd=tmp_path)
    from datasets import load_from_disk

    splits = load_from_disk(str(dataset))
    by_id = {item["item_id"]: item for item in items}
    assert sum(len(s) for s in splits.values()) == len(items)
    assert "test" in splits
    for split in splits.values():
        for row in split:
            answer = json.loads(row["completion"][0]["content"][0]["text"])
            assert answer == by_id[row["item_id"]]["attributes"]
            n_images = sum(1 for part in row["prompt"][0]["content"] if part["type"] == "image")
            assert n_images == len(row["images"]) <= 9

    # Train: a real LoRA adapter with its resolved config beside it.
    croptune("train", "--config", str(EXAMPLES / "train-tiny.yaml"), f"dataset={dataset}",
             f"output_dir={train_dir}", "max_steps=4", "eval_steps=2", cwd=tmp_path)  # fmt: skip
    adapter = train_dir / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file()
    assert yaml.safe_load((adapter / "train_config.yaml").read_text())["max_steps"] == 4

    # Evaluate: metrics for the held-out split.
    croptune("evaluate", "--model", str(adapter), "--dataset", str(dataset),
             "--max-new-tokens", "16", cwd=tmp_path)  # fmt: skip
    metrics = json.loads((adapter / "eval" / "metrics.json").read_text())[0]
    assert metrics["examples"] == len(splits["test"])
    assert 0.0 <= metrics["micro"]["f1"] <= 1.0

    # Export: the bundle of DESIGN, free of the training machine's paths.
    croptune("export", "--adapter", str(adapter), "--out", str(bundle), cwd=tmp_path)
    manifest = yaml.safe_load((bundle / "croptune.yaml").read_text())
    assert manifest["base_model"] == "croptune:tiny"
    assert manifest["image_budget"] == 9 and manifest["crop"]["strategy"] == "enclosing-square"
    assert manifest["metrics"]["examples"] == metrics["examples"]
    # The LoRA plus the training processor and chat template (tests/test_export.py checks more).
    assert {p.name for p in (bundle / "adapter").iterdir()} >= {
        "adapter_config.json",
        "adapter_model.safetensors",
        "chat_template.jinja",
    }
    for path in bundle.rglob("*"):
        if path.is_file() and path.suffix in {".json", ".yaml", ".md"}:
            assert str(tmp_path) not in path.read_text(), f"local path leaked into {path}"
