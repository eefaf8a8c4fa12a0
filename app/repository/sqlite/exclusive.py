"""One serving process per SQLite database.

Two archive servers over one SQLite file would each run the background loops and hold per-instance locks only
among their own tasks (SQLite's leases and claims live in the serving process's memory, feed.py), so the second
one is refused at start-up: `serve` takes an exclusive lock on `index.sqlite3.lock` next to the database, held
until the process ends however it ends (the kernel drops a dead process's lock), and a second `serve` exits with
one line naming the first one's pid. Several processes need MongoDB (README "Scaling out"). The maintenance
commands (import, sweep, reindex, stats) do not take the lock: they run beside a server as before.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import TextIO

_held: list[TextIO] = []  # open for the process's life: closing the file would drop the lock


class DatabaseInUse(RuntimeError):
    """Another process serves this SQLite database."""


def hold(database: Path) -> None:
    """Take the database's lock for the rest of this process's life; DatabaseInUse if another process has it."""
    database.parent.mkdir(parents=True, exist_ok=True)
    handle = (database.parent / f"{database.name}.lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        raise DatabaseInUse(
            f"another archive process{f' (pid {holder})' if holder else ''} serves the SQLite database "
            f"{database}; SQLite is single-process: stop that one, or run several over MongoDB (README: Scaling out)"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _held.append(handle)
