"""`croptune detector train`: distil the teachers' boxes into a small detector."""

from __future__ import annotations

from pathlib import Path

import typer

from croptune.cli.common import State, overrides_argument, table


def train(
    run: Path = typer.Option(..., "--run", help="A labeled run folder."),
    out: Path = typer.Option(..., "--out", help="Folder for the detector."),
    config: Path | None = typer.Option(None, "--config", help="Detector config YAML."),
    overrides: list[str] = overrides_argument("detector"),
) -> None:
    """Distil the teachers' boxes into a small ultralytics detector."""
    from finetune.detector import DetectorConfig, train_detector
    from toolkit.config import load_stage_config
    from toolkit.dataset import SPLIT_KEYS

    detector_config = load_stage_config(DetectorConfig, config, overrides or [], stage="detector")
    summary = train_detector(run, out, detector_config, verbose=State.verbose)
    for reason in summary.skipped:
        typer.echo(reason, err=True)
    m = summary.metrics

    def rate(key: str) -> str:
        return "n/a" if m.get(key) is None else f"{m[key]:.3f}"

    outputs = [summary.weights, summary.onnx, summary.config_file, summary.metrics_file]
    measured = summary.measured
    split = ", ".join(
        f"{k} {summary.split.get(k, getattr(detector_config, k))}" for k in SPLIT_KEYS
    )
    rows = [
        ("split by item, as `dataset build`", split),
        ("items train / held out", f"{len(summary.train_items)} / {len(summary.held_out_items)}"),
        ("photos train / held out", f"{summary.images['train']} / {summary.images['held_out']}"),
        (
            f"boxes train / held out ({summary.box_source})",
            f"{summary.boxes['train']} / {summary.boxes['held_out']}",
        ),
    ]
    if summary.shared_photos or summary.merged_boxes:
        rows.append(
            (
                "shared photos",
                f"{summary.shared_photos} shown by several items, used once with all their "
                f"boxes; {summary.merged_boxes} identical boxes merged",
            )
        )
    rows += [
        ("classes", ", ".join(summary.classes)),
        ("epochs, image size", f"{summary.epochs}, {detector_config.imgsz}"),
        ("train seconds", f"{summary.seconds['train']:.1f}"),
    ]
    if measured.get("splits"):
        rows += [
            (
                "measured",
                f"{measured['weights']} (kept, loaded as predict loads it) on "
                f"{measured['photos']} held-out photos ({' + '.join(measured['splits'])})",
            ),
            (
                f"precision / recall (conf {measured['conf']}, predict's)",
                f"{rate('precision')} / {rate('recall')}",
            ),
            ("mAP50 / mAP50-95", f"{rate('map50')} / {rate('map50_95')}"),
            (
                "coverage (boxes inside its crops) / crop area",
                f"{rate('coverage')} / {rate('crop_area')} of the photo",
            ),
        ]
    else:
        rows.append(("measured", "nothing: the split holds no item out (too few items?)"))
    rows.append(("written (in --out)", ", ".join(p.name for p in outputs if p is not None)))
    table(f"croptune detector train ({out})", rows)
