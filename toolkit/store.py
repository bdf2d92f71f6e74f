"""The run store: one SQLite file per run, written as each unit of work finishes."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit.boxes import Box
from toolkit.errors import CroptuneError

# Bump when the tables change; add a migration step in _migrate for the old version.
SCHEMA_VERSION = 3
STORE_FILE = "run.sqlite"

_TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    item_id TEXT PRIMARY KEY, position INTEGER NOT NULL, title TEXT, category TEXT, text TEXT,
    reference_attributes TEXT, reference_boxes TEXT, fingerprint TEXT NOT NULL,
    created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    item_id TEXT NOT NULL, idx INTEGER NOT NULL, uri TEXT NOT NULL, sha256 TEXT,
    width INTEGER, height INTEGER, error TEXT, file_stat TEXT,
    PRIMARY KEY (item_id, idx));
CREATE TABLE IF NOT EXISTS requests (
    cache_key TEXT PRIMARY KEY, teacher TEXT NOT NULL, model TEXT NOT NULL, item_id TEXT NOT NULL,
    image INTEGER, status TEXT NOT NULL, response TEXT, usage TEXT, error TEXT,
    created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS labels (
    id INTEGER PRIMARY KEY AUTOINCREMENT, item_id TEXT NOT NULL, teacher TEXT NOT NULL,
    generation INTEGER NOT NULL, attributes TEXT NOT NULL, cache_key TEXT, created_at REAL NOT NULL,
    UNIQUE (item_id, teacher, generation));
CREATE TABLE IF NOT EXISTS boxes (
    id INTEGER PRIMARY KEY AUTOINCREMENT, item_id TEXT NOT NULL, image INTEGER NOT NULL,
    x1 REAL NOT NULL, y1 REAL NOT NULL, x2 REAL NOT NULL, y2 REAL NOT NULL,
    label TEXT, source TEXT NOT NULL, score REAL, cache_key TEXT);
CREATE INDEX IF NOT EXISTS boxes_item ON boxes (item_id, source);
CREATE TABLE IF NOT EXISTS crops (
    id INTEGER PRIMARY KEY AUTOINCREMENT, item_id TEXT NOT NULL, image INTEGER NOT NULL,
    x1 INTEGER NOT NULL, y1 INTEGER NOT NULL, x2 INTEGER NOT NULL, y2 INTEGER NOT NULL,
    path TEXT NOT NULL, sha256 TEXT NOT NULL, strategy TEXT NOT NULL, config_hash TEXT NOT NULL,
    box_ids TEXT NOT NULL, created_at REAL NOT NULL, phash TEXT, duplicate_of TEXT,
    UNIQUE (item_id, image, config_hash, x1, y1, x2, y2));
CREATE TABLE IF NOT EXISTS image_phash (
    item_id TEXT NOT NULL, idx INTEGER NOT NULL, config_hash TEXT NOT NULL, phash TEXT,
    duplicate_of TEXT, PRIMARY KEY (item_id, idx, config_hash));
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, stage TEXT NOT NULL,
    level TEXT NOT NULL, item_id TEXT, teacher TEXT, image INTEGER, message TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_item ON events (item_id);
CREATE TABLE IF NOT EXISTS results (
    item_id TEXT NOT NULL, cache_key TEXT NOT NULL, PRIMARY KEY (item_id, cache_key));
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY, teacher TEXT NOT NULL, input_file_id TEXT NOT NULL,
    requests TEXT NOT NULL, status TEXT NOT NULL, created_at REAL NOT NULL, closed_at REAL);
CREATE TABLE IF NOT EXISTS outcomes (
    stage TEXT NOT NULL, position INTEGER NOT NULL, item_id TEXT, record TEXT,
    updated_at REAL NOT NULL, PRIMARY KEY (stage, position));
CREATE TABLE IF NOT EXISTS splits (
    item_id TEXT PRIMARY KEY, split TEXT NOT NULL, created_at REAL NOT NULL);
"""
# `outcomes` and `splits` were added without a version bump: a new table is created in an
# older store by _TABLES itself, and an older croptune ignores it.

