"""Crop-stage throughput: croptune's crop stage vs a bare PIL loop, and images per item.

Part 1. 200 items x 5 JPEGs of 2000x1500 (every 5th stored sideways with EXIF Orientation 6),
3 text boxes each, generated seeded into a temp folder and ingested (not timed). Timed, single
process: a bare PIL loop (open, exif_transpose, crop the same enclosing squares, save PNG)
against croptune's crop stage (decode checked against ingest, crop, PNG, content-addressed
write, pixel hash, pHash of crops and originals, de-duplication, store writes). Then croptune
with 2 workers (threads), and threads vs processes on a subset.

Part 2. The example catalog (30 items) labeled by the reference teacher, cropped with each
strategy: images per item and Gemma 3 image tokens per item (256 per image).

    python bench/crop_throughput.py                  # ~2-3 minutes
    python bench/crop_throughput.py --items 40       # a quick look
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import toolkit.crops.run as crops_module  # noqa: E402
from toolkit.boxes import Box  # noqa: E402
from toolkit.catalog import ingest_catalog, load_catalog  # noqa: E402
from toolkit.crops import CropConfig, crop_run  # noqa: E402
from toolkit.crops.plan import plan_crops  # noqa: E402
from toolkit.store import RunStore  # noqa: E402

WIDTH, HEIGHT = 2000, 1500
IMAGE_TOKENS = 256  # Gemma 3: every image is 256 tokens whatever its size


# Data
def make_catalog(folder: Path, n_items: int, n_images: int, n_boxes: int, seed: int) -> Path:
    """Product-like JPEGs (a label with printed text on a smooth background) + catalog.jsonl."""
    rng = np.random.default_rng(seed)
    img_dir = folder / "img"
    img_dir.mkdir(parents=True)
    font = ImageFont.load_default(size=28)
    backgrounds = [
        Image.fromarray(rng.integers(60, 200, (3, 4, 3), dtype=np.uint8)).resize(
            (WIDTH, HEIGHT), Image.Resampling.BICUBIC
        )
        for _ in range(16)
    ]
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: exif_transpose turns it upright
    lines = []
    for item in range(n_items):
        images, boxes = [], []
        for index in range(n_images):
            image = backgrounds[int(rng.integers(len(backgrounds)))].copy()
            draw = ImageDraw.Draw(image)
            lx, ly = int(rng.integers(40, WIDTH - 760)), int(rng.integers(40, HEIGHT - 560))
            draw.rectangle([lx, ly, lx + 700, ly + 500], fill=(245, 245, 240))
            for k in range(n_boxes):
                bw, bh = int(rng.integers(150, 420)), int(rng.integers(36, 90))
                bx = lx + int(rng.integers(10, 690 - bw))
                by = ly + int(rng.integers(10, 490 - bh))
                draw.text((bx + 4, by + 4), f"LOT {item}-{index}-{k} 4006381333931", font=font,
                          fill=(20, 20, 20))  # fmt: skip
                boxes.append({"image": index, "xyxy": [bx, by, bx + bw, by + bh], "label": "text"})
            name = f"img/{item}_{index}.jpg"
            if (item * n_images + index) % 5 == 4:
                # Stored sideways; exif_transpose applies ROTATE_270, undoing this ROTATE_90.
                image.transpose(Image.Transpose.ROTATE_90).save(
                    folder / name, quality=90, exif=exif
                )
            else:
                image.save(folder / name, quality=90)
            images.append(name)
        lines.append(json.dumps({"item_id": f"I{item:04d}", "images": images, "boxes": boxes}))
    catalog = folder / "catalog.jsonl"
    catalog.write_text("\n".join(lines) + "\n")
    return catalog


def ingest(catalog_path: Path, run_dir: Path) -> None:
    """Ingest the catalog and store its reference boxes as the crop stage's boxes."""
    catalog = load_catalog(catalog_path)
    with RunStore(run_dir) as store:
        ingest_catalog(catalog, store)
        for line in catalog_path.read_text().splitlines():
            item = json.loads(line)
            boxes = [Box(b["image"], *map(float, b["xyxy"]), b["label"]) for b in item["boxes"]]
            store.set_boxes(item["item_id"], "ref", boxes)


def planned_regions(run_dir: Path, config: CropConfig) -> dict[str, list[tuple[str, list]]]:
    """Per item, (image path, its crop regions) for the bare loop: croptune's squares."""
    out: dict[str, list[tuple[str, list]]] = {}
    with RunStore(run_dir) as store:
        for item in store.items():
            rows = {r.index: r for r in store.images(item.item_id)}
            boxes = [b for _, b in store.boxes(item.item_id)]
            sizes = {i: (r.width, r.height) for i, r in rows.items()}
            plans = plan_crops(boxes, sizes, config)
            out[item.item_id] = [
                (row.uri, [p.region for p in plans if p.image == index])
                for index, row in rows.items()
            ]
    return out


def run_with_items(template: Path, name: str, item_ids: list[str]) -> Path:
    """A copy of the ingested run holding only these items."""
    target = template.parent / name
    shutil.copytree(template, target)
    with RunStore(target, create=False) as store, store.transaction() as conn:
        marks = ",".join("?" * len(item_ids))
        conn.execute(f"DELETE FROM items WHERE item_id NOT IN ({marks})", item_ids)  # noqa: S608
    return target


# Timed loops
def bare_pil(work: list[tuple[str, list]], out_dir: Path) -> float:
    """open, exif_transpose, crop, save PNG: nothing else."""
    out_dir.mkdir()
    start = time.perf_counter()
    for n, (path, regions) in enumerate(work):
        image = ImageOps.exif_transpose(Image.open(path))
        for k, region in enumerate(regions):
            image.crop(region).save(out_dir / f"{n}_{k}.png")
    return time.perf_counter() - start


