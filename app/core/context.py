"""The archive context: the one owner of repository, storage and services that every door calls into.

Built once by the FastAPI lifespan (or the CLI) from Settings; the DIMSE server and the HTTP routers receive
the same object, so an instance stored through one door is visible through the other at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from app.config import Settings
from app.core.aes import AERegistry, parse_remote_aes
from app.core.changefeed import ChangeFeed
from app.core.completion import CompletionTracker
from app.core.events import Event, EventBus, InstanceDeleted, InstanceReplaced
from app.core.hooks import load_hook
from app.core.ingest import IngestService
from app.core.lifecycle import LifecycleService
from app.core.parsing import HeaderParser
from app.core.retrieve.service import RetrieveService
from app.core.retrieve.turns import RenderLimits
from app.core.rules import IngestRules
from app.core.webhooks import Webhooks
from app.repository.base import Repository
from app.storage.base import Storage, ping
from app.storage.filesystem import FileSystemStorage

if TYPE_CHECKING:
    from app.fhir.sync import FhirSync

log = logging.getLogger(__name__)


def open_repository(settings: Settings) -> Repository:
    """SQLite unless a MongoDB URL is configured (the embedded default needs nothing installed)."""
    if settings.mongo_url:
        from app.repository.mongo import MongoRepository

        return MongoRepository(settings.mongo_url, settings.mongo_database)
    from app.repository.sqlite import SQLiteRepository

    return SQLiteRepository(settings.sqlite_path)


def open_storage(settings: Settings) -> Storage:
    """The filesystem tree under STORAGE_ROOT, or an S3-compatible bucket (STORAGE_BACKEND=s3)."""
    if settings.storage_backend == "s3":
        from app.storage.s3 import S3Storage

        assert settings.s3_bucket  # checked by Settings
        secret = settings.s3_secret_access_key
        return S3Storage(
            settings.s3_bucket,
            prefix=settings.s3_prefix,
            staging=settings.data_dir / "staging",
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=secret.get_secret_value() if secret is not None else None,
        )
    return FileSystemStorage(settings.storage_path, fsync=settings.storage_fsync)


# How long start-up waits for the storage to answer (an S3 bucket that another container creates, as compose's
# minio-init does, may not exist yet when the archive starts).
STORAGE_WAIT_SECONDS = 60.0


async def wait_until_reachable(storage: Storage, seconds: float = STORAGE_WAIT_SECONDS) -> None:
    """Return once the storage answers (`app.storage.base.ping`, as /ready asks it); raise after `seconds`."""
    deadline = asyncio.get_running_loop().time() + seconds
    said = False
    while True:
        try:
            await asyncio.to_thread(ping, storage)
            if said:
                log.info("storage reachable")
            return
        except OSError as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise
            if not said:
                log.warning("waiting up to %.0f s for the storage: %s", seconds, exc)
                said = True
            await asyncio.sleep(1)


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
    _sweeping: asyncio.Task[None] | None = field(default=None, init=False, repr=False)

    @classmethod
    async def open(cls, settings: Settings) -> ArchiveContext:
        # Rules and hook first: a bad rules file stops start-up (RulesError, with the reason) before anything opens.
        rules = (
            IngestRules.load(settings.ingest_rules_file, settings.deidentify_uid_root)
            if settings.ingest_rules_file
            else None
        )
        hook = load_hook(settings.ingest_hook) if settings.ingest_hook else None
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        repository = open_repository(settings)
        await repository.open()
        storage = open_storage(settings)
        await wait_until_reachable(storage)
        cleared = storage.clear_staging()
        if cleared:
            log.info("removed %d staged files left by an interrupted store", cleared)
        events = EventBus()
        change_feed = ChangeFeed(repository)
        change_feed.attach(events)
        change_feed.start()
        ingest = IngestService(
            repository,
            storage,
            settings.duplicate_policy,
            events=events,
            rules=rules,
            hook=hook,
            # Rules and hooks need the pydicom Dataset in this process, so parsing then runs in threads.
            parser=HeaderParser(0 if rules is not None or hook is not None else settings.ingest_workers),
        )
        retrieve = RetrieveService(repository, storage, render_limits=RenderLimits.of(settings))
        lifecycle = LifecycleService(repository, storage, ingest)
        lifecycle.listeners.append(lambda _removed: retrieve.invalidate())

        async def forget_replaced(_event: Event) -> None:
            # A replace keeps the storage key (and may keep the size): parsed copies of the old file must go.
            retrieve.invalidate()

        events.subscribe(forget_replaced, InstanceReplaced)
        lifecycle.listeners.append(
            lambda removed: events.publish(
                InstanceDeleted(
                    removed.study_instance_uid,
                    series=removed.series_instance_uid,
                    sop=removed.sop_instance_uid,
                )
            )
        )
        context = cls(
            settings=settings,
            repository=repository,
            storage=storage,
            ingest=ingest,
            retrieve=retrieve,
            lifecycle=lifecycle,
            events=events,
            change_feed=change_feed,
            completion=CompletionTracker(repository, events, settings.study_quiet_seconds),
            fhir=_fhir_sync(settings, repository, events),
            webhooks=_webhooks(settings, repository, change_feed),
        )
        # The AEs configured in DIMSE_REMOTE_AES (validated by Settings), upserted over those stored.
        await context.aes.load(parse_remote_aes(settings.dimse_remote_aes))
        return context

    def __post_init__(self) -> None:
        self.aes = AERegistry(self.repository)

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
        from app.core.sweep import sweep

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


def _fhir_sync(settings: Settings, repository: Repository, events: EventBus) -> FhirSync | None:
    if not settings.fhir_enabled:
        return None
    from app.fhir.sync import FhirSync

    sync = FhirSync(repository, settings)
    sync.attach(events)
    return sync


def _webhooks(settings: Settings, repository: Repository, feed: ChangeFeed) -> Webhooks | None:
    if not settings.webhook_urls:
        return None
    hooks = Webhooks(
        repository, settings.webhook_urls, source=settings.ae_title, retry_seconds=settings.outbox_retry_seconds
    )
    hooks.attach(feed)
    return hooks