# The indexes the store's queries need beyond the primary keys and UNIQUE constraints
# (tests/test_store_streaming.py checks every query's plan). Like a new table, a new index
# needs no version bump: _INDEXES runs at every open, so a store written before an index
# existed gets it then (built once, in place), and an older croptune ignores it.
_INDEXES = """
CREATE INDEX IF NOT EXISTS items_position ON items (position, item_id);
CREATE INDEX IF NOT EXISTS boxes_source ON boxes (source);
CREATE INDEX IF NOT EXISTS events_item_message ON events (item_id, message);
CREATE INDEX IF NOT EXISTS outcomes_item ON outcomes (stage, item_id, position);
CREATE INDEX IF NOT EXISTS splits_split ON splits (split);
CREATE INDEX IF NOT EXISTS batches_open ON batches (teacher, status, created_at);
"""
# items_position: items() pages in catalog order without sorting the table per page.
# boxes_source: box_sources() seeks each distinct source instead of reading every box.
# events_item_message: log_event(once=True) finds an earlier event without reading every
#   event of the item (catalog problems of no item are many in a bad catalog).
# outcomes_item: update_outcome finds an item's row without reading the stage's every row.
# splits_split: split_counts() counts from the index.
# batches_open: open_batches() of one teacher.

# Rows per page of the reads that scan the run (items(), outcomes(), ...): each page is
# one query, fetched whole, so no cursor stays open while the caller writes.
SCAN_PAGE_ROWS = 500

# The meta key of the settings (JSON) that made the recorded split (the `splits` table).
SPLIT_SETTINGS_KEY = "split_settings"

# The stage whose latest run `outcomes` holds in a predict work folder (finetune.predict).
PREDICT_STAGE = "predict"
# The stage of toolkit.catalog.ingest_catalog's events.
INGEST_STAGE = "ingest"


@dataclass(frozen=True)
class ItemRow:
    """An item as ingested into the store."""

    item_id: str
    title: str | None
    category: str | None
    text: str | None
    reference_attributes: dict[str, Any] | None
    reference_boxes: list[dict[str, Any]]


@dataclass(frozen=True)
class ImageRow:
    """One image of an item: where it lives, its pixel hash and size, or why it is unusable."""

    item_id: str
    index: int
    uri: str
    sha256: str | None
    width: int | None
    height: int | None
    error: str | None
    file_stat: str | None = None  # 'size:mtime_ns' at ingest: unchanged files skip re-hashing

    @property
    def usable(self) -> bool:
        """Whether the image decoded at ingest."""
        return self.error is None and self.sha256 is not None

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of a decoded image, in pixels of the oriented image."""
        if self.width is None or self.height is None:
            raise CroptuneError(
                f"image {self.index} of item {self.item_id!r} has no recorded size in the "
                "store; run `croptune label` again to re-ingest it"
            )
        return self.width, self.height


@dataclass(frozen=True)
class CropRow:
    """A crop file and where its pixels came from."""

    item_id: str
    image: int
    region: tuple[int, int, int, int]
    path: str
    sha256: str
    strategy: str
    config_hash: str
    box_ids: list[int]
    phash: str | None = None  # 64-bit perceptual hash, hex (None: not computed)
    # The image this crop repeats (pHash within the config's threshold): "image:<idx>" for an
    # original, a crop's path for a crop. A duplicate stays on disk but is not used.
    duplicate_of: str | None = None


@dataclass(frozen=True)
class OutcomeRow:
    """One row of a stage's latest run (a predict output line): its record, None if unfinished."""

    position: int
    item_id: str | None  # None: a catalog row without a usable id
    record: dict[str, Any] | None
    repeated: bool = False  # an earlier row of the run has the same item id


