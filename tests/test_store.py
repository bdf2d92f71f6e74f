"""The run store: committed work survives a killed writer; newer stores are refused."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from toolkit.boxes import Box
from toolkit.errors import CroptuneError
from toolkit.store import SCHEMA_VERSION, ImageRow, RunStore

WRITER = textwrap.dedent(
    """
    import sys
    from toolkit.boxes import Box
    from toolkit.store import RunStore

    store = RunStore(sys.argv[1])
    n = 0
    while True:
        store.record_answer(
            f"key-{n}", "teacher", "model", f"item-{n}", 0, f"answer {n}", {"tokens": n},
            labels={"identifiers": {"gtin": str(n)}},
            boxes=[Box(0, n, n, n + 10, n + 10, "barcode")],
        )
        print(n, flush=True)  # reported only after the commit returned
        n += 1
    """
)


def test_killed_writer_loses_no_committed_unit(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env
    )
    committed = -1
    deadline = time.monotonic() + 60
    while committed < 200 and time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        committed = int(line)
    process.send_signal(signal.SIGKILL)  # mid-write: no chance to clean up
    process.wait()
    assert committed >= 200, "the writer did not get going"

    with RunStore(tmp_path) as store:
        for n in range(committed + 1):
            assert store.cached_response(f"key-{n}") == {
                "text": f"answer {n}",
                "usage": {"tokens": n},
            }
            assert store.final_attributes(f"item-{n}") == {"identifiers": {"gtin": str(n)}}
            assert [b.xyxy for _, b in store.boxes(f"item-{n}")] == [(n, n, n + 10, n + 10)]
        assert store._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_answer_and_its_labels_are_one_transaction(tmp_path):
    with RunStore(tmp_path) as store:
        bad_box = Box(0, 1, 1, 2, 2)
        object.__setattr__(bad_box, "x1", object())  # not storable: the insert fails midway
        with pytest.raises(sqlite3.Error):
            store.record_answer(
                "k", "t", "m", "item", 0, "text", {}, labels={"a": {}}, boxes=[bad_box]
            )
        assert store.cached_response("k") is None  # nothing half-written
        assert store.final_attributes("item") is None


def test_store_is_wal_and_records_schema_version(tmp_path):
    with RunStore(tmp_path) as store:
        assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store.get_meta("schema_version") == str(SCHEMA_VERSION)


def test_newer_store_is_refused_with_a_clear_message(tmp_path):
    RunStore(tmp_path).close()
    conn = sqlite3.connect(tmp_path / "run.sqlite")
    conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.commit()
    conn.close()
    with pytest.raises(CroptuneError, match="newer croptune"):
        RunStore(tmp_path)


def test_missing_run_is_a_user_error(tmp_path):
    with pytest.raises(CroptuneError, match="not a croptune run"):
        RunStore(tmp_path / "nope", create=False)


def test_not_a_database_is_a_user_error(tmp_path):
    (tmp_path / "run.sqlite").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(CroptuneError, match="not a readable croptune store"):
        RunStore(tmp_path)


def test_failed_request_is_asked_again_and_newest_generation_wins(tmp_path):
    with RunStore(tmp_path) as store:
        store.record_failure("k", "t", "m", "item", None, "HTTP 500")
        assert store.cached_response("k") is None
        store.record_answer("k", "t", "m", "item", None, "{}", {}, labels={"g": {"f": "0"}})
        store.record_answer(
            "k2", "t", "m", "item", None, "{}", {}, labels={"g": {"f": "1"}}, generation=1
        )
        assert store.final_attributes("item") == {"g": {"f": "1"}}
        assert store.request_counts() == {"ok": 2}


@pytest.mark.parametrize(
    ("answer", "answered_after", "open_"),
    [
        # the same teacher answered the same item and image after the failure: settled
        (("qwen", "A", 0), True, False),
        # ... but before the failure (a later request failed): still open
        (("qwen", "A", 0), False, True),
        # another teacher answered: open
        (("gpt", "A", 0), True, True),
        # the same teacher answered another image: open
        (("qwen", "A", 1), True, True),
        # the same teacher answered another item: open
        (("qwen", "B", 0), True, True),
    ],
)
def test_open_errors_leave_out_what_a_later_answer_settled(tmp_path, answer, answered_after, open_):
    store = RunStore(tmp_path / "run")
    teacher, item, image = answer
    if not answered_after:
        store.record_answer("k", teacher, "m", item, image, "[]", {}, boxes=[])
        time.sleep(0.01)
    store.log_event("label", "HTTP 500", "error", "A", "qwen", 0)
    store.log_event("ingest", "image 1: file not found", "error", "A")  # no teacher: stays
    if answered_after:
        time.sleep(0.01)
        store.record_answer("k", teacher, "m", item, image, "[]", {}, boxes=[])
    messages = [e["message"] for e in store.open_errors("A")]
    assert messages == (["HTTP 500"] if open_ else []) + ["image 1: file not found"]
    assert len(store.errors("A")) == 2  # the record of what happened is kept


def test_event_logged_once_is_not_repeated_by_a_rerun(tmp_path):
    with RunStore(tmp_path) as store:
        for _ in range(3):
            store.log_event("ingest", "line 3: not valid JSON", once=True)
            store.log_event("ingest", "item A: image 0: file not found", item_id="A", once=True)
        store.log_event("label", "HTTP 500", item_id="A")
        store.log_event("label", "HTTP 500", item_id="A")  # real repeats are kept
        assert len(store.errors(stage="ingest")) == 2
        assert len(store.errors(stage="label")) == 2


def test_a_version_1_store_is_migrated_in_place(tmp_path):
    # A store as croptune 0.1 wrote it: images without the file_stat column, schema v1.
    conn = sqlite3.connect(tmp_path / "run.sqlite")
    conn.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '1');
        CREATE TABLE images (item_id TEXT NOT NULL, idx INTEGER NOT NULL, uri TEXT NOT NULL,
            sha256 TEXT, width INTEGER, height INTEGER, error TEXT, PRIMARY KEY (item_id, idx));
        INSERT INTO images VALUES ('A', 0, '/x.png', 'abc', 10, 20, NULL);
        """
    )
    conn.commit()
    conn.close()
    with RunStore(tmp_path) as store:
        (row,) = store.images("A")
        assert (row.sha256, row.width, row.file_stat) == ("abc", 10, None)
        assert store.get_meta("schema_version") == str(SCHEMA_VERSION)


@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [
        (640, 480, (640, 480)),  # a decoded image: its recorded size
        (None, 480, None),  # no width recorded: a clear error, not a TypeError in crop planning
        (640, None, None),  # no height recorded: the same
    ],
)
def test_image_row_size_names_the_image_without_a_recorded_size(width, height, expected):
    row = ImageRow("SKU-1", 2, "img/a.jpg", "abc", width, height, None)
    if expected is not None:
        assert row.size == expected
        return
    with pytest.raises(CroptuneError) as caught:
        _ = row.size
    assert str(caught.value) == (
        "image 2 of item 'SKU-1' has no recorded size in the store; run `croptune label` "
        "again to re-ingest it"
    )
