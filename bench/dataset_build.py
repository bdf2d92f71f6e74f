"""Dataset build: items/s and dataset bytes per item, the PNG-everything builder vs source bytes.

A catalog of real-size photos (croptune's synthetic generator at a 1600 px longer side: ~1600x1200
JPEGs, q90, 2-5 per item, one in six stored sideways with an EXIF orientation), labeled by the
reference teacher and cropped (enclosing squares, PNG), not timed. Then, timed, side by side in
one run on the same run folder:

- before: every image re-encoded as PNG (`reencode`), originals downscaled to 1024 (the old
  max_image_side default), crops as cut, in one process: what `dataset build` did;
- after: the defaults (source bytes unless croptune changed the pixels, max_image_side 2048) in
  1 process, with `--workers` processes, and with no number of workers given (in process, then
  processes once the build proves longer than 10 s).

    python bench/dataset_build.py                    # ~3 minutes on 2 cores
    python bench/dataset_build.py --upright          # no photo needs turning
    python bench/dataset_build.py --items 16         # a quick look
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from toolkit.dataset import DatasetConfig, build_dataset  # noqa: E402
from toolkit.dataset.build import DatasetSummary  # noqa: E402
from toolkit.schema import load_schema  # noqa: E402
from toolkit.store import RunStore  # noqa: E402

LONG_SIDE = 1600  # a typical catalog photo: 1600x1200, ~2 MP
OLD_SIDE = 1024  # max_image_side's default before source bytes


def make_run(folder: Path, n_items: int, workers: int, upright: bool) -> tuple[Path, int, int]:
    """Catalog -> labeled, cropped run; (run folder, photos, catalog image bytes).

    upright: the photos stored sideways with an EXIF orientation are saved again upright
    (q90, no orientation tag), as a catalog pipeline that normalises orientation delivers
    them; their boxes are in upright pixels already.
    """
    from PIL import Image, ImageOps

    from croptune.pipeline import run_crop, run_label
    from croptune.synthetic.catalog import make_example_catalog
    from teacher_labeling.teachers import LabelConfig, TeacherConfig
    from toolkit.crops import CropConfig
    from toolkit.images import EXIF_ORIENTATION

    catalog = make_example_catalog(
        folder / "catalog", n_items, seed=0, photo_long_side=LONG_SIDE, workers=workers
    )
    photos = list((folder / "catalog" / "img").iterdir())
    for photo in photos if upright else []:
        with Image.open(photo) as image:
            if image.getexif().get(EXIF_ORIENTATION, 1) == 1:
                continue
            turned = ImageOps.exif_transpose(image)
        turned.save(photo, quality=90)
    teacher = TeacherConfig(name="reference", role="both", kind="reference", coords="pixels")
    run_label(catalog, LabelConfig(teachers=[teacher]), folder / "run")
    run_crop(folder / "run", CropConfig(), workers=workers)
    return folder / "run", len(photos), sum(p.stat().st_size for p in photos)


def timed_build(
    run: Path, out: Path, config: DatasetConfig, workers: int | None, reencode: bool
) -> tuple[float, DatasetSummary, int]:
    """(seconds, summary, bytes of the saved dataset folder) of one build."""
    with RunStore(run, create=False) as store:
        start = time.perf_counter()
        summary = build_dataset(
            store, out, load_schema(), config, workers=workers, reencode=reencode
        )
        seconds = time.perf_counter() - start
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return seconds, summary, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="processes of the 'after' build")
    parser.add_argument(
        "--upright",
        action="store_true",
        help="save the generator's EXIF-turned photos (one in six) upright first",
    )
    args = parser.parse_args()
    import datasets

    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory(prefix="croptune-dataset-bench-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        run, n_photos, catalog_bytes = make_run(folder, args.items, args.workers, args.upright)
        print(
            f"{args.items} items, {n_photos} photos of ~{LONG_SIDE}x{LONG_SIDE * 3 // 4} (JPEG q90"
            f"{', EXIF-turned ones saved upright' if args.upright else ''}), "
            f"{catalog_bytes / args.items / 1e6:.2f} MB of photos per item "
            f"(setup {time.perf_counter() - t0:.0f} s, not timed)"
        )
        builds = [
            ("before: PNG for all, 1024 px, 1 process", DatasetConfig(max_image_side=OLD_SIDE,
             resize_crops=False), 1, True),
            ("after: source bytes, 1 process", DatasetConfig(), 1, False),
            (f"after: source bytes, {args.workers} processes", DatasetConfig(), args.workers,
             False),
            ("after: source bytes, default (auto)", DatasetConfig(), None, False),
        ]  # fmt: skip
        results = []
        for n, (name, config, workers, reencode) in enumerate(builds):
            seconds, summary, size = timed_build(run, folder / f"ds-{n}", config, workers, reencode)
            results.append((name, seconds, summary, size))
        items = sum(results[0][2].examples.values())
        base = items / results[0][1]
        print(
            f"\n{'build':40} {'s':>7} {'items/s':>8} {'vs before':>9} {'MB/item':>8} "
            f"{'/catalog':>8} {'processes':>9}"
        )
        for name, seconds, summary, size in results:
            rate = items / seconds
            per_item = size / items
            print(
                f"{name:40} {seconds:7.2f} {rate:8.2f} {rate / base:8.2f}x "
                f"{per_item / 1e6:8.2f} {per_item / (catalog_bytes / args.items):7.2f}x "
                f"{summary.processes:9d}"
            )
        for name, _, summary, _ in results[:2]:
            print(f"{name}: images stored {summary.stats()['images_stored']}")
        print(
            "targets: after with workers >= 3x before's items/s; dataset <= 1.5x the catalog's "
            f"bytes per item\ntotal bench time {time.perf_counter() - t0:.0f} s"
        )


if __name__ == "__main__":
    main()
