"""The SQLite store's study-lifecycle roles: the change feed, completion tracking, the outbox, the cursors and
the leases.

Each is a small table of its own (migrations/sqlite), written on the writer thread like everything else. The
completion role only reads and clears `study_activity`: the store itself marks a study pending, in the same
transaction as the instance (unit_of_work.py), so tracking costs no extra round trip and survives a restart.

Leases, and the claims on outbox entries and study completions, are kept in this process's memory: a SQLite
database is served by one process only (its lock file, app/repository/sqlite/exclusive.py), so there is no
other process to exclude, and the only way their holder dies, the process ending, ends them all as an expiry
would. Each check-and-set runs with no await inside, so it is atomic among this process's tasks.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

from app.core.lifecycle.feed import Change, NewChange, OutboxEntry, OutboxStatus, PendingStudy
from app.repository.sqlite.connection import SQLiteConnection


class SQLiteLeases(SQLiteConnection):
    async def acquire_lease(self, name: str, holder: str, now: float, until: float) -> bool:
        held = self._leases.get(name)
        if held is not None and held[0] != holder and held[1] > now:
            return False
        self._leases[name] = (holder, until)
        return True

    async def release_lease(self, name: str, holder: str) -> None:
        held = self._leases.get(name)
        if held is not None and held[0] == holder:
            del self._leases[name]

    def _claim(self, name: str, now: float, until: float) -> bool:
        """Claim `name` unless a claim on it lasts beyond `now` (a claim has no holder to renew it)."""
        held = self._leases.get(name)
        if held is not None and held[1] > now:
            return False
        self._leases[name] = ("", until)
        return True

    def _claimed(self, name: str, now: float) -> bool:
        held = self._leases.get(name)
        return held is not None and held[1] > now


class SQLiteChangeFeed(SQLiteConnection):
    async def append_changes(self, changes: Sequence[NewChange]) -> int:
        def append(conn: sqlite3.Connection) -> int:
            conn.executemany(
                "INSERT INTO changes (kind, study_instance_uid, series_instance_uid, sop_instance_uid, at) "
                "VALUES (?, ?, ?, ?, ?)",
                [(c.kind, c.study_instance_uid, c.series_instance_uid, c.sop_instance_uid, c.at) for c in changes],
            )
            return int(conn.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0])

        return await self._write(append)

    async def changes(self, since: int, limit: int, study: str | None = None) -> list[Change]:
        by_study = "" if study is None else "AND study_instance_uid = ? "
        sql = (
            "SELECT seq, kind, study_instance_uid, series_instance_uid, sop_instance_uid, at FROM changes "
            f"WHERE seq > ? {by_study}ORDER BY seq LIMIT ?"
        )
        args = (since, limit) if study is None else (since, study, limit)
        return await self._read(lambda conn: [Change(*row) for row in conn.execute(sql, args)])

    async def last_change_seq(self) -> int:
        return await self._read(
            lambda conn: int(conn.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0])
        )


class SQLiteCompletion(SQLiteLeases):
    async def pending_completions(self, quiet_before: float, limit: int) -> list[PendingStudy]:
        sql = (
            "SELECT study_instance_uid, activity_at FROM study_activity WHERE pending = 1 AND activity_at <= ? "
            "ORDER BY activity_at LIMIT ?"
        )
        return await self._read(
            lambda conn: [PendingStudy(*row) for row in conn.execute(sql, (quiet_before, limit))]
        )

    async def claim_completion(self, study_instance_uid: str, activity_at: float, now: float, until: float) -> bool:
        pending = await self.pending_completion(study_instance_uid)
        if pending is None or pending.activity_at != activity_at:
            return False
        return self._claim(_completion(study_instance_uid), now, until)

    async def mark_completed(self, study_instance_uid: str, activity_at: float) -> bool:
        self._leases.pop(_completion(study_instance_uid), None)

        def mark(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE study_activity SET pending = 0 WHERE study_instance_uid = ? AND activity_at = ? "
                "AND pending = 1",
                (study_instance_uid, activity_at),
            )
            return cursor.rowcount == 1

        return await self._write(mark)

    async def pending_completion(self, study_instance_uid: str) -> PendingStudy | None:
        sql = "SELECT study_instance_uid, activity_at FROM study_activity WHERE study_instance_uid = ? AND pending = 1"
        row = await self._read(lambda conn: conn.execute(sql, (study_instance_uid,)).fetchone())
        return None if row is None else PendingStudy(*row)


class SQLiteOutbox(SQLiteLeases):
    async def outbox_put(self, target: str, key: str, payload: str) -> None:
        now = time.time()
        await self._write(
            lambda conn: conn.execute(
                "INSERT INTO outbox (target, key, payload, version, attempts, next_attempt_at, last_error, "
                "created_at) VALUES (?, ?, ?, 1, 0, ?, NULL, ?) ON CONFLICT (target, key) DO UPDATE SET "
                "payload = excluded.payload, version = version + 1, attempts = 0, "
                "next_attempt_at = excluded.next_attempt_at",
                (target, key, payload, now, now),
            )
        )

    async def outbox_due(self, target: str, now: float, limit: int) -> list[OutboxEntry]:
        sql = (
            "SELECT target, key, payload, version, attempts, next_attempt_at, last_error, created_at FROM outbox "
            "WHERE target = ? AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?"
        )
        # Enough rows that the claimed ones, left out here, cannot shorten the answer below `limit`.
        rows = limit + len(self._leases)
        due = await self._read(lambda conn: [OutboxEntry(*row) for row in conn.execute(sql, (target, now, rows))])
        return [entry for entry in due if not self._claimed(_outbox(target, entry.key), now)][:limit]

    async def outbox_claim(self, target: str, key: str, version: int, now: float, until: float) -> bool:
        sql = "SELECT 1 FROM outbox WHERE target = ? AND key = ? AND version = ? AND next_attempt_at <= ?"
        found = await self._read(lambda conn: conn.execute(sql, (target, key, version, now)).fetchone())
        return found is not None and self._claim(_outbox(target, key), now, until)

    async def outbox_done(self, target: str, key: str, version: int) -> bool:
        self._leases.pop(_outbox(target, key), None)

        def done(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "DELETE FROM outbox WHERE target = ? AND key = ? AND version = ?", (target, key, version)
            )
            return cursor.rowcount == 1

        return await self._write(done)

    async def outbox_retry(self, target: str, key: str, version: int, next_attempt_at: float, error: str) -> None:
        self._leases.pop(_outbox(target, key), None)
        await self._write(
            lambda conn: conn.execute(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?, last_error = ? "
                "WHERE target = ? AND key = ? AND version = ?",
                (next_attempt_at, error, target, key, version),
            )
        )

    async def outbox_status(self, target: str) -> OutboxStatus:
        def read(conn: sqlite3.Connection) -> OutboxStatus:
            pending, failing, oldest = conn.execute(
                "SELECT count(*), coalesce(sum(attempts > 0), 0), min(created_at) FROM outbox WHERE target = ?",
                (target,),
            ).fetchone()
            row = conn.execute(
                "SELECT last_error FROM outbox WHERE target = ? AND last_error IS NOT NULL "
                "ORDER BY next_attempt_at DESC LIMIT 1",
                (target,),
            ).fetchone()
            return OutboxStatus(int(pending), int(failing), oldest, None if row is None else row[0])

        return await self._read(read)


class SQLiteCursors(SQLiteConnection):
    async def get_cursor(self, name: str) -> int | None:
        row = await self._read(
            lambda conn: conn.execute("SELECT value FROM cursors WHERE name = ?", (name,)).fetchone()
        )
        return None if row is None else int(row[0])

    async def set_cursor(self, name: str, value: int) -> None:
        await self._write(
            lambda conn: conn.execute(
                "INSERT INTO cursors (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, value),
            )
        )


def _outbox(target: str, key: str) -> str:
    return f"outbox:{target}:{key}"


def _completion(study_instance_uid: str) -> str:
    return f"completion:{study_instance_uid}"
