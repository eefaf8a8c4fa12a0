"""Deleting studies, series and instances: the one delete path for every door (DICOMweb DELETE, admin API).

Order of work, so that no door ever sees metadata naming a missing file:
1. the instance's metadata is removed in one repository transaction, which corrects every aggregate
   (NumberOfStudyRelatedInstances, ModalitiesInStudy, patient counts...);
2. only then is the file deleted. A crash between the two leaves a file that no metadata names: invisible to
   every door, and removed by the orphan sweep (app/core/lifecycle/sweep.py).
Each instance is deleted under the ingest service's per-SOP-Instance-UID lock (an asyncio lock, then a lease in
the repository, so across every archive process sharing it), so a store of the same instance arriving at the
same moment happens wholly before or wholly after the delete, never in between (which could otherwise leave the
new metadata naming a file the delete then removes).

Protocol-neutral: the doors turn `NothingToDelete` into 404 and the report into their own answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from app.core.ingest.service import IngestService
from app.core.ports import InstanceIndex
from app.core.records import StoredInstance
from app.storage.base import Storage, StorageError

log = logging.getLogger(__name__)


class NothingToDelete(LookupError):
    """The study, series or instance named is not held."""


@dataclass
class DeleteReport:
    """What a delete removed: instance count, bytes freed and the removed instances themselves."""

    instances: list[StoredInstance] = field(default_factory=list)
    bytes: int = 0
    files_not_removed: int = 0  # metadata gone, file left for the sweep (storage error)

    @property
    def count(self) -> int:
        return len(self.instances)


DeleteListener = Callable[[StoredInstance], None]


class LifecycleService:
    def __init__(self, repository: InstanceIndex, storage: Storage, ingest: IngestService) -> None:
        self.repository = repository
        self.storage = storage
        self.ingest = ingest
        self.listeners: list[DeleteListener] = []
        """Called once per deleted instance, after its metadata is gone (metrics, caches, change feeds)."""

    async def delete(
        self, study: str, series: str | None = None, instance: str | None = None
    ) -> DeleteReport:
        """Delete a study, a series of it, or one instance of that series; `NothingToDelete` if none is held."""
        found = await self.repository.find_instances(study, series, instance)
        if not found:
            what = "/".join(uid for uid in (study, series, instance) if uid)
            raise NothingToDelete(f"no instance held under {what}")
        report = DeleteReport()
        for ref in found:
            removed = await self.delete_instance(ref.sop_instance_uid, report)
            if removed is not None:
                report.instances.append(removed)
                report.bytes += removed.size
        if not report.instances:
            raise NothingToDelete("the instances were deleted meanwhile")
        return report

    async def delete_instance(
        self, sop_instance_uid: str, report: DeleteReport | None = None, *, only_if_key: str | None = None
    ) -> StoredInstance | None:
        """Delete one instance; with `only_if_key`, only while its record still names that file (the sweep
        uses this so that an instance replaced meanwhile, at another key, is never taken for an orphan)."""
        # The ingest lock serialises this with any store of the same SOP Instance UID (see the module doc).
        async with self.ingest.locked(sop_instance_uid):
            if only_if_key is not None:
                held = await self.repository.get_instance(sop_instance_uid)
                if held is None or held.storage_key != only_if_key:
                    return None
            removed = await self.repository.delete_instance(sop_instance_uid)
            if removed is None:
                return None
            try:
                await asyncio.to_thread(self.storage.delete, removed.storage_key)
            except (OSError, StorageError) as exc:
                # The metadata is gone, so nothing names the file: the sweep removes it later.
                log.warning(
                    "metadata of %s deleted but not its file %s: %s",
                    sop_instance_uid,
                    removed.storage_key,
                    exc,
                )
                if report is not None:
                    report.files_not_removed += 1
        for listener in self.listeners:
            try:
                listener(removed)
            except Exception:  # a listener's fault must not turn a done delete into an error
                log.exception("delete listener failed for %s", sop_instance_uid)
        return removed
