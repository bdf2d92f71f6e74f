"""Run-store reads that scan the run: keyset pages that survive writes in between, bounded
memory, and the indexes every query needs (checked on each query's plan)."""

from __future__ import annotations

import inspect
import re
import sqlite3
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from toolkit.boxes import Box
from toolkit.store import (
    _INDEXES,
    _TABLES,
    PREDICT_STAGE,
    SCHEMA_VERSION,
    CropRow,
    ImageRow,
    ItemRow,
    RunStore,
)


def _item(item_id: str, title: str = "t") -> ItemRow:
    return ItemRow(item_id, title, "cat", None, None, [])


def _put(store: RunStore, item_id: str, position: int) -> None:
    image = ImageRow(item_id, 0, f"/photos/{item_id}.jpg", "abc", 10, 10, None)
    store.put_item(_item(item_id), position, "fp", [image])


def _filled(run: Path, n: int) -> tuple[RunStore, list[str]]:
    """A store of n items, every seventh sharing its position with the one before (two
    catalogs ingested into one run); returns it and the ids in catalog order."""
    store = RunStore(run)
    order = []
    for k in range(n):
        position = k - 1 if k % 7 == 6 else k
        item_id = f"item-{(n - k) * 37 % 1000:03d}-{k}"  # ids not in position order
        _put(store, item_id, position)
        order.append((position, item_id))
    return store, [item_id for _, item_id in sorted(order)]


def _restore_current(store: RunStore, item: ItemRow, k: int) -> None:
    # put_item is INSERT OR REPLACE: the row gets a new rowid, after every other row
    position = store._query("SELECT position FROM items WHERE item_id=?", (item.item_id,))
    _put(store, item.item_id, position[0]["position"])


def _label_current(store: RunStore, item: ItemRow, k: int) -> None:
    store.record_answer(
        f"key-{k}", "qwen", "m", item.item_id, 0, "[]", {}, labels={"g": {"f": str(k)}},
        boxes=[Box(0, 1, 1, 5, 5, "barcode")],
    )  # fmt: skip
    store.set_boxes(item.item_id, "fused", [Box(0, 1, 1, 5, 5, "barcode")])
    store.add_crop(
        CropRow(item.item_id, 0, (0, 0, 8, 8), f"crops/{k}.jpg", "s", "square", "h", [1])
    )
    store.log_event("label", "HTTP 500", item_id=item.item_id, teacher="qwen", image=0)


def _add_later_item(store: RunStore, item: ItemRow, k: int) -> None:
    _put(store, f"zz-new-{k}", 10_000 + k)  # past every position: the scan reaches it


def _add_earlier_item(store: RunStore, item: ItemRow, k: int) -> None:
    _put(store, f"aa-new-{k}", -1 - k)  # before the scan's place: not met


@pytest.mark.parametrize(
    ("write", "added"),
    [
        # the stage re-stores the item it just read (ingest again): met once, not again
        (_restore_current, lambda n: []),
        # the label stage's writes (answer, labels, boxes, fused boxes, crop, event)
        (_label_current, lambda n: []),
        # an item stored ahead of the scan is met, in its place at the end
        (_add_later_item, lambda n: [f"zz-new-{k}" for k in range(n)]),
        # an item stored behind the scan is not met (the pages go forward only)
        (_add_earlier_item, lambda n: []),
    ],
)
def test_items_meets_every_item_once_in_order_while_the_caller_writes(tmp_path, write, added):
    store, order = _filled(tmp_path, 60)
    seen = []
    for k, item in enumerate(store.items(page_rows=7)):  # 60 items: 9 pages
        seen.append(item.item_id)
        if k < 60:
            write(store, item, k)
    assert seen == order + added(60)
    store.close()


