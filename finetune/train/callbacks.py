"""The training display: a TrainerCallback feeding croptune's progress bar and loss lines."""

from __future__ import annotations

import logging
from typing import Any, Protocol, runtime_checkable

logger = logging.getLogger(__name__)


@runtime_checkable
class ClosesProgress(Protocol):
    """A callback holding a progress display, taken down when training ends or fails."""

    def close_progress(self) -> None:
        """Take the display down."""
        ...


def progress_callback(enabled: bool) -> Any:
    """The training display: steps, loss and ETA as one bar, or one plain line per logged loss."""
    from transformers import TrainerCallback

    from toolkit.progress import ProgressBar

    class TrainProgress(TrainerCallback):
        """Feeds croptune's progress report from the Trainer (which shows none of its own)."""

        def __init__(self) -> None:
            self.bar: ProgressBar | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.is_local_process_zero:
                self.bar = ProgressBar(
                    "train",
                    state.max_steps,
                    enabled,
                    unit="steps",
                    completed=state.global_step,  # a resumed run starts where it stopped
                    milestones=False,  # a line per logged loss instead (logging_steps)
                ).__enter__()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if self.bar is not None:
                self.bar.advance()
            # Log the final step too, so the last loss is the end of training, not the
            # last multiple of logging_steps.
            if state.global_step >= state.max_steps:
                control.should_log = True
            return control

        def on_log(
            self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any
        ) -> None:
            if not state.is_local_process_zero or not logs:
                return
            logger.debug("step %d: %s", state.global_step, logs)
            step = f"step {state.global_step}/{state.max_steps}"
            if "eval_loss" in logs:
                logger.info("%s: validation loss %.4f", step, logs["eval_loss"])
            elif "loss" in logs and self.bar is not None:
                lr = logs.get("learning_rate")
                self.bar.advance(
                    0, status=f"loss {logs['loss']:.4f}" + ("" if lr is None else f", lr {lr:.2e}")
                )
                self.bar.report()

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.close_progress()

        def close_progress(self) -> None:
            """Take the bar down (also when training stopped with an error)."""
            if self.bar is not None:
                self.bar.__exit__(None, None, None)
                self.bar = None

    return TrainProgress()
