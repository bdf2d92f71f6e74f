"""What the command line shows: croptune's own log lines and progress, third-party noise off.

One place decides it, called once per command by the CLI (croptune.cli `_options`), before
any heavy library is imported (several read their settings from the environment then).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

# Loggers of libraries whose start-up messages say nothing a croptune user can act on:
# bitsandbytes (imported by peft) logs which CUDA binary it loaded, or a traceback when
# it has none, on every torch command.
QUIET_LOGGERS = ("bitsandbytes",)
# Python warnings of libraries addressed to their callers' developers (renamed or
# deprecated arguments), not to the person running croptune.
QUIET_WARNINGS = (FutureWarning, DeprecationWarning)
_HANDLER_NAME = "croptune-console"


class _ConsoleHandler(logging.StreamHandler):
    """Writes to the current sys.stderr, so that a line goes above a live rich progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr  # rich swaps in its own stderr while a bar is shown
        super().emit(record)


def configure_output(verbose: bool, bars: bool) -> None:
    """Set up croptune's console: its log lines, progress as bars or lines, third-party noise.

    verbose: croptune's debug lines with logger names, and every third-party message back.
    bars: rich progress bars (a terminal); else plain progress lines.
    """
    from toolkit.progress import use_bars

    use_bars(bars)
    _configure_logging(verbose)
    _env = os.environ.setdefault
    if not bars:
        # Read by huggingface_hub/transformers and datasets when they are (lazily) imported:
        # their tqdm bars would write carriage returns into a log.
        _env("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        _env("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if verbose:
        warnings.simplefilter("default")  # every warning, once per place
        return
    # croptune's own bar reports each stage; datasets' per-step bars (map, save) are extra.
    _env("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    # ultralytics: no banner, argument dump, model table or per-epoch table (read at import).
    _env("YOLO_VERBOSE", "False")
    # transformers' advice (warning_advice) is by its own definition not needed to run.
    _env("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    for category in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", category=category)


def _configure_logging(verbose: bool) -> None:
    """One handler on the root logger (replacing an earlier one of ours), croptune's levels."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(handler)
    handler = _ConsoleHandler()
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(
        logging.Formatter("%(levelname)s %(name)s: %(message)s" if verbose else "%(message)s")
    )
    root.addHandler(handler)
    # Third-party debug logs may carry request headers (keys): never below WARNING.
    root.setLevel(logging.WARNING)
    for package in ("toolkit", "teacher_labeling", "finetune"):
        logging.getLogger(package).setLevel(logging.DEBUG if verbose else logging.INFO)


def silence_known_warnings() -> None:
    """Hide third-party warnings users cannot act on (peft calling a renamed transformers API).

    Called by the library (training, loading a student, merging), not only by the CLI.
    """
    warnings.filterwarnings(
        "ignore", message=r".*is_gradient_checkpointing.*deprecated", category=FutureWarning
    )