@pytest.mark.parametrize(
    ("limit", "page_rows"),
    [
        (0, 7),  # nothing asked: nothing read
        (1, 7),  # less than a page
        (7, 7),  # exactly one page
        (8, 7),  # one row into the second page
        (25, 7),  # several pages, the last one cut short
        (100, 7),  # more than the store holds: every item
        (None, 1),  # one row a page
        (None, 500),  # one page holds them all
    ],
)
def test_items_limit_and_pages_give_the_first_items_in_order(tmp_path, limit, page_rows):
    store, order = _filled(tmp_path, 30)
    got = [item.item_id for item in store.items(limit=limit, page_rows=page_rows)]
    assert got == order[:limit]
    assert list(store.item_ids(limit=limit, page_rows=page_rows)) == order[:limit]
    assert store.count_items() == 30
    store.close()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"page_rows": 0}, "page_rows must be at least 1, not 0"),  # a page reads something
        ({"limit": -1}, "limit must be 0 or more, not -1"),  # SQLite reads -1 as no limit
    ],
)
def test_items_refuses_bad_paging_with_a_clear_message(tmp_path, kwargs, message):
    with RunStore(tmp_path) as store, pytest.raises(ValueError, match=message):
        next(store.items(**kwargs))


N_BIG = 20_000
PAGE = 100


@pytest.fixture(scope="module")
def big_store(tmp_path_factory):
    """N_BIG items (each with a longish title), N_BIG predict outcomes, N_BIG run errors."""
    run = tmp_path_factory.mktemp("big")
    store = RunStore(run)
    title = "a product title of a realistic length, " * 3
    for n in range(N_BIG):
        store.put_item(_item(f"item-{n:06d}", title), n, "fp", [])
    store.set_outcomes(PREDICT_STAGE, ((f"item-{n:06d}", {"n": n}) for n in range(N_BIG)))
    with store.transaction() as conn:  # one transaction: log_event commits each one
        conn.executemany(
            "INSERT INTO events (ts, stage, level, item_id, teacher, image, message) "
            "VALUES (0, 'ingest', 'error', NULL, NULL, NULL, ?)",
            [(f"line {n}: not valid JSON",) for n in range(N_BIG)],
        )
    yield store
    store.close()


def _peak(walk: Callable[[], int]) -> tuple[int, int]:
    """(rows walk() reported, peak traced bytes while it ran)."""
    tracemalloc.start()
    try:
        rows = walk()
        return rows, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    "scan",
    [
        # the items (stages: label, crop, dataset, export, report)
        lambda store, rows: store.items(page_rows=rows),
        # their ids only
        lambda store, rows: store.item_ids(page_rows=rows),
        # predict's output lines (report of a predict work folder)
        lambda store, rows: store.outcomes(PREDICT_STAGE, page_rows=rows),
        # the errors of no item (report's run-level errors)
        lambda store, rows: store.run_errors(page_rows=rows),
    ],
)
def test_a_scan_of_the_run_holds_a_page_not_the_run(big_store, scan):
    rows, streamed = _peak(lambda: sum(1 for _ in scan(big_store, PAGE)))
    _, listed = _peak(lambda: len(list(scan(big_store, PAGE))))  # a list of the run
    assert rows == N_BIG
    # A page is 1/200 of the rows: the streamed peak is a small part of the list's.
    assert streamed * 10 < listed, (streamed, listed)


# -- the query plans -----------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A store method called as a stage calls it, and what its queries may walk."""

    call: Callable[[RunStore], object]
    walks: frozenset[str] = field(default_factory=frozenset)  # tables it may read through
    paged: bool = False  # a scan of the run in pages: each later page seeks to its key
    # An index of _INDEXES its plan must use: without it the query reads more than it needs
    # (a SEARCH on a key prefix that covers the whole stage, or a sort per page).
    needs: str | None = None


def _case(
    call: Callable[[RunStore], object],
    *walks: str,
    paged: bool = False,
    needs: str | None = None,
) -> Case:
    return Case(call, frozenset(walks), paged, needs)


