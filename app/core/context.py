"""The archive context: the one owner of repository, storage and services that every door calls into.

Built once by the FastAPI lifespan (or the CLI) from Settings; the DIMSE server and the HTTP routers receive
the same object, so an instance stored through one door is visible through the other at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from app.config import Settings
from app.core.ingest import IngestService
from app.core.retrieve import RetrieveService
from app.repository.base import Repository
from app.storage.base import Storage
from app.storage.filesystem import FileSystemStorage

log = logging.getLogger(__name__)


def open_repository(settings: Settings) -> Repository:
    """SQLite unless a MongoDB URL is configured (the embedded default needs nothing installed)."""
    if settings.mongo_url:
        from app.repository.mongo import MongoRepository

        return MongoRepository(settings.mongo_url, settings.mongo_database)
    from app.repository.sqlite import SQLiteRepository

    return SQLiteRepository(settings.sqlite_path)


def open_storage(settings: Settings) -> Storage:
    return FileSystemStorage(settings.storage_path, fsync=settings.storage_fsync)


@dataclass
class ArchiveContext:
    settings: Settings
    repository: Repository
    storage: Storage
    ingest: IngestService
    retrieve: RetrieveService

    @classmethod
    async def open(cls, settings: Settings) -> ArchiveContext:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        repository = open_repository(settings)
        await repository.open()
        storage = open_storage(settings)
        cleared = storage.clear_staging()
        if cleared:
            log.info("removed %d staged files left by an interrupted store", cleared)
        return cls(
            settings=settings,
            repository=repository,
            storage=storage,
            ingest=IngestService(repository, storage, settings.duplicate_policy),
            retrieve=RetrieveService(repository, storage),
        )

    async def close(self) -> None:
        await self.repository.close()