class RunStore:
    """The SQLite store of one run folder (WAL mode; every finished unit committed at once)."""

    def __init__(self, run_dir: Path | str, create: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / STORE_FILE
        if not self.path.exists() and not create:
            raise CroptuneError(
                f"{self.run_dir} is not a croptune run (no {STORE_FILE}); "
                "create one with `croptune label CATALOG --run RUN`"
            )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a committed transaction survives a killed process.
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA busy_timeout=30000")
            self._check_version()
            self._migrate()
            self._conn.executescript(_TABLES)
            self._conn.executescript(_INDEXES)
        except sqlite3.DatabaseError as exc:
            raise CroptuneError(f"{self.path} is not a readable croptune store: {exc}") from exc
        self.set_meta("schema_version", str(SCHEMA_VERSION))

    def _stored_version(self) -> int | None:
        """The schema version the file was written with (None for a new, empty store)."""
        has_meta = self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
        ).fetchone()
        if not has_meta:
            return None
        row = self._conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return int(row[0]) if row else SCHEMA_VERSION

    def _check_version(self) -> None:
        version = self._stored_version()
        if version is not None and version > SCHEMA_VERSION:
            raise CroptuneError(
                f"{self.path} was written by a newer croptune (store schema v{version}; this "
                f"croptune reads up to v{SCHEMA_VERSION}). Upgrade croptune to open this run."
            )

    def _migrate(self) -> None:
        """Bring a store written by an older croptune up to SCHEMA_VERSION, in place."""
        version = self._stored_version()
        if version is None:
            return
        if version < 2:
            self._conn.execute("ALTER TABLE images ADD COLUMN file_stat TEXT")
        if version < 3:
            self._migrate_crops_v3()

    def _migrate_crops_v3(self) -> None:
        """v3: crops gain phash and duplicate_of, and an image may hold several crops per
        config (clustered, per-box), so the unique key becomes (item, image, config, region).

        SQLite cannot change a table's UNIQUE constraint in place: the table is rebuilt.
        """
        has_crops = self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='crops'"
        ).fetchone()
        if not has_crops:
            return
        columns = [r[1] for r in self._conn.execute("PRAGMA table_info(crops)").fetchall()]
        with self.transaction() as conn:
            if "phash" not in columns:
                conn.execute("ALTER TABLE crops ADD COLUMN phash TEXT")
            if "duplicate_of" not in columns:
                conn.execute("ALTER TABLE crops ADD COLUMN duplicate_of TEXT")
            conn.execute("ALTER TABLE crops RENAME TO crops_v2")
            crops_table = _TABLES[_TABLES.index("CREATE TABLE IF NOT EXISTS crops (") :]
            conn.execute(crops_table[: crops_table.index(";")])
            names = ", ".join(
                ["id", "item_id", "image", "x1", "y1", "x2", "y2", "path", "sha256", "strategy",
                 "config_hash", "box_ids", "created_at", "phash", "duplicate_of"]
            )  # fmt: skip
            conn.execute(f"INSERT INTO crops ({names}) SELECT {names} FROM crops_v2")  # noqa: S608
            conn.execute("DROP TABLE crops_v2")

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction committed on success, rolled back on error."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            cursor = self._conn.execute(sql, params)
            cursor.row_factory = sqlite3.Row
            return cursor.fetchall()

    # meta
    def set_meta(self, key: str, value: str) -> None:
        """Set one meta value."""
        with self.transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def get_meta(self, key: str) -> str | None:
        """One meta value, or None."""
        rows = self._query("SELECT value FROM meta WHERE key=?", (key,))
        return rows[0]["value"] if rows else None

    # items and images
    def item_fingerprint(self, item_id: str) -> str | None:
        """The fingerprint an item was ingested with, or None if it is new."""
        rows = self._query("SELECT fingerprint FROM items WHERE item_id=?", (item_id,))
        return rows[0]["fingerprint"] if rows else None

    def put_item(
        self,
        item: ItemRow,
        position: int,
        fingerprint: str,
        images: list[ImageRow],
    ) -> None:
        """Insert or replace an item and its images in one transaction."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    item.item_id,
                    position,
                    item.title,
                    item.category,
                    item.text,
                    _dumps(item.reference_attributes),
                    _dumps(item.reference_boxes),
                    fingerprint,
                    time.time(),
                ),
            )
            conn.execute("DELETE FROM images WHERE item_id=?", (item.item_id,))
            conn.executemany(
                "INSERT INTO images (item_id, idx, uri, sha256, width, height, error, file_stat) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (i.item_id, i.index, i.uri, i.sha256, i.width, i.height, i.error, i.file_stat)
                    for i in images
                ],
            )

    def items(self, limit: int | None = None, page_rows: int = SCAN_PAGE_ROWS) -> Iterator[ItemRow]:
        """Items in catalog order, read page_rows at a time; the caller may write in between.

        Pages are keyset pages on (position, item_id): an item re-stored during the scan
        (same id and position, a new rowid) is still met exactly once, and at most one
        page is held.
        """
        for rows in self._pages(
            "SELECT * FROM items", ("position", "item_id"), "", (), limit, page_rows
        ):
            yield from (_item_row(r) for r in rows)

    def item_ids(self, limit: int | None = None, page_rows: int = SCAN_PAGE_ROWS) -> Iterator[str]:
        """The items' ids in catalog order, paged as items() is (for callers that need ids only)."""
        select = "SELECT item_id, position FROM items"
        for rows in self._pages(select, ("position", "item_id"), "", (), limit, page_rows):
            yield from (r["item_id"] for r in rows)

    def item(self, item_id: str) -> ItemRow | None:
        """One stored item, or None when the store does not hold it."""
        rows = self._query("SELECT * FROM items WHERE item_id=?", (item_id,))
        return _item_row(rows[0]) if rows else None

    def count_items(self) -> int:
        """How many items the store holds."""
        return int(self._query("SELECT COUNT(*) AS n FROM items")[0]["n"])

    def _pages(
        self,
        select: str,
        key: tuple[str, ...],
        where: str,
        params: tuple[Any, ...],
        limit: int | None,
        page_rows: int,
    ) -> Iterator[list[sqlite3.Row]]:
        """Keyset pages of `select` (SELECT ... FROM ...) with the conditions `where` (params
        fill them), in the order of `key`, page_rows rows at a time, limit rows in all.

        `key` names columns that are unique together and selected; a page starts after the
        previous page's last key. Each page is one query fetched whole under the lock, so
        no cursor stays open while the caller works on it: a held cursor on this connection
        would meet again a row the caller re-stores (INSERT OR REPLACE gives it a new
        rowid), or miss one.
        """
        if page_rows < 1:
            raise ValueError(f"page_rows must be at least 1, not {page_rows}")
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be 0 or more, not {limit}")
        order = f" ORDER BY {', '.join(key)} LIMIT ?"
        after_key = f"({', '.join(key)}) > ({', '.join('?' * len(key))})"
        after: tuple[Any, ...] = ()
        left = limit
        while left is None or left > 0:
            size = page_rows if left is None else min(page_rows, left)
            conditions = [c for c in (where, after_key if after else "") if c]
            sql = select + (f" WHERE {' AND '.join(conditions)}" if conditions else "") + order
            rows = self._query(sql, (*params, *after, size))
            if rows:
                yield rows
            if len(rows) < size:
                return
            after = tuple(rows[-1][k] for k in key)
            if left is not None:
                left -= len(rows)

    def images(self, item_id: str) -> list[ImageRow]:
        """An item's images in catalog order."""
        return [
            ImageRow(
                item_id=r["item_id"],
                index=r["idx"],
                uri=r["uri"],
                sha256=r["sha256"],
                width=r["width"],
                height=r["height"],
                error=r["error"],
                file_stat=r["file_stat"],
            )
            for r in self._query("SELECT * FROM images WHERE item_id=? ORDER BY idx", (item_id,))
        ]

    # teacher requests (the cache)
    def cached_response(self, cache_key: str) -> dict[str, Any] | None:
        """A finished teacher answer under this key, or None if it must be asked."""
        rows = self._query(
            "SELECT response, usage FROM requests WHERE cache_key=? AND status='ok'", (cache_key,)
        )
        if not rows:
            return None
        return {"text": rows[0]["response"], "usage": _loads(rows[0]["usage"]) or {}}

    def record_answer(
        self,
        cache_key: str,
        teacher: str,
        model: str,
        item_id: str,
        image: int | None,
        text: str,
        usage: dict[str, Any],
        labels: dict[str, Any] | None = None,
        generation: int = 0,
        boxes: list[Box] | None = None,
    ) -> list[int]:
        """Store a teacher answer with what was parsed from it, atomically; returns box ids."""
        now = time.time()
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO requests VALUES (?, ?, ?, ?, ?, 'ok', ?, ?, NULL, ?)",
                (cache_key, teacher, model, item_id, image, text, _dumps(usage), now),
            )
            # One answer can serve several items (the same photo in two listings).
            conn.execute("INSERT OR IGNORE INTO results VALUES (?, ?)", (item_id, cache_key))
            if labels is not None:
                conn.execute(
                    "INSERT OR REPLACE INTO labels (item_id, teacher, generation, attributes, "
                    "cache_key, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (item_id, teacher, generation, _dumps(labels), cache_key, now),
                )
            ids = []
            if boxes is not None:
                conn.execute(
                    "DELETE FROM boxes WHERE item_id=? AND source=? AND (image=? OR ? IS NULL)",
                    (item_id, teacher, image, image),
                )
                for b in boxes:
                    cursor = conn.execute(
                        "INSERT INTO boxes (item_id, image, x1, y1, x2, y2, label, source, score, "
                        "cache_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            item_id,
                            b.image,
                            b.x1,
                            b.y1,
                            b.x2,
                            b.y2,
                            b.label,
                            teacher,
                            b.score,
                            cache_key,
                        ),
                    )
                    ids.append(int(cursor.lastrowid or 0))
            return ids

    def has_result(self, item_id: str, cache_key: str) -> bool:
        """Whether this item already holds what the answer under cache_key says."""
        rows = self._query(
            "SELECT 1 FROM results WHERE item_id=? AND cache_key=? LIMIT 1", (item_id, cache_key)
        )
        return bool(rows)

    def record_failure(
        self,
        cache_key: str,
        teacher: str,
        model: str,
        item_id: str,
        image: int | None,
        error: str,
        text: str | None = None,
    ) -> None:
        """Store a failed request so the next run asks it again (and the reason is kept)."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO requests VALUES (?, ?, ?, ?, ?, 'failed', ?, NULL, ?, ?)",
                (cache_key, teacher, model, item_id, image, text, error, time.time()),
            )

    def request_counts(self) -> dict[str, int]:
        """Number of requests per status."""
        rows = self._query("SELECT status, COUNT(*) AS n FROM requests GROUP BY status")
        return {r["status"]: r["n"] for r in rows}

    # labels and boxes
    def labels(self, item_id: str) -> dict[str, dict[str, Any]]:
        """Each teacher's newest attributes for an item."""
        rows = self._query(
            "SELECT teacher, attributes FROM labels WHERE item_id=? ORDER BY generation, id",
            (item_id,),
        )
        return {r["teacher"]: _loads(r["attributes"]) for r in rows}

    def final_attributes(self, item_id: str) -> dict[str, Any] | None:
        """The item's final attributes: the newest generation's label, or None."""
        rows = self._query(
            "SELECT attributes FROM labels WHERE item_id=? ORDER BY generation DESC, id DESC LIMIT 1",
            (item_id,),
        )
        return _loads(rows[0]["attributes"]) if rows else None

    def boxes(self, item_id: str) -> list[tuple[int, Box]]:
        """An item's boxes with their ids, in image order."""
        rows = self._query("SELECT * FROM boxes WHERE item_id=? ORDER BY image, id", (item_id,))
        return [
            (
                r["id"],
                Box(
                    image=r["image"],
                    x1=r["x1"],
                    y1=r["y1"],
                    x2=r["x2"],
                    y2=r["y2"],
                    label=r["label"] or "",
                    source=r["source"],
                    score=r["score"],
                ),
            )
            for r in rows
        ]

    def box_sources(self) -> list[str]:
        """The distinct sources of the run's boxes (teachers, fused), sorted.

        One index seek per source (boxes_source), not a read of every box.
        """
        sources: list[str] = []
        while True:
            if sources:
                rows = self._query(
                    "SELECT MIN(source) AS s FROM boxes WHERE source > ?", (sources[-1],)
                )
            else:
                rows = self._query("SELECT MIN(source) AS s FROM boxes")
            if rows[0]["s"] is None:
                return sources
            sources.append(rows[0]["s"])

    def set_boxes(self, item_id: str, source: str, boxes: list[Box]) -> None:
        """Replace an item's boxes of one source (e.g. the fused boxes) in one transaction."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM boxes WHERE item_id=? AND source=?", (item_id, source))
            conn.executemany(
                "INSERT INTO boxes (item_id, image, x1, y1, x2, y2, label, source, score, "
                "cache_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                [
                    (item_id, b.image, b.x1, b.y1, b.x2, b.y2, b.label, source, b.score)
                    for b in boxes
                ],
            )

    # crops
    def add_crop(self, crop: CropRow) -> None:
        """Record a crop file (ignored if this region already has a crop under this config)."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO crops (item_id, image, x1, y1, x2, y2, path, sha256, "
                "strategy, config_hash, box_ids, created_at, phash, duplicate_of) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    crop.item_id,
                    crop.image,
                    *crop.region,
                    crop.path,
                    crop.sha256,
                    crop.strategy,
                    crop.config_hash,
                    json.dumps(crop.box_ids),
                    time.time(),
                    crop.phash,
                    crop.duplicate_of,
                ),
            )

    def set_crop_duplicate(
        self,
        item_id: str,
        image: int,
        config_hash: str,
        duplicate_of: str | None,
        region: tuple[int, int, int, int] | None = None,
        phash: str | None = None,
    ) -> None:
        """Mark an item's crop(s) of one image and config as a duplicate (None: not one).

        region picks one crop when the image has several; phash, when given, is stored too.
        """
        sql = "UPDATE crops SET duplicate_of=?, phash=COALESCE(?, phash) "
        sql += "WHERE item_id=? AND image=? AND config_hash=?"
        params: tuple[Any, ...] = (duplicate_of, phash, item_id, image, config_hash)
        if region is not None:
            sql += " AND x1=? AND y1=? AND x2=? AND y2=?"
            params += tuple(region)
        with self.transaction() as conn:
            conn.execute(sql, params)

    def forget_crops(self, item_id: str) -> None:
        """Drop an item's crop rows and pHash marks (every config); the files stay on disk.

        For boxes that were replaced: crops cut from the old ones must not be used.
        """
        with self.transaction() as conn:
            conn.execute("DELETE FROM crops WHERE item_id=?", (item_id,))
            conn.execute("DELETE FROM image_phash WHERE item_id=?", (item_id,))

    def set_image_phashes(
        self, item_id: str, config_hash: str, phashes: dict[int, tuple[str | None, str | None]]
    ) -> None:
        """Record the pHash of an item's originals and which ones are duplicates, per config.

        phashes maps image index -> (phash, duplicate_of), duplicate_of as in CropRow.
        """
        with self.transaction() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO image_phash (item_id, idx, config_hash, phash, "
                "duplicate_of) VALUES (?, ?, ?, ?, ?)",
                [(item_id, idx, config_hash, ph, dup) for idx, (ph, dup) in phashes.items()],
            )

    def image_phashes(
        self, item_id: str, config_hash: str
    ) -> dict[int, tuple[str | None, str | None]]:
        """An item's originals under a crop config: image index -> (phash, duplicate_of)."""
        rows = self._query(
            "SELECT idx, phash, duplicate_of FROM image_phash WHERE item_id=? AND config_hash=? "
            "ORDER BY idx",
            (item_id, config_hash),
        )
        return {r["idx"]: (r["phash"], r["duplicate_of"]) for r in rows}

    def crops(self, item_id: str, config_hash: str | None = None) -> list[CropRow]:
        """An item's crops, all or for one crop config."""
        sql = "SELECT * FROM crops WHERE item_id=?"
        params: tuple[Any, ...] = (item_id,)
        if config_hash is not None:
            sql += " AND config_hash=?"
            params += (config_hash,)
        return [
            CropRow(
                item_id=r["item_id"],
                image=r["image"],
                region=(r["x1"], r["y1"], r["x2"], r["y2"]),
                path=r["path"],
                sha256=r["sha256"],
                strategy=r["strategy"],
                config_hash=r["config_hash"],
                box_ids=json.loads(r["box_ids"]),
                phash=r["phash"],
                duplicate_of=r["duplicate_of"],
            )
            for r in self._query(sql + " ORDER BY image, id", params)
        ]

    # Batch API jobs
    def add_batch(
        self, batch_id: str, teacher: str, input_file_id: str, requests: dict[str, list[str]]
    ) -> None:
        """Record a created batch and its requests ({cache key: item ids}) before waiting on it."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO batches VALUES (?, ?, ?, ?, 'open', ?, NULL)",
                (batch_id, teacher, input_file_id, json.dumps(requests), time.time()),
            )

    def open_batches(self, teacher: str) -> list[dict[str, Any]]:
        """A teacher's batches not collected yet (to resume after an interruption)."""
        rows = self._query(
            "SELECT batch_id, requests FROM batches WHERE teacher=? AND status='open' "
            "ORDER BY created_at",
            (teacher,),
        )
        return [{"batch_id": r["batch_id"], "requests": json.loads(r["requests"])} for r in rows]

    def close_batch(self, batch_id: str, status: str) -> None:
        """Mark a batch collected, with the status it ended in."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE batches SET status=?, closed_at=? WHERE batch_id=?",
                (f"collected:{status}", time.time(), batch_id),
            )

    # outcomes: one record per catalog row of a stage's latest run (predict's output lines)
    def set_outcomes(
        self, stage: str, rows: Iterable[tuple[str | None, dict[str, Any] | None]]
    ) -> None:
        """Replace a stage's outcomes with a new run's rows, in order: (item id, record or None).

        None marks a row the run has not finished yet; update_outcome fills it in. rows may
        be a generator: they are written as they come, in one transaction.
        """
        now = time.time()
        with self.transaction() as conn:
            conn.execute("DELETE FROM outcomes WHERE stage=?", (stage,))
            conn.executemany(
                "INSERT INTO outcomes (stage, position, item_id, record, updated_at) "
                "VALUES (?, ?, ?, ?, ?)",
                ((stage, i, item_id, _dumps(rec), now) for i, (item_id, rec) in enumerate(rows)),
            )

    def update_outcome(self, stage: str, item_id: str, record: dict[str, Any]) -> None:
        """Set the record of an item's (first) row in the stage's latest run."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE outcomes SET record=?, updated_at=? WHERE stage=? AND position=("
                "SELECT MIN(position) FROM outcomes WHERE stage=? AND item_id=?)",
                (_dumps(record), time.time(), stage, stage, item_id),
            )

    def outcomes(self, stage: str, page_rows: int = SCAN_PAGE_ROWS) -> Iterator[OutcomeRow]:
        """The stage's latest run, row by row in order, read page_rows at a time."""
        # repeated: an earlier row has the same id (a duplicate catalog row), found by the
        # outcomes_item index rather than by a set of every id seen.
        select = (
            "SELECT position, item_id, record, EXISTS (SELECT 1 FROM outcomes AS o WHERE "
            "o.stage = outcomes.stage AND o.item_id = outcomes.item_id AND o.position < "
            "outcomes.position) AS repeated FROM outcomes"
        )
        for rows in self._pages(select, ("position",), "stage=?", (stage,), None, page_rows):
            for r in rows:
                yield OutcomeRow(
                    r["position"], r["item_id"], _loads(r["record"]), bool(r["repeated"])
                )

    def count_outcomes(self, stage: str) -> int:
        """How many rows the stage's latest run has (0: the stage never ran here)."""
        rows = self._query("SELECT COUNT(*) AS n FROM outcomes WHERE stage=?", (stage,))
        return int(rows[0]["n"])

    def count_items_without_outcome(self, stage: str) -> int:
        """How many stored items no row of the stage's latest run names (earlier runs' items)."""
        rows = self._query(
            "SELECT COUNT(*) AS n FROM items WHERE NOT EXISTS (SELECT 1 FROM outcomes "
            "WHERE outcomes.stage=? AND outcomes.item_id = items.item_id)",
            (stage,),
        )
        return int(rows[0]["n"])

    # splits: the one train/validation/test split of the run's items (toolkit.dataset.splits
    # owns it)
    def recorded_splits(self) -> dict[str, str]:
        """item_id -> split as recorded in the run (empty when no split was recorded)."""
        rows = self._query("SELECT item_id, split FROM splits ORDER BY item_id")
        return {r["item_id"]: r["split"] for r in rows}

    def recorded_split(self, item_id: str) -> str | None:
        """The item's recorded split, or None when it has none."""
        rows = self._query("SELECT split FROM splits WHERE item_id=?", (item_id,))
        return rows[0]["split"] if rows else None

    def split_counts(self) -> dict[str, int]:
        """How many items each recorded split holds (empty when no split was recorded)."""
        rows = self._query("SELECT split, COUNT(*) AS n FROM splits GROUP BY split ORDER BY split")
        return {r["split"]: r["n"] for r in rows}

    def split_settings(self) -> dict[str, Any] | None:
        """The settings that made the recorded split, or None when none was recorded."""
        return _loads(self.get_meta(SPLIT_SETTINGS_KEY))

    def record_splits(
        self, splits: dict[str, str], settings: dict[str, Any], replace: bool = False
    ) -> None:
        """Record items' splits and the settings that made them, in one transaction.

        replace: forget the recorded split first (a re-split); else the given items are
        added and an item already recorded keeps its split.
        """
        now = time.time()
        with self.transaction() as conn:
            if replace:
                conn.execute("DELETE FROM splits")
            conn.executemany(
                "INSERT OR IGNORE INTO splits (item_id, split, created_at) VALUES (?, ?, ?)",
                [(item_id, split, now) for item_id, split in sorted(splits.items())],
            )
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                (SPLIT_SETTINGS_KEY, json.dumps(settings, sort_keys=True)),
            )

    # events
    def log_event(
        self,
        stage: str,
        message: str,
        level: str = "error",
        item_id: str | None = None,
        teacher: str | None = None,
        image: int | None = None,
        once: bool = False,
    ) -> None:
        """Record a problem or milestone of a stage (once: skip if already recorded as is)."""
        row = (stage, level, item_id, teacher, image, message)
        with self.transaction() as conn:
            if (
                once
                and conn.execute(
                    "SELECT 1 FROM events WHERE stage=? AND level=? AND item_id IS ? AND teacher IS ? "
                    "AND image IS ? AND message=? LIMIT 1",
                    row,
                ).fetchone()
            ):
                return
            conn.execute(
                "INSERT INTO events (ts, stage, level, item_id, teacher, image, message) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (time.time(), *row),
            )

    def errors(self, item_id: str | None = None, stage: str | None = None) -> list[dict[str, Any]]:
        """Recorded errors (the export shape: stage, teacher, image, message).

        A list: meant for one item or one stage; run_errors() and unstored_error_items()
        walk the whole run.
        """
        return self._events("error", item_id, stage)

    def open_errors(self, item_id: str | None = None) -> list[dict[str, Any]]:
        """Recorded errors a later answer has not settled (shaped as errors() are).

        A teacher's failed request for an item (and image) is settled once the same teacher
        answered it for that item and image afterwards (a re-run that worked).
        """
        return self._events("error", item_id, None, settled_excluded=True)

    def warnings(
        self, item_id: str | None = None, stage: str | None = None
    ) -> list[dict[str, Any]]:
        """Recorded warnings (a value guessed, clipped or dropped), shaped as errors() are."""
        return self._events("warning", item_id, stage)

    def run_errors(self, page_rows: int = SCAN_PAGE_ROWS) -> Iterator[dict[str, Any]]:
        """Recorded errors of no item (a catalog row without a usable id, a run-wide failure),
        oldest first, read page_rows at a time."""
        where = "item_id IS NULL AND level='error'"
        for rows in self._pages("SELECT * FROM events", ("id",), where, (), None, page_rows):
            yield from (_event(r) for r in rows)

    def unstored_error_items(
        self, limit: int | None = None, page_rows: int = SCAN_PAGE_ROWS
    ) -> Iterator[str]:
        """Ids of items the store holds errors of but not the item itself (refused by the
        catalog, or no photo could be used), in the order of their first error."""
        # Each item at its first error: the scan walks the events once, in id order.
        where = (
            "item_id IS NOT NULL AND level='error' "
            "AND NOT EXISTS (SELECT 1 FROM items WHERE items.item_id = events.item_id) "
            "AND NOT EXISTS (SELECT 1 FROM events AS e WHERE e.item_id = events.item_id "
            "AND e.level='error' AND e.id < events.id)"
        )
        select = "SELECT id, item_id FROM events"
        for rows in self._pages(select, ("id",), where, (), limit, page_rows):
            yield from (r["item_id"] for r in rows)

    def count_unstored_error_items(self) -> int:
        """How many items unstored_error_items() names."""
        # Grouped off events_item, in its order: no temporary table of the distinct ids.
        rows = self._query(
            "SELECT COUNT(*) AS n FROM (SELECT item_id FROM events WHERE item_id IS NOT NULL "
            "AND level='error' GROUP BY item_id) AS named WHERE NOT EXISTS "
            "(SELECT 1 FROM items WHERE items.item_id = named.item_id)"
        )
        return int(rows[0]["n"])

    def _events(
        self, level: str, item_id: str | None, stage: str | None, settled_excluded: bool = False
    ) -> list[dict[str, Any]]:
        sql = "SELECT * FROM events WHERE level=?"
        params: tuple[Any, ...] = (level,)
        if settled_excluded:
            sql += (
                " AND (teacher IS NULL OR NOT EXISTS (SELECT 1 FROM requests r JOIN results s"
                " ON s.cache_key = r.cache_key WHERE s.item_id = events.item_id"
                " AND r.teacher = events.teacher AND r.status = 'ok' AND r.image IS events.image"
                " AND r.created_at > events.ts))"
            )
        if item_id is not None:
            sql += " AND item_id=?"
            params += (item_id,)
        if stage is not None:
            sql += " AND stage=?"
            params += (stage,)
        return [_event(r) for r in self._query(sql + " ORDER BY id", params)]


def _event(r: sqlite3.Row) -> dict[str, Any]:
    """An events row as the export shapes it."""
    return {
        "stage": r["stage"],
        "item_id": r["item_id"],
        "teacher": r["teacher"],
        "image": r["image"],
        "message": r["message"],
    }


def _item_row(r: sqlite3.Row) -> ItemRow:
    return ItemRow(
        item_id=r["item_id"],
        title=r["title"],
        category=r["category"],
        text=r["text"],
        reference_attributes=_loads(r["reference_attributes"]),
        reference_boxes=_loads(r["reference_boxes"]) or [],
    )


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)
