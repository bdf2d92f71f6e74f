"""How each stage's cost grows with the catalog: N = 1,000 and 10,000 items in one run.

A seeded catalog of real-size photos (the example catalog's generator at ~1600x1200, 2-8
JPEGs an item, its small print and boxes) is drawn once for the largest N; each smaller N
is its first N lines. Then, for each N, the stages a user runs, each in its own process
(so peak RSS is that stage's), through croptune's CLI where it has one:

    ingest             catalog -> run store (decode, orient, hash every photo)
    label reference    the catalog's own attributes and boxes (no network)
    label loopback     an OpenAI-compatible teacher on 127.0.0.1 answering after a fixed
                       latency (its own process: its CPU is not the stage's)
    crop               enclosing squares of the boxes
    dataset build      the originals + crops dataset
    predict none       the bundle through an OpenAI-compatible endpoint (the loopback
    predict detector   server stands for vLLM serving the student): with no boxes, and
                       with the bundle's detector's boxes -> crops

For each stage and N: items/s, CPU seconds per item (the stage's process and the
workers it waited for), peak RSS, bytes written per item; then the ratio of the largest N
to the smallest of each, and a projection of CPU hours and disk to 10^6 items.

    python bench/scale.py                        # N = 1,000 and 10,000 (hours on 2 cores)
    python bench/scale.py --sizes 100 1000       # what docs/benchmarks.md records
    python bench/scale.py --sizes 50 200 --keep /tmp/scale   # keep the folders
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CROPTUNE = str(Path(sys.executable).parent / "croptune")
KEY_ENV = "CROPTUNE_SCALE_BENCH_KEY"  # the loopback server's key: a variable, as in production
STAGES = (
    "ingest",
    "label reference",
    "label loopback",
    "crop",
    "dataset build",
    "predict none",
    "predict detector",
)


@dataclass
class Measured:
    """One stage at one N: what it cost."""

    stage: str
    items: int
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    bytes_written: int

    @property
    def items_per_s(self) -> float:
        """Items per wall-clock second."""
        return self.items / self.wall_s if self.wall_s else float("inf")

    @property
    def cpu_ms_per_item(self) -> float:
        """CPU milliseconds per item (the stage's processes together)."""
        return 1000 * self.cpu_s / self.items

    @property
    def kb_per_item(self) -> float:
        """Kilobytes written per item."""
        return self.bytes_written / self.items / 1000


# Data
def make_catalog(folder: Path, n_items: int, long_side: int, workers: int) -> Path:
    """The catalog of n_items real-size items (drawn once; reused when it is already there)."""
    from croptune.synthetic.catalog import make_example_catalog

    stamp = folder / "made.json"
    wanted = {"items": n_items, "long_side": long_side, "seed": 0}
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return folder / "catalog.jsonl"
    shutil.rmtree(folder, ignore_errors=True)
    start = time.perf_counter()
    catalog = make_example_catalog(folder, n_items, 0, long_side, workers=workers)
    stamp.write_text(json.dumps(wanted))
    print(f"drew {n_items} items in {time.perf_counter() - start:.0f} s", flush=True)
    return catalog


def first_lines(catalog: Path, n: int) -> Path:
    """catalog-N.jsonl beside the catalog: its first n items (the same photos)."""
    path = catalog.with_name(f"catalog-{n}.jsonl")
    with catalog.open() as source, path.open("w") as out:
        for _, line in zip(range(n), source, strict=False):
            out.write(line)
    return path


def folder_bytes(*folders: Path) -> int:
    """Bytes of the files under the folders (0 for one that does not exist)."""
    return sum(
        p.stat().st_size for folder in folders if folder.exists() for p in folder.rglob("*")
        if p.is_file()
    )  # fmt: skip


# Measuring
def measure(stage: str, items: int, command: list[str], outputs: list[Path]) -> Measured:
    """Run one stage's command in its own process; its wall, CPU, peak RSS and bytes."""
    before = folder_bytes(*outputs)
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert process.stderr is not None
    errors = process.stderr.read()
    # wait4: this child's own rusage (with the workers it waited for), not every child's.
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(
            f"{stage} at N={items} failed ({process.returncode}):\n{errors[-3000:].decode(errors='replace')}"
        )
    return Measured(
        stage=stage,
        items=items,
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        peak_rss_mb=usage.ru_maxrss / 1024,
        bytes_written=folder_bytes(*outputs) - before,
    )


def ingest_command(catalog: Path, run: Path) -> list[str]:
    """This script's own ingest stage (label without teachers: croptune has no ingest command)."""
    return [sys.executable, __file__, "--ingest-only", str(catalog), str(run)]


def ingest_only(catalog: Path, run: Path) -> None:
    """Ingest a catalog into a run store, as `croptune label` does first."""
    from toolkit.catalog import ingest_catalog, load_catalog
    from toolkit.store import RunStore

    with RunStore(run) as store:
        summary = ingest_catalog(load_catalog(catalog), store)
    if summary.errors:
        raise SystemExit(f"{len(summary.errors)} ingest errors, e.g. {summary.errors[0]}")


# Set-up that is not measured
def quietly(command: list[str]) -> None:
    """Run a set-up command; its output only if it fails."""
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")


def start_loopback(latency_ms: int) -> tuple[subprocess.Popen, str]:
    """The loopback OpenAI-compatible server (tests/fake_openai.py) in its own process."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_openai", "--port", "0", "--latency-ms",
         str(latency_ms), "--script", "fixed-empty-object", "--api-key", "scale-bench"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    port = int(process.stdout.readline().split()[1])
    return process, f"http://127.0.0.1:{port}/v1"


def loopback_label_config(folder: Path, base_url: str, concurrency: int) -> Path:
    """A label config whose one attributes teacher is the loopback server."""
    path = folder / "label-loopback.yaml"
    path.write_text(
        "teachers:\n"
        "  - name: loopback\n"
        "    role: attributes\n"
        f"    base_url: {base_url}\n"
        "    model: loopback\n"
        f"    api_key_env: {KEY_ENV}\n"
        f"    max_concurrency: {concurrency}\n"
        "    structured_output: false\n"
        "schema: compliance\n"
    )
    return path


def make_bundle(folder: Path, run: Path) -> Path:
    """A tiny student's bundle with a detector trained on the run (seconds; quality no matter).

    In a process of its own: a child's peak RSS starts at its parent's (Linux keeps the
    high-water mark across fork and exec), so this process never loads torch.
    """
    student = folder / "student"
    quietly([sys.executable, __file__, "--student-only", str(student)])
    detector = folder / "detector"
    quietly(
        [CROPTUNE, "--no-progress", "detector", "train", "--run", str(run), "--out", str(detector),
         "epochs=1", "imgsz=320"],
    )  # fmt: skip
    bundle = folder / "bundle"
    quietly(
        [CROPTUNE, "--no-progress", "export", "--adapter", str(student / "train" / "adapter"), "--out",
         str(bundle), "--detector", str(detector), "--force"],
    )  # fmt: skip
    return bundle


def student_only(folder: Path) -> None:
    """tests/bundles.py's tiny pipeline: a tiny student's adapter under folder/train/adapter."""
    from tests.bundles import tiny_pipeline

    pipeline = tiny_pipeline(folder, n_items=12, max_steps=4)
    assert pipeline.adapter == folder / "train" / "adapter", pipeline.adapter


# The stages at one N
def stages_at(
    n: int,
    catalog: Path,
    work: Path,
    bundle: Path | None,
    base_url: str,
    label_config: Path,
    stages: tuple[str, ...] = STAGES,
) -> list[Measured]:
    """The stages at N items, in the order a user runs them (each needs the ones before)."""
    cli = [CROPTUNE, "--no-progress"]
    run, loop_run = work / f"run-{n}", work / f"run-{n}-loopback"
    dataset = work / f"dataset-{n}"
    reference = ROOT / "toolkit" / "configs" / "label-reference.yaml"
    endpoint = ["--endpoint", base_url, "--model", "loopback", "--api-key-env", KEY_ENV]
    if "label loopback" in stages:  # its own run, ingested beforehand: not measured
        quietly(ingest_command(catalog, loop_run))
    out = []
    for stage, command, outputs in (
        ("ingest", ingest_command(catalog, run), [run]),
        ("label reference",
         [*cli, "label", str(catalog), "--config", str(reference), "--run", str(run)], [run]),
        ("label loopback",
         [*cli, "label", str(catalog), "--config", str(label_config), "--run", str(loop_run)],
         [loop_run]),
        ("crop", [*cli, "crop", "--run", str(run)], [run]),
        ("dataset build",
         [*cli, "dataset", "build", "--run", str(run), "--out", str(dataset)], [dataset]),
        ("predict none",
         [*cli, "predict", str(catalog), "--bundle", str(bundle), "--out",
          str(work / f"preds-{n}-none.jsonl"), "--box-source", "none", *endpoint],
         [work / f"preds-{n}-none.jsonl", work / f"preds-{n}-none.work"]),
        ("predict detector",
         [*cli, "predict", str(catalog), "--bundle", str(bundle), "--out",
          str(work / f"preds-{n}-detector.jsonl"), "--box-source", "detector", *endpoint],
         [work / f"preds-{n}-detector.jsonl", work / f"preds-{n}-detector.work"]),
    ):  # fmt: skip
        if stage not in stages:  # run, as the later stages need it, but not reported
            if stage in ("ingest", "label reference", "crop"):
                quietly(command)
            continue
        measured = measure(stage, n, command, outputs)
        print(
            f"  N={n:>6} {stage:<17} {measured.items_per_s:8.1f} items/s "
            f"{measured.cpu_ms_per_item:8.1f} ms CPU/item {measured.peak_rss_mb:7.0f} MB "
            f"{measured.kb_per_item:8.1f} kB/item",
            flush=True,
        )
        out.append(measured)
    return out


# Report
def report(
    results: dict[int, list[Measured]], catalog_kb_per_item: float, stages: tuple[str, ...]
) -> None:
    """The table per stage and N, the largest/smallest ratios, and the 10^6 projection."""
    sizes = sorted(results)
    small, large = sizes[0], sizes[-1]
    print(f"\ncatalog: {catalog_kb_per_item:.0f} kB of photos per item")
    head = f"{'stage':<17} {'N':>6} {'items/s':>8} {'CPU ms/item':>12} {'peak RSS MB':>12}"
    print(head + f" {'kB/item':>9}")
    for stage in stages:
        for n in sizes:
            m = next(m for m in results[n] if m.stage == stage)
            print(
                f"{stage:<17} {n:>6} {m.items_per_s:8.1f} {m.cpu_ms_per_item:12.1f} "
                f"{m.peak_rss_mb:12.0f} {m.kb_per_item:9.1f}"
            )
    print(f"\nratio N={large} / N={small} (targets: CPU/item <= 1.2, peak RSS <= 1.5)")
    print(f"{'stage':<17} {'CPU/item':>9} {'peak RSS':>9} {'items/s':>8} {'kB/item':>8}")
    for stage in stages:
        a = next(m for m in results[small] if m.stage == stage)
        b = next(m for m in results[large] if m.stage == stage)
        print(
            f"{stage:<17} {b.cpu_ms_per_item / a.cpu_ms_per_item:9.2f} "
            f"{b.peak_rss_mb / a.peak_rss_mb:9.2f} {b.items_per_s / a.items_per_s:8.2f} "
            f"{(b.kb_per_item / a.kb_per_item) if a.kb_per_item else float('nan'):8.2f}"
        )
    for dataset in (m for m in results[large] if m.stage == "dataset build"):
        print(
            f"\ndataset bytes per item / catalog bytes per item at N={large}: "
            f"{dataset.kb_per_item / catalog_kb_per_item:.2f} (target <= 1.5)"
        )
    print(f"\nprojection to 10^6 items (from N={large}, linear in items):")
    print(f"{'stage':<17} {'CPU hours':>10} {'disk GB':>8}")
    for m in results[large]:
        print(f"{m.stage:<17} {m.cpu_ms_per_item * 1e6 / 3.6e6:10.0f} {m.kb_per_item:8.1f}")


def main() -> None:
    """Draw the catalog, run every stage at each N, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--long-side", type=int, default=1600, help="photo pixels, longer side")
    parser.add_argument("--latency-ms", type=int, default=50, help="the loopback teacher's")
    parser.add_argument("--concurrency", type=int, default=16, help="the loopback teacher's")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="to draw")
    parser.add_argument(
        "--stages", nargs="+", choices=STAGES, default=list(STAGES), help="the stages to measure"
    )
    parser.add_argument("--keep", type=Path, default=None, help="work here and keep it")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--ingest-only", nargs=2, type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--student-only", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ingest_only:
        ingest_only(*args.ingest_only)
        return
    if args.student_only:
        student_only(args.student_only)
        return

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ[KEY_ENV] = "scale-bench"
    work = args.keep or Path(tempfile.mkdtemp(prefix="croptune-scale-"))
    sizes = sorted(set(args.sizes))
    stages = tuple(s for s in STAGES if s in args.stages)
    catalog = make_catalog(work / "catalog", sizes[-1], args.long_side, args.workers)
    photos = work / "catalog" / "img"
    catalog_kb = folder_bytes(photos) / sizes[-1] / 1000
    server, base_url = start_loopback(args.latency_ms)
    try:
        label_config = loopback_label_config(work, base_url, args.concurrency)
        results: dict[int, list[Measured]] = {}
        bundle: Path | None = None
        for n in sizes:
            for stale in work.glob(f"*-{n}*"):  # a kept folder's earlier run of this N
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
            if bundle is None and any(s.startswith("predict") for s in stages):
                # Trained on the smallest run's boxes, not measured.
                first = first_lines(catalog, min(n, 200))
                setup = work / "setup"
                shutil.rmtree(setup, ignore_errors=True)
                reference = ROOT / "toolkit" / "configs" / "label-reference.yaml"
                quietly(
                    [CROPTUNE, "--no-progress", "label", str(first), "--config", str(reference),
                     "--run", str(setup / "run")],
                )  # fmt: skip
                bundle = make_bundle(setup, setup / "run")
            results[n] = stages_at(
                n, first_lines(catalog, n), work, bundle, base_url, label_config, stages
            )
    finally:
        server.terminate()
        server.wait()
    report(results, catalog_kb, stages)
    if args.json:
        data = {str(n): [asdict(m) for m in ms] for n, ms in results.items()}
        args.json.write_text(json.dumps({"catalog_kb_per_item": catalog_kb, "results": data}))
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
