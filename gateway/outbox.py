"""The durable outbox: every message goes to SQLite before the broker sees it.

One SQLite file in ``gateway.state_dir`` (WAL, ``synchronous=FULL``) holds

* ``outbox``: messages not yet acknowledged by the broker (PUBACK), in the
  order they were written. Alerts and events are rows of their own and are
  never dropped; ``state`` and ``info`` messages are *coalesced*: a newer
  message for the same topic replaces the older row, so only the newest per
  topic is kept.
* ``engine``: the alert engine's state (active alerts, their ids, severities
  and acknowledgements), written in the same transaction as the messages it
  produced, so after a crash (even ``kill -9``) the two agree.
* ``discovery``: the retained topics announced to Home Assistant (see
  ``gateway.homeassistant``), written with the messages that announce or
  clear them, so a restart knows what to clear.

The outbox is bounded in bytes: past ``max_bytes`` the oldest coalesced rows
go first; alerts and events are kept even then, and ``over_limit`` says so
(the daemon logs it loudly and reports it in ``info``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    retain INTEGER NOT NULL,
    coalesce_key TEXT UNIQUE  -- NULL: durable (alert, event); else the topic
);
CREATE TABLE IF NOT EXISTS engine (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    snapshot TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS discovery (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    record TEXT NOT NULL
);
"""
# The tables of one row (id 1) and their text column.
_SINGLE_ROW_TABLES = {"engine": "snapshot", "discovery": "record"}


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message to publish. ``coalesce``: only the newest per topic matters."""

    topic: str
    payload: bytes
    retain: bool
    coalesce: bool = False


@dataclass(frozen=True, slots=True)
class Stored:
    row_id: int
    topic: str
    payload: bytes
    retain: bool


class Outbox:
    def __init__(self, path: Path, max_bytes: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_bytes = max_bytes
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self.rows = self.bytes = 0
        self._recount()
        self.over_limit = False
        self.coalesced_dropped = 0

    def close(self) -> None:
        self._db.close()

    def load_engine_snapshot(self) -> str | None:
        return self._load_single("engine")

    def load_discovery_record(self) -> str | None:
        return self._load_single("discovery")

    def _load_single(self, table: str) -> str | None:
        column = _SINGLE_ROW_TABLES[table]
        row = self._db.execute(f"SELECT {column} FROM {table} WHERE id = 1").fetchone()
        return None if row is None else str(row[0])

    def _store_single(self, table: str, text: str) -> None:
        column = _SINGLE_ROW_TABLES[table]
        self._db.execute(f"INSERT OR REPLACE INTO {table} (id, {column}) VALUES (1, ?)", (text,))

    def write(
        self,
        messages: Sequence[Outgoing],
        engine_snapshot: str | None = None,
        discovery_record: str | None = None,
    ) -> None:
        """Store messages (and the engine state and discovery record that go with
        them) atomically.

        Raises ``sqlite3.Error`` (e.g. disk full); then nothing was stored.
        """
        if not messages and engine_snapshot is None and discovery_record is None:
            return
        db = self._db
        with self._transaction():
            for m in messages:
                key = m.topic if m.coalesce else None
                if key is not None:
                    self._delete_coalesced(key)
                db.execute(
                    "INSERT INTO outbox (topic, payload, retain, coalesce_key) VALUES (?, ?, ?, ?)",
                    (m.topic, m.payload, int(m.retain), key),
                )
                self.rows += 1
                self.bytes += len(m.payload)
            if engine_snapshot is not None:
                self._store_single("engine", engine_snapshot)
            if discovery_record is not None:
                self._store_single("discovery", discovery_record)
            self._enforce_limit()

    def pending(self, limit: int, after_id: int = 0) -> list[Stored]:
        """Up to ``limit`` stored messages with ids above ``after_id``, oldest first."""
        cursor = self._db.execute(
            "SELECT id, topic, payload, retain FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        )
        return [Stored(r[0], r[1], bytes(r[2]), bool(r[3])) for r in cursor]

    def delete(self, row_ids: Iterable[int]) -> None:
        """Forget messages the broker acknowledged (a missing id is fine)."""
        ids = list(row_ids)
        if not ids:
            return
        with self._transaction():
            for row_id in ids:
                self._forget("DELETE FROM outbox WHERE id = ? RETURNING LENGTH(payload)", row_id)
        if self.bytes <= self.max_bytes:
            self.over_limit = False

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """All or nothing; on failure the counters are read back from the file."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:  # SQLITE_FULL and friends roll back by themselves
                self._db.execute("ROLLBACK")
            self._recount()
            raise

    def _delete_coalesced(self, key: str) -> None:
        self._forget("DELETE FROM outbox WHERE coalesce_key = ? RETURNING LENGTH(payload)", key)

    def _forget(self, delete_returning_size: str, arg: int | str) -> None:
        for (size,) in self._db.execute(delete_returning_size, (arg,)).fetchall():
            self.rows -= 1
            self.bytes -= size

    def _recount(self) -> None:
        row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox")
        self.rows, self.bytes = row.fetchone()

    def _enforce_limit(self) -> None:
        if self.bytes <= self.max_bytes:
            self.over_limit = False
            return
        # Oldest coalesced rows (state, info) go first; alerts and events stay.
        for row_id, size in self._db.execute(
            "SELECT id, LENGTH(payload) FROM outbox WHERE coalesce_key IS NOT NULL ORDER BY id"
        ).fetchall():
            if self.bytes <= self.max_bytes:
                break
            self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
            self.bytes -= size
            self.rows -= 1
            self.coalesced_dropped += 1
        self.over_limit = self.bytes > self.max_bytes
