"""What a person reads: progress as bars or plain lines, and third-party noise only on --verbose."""

from __future__ import annotations

import logging
import os
import pty
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from croptune.synthetic.catalog import make_example_catalog
from toolkit.progress import ProgressBar, use_bars

CROPTUNE = str(Path(sys.executable).parent / "croptune")
REPO = Path(__file__).resolve().parent.parent
LABEL_REFERENCE = REPO / "toolkit" / "configs" / "label-reference.yaml"
LOG_PREFIX = re.compile(r"^(DEBUG|INFO|WARNING|ERROR) [\w.]+: ")


def _croptune(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([CROPTUNE, *args], capture_output=True, text=True, cwd=cwd, timeout=300)
    assert result.returncode == 0, f"croptune {' '.join(args)}:\n{result.stderr[-3000:]}"
    return result


def _repeated(text: str) -> list[str]:
    lines = [line for line in text.splitlines() if line.strip()]
    return sorted({line for line in lines if lines.count(line) > 1})


# ----------------------------------------------------------------- plain progress lines


@pytest.fixture
def plain_lines(caplog):
    """Progress as plain lines (as without a terminal); the lines logged, as a list."""
    use_bars(False)
    caplog.set_level(logging.INFO, logger="toolkit.progress")
    yield lambda: [r.getMessage() for r in caplog.records if r.name == "toolkit.progress"]
    use_bars(None)


@pytest.mark.parametrize(
    ("bar", "advances", "reports", "shown"),
    [
        # a line per tenth of the work: 20 items, every 2nd
        (dict(total=20, quiet_s=0), 20, (), [f"{n}/20 ({5 * n}%)" for n in range(2, 21, 2)]),
        # fewer items than tenths: a line per item
        (dict(total=3, quiet_s=0), 3, (), ["1/3 (33%)", "2/3 (66%)", "3/3 (100%)"]),
        # a quick stage (under QUIET_S) says nothing: its summary table follows at once
        (dict(total=5), 5, (), []),
        # progress turned off (an inner loop of a reported stage): nothing
        (dict(total=5, quiet_s=0, enabled=False), 5, (), []),
        # an unknown total: only the interval lines, none in a short run
        (dict(total=None, quiet_s=0), 5, (), []),
        # stopped before the end: no invented final line
        (dict(total=10, quiet_s=0), 5, (), [f"{n}/10 ({10 * n}%)" for n in range(1, 6)]),
        # resumed at 16 of 20: counts go on from there
        (dict(total=20, quiet_s=0, completed=16), 4, (), ["18/20 (90%)", "20/20 (100%)"]),
        # training: a line where asked (each logged loss), not per tenth
        (dict(total=5, quiet_s=0, milestones=False), 5, (2, 4), ["2/5 (40%)", "4/5 (80%)"]),
    ],
)
def test_plain_progress_lines(plain_lines, bar, advances, reports, shown):
    options = {"enabled": True, **bar}
    with ProgressBar("stage", options.pop("total"), **options) as progress:
        for n in range(1, advances + 1):
            progress.advance()
            if n in reports:
                progress.report()
    lines = plain_lines()
    assert [line.split(", ")[0] for line in lines] == [f"stage: {s}" for s in shown]
    for line in lines:
        assert re.fullmatch(
            r"stage: \d+/\d+ \(\d+%\), \d+\.\d\d items/s, elapsed 0:00:0\d, ETA \d:\d\d:\d\d", line
        ), line
    if shown and shown[-1].endswith("(100%)"):
        assert lines[-1].endswith("ETA 0:00:00")


def test_a_plain_line_carries_status_and_spend(plain_lines):
    with ProgressBar("label", 2, True, money=True, quiet_s=0) as progress:
        progress.advance(spend=0.125, status="2 teachers")
    assert plain_lines()[0].startswith("label: 1/2 (50%), 2 teachers, ")
    assert ", $0.12 spent, elapsed " in plain_lines()[0]


# ------------------------------------------------------------------- third-party noise

# Each source as it reaches croptune's console; the markers show whether it got through.
NOISE_SCRIPT = textwrap.dedent(
    """
    import logging, sys, warnings
    from toolkit.noise import configure_output
    configure_output(verbose=sys.argv[1] == "verbose", bars=False)
    import bitsandbytes  # peft imports it whenever it is installed
    from transformers.utils import logging as hf_logging
    # What bitsandbytes logs at import on a GPU machine without its exact CUDA build.
    logging.getLogger("bitsandbytes.cextension").warning(
        "MARK-bnb No prebuilt binary for CUDA 13.1, loading CUDA 13.0 instead."
    )
    hf_logging.get_logger("transformers.trainer").warning_advice("MARK-advice: not needed")
    hf_logging.get_logger("transformers.trainer").warning("MARK-hf-warning: wrong model")
    warnings.warn("MARK-future: argument renamed", FutureWarning)
    warnings.warn("MARK-user: check this", UserWarning)
    logging.getLogger("toolkit.stage").info("MARK-info: 3 items")
    logging.getLogger("finetune.stage").debug("MARK-debug: details")
    """
)


@pytest.fixture(scope="module")
def noise_output():
    """stderr of the noise script, without and with --verbose."""
    started = {  # both at once: each spends its time importing torch
        mode: subprocess.Popen(
            [sys.executable, "-c", NOISE_SCRIPT, mode],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )  # fmt: skip
        for mode in ("quiet", "verbose")
    }
    runs = {}
    for mode, process in started.items():
        _, runs[mode] = process.communicate(timeout=120)
        assert process.returncode == 0, runs[mode]
    return runs


@pytest.mark.parametrize(
    ("marker", "quiet", "verbose"),
    [
        ("MARK-bnb", False, True),  # bitsandbytes' start-up log: noise unless --verbose
        ("MARK-advice", False, True),  # transformers' advisory warnings: by definition optional
        ("MARK-hf-warning", True, True),  # other transformers warnings may matter: shown
        ("MARK-future", False, True),  # FutureWarning: meant for a library's callers
        ("MARK-user", True, True),  # UserWarning: may matter to the user, shown
        ("MARK-info", True, True),  # croptune's own info lines
        ("MARK-debug", False, True),  # croptune's debug lines: --verbose
    ],
)
def test_noise_shown_only_with_verbose(noise_output, marker, quiet, verbose):
    assert (marker in noise_output["quiet"]) == quiet
    assert (marker in noise_output["verbose"]) == verbose
    assert not _repeated(noise_output["quiet"])  # each line once: no second handler


# ------------------------------------------------------------ real commands, no terminal


@pytest.fixture(scope="module")
def labeled_run(tmp_path_factory):
    """A small labeled run (synthetic catalog, the reference teacher)."""
    work = tmp_path_factory.mktemp("output")
    catalog = make_example_catalog(work / "catalog", n_items=4, seed=3)
    _croptune("--no-progress", "label", str(catalog), "--config", str(LABEL_REFERENCE),
              "--run", "run", cwd=work)  # fmt: skip
    return work


@pytest.mark.parametrize(
    ("flags", "ultralytics_shown"),
    [
        # default: croptune's one line per epoch; no ultralytics banner, tables or bars
        ([], False),
        # --verbose: ultralytics' own output is back (and croptune's epoch line steps aside)
        pytest.param(["--verbose"], True, marks=pytest.mark.slow),
    ],
)
def test_detector_train_output(labeled_run, tmp_path, flags, ultralytics_shown):
    out = tmp_path / "det"
    result = _croptune(*flags, "detector", "train", "--run", str(labeled_run / "run"),
                       "--out", str(out), "epochs=1", "imgsz=64", "batch=4", "workers=0",
                       cwd=tmp_path)  # fmt: skip
    both = result.stdout + result.stderr
    for noise in ("Ultralytics 8.", "Epoch    GPU_mem", "engine/trainer: ", "YOLO11n summary"):
        assert (noise in both) == ultralytics_shown, noise
    epoch_lines = [line for line in result.stderr.splitlines() if "detector train: " in line]
    if ultralytics_shown:
        assert epoch_lines == []
    else:
        assert "\r" not in both  # no terminal: no carriage-return bars
        assert not _repeated(both)
        assert len(epoch_lines) == 1
        assert re.fullmatch(
            r"detector train: 1/1 \(100%\), loss \d+\.\d{3}, \d+\.\d\d epochs/s, "
            r"elapsed \d:\d\d:\d\d, ETA 0:00:00",
            epoch_lines[0],
        ), epoch_lines
    assert "croptune detector train" in result.stdout  # the summary, on stdout


def test_dataset_build_output_has_no_bars(labeled_run, tmp_path):
    result = _croptune("dataset", "build", "--run", str(labeled_run / "run"),
                       "--out", str(tmp_path / "ds"), "image_tokens=16", cwd=tmp_path)  # fmt: skip
    both = result.stdout + result.stderr
    assert "\r" not in both and "Saving the dataset" not in both  # datasets' own bars stay off
    assert not _repeated(both)
    assert "croptune dataset build" in result.stdout


# ----------------------------------------------------------------- real commands, a tty


@pytest.mark.parametrize(
    ("flags", "bar_drawn"),
    [
        # a terminal: a rich bar (it hides the cursor while it draws)
        ([], True),
        # --no-progress on a terminal: no bar, so nothing redrawn with carriage returns
        (["--no-progress"], False),
    ],
)
def test_terminal_gets_a_bar_unless_no_progress(labeled_run, flags, bar_drawn):
    catalog = labeled_run / "catalog" / "catalog.jsonl"
    leader, follower = pty.openpty()
    try:
        result = subprocess.run(
            [CROPTUNE, *flags, "catalog", "validate", str(catalog)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=follower,
            env={**os.environ, "TERM": "xterm", "COLUMNS": "120"}, timeout=120,
        )  # fmt: skip
        os.close(follower)
        follower = -1
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed: everything was read
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        if follower != -1:
            os.close(follower)
        os.close(leader)
    terminal = b"".join(chunks).decode("utf-8", "replace")
    assert result.returncode == 0, terminal
    assert ("\x1b[?25l" in terminal) == bar_drawn
    assert ("validate" in terminal) == bar_drawn  # the bar's label
    assert "no problems" in result.stdout.decode()