PLANS = {
    # -- items and images
    # label, crop, dataset, export, report walk the items in pages off items_position
    "items": _case(
        lambda s: list(s.items(page_rows=2)), "items", paged=True, needs="items_position"
    ),
    # the same walk for callers that need ids only (crop, evaluate)
    "item_ids": _case(
        lambda s: list(s.item_ids(page_rows=2)), "items", paged=True, needs="items_position"
    ),
    # predict and the predict report look one item up by id
    "item": _case(lambda s: s.item("I0")),
    # a count of the run reads an index through, once
    "count_items": _case(lambda s: s.count_items(), "items"),
    # ingest asks whether an item changed
    "item_fingerprint": _case(lambda s: s.item_fingerprint("I0")),
    # ingest replaces an item and its image rows
    "put_item": _case(lambda s: s.put_item(_item("I0"), 0, "fp", [])),
    # every stage reads one item's photos
    "images": _case(lambda s: s.images("I0")),
    # -- teacher requests
    # the label stage's cache check, by key
    "cached_response": _case(lambda s: s.cached_response("k")),
    # a teacher answer with its labels and boxes, one transaction
    "record_answer": _case(
        lambda s: s.record_answer(
            "k", "t", "m", "I0", 0, "[]", {}, labels={}, boxes=[Box(0, 1, 1, 2, 2)]
        )
    ),
    # whether an answer already reached this item
    "has_result": _case(lambda s: s.has_result("I0", "k")),
    # a failed request kept for the next run
    "record_failure": _case(lambda s: s.record_failure("k2", "t", "m", "I0", 0, "HTTP 500")),
    # a count by status reads every request either way (no stage calls it; tests, tools)
    "request_counts": _case(lambda s: s.request_counts(), "requests"),
    # -- labels, boxes, crops
    # one item's teachers' answers (report, export)
    "labels": _case(lambda s: s.labels("I0")),
    # one item's newest label (dataset, evaluate)
    "final_attributes": _case(lambda s: s.final_attributes("I0")),
    # one item's boxes (crop, export)
    "boxes": _case(lambda s: s.boxes("I0")),
    # the detector's box sources: one seek per source
    "box_sources": _case(lambda s: s.box_sources(), needs="boxes_source"),
    # the fused boxes of one item
    "set_boxes": _case(lambda s: s.set_boxes("I0", "fused", [Box(0, 1, 1, 2, 2)])),
    # one crop row
    "add_crop": _case(
        lambda s: s.add_crop(CropRow("I0", 0, (0, 0, 1, 1), "p", "s", "x", "h", [1]))
    ),
    # pHash de-duplication marks one crop
    "set_crop_duplicate": _case(
        lambda s: s.set_crop_duplicate("I0", 0, "h", "image:1", (0, 0, 1, 1))
    ),
    # an item's crops dropped when its boxes change
    "forget_crops": _case(lambda s: s.forget_crops("I1")),
    # the originals' pHashes of one item
    "set_image_phashes": _case(lambda s: s.set_image_phashes("I0", "h", {0: ("ab", None)})),
    # ... read back by the crop stage
    "image_phashes": _case(lambda s: s.image_phashes("I0", "h")),
    # one item's crops under a config
    "crops": _case(lambda s: s.crops("I0", "h")),
    # -- Batch API jobs
    # a Batch API job recorded before waiting on it
    "add_batch": _case(lambda s: s.add_batch("b", "t", "f", {"k": ["I0"]})),
    # a teacher's open batches, to resume
    "open_batches": _case(lambda s: s.open_batches("t"), needs="batches_open"),
    # a batch collected
    "close_batch": _case(lambda s: s.close_batch("b", "completed")),
    # -- predict's outcomes
    # predict's lines replaced, one transaction
    "set_outcomes": _case(lambda s: s.set_outcomes(PREDICT_STAGE, [("I0", None), ("I1", {})])),
    # one finished predict line: its row found by item id, not by reading the stage
    "update_outcome": _case(
        lambda s: s.update_outcome(PREDICT_STAGE, "I0", {"x": 1}), needs="outcomes_item"
    ),
    # the predict report walks the lines by position; a repeat found by outcomes_item
    "outcomes": _case(
        lambda s: list(s.outcomes(PREDICT_STAGE, page_rows=1)), paged=True, needs="outcomes_item"
    ),
    # whether predict ran here (the report's kind)
    "count_outcomes": _case(lambda s: s.count_outcomes(PREDICT_STAGE)),
    # every item is looked up in the outcomes: a count over the items
    "count_items_without_outcome": _case(
        lambda s: s.count_items_without_outcome(PREDICT_STAGE), "items", needs="outcomes_item"
    ),
    # -- the split
    # every item's split, as a dict: toolkit.dataset reads the whole split at once
    "recorded_splits": _case(lambda s: s.recorded_splits(), "splits"),
    # evaluate --split asks one item's split
    "recorded_split": _case(lambda s: s.recorded_split("I0")),
    # a count per split reads its index through
    "split_counts": _case(lambda s: s.split_counts(), "splits", needs="splits_split"),
    # the split recorded
    "record_splits": _case(lambda s: s.record_splits({"I1": "test"}, {"seed": 0})),
    # the settings that made it
    "split_settings": _case(lambda s: s.split_settings()),
    # -- events
    # once=True of no item: every catalog problem of a bad catalog has item_id NULL
    "log_event": _case(
        lambda s: s.log_event("ingest", "line 3: not JSON", once=True),
        needs="events_item_message",
    ),
    # one item's errors (export, report)
    "errors": _case(lambda s: s.errors("I0")),
    # one item's unsettled errors, the settling answer found by key
    "open_errors": _case(lambda s: s.open_errors("I0")),
    # one item's warnings of a stage (predict)
    "warnings": _case(lambda s: s.warnings("I0", PREDICT_STAGE)),
    # the report's run-level errors in pages off events_item (item_id NULL, id order)
    "run_errors": _case(lambda s: list(s.run_errors(page_rows=1)), paged=True),
    # the first page walks the events in id order from the start, later ones seek
    "unstored_error_items": _case(
        lambda s: list(s.unstored_error_items(page_rows=1)), "events", paged=True
    ),
    # the report's count of items never stored, grouped off events_item
    "count_unstored_error_items": _case(lambda s: s.count_unstored_error_items()),
    # -- meta
    # one meta value written
    "set_meta": _case(lambda s: s.set_meta("k", "v")),
    # ... and read
    "get_meta": _case(lambda s: s.get_meta("k")),
}
# Not queries of their own: opening, closing, the transaction helper.
NOT_QUERIES = {"close", "transaction"}


