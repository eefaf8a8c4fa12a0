"""Study lifecycle: events, the change feed, study completion, the outbox; over both repositories and over
the real HTTP door."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from pydicom.uid import generate_uid

from app.bootstrap import open_archive
from app.config import Settings
from app.core.lifecycle.changefeed import ChangeFeed
from app.core.lifecycle.completion import CompletionTracker
from app.core.lifecycle.events import (
    ChangeKind,
    Event,
    EventBus,
    InstanceDeleted,
    InstanceStored,
    StudyCompleted,
)
from app.core.lifecycle.feed import NewChange
from app.core.ports import Repository
from app.core.records import InstanceRecord
from tests import dicom_files
from tests.servers import running_archive

MULTIPART = 'multipart/related; type="application/dicom"; boundary=dicom-boundary'


def change(kind: ChangeKind, study: str, sop: str | None = None, at: float = 1.0) -> NewChange:
    return NewChange(str(kind), study, "1.2.3" if sop else None, sop, at)


# --------------------------------------------------------------------------- repository contract


async def test_the_change_feed_is_ordered_and_paged(repository: Repository) -> None:
    assert await repository.last_change_seq() == 0
    assert await repository.changes(0, 10) == []
    last = await repository.append_changes(
        [change(ChangeKind.INSTANCE_CREATED, "1.1", f"1.1.{i}") for i in range(5)]
    )
    assert last == 5
    last = await repository.append_changes([change(ChangeKind.STUDY_COMPLETED, "1.1")])
    assert last == 6 == await repository.last_change_seq()
    first_page = await repository.changes(0, 4)
    assert [c.seq for c in first_page] == [1, 2, 3, 4]
    assert first_page[0].sop_instance_uid == "1.1.0" and first_page[0].kind == "instance.created"
    rest = await repository.changes(4, 100)
    assert [c.seq for c in rest] == [5, 6]
    assert rest[-1].kind == "study.completed" and rest[-1].sop_instance_uid is None
    assert rest[-1].to_json()["StudyInstanceUID"] == "1.1"
    assert await repository.changes(6, 10) == []


async def test_a_store_marks_its_study_pending_until_marked_completed(
    repository: Repository, instance_record: Callable[..., InstanceRecord]
) -> None:
    study = generate_uid()
    before = time.time()
    await repository.store_instance(instance_record(StudyInstanceUID=study, SOPInstanceUID=generate_uid()))
    assert await repository.pending_completions(before - 1, 10) == []  # not quiet long enough
    (pending,) = await repository.pending_completions(time.time() + 1, 10)
    assert pending.study_instance_uid == study and pending.activity_at >= before
    # A store after the activity the tracker saw keeps the study pending.
    assert not await repository.mark_completed(study, pending.activity_at - 1)
    assert await repository.mark_completed(study, pending.activity_at)
    assert await repository.pending_completions(time.time() + 1, 10) == []
    assert not await repository.mark_completed(study, pending.activity_at)  # once per burst
    # More instances later: pending again, with a later activity time.
    await asyncio.sleep(0.01)
    await repository.store_instance(instance_record(StudyInstanceUID=study, SOPInstanceUID=generate_uid()))
    (again,) = await repository.pending_completions(time.time() + 1, 10)
    assert again.activity_at > pending.activity_at


async def test_a_deleted_study_is_no_longer_pending(
    repository: Repository, instance_record: Callable[..., InstanceRecord]
) -> None:
    record = instance_record(StudyInstanceUID=generate_uid(), SOPInstanceUID=generate_uid())
    await repository.store_instance(record)
    await repository.delete_instance(record.sop_instance_uid)
    assert await repository.pending_completions(time.time() + 1, 10) == []


async def test_the_outbox_keeps_the_newest_version_until_done(repository: Repository) -> None:
    status = await repository.outbox_status("fhir")
    assert (status.pending, status.failing, status.oldest_created_at, status.last_error) == (0, 0, None, None)
    await repository.outbox_put("fhir", "1.2", '{"n": 1}')
    (entry,) = await repository.outbox_due("fhir", time.time() + 1, 10)
    assert (entry.key, entry.payload, entry.attempts) == ("1.2", '{"n": 1}', 0)
    assert await repository.outbox_due("webhook", time.time() + 1, 10) == []
    later = time.time() + 3600
    await repository.outbox_retry("fhir", "1.2", entry.version, later, "connection refused")
    assert await repository.outbox_due("fhir", time.time() + 1, 10) == []
    status = await repository.outbox_status("fhir")
    assert (status.pending, status.failing, status.last_error) == (1, 1, "connection refused")
    # Put again while the first version is in flight: a worker finishing the old version leaves the new one.
    await repository.outbox_put("fhir", "1.2", '{"n": 2}')
    (newer,) = await repository.outbox_due("fhir", time.time() + 1, 10)
    assert newer.version > entry.version and newer.payload == '{"n": 2}' and newer.attempts == 0
    assert not await repository.outbox_done("fhir", "1.2", entry.version)
    assert await repository.outbox_done("fhir", "1.2", newer.version)
    assert (await repository.outbox_status("fhir")).pending == 0


# --------------------------------------------------------------------------- services over a repository


async def test_completion_fires_once_per_burst_and_the_feed_records_it(
    repository: Repository, instance_record: Callable[..., InstanceRecord]
) -> None:
    bus = EventBus()
    feed = ChangeFeed(repository)
    feed.attach(bus)
    seen: list[Event] = []

    async def listener(event: Event) -> None:
        seen.append(event)

    bus.subscribe(listener, StudyCompleted)
    tracker = CompletionTracker(repository, bus, quiet_seconds=30)
    study = generate_uid()
    for _ in range(3):
        await repository.store_instance(instance_record(StudyInstanceUID=study, SOPInstanceUID=generate_uid()))
    assert await tracker.scan_once() == 0  # within the quiet period
    assert await tracker.scan_once(now=time.time() + 31) == 1
    assert await tracker.scan_once(now=time.time() + 62) == 0  # no new activity: no second completion
    assert [e.study_instance_uid for e in seen] == [study]
    (entry,) = await repository.changes(0, 10)
    assert (entry.kind, entry.study_instance_uid) == ("study.completed", study)
    await feed.close()


async def test_publish_never_raises_and_keeps_order(repository: Repository) -> None:
    bus = EventBus()
    feed = ChangeFeed(repository)
    feed.attach(bus)
    feed.start()

    async def broken(event: Event) -> None:
        raise RuntimeError("subscriber bug")

    bus.subscribe(broken)
    study = generate_uid()
    for i in range(20):
        kind = InstanceStored if i % 2 == 0 else InstanceDeleted
        bus.publish(kind(study, series="1.2", sop=f"1.2.{i}"))
    await bus.drain()
    await feed.flush()
    changes = await repository.changes(0, 100)
    assert [c.sop_instance_uid for c in changes] == [f"1.2.{i}" for i in range(20)]
    assert changes[1].kind == "instance.deleted"
    await feed.close()


async def test_a_restart_loses_no_pending_completion(tmp_path: Path) -> None:
    """The activity is in the repository: a study stored before a restart completes after it."""
    settings = Settings(data_dir=tmp_path, dimse_enabled=False, study_quiet_seconds=30, _env_file=None)  # type: ignore[call-arg]
    context = await open_archive(settings)
    ds = dicom_files.renewed("CT_small.dcm")
    assert (await context.ingest.store(dicom_files.part10(ds))).ok
    await context.close()
    context = await open_archive(settings)
    try:
        assert context.completion is not None
        assert await context.completion.scan_once(now=time.time() + 31) == 1
        kinds = [(c.kind, c.study_instance_uid) for c in await context.repository.changes(0, 10)]
        assert kinds == [("instance.created", ds.StudyInstanceUID), ("study.completed", ds.StudyInstanceUID)]
    finally:
        await context.close()


# --------------------------------------------------------------------------- over HTTP


def _feed(base_url: str, since: int = 0) -> list[dict[str, object]]:
    response = httpx.get(f"{base_url}/api/changes", params={"since": since, "limit": 1000}, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["done"] is True
    changes: list[dict[str, object]] = body["changes"]
    return changes


def test_the_change_feed_over_http_reports_stores_replacements_deletes_and_completion(tmp_path: Path) -> None:
    # Quiet long enough that the two requests below are one burst even on a loaded machine.
    settings = Settings(data_dir=tmp_path, dimse_enabled=False, study_quiet_seconds=1.5, _env_file=None)  # type: ignore[call-arg]
    with running_archive(settings) as server:
        first = dicom_files.renewed("CT_small.dcm")
        second = dicom_files.renewed("CT_small.dcm", StudyInstanceUID=first.StudyInstanceUID)
        body = dicom_files.multipart([dicom_files.part10(first), dicom_files.part10(second)])
        headers = {"Content-Type": MULTIPART}
        assert httpx.post(f"{server.dicomweb}/studies", content=body, headers=headers, timeout=30).status_code == 200
        again = dicom_files.multipart([dicom_files.part10(first)])
        assert httpx.post(f"{server.dicomweb}/studies", content=again, headers=headers, timeout=30).status_code == 200
        deadline = time.monotonic() + 10
        while not any(c["type"] == "study.completed" for c in _feed(server.base_url)):
            assert time.monotonic() < deadline, "no study.completed within 10 s"
            time.sleep(0.1)
        url = f"{server.dicomweb}/studies/{first.StudyInstanceUID}/series/{second.SeriesInstanceUID}"
        assert httpx.delete(url, timeout=30).status_code == 204
        deadline = time.monotonic() + 10
        while len(changes := _feed(server.base_url)) < 5:
            assert time.monotonic() < deadline, changes
            time.sleep(0.05)
        # The two parts of one STOW-RS request may be stored concurrently, so in either order.
        assert sorted((c["type"], c["SOPInstanceUID"]) for c in changes[:2]) == sorted(
            [("instance.created", first.SOPInstanceUID), ("instance.created", second.SOPInstanceUID)]
        )
        assert [(c["type"], c["SOPInstanceUID"]) for c in changes[2:]] == [
            ("instance.updated", first.SOPInstanceUID),
            ("study.completed", None),
            ("instance.deleted", second.SOPInstanceUID),
        ]
        assert [c["seq"] for c in changes] == [1, 2, 3, 4, 5]
        assert _feed(server.base_url, since=4) == changes[4:]
        page = httpx.get(f"{server.base_url}/api/changes", params={"since": 0, "limit": 2}, timeout=30).json()
        assert (page["last"], page["done"], len(page["changes"])) == (2, False, 2)
        assert httpx.get(f"{server.base_url}/api/changes", params={"limit": 0}).status_code == 400
