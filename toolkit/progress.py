"""Progress of long stages: a rich bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

logger = logging.getLogger(__name__)

# Plain lines: none for a stage shorter than this (its summary says it all), then one per
# tenth of the work, and at least one every LINE_INTERVAL_S while work gets done.
QUIET_S = 2.0
LINE_INTERVAL_S = 30.0
LINE_FRACTION = 0.1

_bars: bool | None = None  # None: bars when stderr is a terminal


def use_bars(bars: bool | None) -> None:
    """Report progress as rich bars (True) or plain lines (False); None: bars on a terminal."""
    global _bars
    _bars = bars


def bars_enabled() -> bool:
    """Whether progress shows as rich bars now (else as plain lines)."""
    return sys.stderr.isatty() if _bars is None else _bars


def _columns(extra: tuple[Any, ...] = ()) -> tuple[Any, ...]:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        *extra,
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )


def track(items: Sequence[T] | Iterable[T], description: str, enabled: bool) -> Iterator[T]:
    """Iterate over items, reporting progress (on stderr) when enabled."""
    total = len(items) if isinstance(items, Sequence) else None
    with ProgressBar(description, total, enabled) as bar:
        for item in items:
            yield item
            bar.advance()


def clock(seconds: float | None) -> str:
    """A duration as H:MM:SS (or ? when unknown)."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


class ProgressBar:
    """Progress of one stage: a rich bar (rate, spend, ETA) or plain lines; a no-op when disabled.

    Plain lines come at each tenth of the work once the stage has run quiet_s (default
    QUIET_S), or when `report()` asks for one (training: at each logged loss, milestones=False).
    """

    def __init__(
        self,
        description: str,
        total: int | None,
        enabled: bool,
        money: bool = False,
        unit: str = "items",
        completed: int = 0,
        milestones: bool = True,
        quiet_s: float | None = None,
    ) -> None:
        self.description = description
        self.total = total
        self.enabled = enabled
        self.money = money
        self.unit = unit
        self.milestones = milestones
        self.quiet_s = QUIET_S if quiet_s is None else quiet_s
        self.done = completed
        self.status = ""
        self.spend = 0.0
        self._start_done = completed
        self._progress: Any = None
        self._task: Any = None
        self._lines = False  # plain lines instead of a bar
        self._started = 0.0
        self._last_line = 0.0
        self._reported_done: int | None = None

    def __enter__(self) -> ProgressBar:
        if not self.enabled:
            return self
        self._started = self._last_line = time.monotonic()
        if not bars_enabled():
            self._lines = True
            return self
        from rich.console import Console
        from rich.progress import Progress, TextColumn

        extra = (TextColumn("${task.fields[spend]:.2f}"),) if self.money else ()
        self._progress = Progress(*_columns(extra), console=Console(stderr=True))
        self._progress.__enter__()
        self._task = self._progress.add_task(
            self.description,
            total=self.total,
            completed=self.done,
            rate="",
            spend=0.0,
            status="",
        )
        return self

    def advance(self, n: int = 1, spend: float | None = None, status: str | None = None) -> None:
        """Count n more items done (and the money spent so far, a status such as the loss)."""
        self.done += n
        if spend is not None:
            self.spend = spend
        if status is not None:
            self.status = status
        if self._progress is not None:
            task = self._progress.tasks[self._task]
            speed = task.speed
            fields: dict[str, Any] = {"rate": f"{speed:.1f} {self.unit}/s" if speed else ""}
            if spend is not None:
                fields["spend"] = spend
            if status is not None:
                fields["status"] = status
            self._progress.update(self._task, advance=n, **fields)
        elif self._lines and self.milestones and n and self._line_due():
            self.report()

    def _line_due(self) -> bool:
        now = time.monotonic()
        if now - self._started < self.quiet_s:
            return False
        if now - self._last_line >= LINE_INTERVAL_S:
            return True
        if not self.total:
            return False
        step = max(1, math.ceil(self.total * LINE_FRACTION))
        previous = self._reported_done if self._reported_done is not None else self._start_done
        return self.done // step > previous // step or self.done >= self.total

    def line(self) -> str:
        """The progress so far as one line: done/total, status, rate, spend, elapsed, ETA."""
        elapsed = time.monotonic() - self._started
        rate = (self.done - self._start_done) / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.done}/{self.total}" if self.total else str(self.done)]
        if self.total:
            parts[0] += f" ({100 * self.done // self.total}%)"
        if self.status:
            parts.append(self.status)
        parts.append(f"{rate:.2f} {self.unit}/s" if rate else f"0 {self.unit}/s")
        if self.money:
            parts.append(f"${self.spend:.2f} spent")
        parts.append(f"elapsed {clock(elapsed)}")
        if self.total:
            left = self.total - self.done
            parts.append(f"ETA {clock(left / rate if rate else None if left else 0)}")
        return f"{self.description}: " + ", ".join(parts)

    def report(self) -> None:
        """Log the progress line now (plain lines only; a bar shows it already)."""
        if not self._lines:
            return
        logger.info("%s", self.line())
        self._last_line = time.monotonic()
        self._reported_done = self.done

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(None, None, None)
            self._progress = None
        elif (
            self._lines
            and self.milestones
            and self._reported_done is not None
            and self._reported_done != self.done
        ):
            self.report()  # the log shows where a reported stage ended
        self._lines = False


def ultralytics_callbacks(description: str, enabled: bool) -> dict[str, Callable[[Any], None]]:
    """Callbacks for an ultralytics model (`model.add_callback`): one report, epoch by epoch."""
    state: dict[str, ProgressBar] = {}

    def start(trainer: Any) -> None:
        bar = ProgressBar(
            description,
            trainer.epochs,
            enabled,
            unit="epochs",
            completed=trainer.start_epoch,
            quiet_s=0.0,  # epochs are few and each one is news
        )
        state["bar"] = bar.__enter__()

    def epoch_end(trainer: Any) -> None:
        if "bar" in state:
            losses = trainer.label_loss_items(trainer.tloss, prefix="")
            loss = sum(float(v) for v in losses.values()) if isinstance(losses, dict) else None
            state["bar"].advance(status="" if loss is None else f"loss {loss:.3f}")

    def end(trainer: Any) -> None:
        bar = state.pop("bar", None)
        if bar is not None:
            bar.__exit__(None, None, None)

    # teardown runs in ultralytics' finally: the bar closes on errors too.
    return {"on_train_start": start, "on_train_epoch_end": epoch_end, "teardown": end}