def _planned_store(run: Path) -> RunStore:
    """A small store with a row or two in every table the plans touch."""
    store = RunStore(run)
    for n in range(3):
        _put(store, f"I{n}", n)
    store.record_answer("k", "qwen", "m", "I0", 0, "[]", {}, labels={}, boxes=[Box(0, 1, 1, 2, 2)])
    store.log_event("ingest", "line 9: not JSON")  # of no item
    store.log_event("ingest", "refused", item_id="GONE")  # of an item never stored
    store.log_event("ingest", "refused again", item_id="GONE")
    store.log_event("ingest", "refused", item_id="LOST")
    store.set_outcomes(PREDICT_STAGE, [("I0", None), ("I1", {}), ("I0", None)])
    store.record_splits({"I0": "train"}, {})
    return store


def _plan_lines(store: RunStore, sql: str) -> list[str]:
    return [row[3] for row in store._conn.execute("EXPLAIN QUERY PLAN " + sql)]


def test_every_query_method_has_a_plan_case():
    methods = {
        name
        for name, member in inspect.getmembers(RunStore, inspect.isfunction)
        if not name.startswith("_")
    }
    assert methods - NOT_QUERIES == set(PLANS), "add the new store method to PLANS"


@pytest.mark.parametrize("name", sorted(PLANS))
def test_no_query_scans_a_table_an_index_should_serve(tmp_path, name):
    case = PLANS[name]
    store = _planned_store(tmp_path)
    tables = {
        r[0] for r in store._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
    }
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)
    try:
        case.call(store)
    finally:
        store._conn.set_trace_callback(None)
    queries = [q for q in statements if q.split()[0].upper() not in {"BEGIN", "COMMIT", "ROLLBACK"}]
    assert queries, f"{name} ran no query"
    pages = 0
    used = []
    for sql in queries:
        plan = _plan_lines(store, sql)
        used += plan
        scanned = {m.group(1) for line in plan if (m := re.match(r"SCAN (\w+)", line))}
        scanned &= tables  # "SCAN <subquery>" reads what the subquery found, no table
        assert scanned <= case.walks, f"{name}: {sql}\n" + "\n".join(plan)
        if case.paged:
            # each page off an index in order: sorting the table for every page would
            # make the scan quadratic
            assert not any("TEMP B-TREE FOR ORDER BY" in line for line in plan), (sql, plan)
            if re.search(r"\) > \(", sql):
                pages += 1
                # a later page seeks to where the previous one ended
                assert not scanned, (sql, plan)
    if case.paged:
        assert pages >= 1, f"{name} read one page only: the case checks no later page"
    if case.needs is not None:
        assert any(f"INDEX {case.needs} " in f"{line} " for line in used), (name, used)
    store.close()


