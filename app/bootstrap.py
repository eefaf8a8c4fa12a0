"""The composition root: Settings in, the archive context out. The one place that picks the backends (SQLite or
MongoDB, filesystem or S3), builds the services on them and wires their events; the FastAPI lifespan (main.py)
and the CLI (cli.py) both open the archive here, and nothing in app/core knows which backends it runs on.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from app.config import Settings
from app.context import ArchiveContext
from app.core.aes import parse_remote_aes
from app.core.ingest.hooks import load_hook
from app.core.ingest.parsing import HeaderParser
from app.core.ingest.rules import IngestRules
from app.core.ingest.service import IngestService
from app.core.leases import Leases
from app.core.lifecycle.changefeed import ChangeFeed
from app.core.lifecycle.completion import CompletionTracker
from app.core.lifecycle.delete import LifecycleService
from app.core.lifecycle.events import Event, EventBus, InstanceDeleted, InstanceReplaced
from app.core.lifecycle.webhooks import Webhooks
from app.core.ports import Repository
from app.core.retrieve.service import RetrieveService
from app.core.retrieve.turns import RenderLimits
from app.storage.base import Storage, ping
from app.storage.filesystem import FileSystemStorage

if TYPE_CHECKING:
    from app.fhir.sync import FhirSync  # imported only when FHIR_ENABLED (fhir.resources is large)

log = logging.getLogger(__name__)


def open_repository(settings: Settings) -> Repository:
    """SQLite unless a MongoDB URL is configured (the embedded default needs nothing installed)."""
    if settings.mongo_url:
        from app.repository.mongo.repository import MongoRepository

        return MongoRepository(settings.mongo_url, settings.mongo_database)
    from app.repository.sqlite.repository import SQLiteRepository

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


def serve_alone(settings: Settings) -> str | None:
    """Before serving on SQLite: hold the database so that no other process serves it while this one lives
    (app/repository/sqlite/exclusive.py); why not, if another does. MongoDB takes any number of processes."""
    if settings.mongo_url:
        return None
    from app.repository.sqlite.exclusive import DatabaseInUse, hold

    try:
        hold(settings.sqlite_path)
    except DatabaseInUse as exc:
        return str(exc)
    return None


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


def render_limits(settings: Settings) -> RenderLimits:
    """MAX_RENDER_SIDE, RENDER_CONCURRENCY and RENDER_WAIT_SECONDS."""
    return RenderLimits(settings.max_render_side, settings.render_concurrency, settings.render_wait_seconds)


async def open_archive(settings: Settings) -> ArchiveContext:
    """Open the backends, build the services and return the context every door calls into."""
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
    # This process's leases and claims on work the archive processes sharing the repository must not repeat.
    leases = Leases(repository, settings.lease_seconds)
    events = EventBus()
    change_feed = ChangeFeed(repository)
    change_feed.attach(events)
    change_feed.start()
    ingest = IngestService(
        repository,
        storage,
        settings.duplicate_policy,
        leases=leases,
        events=events,
        rules=rules,
        hook=hook,
        # Rules and hooks need the pydicom Dataset in this process, so parsing then runs in threads.
        parser=HeaderParser(0 if rules is not None or hook is not None else settings.ingest_workers),
    )
    retrieve = RetrieveService(repository, storage, render_limits=render_limits(settings))
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
    context = ArchiveContext(
        settings=settings,
        repository=repository,
        storage=storage,
        ingest=ingest,
        retrieve=retrieve,
        lifecycle=lifecycle,
        events=events,
        change_feed=change_feed,
        completion=CompletionTracker(
            repository, events, settings.study_quiet_seconds, lease_seconds=settings.lease_seconds
        ),
        fhir=_fhir_sync(settings, repository, events),
        webhooks=_webhooks(settings, repository, change_feed, leases),
    )
    # The AEs configured in DIMSE_REMOTE_AES (validated by Settings), upserted over those stored.
    await context.aes.load(parse_remote_aes(settings.dimse_remote_aes))
    return context


def _fhir_sync(settings: Settings, repository: Repository, events: EventBus) -> FhirSync | None:
    if not settings.fhir_enabled:
        return None
    from app.fhir.sync import FhirSync

    sync = FhirSync(repository, settings)
    sync.attach(events)
    return sync


def _webhooks(settings: Settings, repository: Repository, feed: ChangeFeed, leases: Leases) -> Webhooks | None:
    if not settings.webhook_urls:
        return None
    hooks = Webhooks(
        repository,
        settings.webhook_urls,
        source=settings.ae_title,
        leases=leases,
        retry_seconds=settings.outbox_retry_seconds,
    )
    hooks.attach(feed)
    return hooks
