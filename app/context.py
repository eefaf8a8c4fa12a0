"""The archive context: the one owner of repository, storage and services that every door calls into.

Built once by app/bootstrap.py (for the FastAPI lifespan or the CLI) from Settings; the DIMSE server and the HTTP
routers receive the same object, so an instance stored through one door is visible through the other at once.
It lives above app/core because it names the configuration and the optional FHIR sync, which core must not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from app.config import Settings
from app.core.aes import AERegistry
from app.core.ingest.service import IngestService
from app.core.lifecycle.changefeed import ChangeFeed
from app.core.lifecycle.completion import CompletionTracker
from app.core.lifecycle.delete import LifecycleService
from app.core.lifecycle.events import EventBus
from app.core.lifecycle.webhooks import Webhooks
from app.core.ports import Repository
from app.core.retrieve.service import RetrieveService
from app.core.workflow.mpps import MppsService
from app.core.workflow.ups import UpsService
from app.core.workflow.worklist import WorklistService
from app.storage.base import Storage

if TYPE_CHECKING:
    from app.fhir.sync import FhirSync

log = logging.getLogger(__name__)


@dataclass
class ArchiveContext:
    settings: Settings
    repository: Repository
    storage: Storage
    ingest: IngestService
    retrieve: RetrieveService
    lifecycle: LifecycleService
    # Study lifecycle: events from ingest and deletion; the change feed; study completion (started by
    # `start_background`, which the server's lifespan calls, not the CLI commands).
    events: EventBus = field(default_factory=EventBus)
    change_feed: ChangeFeed | None = None
    completion: CompletionTracker | None = None
    fhir: FhirSync | None = None  # FHIR ImagingStudy sync, when FHIR_ENABLED
    webhooks: Webhooks | None = None  # change feed -> WEBHOOK_URLS
    # Remote AEs (C-MOVE destinations, SCU actions, Storage Commitment reports), kept in the repository.
    aes: AERegistry = field(init=False)
    # Workflow (app/core/workflow/): UPS workitems, the Modality Worklist read from them, and MPPS.
    ups: UpsService = field(init=False)
    worklist: WorklistService = field(init=False)
    mpps: MppsService = field(init=False)
    _sweeping: asyncio.Task[None] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.aes = AERegistry(self.repository)
        self.ups = UpsService(self.repository)
        self.worklist = WorklistService(self.ups)
        self.mpps = MppsService(self.repository, self.worklist, self.completion)

    async def start_background(self) -> None:
        """Start the long-running jobs of a serving archive (study completion; FHIR sync and webhooks when
        configured). Their state is in the repository, so one that was stopped picks up where it was."""
        # The header parsers start first and are waited for last: they import while the rest starts.
        parsers_ready = asyncio.ensure_future(self.ingest.parser.start())
        try:
            if self.completion is not None:
                self.completion.start()
            if self.fhir is not None:
                self.fhir.start()
            if self.webhooks is not None:
                await self.webhooks.start()
            if self.settings.startup_sweep:
                # Files a crash left without metadata take space until swept; the sweep runs beside the serving
                # archive (its grace period and the ingest locks keep stores in flight safe).
                self._sweeping = asyncio.get_running_loop().create_task(self._sweep_once())
        finally:
            await parsers_ready

    async def _sweep_once(self) -> None:
        from app.core.lifecycle.sweep import sweep

        try:
            report = await sweep(self.lifecycle)
        except Exception:
            log.exception("the start-up sweep failed; `python -m app sweep` can be run by hand")
            return
        if report.orphan_files or report.orphan_records:
            log.warning(
                "start-up sweep removed %d files without metadata and %d records without files",
                report.orphan_files,
                report.orphan_records,
            )

    async def stop_background(self) -> None:
        if self._sweeping is not None:
            self._sweeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeping
        if self.completion is not None:
            await self.completion.stop()
        if self.fhir is not None:
            await self.fhir.stop()
        if self.webhooks is not None:
            await self.webhooks.stop()

    async def close(self) -> None:
        await self.stop_background()
        await self.events.drain()
        if self.change_feed is not None:
            await self.change_feed.close()
        await self.repository.close()
        self.ingest.parser.close()