def _old_store(run: Path) -> None:
    """A store as croptune wrote it before the indexes of _INDEXES: schema v3, its tables."""
    run.mkdir()
    conn = sqlite3.connect(run / "run.sqlite")
    conn.executescript(_TABLES)
    conn.execute("INSERT INTO meta VALUES ('schema_version', '3')")
    conn.executemany(
        "INSERT INTO items VALUES (?, ?, 'title', 'cat', NULL, NULL, '[]', 'fp', 0)",
        [(f"I{n}", 9 - n) for n in range(10)],
    )
    conn.executemany(
        "INSERT INTO outcomes VALUES ('predict', ?, ?, NULL, 0)",
        [(n, f"I{n}") for n in range(10)],
    )
    conn.commit()
    conn.close()


def _index_names(run: Path) -> set[str]:
    conn = sqlite3.connect(run / "run.sqlite")
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    finally:
        conn.close()


def test_a_store_from_before_the_indexes_gets_them_when_opened(tmp_path):
    run = tmp_path / "run"
    _old_store(run)
    wanted = set(re.findall(r"CREATE INDEX IF NOT EXISTS (\w+)", _INDEXES))
    assert not wanted & _index_names(run)  # the old store lacks every one of them
    with RunStore(run) as store:
        assert [i.item_id for i in store.items(page_rows=3)] == [f"I{n}" for n in range(9, -1, -1)]
        page = (
            "SELECT * FROM items WHERE (position, item_id) > (0, 'I9') ORDER BY position, item_id"
        )
        assert "USING INDEX items_position" in " ".join(_plan_lines(store, page))
        store.update_outcome(PREDICT_STAGE, "I4", {"done": True})
        assert [o.record for o in store.outcomes(PREDICT_STAGE)][4] == {"done": True}
        assert store.get_meta("schema_version") == str(SCHEMA_VERSION)
    assert wanted <= _index_names(run)
    with RunStore(run) as store:  # opening again finds them and changes nothing
        assert store.count_items() == 10


# -- what the new reads answer -------------------------------------------------------------


def test_box_sources_are_the_distinct_sources_sorted(tmp_path):
    with RunStore(tmp_path) as store:
        assert store.box_sources() == []  # no boxes: nothing to train a detector on
        for k, source in enumerate(["qwen", "gpt", "qwen", "fused", "gpt"]):
            store.set_boxes(f"I{k}", source, [Box(0, 1, 1, 2, 2)])
        assert store.box_sources() == ["fused", "gpt", "qwen"]


