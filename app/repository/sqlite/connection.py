"""The SQLite store's connection (the Connection role) and the threads every statement runs on.

SQLite blocks, so every statement runs off the event loop: writes on one dedicated thread with one connection
(SQLite allows one writer at a time anyway, and a single writer thread means no lock contention), reads on a
small pool of threads with a connection each (WAL lets readers run beside the writer). The other roles
(instances.py, search.py, feed.py, aes.py, workflow.py) build on this class and reach the database only through
`_write` (one transaction) and `_read`, so a locked or failing database is turned into RepositoryUnavailable in
one place.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import migrations
from app.core.ports import RepositoryUnavailable

T = TypeVar("T")


class SQLiteConnection:
    def __init__(self, path: Path, *, readers: int = 4) -> None:
        self.path = path
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        self._readers = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="sqlite-reader")
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        # Leases and claims (feed.py): name -> (holder, until), in memory, since one process serves the file.
        self._leases: dict[str, tuple[str, float]] = {}

    # -- connections -------------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk before the store it belongs to is acknowledged. NORMAL (WAL) saved an
            # fsync per commit but could lose the last commits on a power cut, and the start-up sweep then
            # removed the files of instances already acknowledged (a file no metadata names is an orphan,
            # app/core/lifecycle/sweep.py), fsync'd as they were. Measured (bench/ab.py): C-STORE 0.96 / 0.99
            # of NORMAL's rate with one / four associations, the group commit sharing the fsync.
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=OFF")
            conn.execute("PRAGMA cache_size=-65536")
            conn.execute("PRAGMA temp_store=MEMORY")
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._run(self._writer, fn, transaction=True)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._run(self._readers, fn, transaction=False)

    async def _run(
        self, pool: ThreadPoolExecutor, fn: Callable[[sqlite3.Connection], T], *, transaction: bool
    ) -> T:
        def call() -> T:
            conn = self._connect()
            if not transaction:
                return fn(conn)
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        try:
            return await asyncio.get_running_loop().run_in_executor(pool, call)
        except sqlite3.OperationalError as exc:
            # Locked, read-only, disk I/O error, disk full: the store cannot be used now, but may come back.
            raise RepositoryUnavailable(f"SQLite: {exc}") from exc

    # -- lifecycle ---------------------------------------------------------------------------------------
    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await self._run(self._writer, self._migrate, transaction=False)

    def _migrate(self, conn: sqlite3.Connection) -> int:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
            "applied_at REAL NOT NULL)"
        )
        applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        for version, name, sql in migrations.steps("sqlite"):
            if version in applied:
                continue
            # executescript commits on its own; the statements are idempotent (IF NOT EXISTS), so a crash
            # between them and the version row is repaired by running them again.
            conn.executescript(sql)
            conn.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", (version, name, time.time()))
        return self._version(conn)

    @staticmethod
    def _version(conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0])

    async def close(self) -> None:
        def close_all() -> None:
            with self._lock:
                for conn in self._connections:
                    conn.close()
                self._connections.clear()

        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        close_all()

    async def ping(self) -> None:
        await self._read(lambda conn: conn.execute("SELECT 1").fetchone())

    async def schema_version(self) -> int:
        return await self._read(self._version)
