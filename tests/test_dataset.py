"""Dataset splits: one split authority, items sharing photos kept together, never an empty train."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from toolkit.dataset.splits import assign_splits, shared_photo_groups

CROPTUNE = str(Path(sys.executable).parent / "croptune")
REPO = Path(__file__).resolve().parent.parent


def _items(groups: list[int]) -> dict[str, dict]:
    """Items in groups of the given sizes; a group's items share one photo."""
    items = {}
    for g, size in enumerate(groups):
        for k in range(size):
            items[f"G{g:02d}-{k}"] = {"category": "c", "hashes": {f"own-{g}-{k}", f"shared-{g}"}}
    return items


@pytest.mark.parametrize(
    ("groups", "expected"),
    [
        # 30 singletons: test 6 (0.2), validation 3 (0.1 of 30), the rest train
        ([1] * 30, {"test": 6, "validation": 3, "train": 21}),
        # every listing reuses one stock photo: one group, too big to hold out, all train
        ([30], {"test": 0, "validation": 0, "train": 30}),
        # a stock photo on 20 listings and 10 singletons: the group trains, singletons held out
        ([20] + [1] * 10, {"test": 6, "validation": 3, "train": 21}),
        # pairs: a held-out split may overshoot its quota by one group
        ([2] * 15, {"test": 6, "validation": 4, "train": 20}),
    ],
)
def test_split_sizes(groups, expected):
    items = _items(groups)
    splits = assign_splits(items, 0.1, 0.2, seed=0)
    counts = {s: list(splits.values()).count(s) for s in ("test", "validation", "train")}
    assert counts == expected
    for group in shared_photo_groups(items):  # a group never straddles two splits
        assert len({splits[i] for i in group}) == 1


def test_shared_photo_groups_are_reported_largest_first():
    groups = shared_photo_groups(_items([1, 3, 1, 2]))
    assert [len(g) for g in groups] == [3, 2]
    assert groups[0] == ["G01-0", "G01-1", "G01-2"]


def _stock_photo_catalog(folder: Path, n: int, pairs: bool) -> Path:
    """The example catalog with a stock photo on every listing (pairs: one per pair of them)."""
    from croptune.synthetic.catalog import make_example_catalog

    catalog = make_example_catalog(folder, n_items=n, seed=5)
    lines = [json.loads(line) for line in catalog.read_text().splitlines()]
    for index, item in enumerate(lines):
        stock = f"stock-{index // 2}.png" if pairs else "stock.png"
        Image.new("RGB", (80, 60), (10 + index // 2, 200, 30)).save(folder / stock)
        item["images"].append(stock)
    catalog.write_text("".join(json.dumps(item) + "\n" for item in lines))
    return catalog


def _croptune(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CROPTUNE, "--no-progress", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)  # fmt: skip


def _labeled_run(tmp_path: Path, n: int, pairs: bool) -> Path:
    """A stock-photo catalog labeled by the reference teacher, as `croptune label` does it."""
    catalog = _stock_photo_catalog(tmp_path / "catalog", n, pairs=pairs)
    config = REPO / "toolkit" / "configs" / "label-reference.yaml"
    run = tmp_path / "run"
    labeled = _croptune("label", str(catalog), "--config", str(config), "--run", str(run),
                        cwd=tmp_path)  # fmt: skip
    assert labeled.returncode == 0, labeled.stderr
    return run


def test_stock_photo_on_every_listing_trains_and_says_how_many_were_grouped(tmp_path):
    run = _labeled_run(tmp_path, 12, pairs=False)
    built = _croptune("dataset", "build", "--run", str(run), "--out", str(tmp_path / "ds"),
                      cwd=tmp_path)  # fmt: skip
    assert built.returncode == 0, built.stderr
    assert "items sharing photos" in built.stdout and "12 in 1 group(s)" in built.stdout
    # Readable figures, and the per-image token count it assumed, not a raw dict.
    cells = " ".join(built.stdout.replace("│", " ").split())  # the table's wrapped cells
    assert "{'median'" not in cells
    assert "images per example median" in cells and "assuming image_tokens=256" in cells
    # How the images were stored: the example's upright photos and crops as their bytes.
    assert "images stored" in cells and "as their files' bytes" in cells
    stats = json.loads((tmp_path / "ds" / "croptune_dataset.json").read_text())["stats"]
    assert stats["examples"] == {"train": 12, "validation": 0, "test": 0}
    assert stats["shared_photos"]["items"] == 12 and stats["shared_photos"]["largest"] == 12


def test_a_split_that_leaves_train_empty_fails_with_the_reason_and_writes_nothing(tmp_path):
    run = _labeled_run(tmp_path, 10, pairs=True)
    out = tmp_path / "ds"
    built = _croptune("dataset", "build", "--run", str(run), "--out", str(out),
                      "test_ratio=0.6", "validation_ratio=0.3", cwd=tmp_path)  # fmt: skip
    assert built.returncode == 1
    message = built.stderr
    assert "no item is left for train" in message and "10 of the 10 items share photos" in message
    assert "lower validation_ratio/test_ratio" in message and "Traceback" not in message
    assert not out.exists()