def test_outcomes_mark_a_repeated_id_and_count_items_not_in_them(tmp_path):
    with RunStore(tmp_path) as store:
        for n, item_id in enumerate(["A", "B", "OLD"]):
            _put(store, item_id, n)
        rows = [("A", {"a": 1}), (None, {"error": "bad line"}), ("B", None), ("A", {"e": 1})]
        store.set_outcomes(PREDICT_STAGE, iter(rows))  # a generator is written as it comes
        got = [
            (o.position, o.item_id, o.record, o.repeated) for o in store.outcomes(PREDICT_STAGE, 2)
        ]
        assert got == [
            (0, "A", {"a": 1}, False),
            (1, None, {"error": "bad line"}, False),  # no id: never a repeat
            (2, "B", None, False),
            (3, "A", {"e": 1}, True),  # the second line of A
        ]
        assert store.count_outcomes(PREDICT_STAGE) == 4
        assert store.count_items_without_outcome(PREDICT_STAGE) == 1  # OLD, an earlier run's


def test_unstored_error_items_in_the_order_of_their_first_error(tmp_path):
    with RunStore(tmp_path) as store:
        _put(store, "KEPT", 0)
        for item_id, level in [
            ("LATE", "warning"),  # a warning only: not an error
            ("B", "error"),
            ("KEPT", "error"),  # stored: its section is the item's own
            ("A", "error"),
            (None, "error"),  # of no item: a run-level error
            ("B", "error"),  # B again: listed once, at its first error
            ("LATE", "error"),
        ]:
            store.log_event("ingest", f"{item_id} {level}", level, item_id=item_id)
        assert list(store.unstored_error_items(page_rows=1)) == ["B", "A", "LATE"]
        assert list(store.unstored_error_items(limit=2)) == ["B", "A"]
        assert store.count_unstored_error_items() == 3
        assert [e["message"] for e in store.run_errors()] == ["None error"]


def test_split_of_one_item_and_counts_per_split(tmp_path):
    with RunStore(tmp_path) as store:
        assert store.split_counts() == {} and store.recorded_split("A") is None
        store.record_splits({"A": "train", "B": "test", "C": "train"}, {"seed": 0})
        assert store.split_counts() == {"test": 1, "train": 2}
        assert (store.recorded_split("B"), store.recorded_split("Z")) == ("test", None)


def test_item_reads_one_stored_item(tmp_path):
    with RunStore(tmp_path) as store:
        _put(store, "A", 0)
        assert store.item("A") == _item("A")
        assert store.item("missing") is None


# -- the review page of a run larger than its cap ------------------------------------------


def test_report_of_a_large_run_shows_the_first_items_and_counts_them_all(tmp_path):
    from toolkit.report import write_report

    with RunStore(tmp_path / "run") as store:
        for n in range(30):
            # no photo rows: nothing to decode, each item flagged for photos
            store.put_item(_item(f"I{n:02d}"), n, "fp", [])
        for n in range(5):
            store.log_event("ingest", f"line {n}: not JSON")  # run-level errors
        store.log_event("ingest", "refused", item_id="GONE")  # an item never stored
        out = write_report(store, tmp_path / "report.html", page_size=4, max_items=12)
    html = out.read_text(encoding="utf-8")
    ids = re.findall(r'<section class="item"[^>]*data-item-id="([^"]*)"', html)
    assert ids == [f"I{n:02d}" for n in range(12)]
    assert "the first 12 of 31 items are shown" in html
    counts = re.findall(r'<li data-count="items"><b>(\d+)</b>', html)
    assert counts == ["31"]  # every item counted, the one never stored included
    assert "Photo problems only (12)" in html  # the filters count what the page holds
    assert "the first 5 of 5" not in html and html.count("line 4: not JSON") == 1
