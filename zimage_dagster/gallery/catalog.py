"""The gallery's index file: one SQLite database (standard library) in its cache folder.

It holds, per partition, what a grid filters and orders by (status, time, date, size, the
case-folded prompt and key) and the provenance record and ledger entry the page shows, plus, per
file read from the store, the file's stamp, so a later pass reads only what changed
(:mod:`zimage_dagster.gallery.indexer` fills it). Pages are SQL queries: a page of 48 reads 48
rows, whatever the store's size, and no listing of the store is held in memory. A page past a
cursor (:func:`~zimage_dagster.gallery.items.cursor_of`) is read from the grid's order at that
point; a search finds its rows through an FTS5 trigram index when SQLite has one.

The file is a cache: one made for another store root or by another version of this module, or
one SQLite cannot read, is deleted and built again.

>>> import tempfile, pathlib
>>> from zimage_dagster.engine.provenance import ImageRecord, to_provenance
>>> from zimage_dagster.gallery.items import Query
>>> catalog = Catalog(pathlib.Path(tempfile.mkdtemp()) / "index.sqlite", root="/store")
>>> hero = catalog.asset_id(("hero",))
>>> record = to_provenance(ImageRecord(seed=7, task_id="t1", prompt="A red fox"))
>>> _ = catalog.put_file("record", "/store/hero/fox.json", "1:2:3", 1, hero, "fox", record)
>>> catalog.refresh_items({(hero, "fox")}); catalog.commit()
>>> [(i.partition_key, i.status) for i in catalog.select(hero, Query(q="FOX")).items]
[('fox', 'stored')]
>>> catalog.close()
"""

from __future__ import annotations

import bisect
import contextlib
import json
import logging
import math
import os
import sqlite3
import threading
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from zimage_dagster.engine.ledger import LedgerEntry
from zimage_dagster.engine.provenance import ImageRecord, from_provenance, to_provenance
from zimage_dagster.gallery.items import (
    GalleryItem,
    Page,
    Query,
    cursor_of,
    item_of,
    parse_cursor,
)

__all__ = ["COUNT_CAP", "SCHEMA_VERSION", "TRIGRAM_MIN", "Catalog", "trigram_supported"]

log = logging.getLogger(__name__)

#: Bumped when the tables change: a file of another version is built again.
SCHEMA_VERSION = 3
#: A search (or a partition-key filter) counts its matches up to this many.
COUNT_CAP = 10_000
_CHUNK = 500  # SQL parameters per statement
#: The shortest word the trigram index finds (shorter ones are looked for in every prompt).
TRIGRAM_MIN = 3

# The search index: which rows hold each trigram of their prompt and key (``detail=none``: no
# positions; half the file and a third less time to build), kept in step with ``items`` by
# triggers. ``search`` is case-folded already (by Python, as the words are): case_sensitive 1
# compares those as they are. A word's trigrams all present does not make it a substring, so
# the rows found are checked with ``instr`` (the scan's own test): the meaning is the scan's.
_FTS_SCHEMA = """
CREATE VIRTUAL TABLE IF NOT EXISTS items_fts USING fts5(
    search, content='items', content_rowid='id', detail=none,
    tokenize='trigram case_sensitive 1');
CREATE TRIGGER IF NOT EXISTS items_fts_insert AFTER INSERT ON items BEGIN
    INSERT INTO items_fts (rowid, search) VALUES (new.id, new.search); END;
CREATE TRIGGER IF NOT EXISTS items_fts_delete AFTER DELETE ON items BEGIN
    INSERT INTO items_fts (items_fts, rowid, search) VALUES ('delete', old.id, old.search); END;
CREATE TRIGGER IF NOT EXISTS items_fts_update AFTER UPDATE OF search ON items BEGIN
    INSERT INTO items_fts (items_fts, rowid, search) VALUES ('delete', old.id, old.search);
    INSERT INTO items_fts (rowid, search) VALUES (new.id, new.search); END;
"""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS assets (id INTEGER PRIMARY KEY, name TEXT UNIQUE, parts TEXT);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY, asset_id INTEGER, key TEXT, status TEXT, time REAL, date TEXT,
    size TEXT, has_image INTEGER, search TEXT);
