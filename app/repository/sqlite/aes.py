"""The SQLite store's AEStore role: the registry of remote AEs (app/core/aes.py), one row per AE title."""

from __future__ import annotations

import sqlite3
import time

from app.core.aes import RemoteAE
from app.repository.sqlite.connection import SQLiteConnection


class SQLiteAEStore(SQLiteConnection):
    async def get_ae(self, ae_title: str) -> RemoteAE | None:
        def get(conn: sqlite3.Connection) -> RemoteAE | None:
            row = conn.execute(
                "SELECT ae_title, host, port, tls FROM remote_aes WHERE ae_title = ?", (ae_title,)
            ).fetchone()
            return None if row is None else _remote_ae(row)

        return await self._read(get)

    async def list_aes(self) -> list[RemoteAE]:
        def read(conn: sqlite3.Connection) -> list[RemoteAE]:
            rows = conn.execute("SELECT ae_title, host, port, tls FROM remote_aes ORDER BY ae_title")
            return [_remote_ae(row) for row in rows]

        return await self._read(read)

    async def put_ae(self, ae: RemoteAE) -> bool:
        def put(conn: sqlite3.Connection) -> bool:
            existed = conn.execute("SELECT 1 FROM remote_aes WHERE ae_title = ?", (ae.ae_title,)).fetchone()
            conn.execute(
                "INSERT INTO remote_aes (ae_title, host, port, tls, updated_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (ae_title) DO UPDATE SET host = excluded.host, port = excluded.port, "
                "tls = excluded.tls, updated_at = excluded.updated_at",
                (ae.ae_title, ae.host, ae.port, int(ae.tls), time.time()),
            )
            return existed is None

        return await self._write(put)

    async def delete_ae(self, ae_title: str) -> bool:
        def delete(conn: sqlite3.Connection) -> bool:
            return conn.execute("DELETE FROM remote_aes WHERE ae_title = ?", (ae_title,)).rowcount > 0

        return await self._write(delete)


def _remote_ae(row: sqlite3.Row) -> RemoteAE:
    return RemoteAE(str(row[0]), str(row[1]), int(row[2]), bool(row[3]))
