"""Maintenance work shared by the admin API and the CLI: statistics, re-index from files, migration status.

Re-index rebuilds the metadata repository from the storage tree alone: every stored file is read up to its
pixel data with the same `parse_instance` ingest uses, so the rebuilt repository holds exactly the
facts a fresh ingest of the same files would have produced (and QIDO-RS/C-FIND answers are the same).
It is the way back from a lost or corrupted index, and the way to re-extract after the indexed attributes change.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import migrations
from app.core.ingest.header import HeaderError
from app.core.ingest.parsing import ParseFailure, parse_instance
from app.core.ingest.service import IngestService
from app.core.ports import Connection, InstanceIndex
from app.core.records import InstanceRecord
from app.storage.base import Storage

log = logging.getLogger(__name__)
PAGE = 1000
REINDEX_BATCH = 16


@dataclass
class Statistics:
    studies: int = 0
    series: int = 0
    instances: int = 0
    bytes: int = 0  # sum of the stored file sizes the metadata records
    files: int = 0  # files found in the storage tree (differs from `instances` only when the sweep has work)

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


async def statistics(repository: InstanceIndex, storage: Storage) -> Statistics:
    """Counts and sizes, from one pass over the instances (paged) and one listing of the storage."""
    stats = Statistics()
    studies: set[str] = set()
    series: set[str] = set()
    after: str | None = None
    while page := await repository.page_instances(after, PAGE):
        for ref in page:
            studies.add(ref.study_instance_uid)
            series.add(ref.series_instance_uid)
            stats.bytes += ref.size
        stats.instances += len(page)
        after = page[-1].sop_instance_uid
    stats.studies, stats.series = len(studies), len(series)
    stats.files = await asyncio.to_thread(lambda: sum(1 for _ in storage.iter_keys()))
    return stats


@dataclass
class ReindexReport:
    indexed: int = 0
    failed: list[str] = field(default_factory=list)  # storage keys that could not be indexed, with the reason

    def as_dict(self) -> dict[str, Any]:
        return {"indexed": self.indexed, "failed": self.failed}


def _record_of(storage: Storage, key: str) -> InstanceRecord:
    """Blocking: read the header of the file at `key` and build its record (worker thread)."""
    with storage.open(key) as stream:
        # As ingest parses, the same record; but a file held is indexed even where ingest would now refuse it.
        parsed = parse_instance(stream, held=True)
    if isinstance(parsed, ParseFailure):
        raise HeaderError(parsed.message)
    record = parsed.record
    # The record names the file where it is, and its size as stored.
    record.storage_key = key
    record.size = storage.size(key)
    return record


async def reindex(repository: InstanceIndex, storage: Storage, ingest: IngestService) -> ReindexReport:
    """Index every file of the storage tree into `repository` (insert or replace, per SOP Instance UID).

    Files whose header cannot be read, or whose UIDs are invalid, are reported and left alone. Each write takes
    ingest's per-instance lock, so re-indexing a live archive cannot interleave with a store of the same
    instance.
    """
    report = ReindexReport()
    # Oldest file first: where instances disagree on a patient's or study's attributes the last one stored
    # wins, in ingest as here, so replaying the stores in their original order rebuilds the same answers.
    found = await asyncio.to_thread(lambda: sorted(storage.iter_keys(), key=lambda item: (item[1], item[0])))
    keys = [key for key, _ in found]
    for start in range(0, len(keys), REINDEX_BATCH):
        batch = keys[start : start + REINDEX_BATCH]
        # Headers are read in parallel worker threads; the writes follow in order.
        results = await asyncio.gather(
            *(asyncio.to_thread(_record_of, storage, key) for key in batch), return_exceptions=True
        )
        for key, result in zip(batch, results, strict=True):
            if isinstance(result, Exception):
                # One damaged file is reported and left alone; it does not end the re-index of the others.
                report.failed.append(f"{key}: {type(result).__name__}: {result}")
                continue
            if isinstance(result, BaseException):
                raise result
            async with ingest.locked(result.sop_instance_uid):
                # A delete (or a replace that moved the instance) may have come first: never index a file
                # that is no longer there.
                if not await asyncio.to_thread(storage.exists, key):
                    continue
                await repository.store_instance(result)
            report.indexed += 1
    report.failed.sort()
    if report.failed:
        log.warning("re-index: %d file(s) could not be indexed", len(report.failed))
    return report


async def migration_status(repository: Connection) -> dict[str, Any]:
    """The applied schema version, the latest shipped one and the steps still pending.

    Pending steps are applied at start-up (and by `python -m app migrate`); a non-empty `pending` on a running
    server means its code is older than the migrations folder, or the start-up migration failed.
    """
    backend = "mongo" if type(repository).__name__.lower().startswith("mongo") else "sqlite"
    shipped = migrations.steps(backend)
    version = await repository.schema_version()
    pending = [step.name for step in shipped if step.version > version]
    latest = shipped[-1].version if shipped else 0
    return {"backend": backend, "schema_version": version, "latest": latest, "pending": pending}