CREATE UNIQUE INDEX IF NOT EXISTS items_key ON items (asset_id, key);
CREATE INDEX IF NOT EXISTS items_newest ON items (asset_id, time DESC, key);
CREATE INDEX IF NOT EXISTS items_status ON items (asset_id, status);
CREATE INDEX IF NOT EXISTS items_size ON items (asset_id, size);
CREATE INDEX IF NOT EXISTS items_date ON items (asset_id, date);
CREATE TABLE IF NOT EXISTS facets (asset_id INTEGER PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS details (id INTEGER PRIMARY KEY, record TEXT, entry TEXT, failure TEXT);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, kind TEXT, asset_id INTEGER, key TEXT, stamp TEXT, gen INTEGER,
    body TEXT);
CREATE INDEX IF NOT EXISTS files_key ON files (asset_id, key);
CREATE INDEX IF NOT EXISTS files_gen ON files (gen);
"""


def trigram_supported() -> bool:
    """True when this Python's SQLite has FTS5 and its ``trigram`` tokenizer (SQLite 3.34+).

    >>> isinstance(trigram_supported(), bool)
    True
    """
    try:
        with contextlib.closing(sqlite3.connect(":memory:")) as conn:
            conn.execute(
                "CREATE VIRTUAL TABLE t USING fts5(x, tokenize='trigram case_sensitive 1')"
            )
    except sqlite3.Error:
        return False
    return True


def _match(words: Iterable[str]) -> str:
    """An FTS5 query: every trigram of every word (each quoted).

    >>> _match(["fox", "rust", "ox"])
    '"fox" AND "rus" AND "ust"'
    """
    grams = dict.fromkeys(w[i : i + 3] for w in words for i in range(len(w) - 2))
    return " AND ".join('"' + g.replace('"', '""') + '"' for g in grams)


def _record(body: str | None) -> ImageRecord | None:
    if not body:
        return None
    try:
        return from_provenance(json.loads(body))
    except (ValueError, TypeError, KeyError):
        return None


def _entry(body: str | None) -> LedgerEntry | None:
    if not body:
        return None
    try:
        return LedgerEntry.from_json(json.loads(body))
    except (ValueError, TypeError, KeyError):
        return None


def _casefold(value: object) -> str:
    return str(value).casefold()


def _chunks(values: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


class Catalog:
    """The index file at ``path`` for the store at ``root``.

    Writes go through one connection (the indexer's, one writer at a time: the caller holds
    :attr:`write_lock`); each reading thread has its own connection, and SQLite's write-ahead
    log lets them read while a pass writes. :attr:`version` moves at every commit.

    ``fts``: keep a trigram index of the prompts for searches (default: when SQLite has it,
    :func:`trigram_supported`); without it a search scans every prompt.
    """

    def __init__(self, path: Path, *, root: str, fts: bool | None = None) -> None:
        self.path = Path(path)
        self.root = root
        self.fts = trigram_supported() if fts is None else fts
        self.write_lock = threading.RLock()
        self.version = 0
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self.rebuilt = False
        self._writer = self._open_writer()

    # -- opening ---------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def _open_writer(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = self._connect()
            if self._usable(conn):
                return conn
            conn.close()
            log.info("gallery index %s: made for another store or version; building it again",
                     self.path)  # fmt: skip
        except sqlite3.DatabaseError as exc:
            log.warning("gallery index %s is unreadable (%s); building it again", self.path, exc)
        self._remove_files()
        self.rebuilt = True
        conn = self._connect()
        self._create(conn)
        return conn

    def _usable(self, conn: sqlite3.Connection) -> bool:
        """True when the file is ours (schema version, root); an empty file is made ours."""
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables:
            self._create(conn)
            return True
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version != SCHEMA_VERSION or "meta" not in tables:
            return False
        row = conn.execute("SELECT value FROM meta WHERE name='root'").fetchone()
        if row is None or row[0] != self.root:
            return False
        if ("items_fts" in tables) != self.fts:
            return False
        conn.execute("SELECT count(*) FROM assets").fetchone()  # a damaged page raises here
        return True

    def _create(self, conn: sqlite3.Connection) -> None:
        conn.executescript(_SCHEMA)
        if self.fts:
            conn.executescript(_FTS_SCHEMA)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('root', ?)", (self.root,))
        conn.commit()

    def _remove_files(self) -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(f"{self.path}{suffix}")

    def reset(self) -> None:
        """Delete the file and start an empty one (after a damaged page was met mid-way)."""
        with self.write_lock:
            self.close()
            self._remove_files()
            self.rebuilt = True
            self._writer = self._connect()
            self._create(self._writer)
            self.version += 1

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "owner", None) is not self._writer:
            conn = self._connect()
            conn.execute("PRAGMA query_only=1")
            conn.create_function("casefold", 1, _casefold, deterministic=True)
            self._local.conn, self._local.owner = conn, self._writer
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def close(self) -> None:
        """Close every connection (the file stays, for the next gallery process)."""
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for conn in [*readers, self._writer]:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    # -- writing (the caller holds write_lock) ------------------------------------------------

    def asset_id(self, parts: Sequence[str]) -> int:
        """The asset's row id (made on first sight)."""
        name = "/".join(parts)
        row = self._writer.execute("SELECT id FROM assets WHERE name=?", (name,)).fetchone()
        if row is not None:
            return int(row[0])
        cursor = self._writer.execute(
            "INSERT INTO assets (name, parts) VALUES (?, ?)", (name, json.dumps(list(parts)))
        )
        return int(cursor.lastrowid or 0)

    def stamps(self, paths: Sequence[str]) -> dict[str, str]:
        """The stamps recorded for ``paths`` (those known)."""
        out: dict[str, str] = {}
        for chunk in _chunks(paths):
            marks = ",".join("?" * len(chunk))
            out.update(
                self._writer.execute(
                    f"SELECT path, stamp FROM files WHERE path IN ({marks})", chunk
                )
            )
        return out

    def touch(self, paths: Iterable[str], gen: int) -> None:
        """Mark unchanged files as seen by pass ``gen``."""
        self._writer.executemany("UPDATE files SET gen=? WHERE path=?", ((gen, p) for p in paths))

    def put_file(
        self,
        kind: str,
        path: str,
        stamp: str,
        gen: int,
        asset_id: int,
        key: str,
        body: Mapping[str, Any] | None,
    ) -> set[tuple[int, str]]:
        """Record a file read by pass ``gen`` (``body``: its record or entry, ``None`` when it is
        not one); returns the partitions to refresh (its own, and the one it named before)."""
        before = self._writer.execute(
            "SELECT asset_id, key FROM files WHERE path=?", (path,)
        ).fetchone()
        self._writer.execute(
            "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?)",
            (path, kind, asset_id, key, stamp, gen, None if body is None else json.dumps(body)),
        )
        touched = {(asset_id, key)}
        if before is not None:
            touched.add((int(before[0]), str(before[1])))
        return touched

    def max_gen(self) -> int:
        """The latest pass recorded in the file (0 for a new one)."""
        return int(self._writer.execute("SELECT max(gen) FROM files").fetchone()[0] or 0)

    def sweep(self, gen: int) -> set[tuple[int, str]]:
        """Forget the files no pass has seen since ``gen`` began (removed from the store);
        returns their partitions, to refresh."""
        gone = {
            (int(a), str(k))
            for a, k in self._writer.execute("SELECT asset_id, key FROM files WHERE gen<?", (gen,))
        }
        self._writer.execute("DELETE FROM files WHERE gen<?", (gen,))
        return gone

    def refresh_items(self, pairs: Collection[tuple[int, str]]) -> None:
        """Recompute the partitions ``pairs`` from their files (removed when none is left)."""
        for asset_id, key in pairs:
            bodies = dict(
                self._writer.execute(
                    "SELECT kind, body FROM files WHERE asset_id=? AND key=? AND body IS NOT NULL",
                    (asset_id, key),
                )
            )
            record, entry = _record(bodies.get("record")), _entry(bodies.get("entry"))
            if record is None and entry is None:
                self._delete_item(asset_id, key)
                continue
            parts = self._parts(asset_id)
            item = item_of(parts, key, record, entry)
            self.put_item(
                asset_id,
                item,
                record_json=bodies.get("record") if record is not None else None,
                entry_json=bodies.get("entry") if entry is not None else None,
            )

    def put_item(
        self,
        asset_id: int,
        item: GalleryItem,
        *,
        record_json: str | None = None,
        entry_json: str | None = None,
    ) -> None:
        """Write one partition's row (``record_json``, ``entry_json``: its record and entry as
        read, when the caller has them: they are not made again from ``item``)."""
        row = self._writer.execute(
            "SELECT id FROM items WHERE asset_id=? AND key=?", (asset_id, item.partition_key)
        ).fetchone()
        values = (item.status, item.time, item.date, item.size, int(item.has_image),
                  item.search_text)  # fmt: skip
        if row is None:
            cursor = self._writer.execute(
                "INSERT INTO items (asset_id, key, status, time, date, size, has_image, search) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (asset_id, item.partition_key, *values),
            )
            item_id = int(cursor.lastrowid or 0)
        else:
            item_id = int(row[0])
            self._writer.execute(
                "UPDATE items SET status=?, time=?, date=?, size=?, has_image=?, search=? "
                "WHERE id=?",
                (*values, item_id),
            )
        record = record_json
        if record is None and item.record is not None:
            record = json.dumps(to_provenance(item.record))
        entry = entry_json
        if entry is None and item.entry is not None:
            entry = json.dumps(item.entry.to_json())
        failure = json.dumps(list(item.failure)) if item.failure else None
        self._writer.execute(
            "INSERT OR REPLACE INTO details VALUES (?, ?, ?, ?)", (item_id, record, entry, failure)
        )

    def put_rows(self, asset_id: int, rows: Sequence[tuple[Any, ...]]) -> None:
        """Write many partitions' rows at once: each ``(key, status, time, date, size,
        has_image, search, record JSON, entry JSON, failure JSON)`` (shard manifests)."""
        self._writer.executemany(
            "INSERT INTO items (asset_id, key, status, time, date, size, has_image, search) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (asset_id, key) DO UPDATE SET "
            "status=excluded.status, time=excluded.time, date=excluded.date, size=excluded.size, "
            "has_image=excluded.has_image, search=excluded.search",
            ((asset_id, *row[:7]) for row in rows),
        )
        self._writer.executemany(
            "INSERT OR REPLACE INTO details VALUES "
            "((SELECT id FROM items WHERE asset_id=? AND key=?), ?, ?, ?)",
            ((asset_id, row[0], *row[7:]) for row in rows),
        )

    def store_facets(self, asset_ids: Iterable[int]) -> None:
        """Compute and keep the assets' counts, sizes and dates (after a pass or a manifest):
        a grid page reads them in one row instead of a scan of the asset."""
        for asset_id in set(asset_ids):
            value = {
                "counts": self.counts(asset_id, self._writer),
                "sizes": self.sizes(asset_id, self._writer),
                "dates": self.dates(asset_id, self._writer),
            }
            self._writer.execute(
                "INSERT OR REPLACE INTO facets VALUES (?, ?)", (asset_id, json.dumps(value))
            )

    def facets(self, asset_id: int) -> dict[str, Any] | None:
        """The asset's counts, sizes and dates as last stored, or ``None``."""
        row = (
            self._reader()
            .execute("SELECT value FROM facets WHERE asset_id=?", (asset_id,))
            .fetchone()
        )
        return None if row is None else dict(json.loads(row[0]))

    def _delete_item(self, asset_id: int, key: str) -> None:
        row = self._writer.execute(
            "SELECT id FROM items WHERE asset_id=? AND key=?", (asset_id, key)
        ).fetchone()
        if row is not None:
            self._writer.execute("DELETE FROM items WHERE id=?", (row[0],))
            self._writer.execute("DELETE FROM details WHERE id=?", (row[0],))

    def _parts(self, asset_id: int) -> tuple[str, ...]:
        row = self._writer.execute("SELECT parts FROM assets WHERE id=?", (asset_id,)).fetchone()
        return tuple(json.loads(row[0]))

    def commit(self) -> None:
        self._writer.commit()
        self.version += 1

    # -- reading ------------------------------------------------------------------------------

    def assets(self) -> list[tuple[int, tuple[str, ...]]]:
        """The assets holding at least one partition, by name."""
        rows = self._reader().execute(
            "SELECT id, parts FROM assets WHERE EXISTS "
            "(SELECT 1 FROM items WHERE items.asset_id = assets.id) ORDER BY name"
        )
        return [(int(i), tuple(json.loads(p))) for i, p in rows]

    def partitions(self) -> int:
        """How many partitions the index holds."""
        return int(self._reader().execute("SELECT count(*) FROM items").fetchone()[0])

    def counts(self, asset_id: int, conn: sqlite3.Connection | None = None) -> dict[str, int]:
        rows = (conn or self._reader()).execute(
            "SELECT status, count(*) FROM items WHERE asset_id=? GROUP BY status", (asset_id,)
        )
        return {str(s): int(n) for s, n in rows}

    def sizes(self, asset_id: int, conn: sqlite3.Connection | None = None) -> list[str]:
        rows = (conn or self._reader()).execute(
            "SELECT size FROM items WHERE asset_id=? AND size != '' GROUP BY size "
            "ORDER BY count(*) DESC, size",
            (asset_id,),
        )
        return [str(r[0]) for r in rows]

    def dates(self, asset_id: int, conn: sqlite3.Connection | None = None) -> list[str]:
        rows = (conn or self._reader()).execute(
            "SELECT DISTINCT date FROM items WHERE asset_id=? AND date IS NOT NULL "
            "ORDER BY date DESC",
            (asset_id,),
        )
        return [str(r[0]) for r in rows]

    def _items(self, sql: str, args: Sequence[Any], hint: str = "") -> list[GalleryItem]:
        rows = (
            self._reader()
            .execute(
                "SELECT a.parts, i.key, i.status, i.search, d.record, d.entry, d.failure "
                f"FROM items i {hint} CROSS JOIN assets a ON a.id = i.asset_id "
                f"CROSS JOIN details d ON d.id = i.id {sql}",
                args,
            )
            .fetchall()
        )
        return [
            GalleryItem(
                asset=tuple(json.loads(parts)),
                partition_key=key,
                status=status,
                record=_record(record),
                entry=_entry(entry),
                search_text=search,
                failure=tuple(json.loads(failure)) if failure else None,
            )
            for parts, key, status, search, record, entry, failure in rows
        ]

    def get(self, asset_id: int, key: str) -> GalleryItem | None:
        found = self._items("WHERE i.asset_id=? AND i.key=?", (asset_id, key))
        return found[0] if found else None

    def latest(self, asset_id: int, count: int) -> list[GalleryItem]:
        """The newest stored images."""
        return self._items(
            "WHERE i.asset_id=? AND i.has_image=1 ORDER BY i.time DESC, i.key LIMIT ?",
            (asset_id, count),
        )

    def iterate(self, asset_id: int, order: str, batch: int = 1000) -> Iterator[GalleryItem]:
        """Every partition in ``order``, ``batch`` rows at a time (keyset pagination)."""
        last: tuple[Any, ...] | None = None
        while True:
            if order == "partition":
                where, args = ("AND i.key > ?", [last[1]]) if last else ("", [])
                sort = "i.key"
            else:
                where, args = (
                    ("AND i.time <= ? AND (i.time < ? OR i.key > ?)", [last[0], last[0], last[1]])
                    if last
                    else ("", [])
                )
                sort = "i.time DESC, i.key"
            found = self._items(
                f"WHERE i.asset_id=? {where} ORDER BY {sort} LIMIT ?", [asset_id, *args, batch]
            )
            yield from found
            if len(found) < batch:
                return
            last = (found[-1].time, found[-1].partition_key)

    @staticmethod
    def _where(
        asset_id: int, query: Query, keys: Collection[str] | None, exclude: bool
    ) -> tuple[str, list[Any]]:
        clauses: list[str] = ["i.asset_id=?"]
        args: list[Any] = [asset_id]
        for column in ("status", "date", "size"):
            value = getattr(query, column)
            if value:
                clauses.append(f"i.{column}=?")
                args.append(value)
        if query.partition:
            clauses.append("instr(casefold(i.key), ?) > 0")
            args.append(query.partition.casefold())
        for word in query.words:
            clauses.append("instr(i.search, ?) > 0")
            args.append(word)
        if keys is not None:
            clauses.append(
                f"i.key {'NOT IN' if exclude else 'IN'} (SELECT value FROM json_each(?))"
            )
            args.append(json.dumps(sorted(keys)))
        return " AND ".join(clauses), args

    def _search_ids(self, where: str, args: list[Any], words: Sequence[str]) -> list[Any] | None:
        """The matches' ``(id, time, key)`` up to the cap (one more: the count is capped), read
        through the trigram index when a word is long enough for it, or ``None`` (the caller
        scans)."""
        long = [w for w in words if len(w) >= TRIGRAM_MIN]
        if not (self.fts and long):
            return None
        return (
            self._reader()
            .execute(
                "SELECT i.id, i.time, i.key FROM items_fts f CROSS JOIN items i ON i.id = f.rowid "
                f"WHERE items_fts MATCH ? AND {where} LIMIT ?",
                [_match(long), *args, COUNT_CAP + 1],
            )
            .fetchall()
        )

    def select(
        self,
        asset_id: int,
        query: Query,
        keys: Collection[str] | None = None,
        *,
        exclude: bool = False,
        known_total: int | None = None,
    ) -> Page:
        """The page of ``query`` (``keys``: only those partitions, or with ``exclude`` all but
        those: the review filter). A search counts up to :data:`COUNT_CAP` matches: through the
        trigram index when one of its words has 3 characters or more (then every word is checked
        as a substring of those rows), else by a scan of every prompt; when it found fewer than
        that, its page comes from those matches (sorted here). A search matching more, and every
        other query, reads the grid's order: from ``query.after`` / ``before`` when given
        (keyset), else page by number (from whichever end is nearer). ``known_total``: the
        asset's partitions, when the query has no filter."""
        where, args = self._where(asset_id, query, keys, exclude)
        capped_count = bool(query.words or query.partition)
        partition_order = query.order == "partition"
        sort = "i.key" if partition_order else "i.time DESC, i.key"
        back = "i.key DESC" if partition_order else "i.time ASC, i.key DESC"
        matches: list[tuple[int, float, str]] | None = None
        if known_total is not None and not (capped_count or keys is not None or query.status
                                             or query.date or query.size):  # fmt: skip
            total = known_total
        elif capped_count:
            matches = self._search_ids(where, args, query.words)
            if matches is None:
                # One scan of the table in its own order: the matches' ids, up to the cap.
                matches = (
                    self._reader()
                    .execute(
                        f"SELECT i.id, i.time, i.key FROM items i NOT INDEXED WHERE {where} "
                        "LIMIT ?",
                        [*args, COUNT_CAP + 1],
                    )
                    .fetchall()
                )
            total = len(matches)
        else:
            total = int(
                self._reader().execute(f"SELECT count(*) FROM items i WHERE {where}", args)
                .fetchone()[0]
            )  # fmt: skip
        capped = capped_count and total > COUNT_CAP
        total = min(total, COUNT_CAP) if capped_count else total
        pages = max(1, math.ceil(total / query.per_page))
        page = max(1, query.page if capped else min(query.page, pages))
        start = (page - 1) * query.per_page
        per = query.per_page
        after, before = parse_cursor(query.after), parse_cursor(query.before)
        # ``more``: one row past the page was found (next page with ``after``, previous with
        # ``before``); a page by number knows its neighbours from the count.
        more = False
        if matches is not None and not capped:
            # Fewer than the cap: sort those matches here, and read the page's rows alone.
            def order(m: tuple[Any, ...]) -> tuple[Any, ...]:
                return (m[-1],) if partition_order else (-m[-2], m[-1])

            matches.sort(key=order)
            positions = [order(m) for m in matches]
            if after is not None:
                first = bisect.bisect_right(positions, order(after))
                chosen, more = matches[first : first + per], first + per < len(matches)
            elif before is not None:
                last = bisect.bisect_left(positions, order(before))
                chosen, more = matches[max(0, last - per) : last], last > per
            else:
                chosen = matches[start : start + per]
            ids = [m[0] for m in chosen]
            found = self._items(
                f"WHERE i.id IN (SELECT value FROM json_each(?)) ORDER BY {sort}",
                [json.dumps(ids)],
            ) if ids else []  # fmt: skip
        elif after is not None:
            found = self._items(
                f"WHERE {where} AND {self._past(partition_order)} ORDER BY {sort} LIMIT ?",
                [*args, *self._cursor_args(after, partition_order), per + 1],
            )
            found, more = found[:per], len(found) > per
        elif before is not None:
            found = self._items(
                f"WHERE {where} AND {self._short_of(partition_order)} ORDER BY {back} LIMIT ?",
                [*args, *self._cursor_args(before, partition_order), per + 1],
            )
            found, more = found[:per][::-1], len(found) > per
        elif total and not capped and start > total // 2:
            # Nearer the end: read the order backwards (the last page reads its own rows).
            end = min(start + per, total)
            found = self._items(
                f"WHERE {where} ORDER BY {back} LIMIT ? OFFSET ?", [*args, end - start, total - end]
            )[::-1]
        elif total:
            found = self._items(
                f"WHERE {where} ORDER BY {sort} LIMIT ? OFFSET ?", [*args, per, start]
            )
        else:
            found = []
        if after is not None:
            has_prev, has_next = True, more
        elif before is not None:
            has_prev, has_next = more, True
            if not more:
                page = 1  # nothing is left before it: this is the first page
        else:
            has_prev = page > 1
            has_next = len(found) == per if capped else page < pages
        if not found:
            has_next = False
        if capped or page >= pages or not has_next:
            pages = page + 1 if has_next else page
        return Page(
            found,
            total,
            page,
            pages,
            capped,
            after=cursor_of(found[-1]) if has_next else "",
            before=cursor_of(found[0]) if found and has_prev else "",
        )

    @staticmethod
    def _past(partition_order: bool) -> str:
        """Rows after a cursor in the grid's order."""
        return "i.key > ?" if partition_order else "i.time <= ? AND (i.time < ? OR i.key > ?)"

    @staticmethod
    def _short_of(partition_order: bool) -> str:
        """Rows before a cursor in the grid's order."""
        return "i.key < ?" if partition_order else "i.time >= ? AND (i.time > ? OR i.key < ?)"

    @staticmethod
    def _cursor_args(cursor: tuple[float, str], partition_order: bool) -> list[Any]:
        when, key = cursor
        return [key] if partition_order else [when, when, key]

    def neighbours(
        self,
        asset_id: int,
        key: str,
        query: Query,
        keys: Collection[str] | None = None,
        *,
        exclude: bool = False,
    ) -> tuple[GalleryItem | None, GalleryItem | None]:
        """The partitions before and after ``key`` in the query's order, among those its
        filters keep (``key`` itself need not match them)."""
        here = (
            self._reader()
            .execute("SELECT time FROM items WHERE asset_id=? AND key=?", (asset_id, key))
            .fetchone()
        )
        if here is None:
            return None, None
        where, args = self._where(asset_id, query, keys, exclude)
        if query.order == "partition":
            before = self._items(f"WHERE {where} AND i.key < ? ORDER BY i.key DESC LIMIT 1",
                                 [*args, key])  # fmt: skip
            after = self._items(f"WHERE {where} AND i.key > ? ORDER BY i.key LIMIT 1",
                                [*args, key])  # fmt: skip
        else:
            t = here[0]
            before = self._items(
                f"WHERE {where} AND i.time >= ? AND (i.time > ? OR i.key < ?) "
                "ORDER BY i.time ASC, i.key DESC LIMIT 1",
                [*args, t, t, key],
            )
            after = self._items(
                f"WHERE {where} AND i.time <= ? AND (i.time < ? OR i.key > ?) "
                "ORDER BY i.time DESC, i.key LIMIT 1",
                [*args, t, t, key],
            )
        return (before[0] if before else None), (after[0] if after else None)
