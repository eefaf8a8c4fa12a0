"""The embedded SQLite repository, the default when no MongoDB is configured (as Orthanc does).

One class per role of app/core/ports.py, each in its own module over the shared connection (connection.py:
the writer thread, the reader pool, migrations); this class is all of them, as `Repository` is. Kept as
composition only, so each role's code is read in one place.
"""

from __future__ import annotations

from app.repository.sqlite.aes import SQLiteAEStore
from app.repository.sqlite.feed import (
    SQLiteChangeFeed,
    SQLiteCompletion,
    SQLiteCursors,
    SQLiteLeases,
    SQLiteOutbox,
)
from app.repository.sqlite.instances import SQLiteInstanceIndex
from app.repository.sqlite.search import SQLiteSearch
from app.repository.sqlite.workflow import SQLitePerformedSteps, SQLiteSubscriptions, SQLiteWorkitems


class SQLiteRepository(
    SQLiteInstanceIndex,
    SQLiteSearch,
    SQLiteChangeFeed,
    SQLiteCompletion,
    SQLiteOutbox,
    SQLiteCursors,
    SQLiteLeases,
    SQLiteAEStore,
    SQLiteWorkitems,
    SQLitePerformedSteps,
    SQLiteSubscriptions,
):
    """Every role of the metadata store on one SQLite file: `SQLiteRepository(path, readers=4)`."""
