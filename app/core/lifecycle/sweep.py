"""The orphan sweep: make files and metadata agree again after a crash or a hand edit of the storage tree.

Ingest writes the file before the metadata, so a crash can leave a file that no metadata names (invisible to
every door, but taking space); metadata naming a missing file only comes from outside interference. The sweep
removes both kinds, each decision re-checked under the instance's ingest lock (held across the archive
processes sharing the repository, app/core/leases.py) so that a store or replace in flight is never mistaken for
an orphan. Files younger than `grace_seconds` are left alone too: they may belong to a store in flight in a
process that takes no such lock (the CLI beside a running server on SQLite).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from app.core.lifecycle.delete import LifecycleService

log = logging.getLogger(__name__)
PAGE = 1000


@dataclass
class SweepReport:
    orphan_files: int = 0
    orphan_records: int = 0


async def sweep(lifecycle: LifecycleService, *, grace_seconds: float = 60.0) -> SweepReport:
    repository, storage = lifecycle.repository, lifecycle.storage
    report = SweepReport()
    known: set[str] = set()
    after: str | None = None
    while page := await repository.page_instances(after, PAGE):
        for instance in page:
            if await asyncio.to_thread(storage.exists, instance.storage_key):
                known.add(instance.storage_key)
                continue
            removed = await lifecycle.delete_instance(
                instance.sop_instance_uid, only_if_key=instance.storage_key
            )
            if removed is not None:
                log.warning("metadata of %s named a missing file; removed", instance.sop_instance_uid)
                report.orphan_records += 1
        after = page[-1].sop_instance_uid
    cutoff = time.time() - grace_seconds
    for key, mtime in await asyncio.to_thread(lambda: list(storage.iter_keys())):
        if key in known or mtime > cutoff:
            continue
        sop_instance_uid = key.rsplit("/", 1)[-1].removesuffix(".dcm")
        async with lifecycle.ingest.locked(sop_instance_uid):
            held = await repository.get_instance(sop_instance_uid)
            if held is not None and held.storage_key == key:
                continue  # stored after the first pass looked
            await asyncio.to_thread(storage.delete, key)
        log.warning("file %s had no metadata; removed", key)
        report.orphan_files += 1
    return report
