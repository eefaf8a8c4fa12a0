"""The Connection part of the Repository contract (app/core/ports.py): open, migrations, ping, and an
unreachable server answered as RepositoryUnavailable in bounded time."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from app.core.ports import Repository, RepositoryUnavailable
from app.repository.mongo.repository import MongoRepository
from app.repository.sqlite.repository import SQLiteRepository
from tests.repository.conftest import Factory, stored, uid
from tests.servers import free_port


async def test_schema_version_is_at_least_one_and_open_is_idempotent(
    repository: Repository, instance_record: Factory
) -> None:
    record = instance_record(SOPInstanceUID=uid(1, 1, 1))
    await repository.store_instance(record)
    version = await repository.schema_version()

    await repository.open()
    await repository.open()

    assert version >= 1
    assert await repository.schema_version() == version
    assert await repository.get_instance(record.sop_instance_uid) == stored(record)
    await repository.ping()


async def test_a_mongo_repository_on_a_closed_port_is_unavailable_within_bounded_time(
    instance_record: Factory,
) -> None:
    repository = MongoRepository(
        f"mongodb://127.0.0.1:{free_port()}", "nowhere", server_selection_timeout_ms=300
    )
    started = time.monotonic()
    try:
        with pytest.raises(RepositoryUnavailable):
            await repository.ping()
        with pytest.raises(RepositoryUnavailable):
            await repository.open()
        with pytest.raises(RepositoryUnavailable):
            await repository.store_instance(instance_record())
        with pytest.raises(RepositoryUnavailable):
            await repository.find_instances(uid(1))
    finally:
        await repository.close()
    assert time.monotonic() - started < 10


async def test_a_mongo_migration_step_run_again_finds_the_indexes_it_drops_gone_and_goes_on(mongo_url: str) -> None:
    # As after a crash between a step's indexes and its version document, or two replicas starting at once.
    database = f"t_{uuid.uuid4().hex[:12]}"
    repository = MongoRepository(mongo_url, database)
    try:
        await repository.open()
        version = await repository.schema_version()
        await repository._migrations.delete_many({})
        await repository.open()
        assert await repository.schema_version() == version
    finally:
        await repository.close()


async def test_the_sqlite_store_commits_to_disk_before_a_store_is_acknowledged(tmp_path: Path) -> None:
    """synchronous=FULL in WAL mode: a committed row survives a power cut, as the instance's fsync'd file does, so
    the start-up sweep never takes an acknowledged instance's file for an orphan."""
    repository = SQLiteRepository(tmp_path / "index.sqlite3")
    await repository.open()
    try:
        modes = await repository._write(lambda conn: conn.execute("PRAGMA synchronous").fetchone()[0])
        journal = await repository._read(lambda conn: conn.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        await repository.close()
    assert modes == 2 and journal == "wal"  # 2 = FULL (sqlite.org/pragma.html#pragma_synchronous)
