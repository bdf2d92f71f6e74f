"""`croptune train`: LoRA-fine-tune a student."""

from __future__ import annotations

from pathlib import Path

import typer

from croptune.cli.common import State, overrides_argument, table


def train(
    config: Path | None = typer.Option(None, "--config", help="Train config YAML."),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue from the newest checkpoint in output_dir: same step, optimizer and data order.",
    ),
    overrides: list[str] = overrides_argument("train"),
) -> None:
    """LoRA-fine-tune a student with TRL (extra key=value arguments override the config)."""
    from finetune.train import load_train_config, save_train_config
    from finetune.train import train as run_training

    overrides = list(overrides or []) + (["resume_from_checkpoint=true"] if resume else [])
    train_config = load_train_config(config, overrides)
    output_dir = Path(train_config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    save_train_config(train_config, output_dir / "train_config.yaml")
    result = run_training(train_config, progress=State.progress)
    table(
        "croptune train",
        [
            ("steps", str(result.steps)),
            (
                "train loss first -> last",
                f"{_loss(result.first_loss)} -> {_loss(result.last_loss)}",
            ),
            ("validation loss", "n/a" if result.eval_loss is None else f"{result.eval_loss:.4f}"),
            ("seconds", f"{result.seconds:.1f}"),
            (
                "model (full tuning)" if result.tuning == "full" else "adapter",
                str(result.adapter_dir),
            ),
        ],
    )


def _loss(value: float | None) -> str:
    """A loss for a summary table: 4 decimals, or n/a."""
    return "n/a" if value is None else f"{value:.4f}"
