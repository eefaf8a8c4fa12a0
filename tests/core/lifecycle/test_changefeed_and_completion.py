"""Study lifecycle (app/core/lifecycle/): events, the change feed and study completion; over both repositories
and over the real HTTP door. The repository's own parts (change feed, completion, outbox) are contract tests in
tests/repository/."""

from __future__ import annotations

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
    Event,
    EventBus,
    InstanceDeleted,
    InstanceStored,
    StudyCompleted,
)
from app.core.ports import Repository
from app.core.records import InstanceRecord
from tests import dicom_files
from tests.servers import running_archive

MULTIPART = 'multipart/related; type="application/dicom"; boundary=dicom-boundary'


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
