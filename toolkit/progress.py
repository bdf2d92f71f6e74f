"""Progress bars behind a flag: rich when asked for, silent otherwise."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


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
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )


def track(items: Sequence[T] | Iterable[T], description: str, enabled: bool) -> Iterator[T]:
    """Iterate over items, showing a rich progress bar (on stderr) when enabled."""
    total = len(items) if isinstance(items, Sequence) else None
    with ProgressBar(description, total, enabled) as bar:
        for item in items:
            yield item
            bar.advance()


class ProgressBar:
    """A rich progress bar with items/s, optional spend, and ETA; a no-op when disabled."""

    def __init__(
        self, description: str, total: int | None, enabled: bool, money: bool = False
    ) -> None:
        self.description = description
        self.total = total
        self.enabled = enabled
        self.money = money
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> ProgressBar:
        if self.enabled:
            from rich.console import Console
            from rich.progress import Progress, TextColumn

            extra = (TextColumn("${task.fields[spend]:.2f}"),) if self.money else ()
            self._progress = Progress(*_columns(extra), console=Console(stderr=True))
            self._progress.__enter__()
            self._task = self._progress.add_task(
                self.description, total=self.total, rate="", spend=0.0
            )
        return self

    def advance(self, n: int = 1, spend: float | None = None) -> None:
        """Count n more items done (and the money spent so far)."""
        if self._progress is None:
            return
        task = self._progress.tasks[self._task]
        speed = task.speed
        fields: dict[str, Any] = {"rate": f"{speed:.1f} items/s" if speed else ""}
        if spend is not None:
            fields["spend"] = spend
        self._progress.update(self._task, advance=n, **fields)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(None, None, None)