def croptune_crop(run_dir: Path, config: CropConfig, workers: int) -> tuple[float, int]:
    with RunStore(run_dir, create=False) as store:
        start = time.perf_counter()
        summary = crop_run(store, config, workers=workers)
        elapsed = time.perf_counter() - start
    assert not summary.errors, summary.errors[:3]
    return elapsed, summary.made


def dist(values: list[int]) -> str:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return f"{statistics.median(ordered):>5} {p90:>4} {ordered[-1]:>4}"


# Part 2: images per item on the example catalog
def strategies_on_example(folder: Path) -> None:
    from croptune.pipeline import run_label
    from croptune.synthetic.catalog import make_example_catalog
    from teacher_labeling.teachers import LabelConfig, TeacherConfig

    catalog = make_example_catalog(folder / "example", 30, seed=0)
    label = LabelConfig(
        teachers=[TeacherConfig(name="reference", role="both", kind="reference", coords="pixels")]
    )
    run_dir = folder / "example-run"
    run_label(catalog, label, run_dir)
    rows = []
    with RunStore(run_dir, create=False) as store:
        for strategy in ("per-box", "enclosing-square", "clustered"):
            config = CropConfig(strategy=strategy)
            summary = crop_run(store, config)
            before = [
                sum(1 for r in store.images(i.item_id) if r.usable)
                + len(store.crops(i.item_id, config.config_hash()))
                for i in store.items()
            ]
            rows.append((strategy, summary, before))
        naive = rows[0][1].images_per_box_crop
    print(f"\nExample catalog: 30 items, {rows[0][1].boxes} boxes, reference teacher.")
    print("images per item: median p90 max; tokens = 256 per image (Gemma 3)")
    print(f"{'':48} {'images':>15} {'tokens/item':>16}  boxes covered")
    print(f"{'originals + one crop per box (naive)':48} {dist(naive)} {_tokens(naive)}  all")
    for strategy, summary, before in rows:
        covered = summary.boxes - summary.uncovered
        print(f"{strategy + ': originals + crops':48} {dist(before)} {_tokens(before)}")
        print(
            f"{strategy + ': after pHash dedupe + budget 9':48} {dist(summary.images_after)} "
            f"{_tokens(summary.images_after)}  {covered}/{summary.boxes} "
            f"(dupes {summary.duplicate_originals} photos + {summary.duplicate_crops} crops, "
            f"cut by budget {summary.cut_by_budget})"
        )


def _tokens(values: list[int]) -> str:
    return f"{statistics.median(values) * IMAGE_TOKENS:>7.0f} {max(values) * IMAGE_TOKENS:>8}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--boxes", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=50, help="items per interleaved chunk")
    parser.add_argument("--subset", type=int, default=40, help="items for threads vs processes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    config = CropConfig()  # enclosing-square, PNG, pHash dedupe, budget 9
    with tempfile.TemporaryDirectory(prefix="croptune-crop-bench-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        catalog = make_catalog(folder / "catalog", args.items, args.images, args.boxes, args.seed)
        template = folder / "run-template"
        ingest(catalog, template)
        work = planned_regions(template, config)
        item_ids = list(work)
        n_images = sum(len(w) for w in work.values())
        n_crops = sum(len(r) for w in work.values() for _, r in w)
        print(f"{args.items} items x {args.images} JPEGs {WIDTH}x{HEIGHT}, {args.boxes} boxes "
              f"each: {n_images} images, {n_crops} crops (setup {time.perf_counter() - t0:.0f} s, "
              "not timed)")  # fmt: skip

        # Interleaved by chunks of items (bare, 1 worker, 2 workers on each chunk in turn),
        # so that a slow spell of a shared machine hits all three alike.
        totals = {"bare": 0.0, "one": 0.0, "two": 0.0}
        for start in range(0, len(item_ids), args.chunk):
            chunk = item_ids[start : start + args.chunk]
            totals["bare"] += bare_pil(
                [w for i in chunk for w in work[i]], folder / f"bare-{start}"
            )
            one, made = croptune_crop(run_with_items(template, f"one-{start}", chunk), config, 1)
            assert made == sum(len(r) for i in chunk for _, r in work[i])
            totals["one"] += one
            totals["two"] += croptune_crop(
                run_with_items(template, f"two-{start}", chunk), config, 2
            )[0]
        bare, one, two = totals["bare"], totals["one"], totals["two"]
        print(f"bare PIL loop          {bare:6.2f} s  {n_images / bare:6.1f} images/s")
        print(f"croptune, 1 worker     {one:6.2f} s  {n_images / one:6.1f} images/s")
        print(f"croptune, 2 threads    {two:6.2f} s  {n_images / two:6.1f} images/s")
        print(f"ratio bare / croptune, 1 worker:  {bare / one:.2f}  (target >= 0.8)")
        print(f"ratio bare / croptune, 2 threads: {bare / two:.2f}  (target >= 1.6)")
        print(f"speed-up of 2 threads over 1 worker: {one / two:.2f}x")

        # Threads vs processes for the workers, on a subset (same work per item).
        subset = item_ids[: args.subset]
        timings = {}
        for name, pool in (("threads", ThreadPoolExecutor), ("processes", ProcessPoolExecutor)):
            crops_module._POOL = pool
            run = run_with_items(template, f"pool-{name}", subset)
            timings[name] = croptune_crop(run, config, 2)[0]
        crops_module._POOL = ThreadPoolExecutor
        print(f"{len(subset)} items, 2 workers: threads {timings['threads']:.2f} s, "
              f"processes (fork) {timings['processes']:.2f} s")  # fmt: skip

        strategies_on_example(folder)
        print(f"\ntotal bench time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
