"""The one ingest path under policies and faults, with the real SQLite store (MongoDB where its writes differ) and
filesystem storage."""

from __future__ import annotations

import asyncio
import copy
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo.errors import AutoReconnect, WriteConcernError

from app.bootstrap import open_archive
from app.config import Settings
from app.context import ArchiveContext
from app.core.ingest.outcomes import DuplicatePolicy, FailureReason, StoreStatus
from app.core.lifecycle.sweep import sweep
from app.repository.mongo.repository import MongoRepository
from app.repository.sqlite.repository import SQLiteRepository
from tests import dicom_files
from tests.servers import running_archive


@pytest.fixture
async def context(tmp_path: Path) -> AsyncIterator[ArchiveContext]:
    ctx = await open_archive(Settings(data_dir=tmp_path, _env_file=None))  # type: ignore[call-arg]
    yield ctx
    await ctx.close()


def stored_files(ctx: ArchiveContext) -> list[Path]:
    return sorted(ctx.settings.storage_path.rglob("*.dcm"))


@pytest.mark.parametrize(
    ("policy", "second_status", "failure"),
    [
        (DuplicatePolicy.REPLACE, StoreStatus.REPLACED, None),
        (DuplicatePolicy.KEEP, StoreStatus.KEPT, None),
        (DuplicatePolicy.REJECT, StoreStatus.FAILED, FailureReason.DUPLICATE_SOP_INSTANCE),
    ],
)
async def test_each_duplicate_policy_keeps_exactly_one_copy(
    context: ArchiveContext,
    policy: DuplicatePolicy,
    second_status: StoreStatus,
    failure: FailureReason | None,
) -> None:
    context.ingest.duplicate_policy = policy
    first = dicom_files.renewed("CT_small.dcm", PatientName="FIRST^COPY")
    second = copy.deepcopy(first)
    second.PatientName = "SECOND^COPY"
    assert (await context.ingest.store(dicom_files.part10(first))).status is StoreStatus.STORED
    outcome = await context.ingest.store(dicom_files.part10(second))
    assert outcome.status is second_status
    assert outcome.failure == failure
    (only,) = stored_files(context)
    expected = b"SECOND^COPY" if policy is DuplicatePolicy.REPLACE else b"FIRST^COPY"
    assert expected in only.read_bytes()
    assert await context.repository.count_instances() == 1


async def test_a_replacement_that_moves_series_leaves_no_file_behind(context: ArchiveContext) -> None:
    ds = dicom_files.renewed("CT_small.dcm")
    await context.ingest.store(dicom_files.part10(ds))
    ds.SeriesInstanceUID = "1.2.3.4.5"
    assert (await context.ingest.store(dicom_files.part10(ds))).status is StoreStatus.REPLACED
    (only,) = stored_files(context)
    assert only.parent.name == "1.2.3.4.5"


async def test_a_metadata_store_that_refuses_writes_leaves_no_file_and_answers_out_of_resources(
    context: ArchiveContext,
) -> None:
    repository = context.repository
    assert isinstance(repository, SQLiteRepository)
    await repository._run(repository._writer, lambda c: c.execute("PRAGMA query_only=ON"), transaction=False)
    outcome = await context.ingest.store(dicom_files.part10(dicom_files.renewed("CT_small.dcm")))
    assert outcome.failure is FailureReason.OUT_OF_RESOURCES
    assert stored_files(context) == []
    assert not any((context.settings.storage_path / ".incoming").iterdir())


async def test_a_failed_replacement_keeps_the_old_copy(context: ArchiveContext) -> None:
    ds = dicom_files.renewed("CT_small.dcm", PatientName="OLD^COPY")
    await context.ingest.store(dicom_files.part10(ds))
    repository = context.repository
    assert isinstance(repository, SQLiteRepository)
    await repository._run(repository._writer, lambda c: c.execute("PRAGMA query_only=ON"), transaction=False)
    ds.PatientName = "NEW^COPY"
    assert (await context.ingest.store(dicom_files.part10(ds))).failure is FailureReason.OUT_OF_RESOURCES
    (only,) = stored_files(context)
    assert b"OLD^COPY" in only.read_bytes()


@pytest.fixture
async def mongo_context(tmp_path: Path, mongo_url: str) -> AsyncIterator[ArchiveContext]:
    database = f"t_{uuid.uuid4().hex[:12]}"
    settings = Settings(data_dir=tmp_path, mongo_url=mongo_url, mongo_database=database, _env_file=None)  # type: ignore[call-arg]
    ctx = await open_archive(settings)
    yield ctx
    await ctx.close()


def _fail_after_applying(monkeypatch: pytest.MonkeyPatch, collection: Any, name: str, error: Exception) -> None:
    write = getattr(collection, name)

    async def applied_then_failed(*args: Any, **kwargs: Any) -> Any:
        await write(*args, **kwargs)
        raise error

    monkeypatch.setattr(collection, name, applied_then_failed)


async def test_a_failed_replacement_on_mongodb_keeps_the_old_copy_and_the_metadata_that_describes_it(
    mongo_context: ArchiveContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MongoDB has no transaction around a store's writes. A replace that fails after its instance document was
    written (a write concern not met: the write applied, the store failed) answers 0xA700, to be sent again; ingest
    puts the old file back, and the repository the old document, so the two still describe one instance."""
    ds = dicom_files.renewed("CT_small.dcm", PatientName="OLD^COPY")
    assert (await mongo_context.ingest.store(dicom_files.part10(ds))).status is StoreStatus.STORED
    repository = mongo_context.repository
    assert isinstance(repository, MongoRepository)
    unconfirmed = WriteConcernError("waiting for replication timed out", 64, {"wtimeout": True})
    _fail_after_applying(monkeypatch, repository._journaled_studies, "update_one", unconfirmed)
    ds.PatientName = "NEW^COPY"
    assert (await mongo_context.ingest.store(dicom_files.part10(ds))).failure is FailureReason.OUT_OF_RESOURCES

    (only,) = stored_files(mongo_context)
    assert b"OLD^COPY" in only.read_bytes()
    [held] = await repository.instance_datasets(ds.StudyInstanceUID)
    assert "OLD^COPY" in held.dataset_json and "NEW^COPY" not in held.dataset_json
    assert (await repository.get_instance(ds.SOPInstanceUID)).size == only.stat().st_size  # type: ignore[union-attr]


class _Gone:
    async def replace_one(self, *args: Any, **kwargs: Any) -> Any:
        raise AutoReconnect("connection refused")

    delete_one = replace_one


@pytest.mark.parametrize("failure", [AutoReconnect("connection reset"), WriteConcernError("wtimeout", 64, {})])
@pytest.mark.parametrize("sent_before", ["a new instance", "a replace moving series", "a replace in place"])
async def test_a_store_cut_off_with_mongodb_gone_keeps_every_file_its_metadata_may_name(
    mongo_context: ArchiveContext, monkeypatch: pytest.MonkeyPatch, sent_before: str, failure: Exception
) -> None:
    """MongoDB failed a store after the instance's document was written, and went away before the store could
    undo it: the document may be the new one or not. Ingest answers 0xA700 (to be sent again) and keeps every
    file a document may name: a new or moved instance's file beside its predecessor's, and under one key the
    old bytes, the acknowledged ones. The sweep then removes the file nothing names, never the instance."""
    ds = dicom_files.renewed("CT_small.dcm", PatientName="OLD^COPY")
    if sent_before != "a new instance":
        assert (await mongo_context.ingest.store(dicom_files.part10(ds))).status is StoreStatus.STORED
        ds.PatientName = "NEW^COPY"
        if sent_before == "a replace moving series":
            ds.SeriesInstanceUID = "1.2.3.4.5"
    repository = mongo_context.repository
    assert isinstance(repository, MongoRepository)
    _fail_after_applying(monkeypatch, repository._journaled_studies, "update_one", failure)
    monkeypatch.setattr(repository._instances, "with_options", lambda **options: _Gone())

    assert (await mongo_context.ingest.store(dicom_files.part10(ds))).failure is FailureReason.OUT_OF_RESOURCES
    assert len(stored_files(mongo_context)) == (2 if sent_before == "a replace moving series" else 1)
    monkeypatch.undo()
    await sweep(mongo_context.lifecycle, grace_seconds=0)

    (only,) = stored_files(mongo_context)
    held = await repository.get_instance(ds.SOPInstanceUID)
    assert held is not None and mongo_context.settings.storage_path / held.storage_key == only
    assert await repository.count_instances() == 1
    if sent_before == "a replace in place":
        assert b"OLD^COPY" in only.read_bytes()


async def test_the_sweep_removes_files_without_metadata_and_metadata_without_files(
    context: ArchiveContext,
) -> None:
    kept, lost = dicom_files.renewed("CT_small.dcm"), dicom_files.renewed("CT_small.dcm")
    for ds in (kept, lost):
        await context.ingest.store(dicom_files.part10(ds))
    orphan = context.settings.storage_path / "1.2.3" / "4.5.6" / "7.8.9.dcm"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(dicom_files.part10(dicom_files.renewed("CT_small.dcm")))
    for path in stored_files(context):
        if lost.SOPInstanceUID in path.name:
            path.unlink()
    report = await sweep(context.lifecycle, grace_seconds=0)
    assert (report.orphan_files, report.orphan_records) == (1, 1)
    assert [p.name for p in stored_files(context)] == [f"{kept.SOPInstanceUID}.dcm"]
    assert await context.repository.count_instances() == 1


def test_a_body_over_the_configured_limit_is_refused_with_413(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, dimse_enabled=False, max_request_bytes=10_000, _env_file=None)  # type: ignore[call-arg]
    body = dicom_files.multipart([dicom_files.part10(dicom_files.renewed("CT_small.dcm"))])
    with running_archive(settings) as server:
        response = httpx.post(
            server.dicomweb + "/studies",
            content=body,
            headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=dicom-boundary'},
        )
    assert response.status_code == 413
    assert not list((tmp_path / "storage").rglob("*.dcm"))


def test_import_loads_folders_through_the_ingest_path_and_reports_a_summary(tmp_path: Path) -> None:
    folder = tmp_path / "incoming" / "nested"
    folder.mkdir(parents=True)
    for i, name in enumerate(("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm")):
        (folder / f"{i}.dcm").write_bytes(dicom_files.part10(dicom_files.renewed(name)))
    (folder / "again.dcm").write_bytes((folder / "0.dcm").read_bytes())
    (folder / "notes.txt").write_text("not DICOM")
    (folder / "gone.dcm").symlink_to(tmp_path / "nowhere.dcm")  # unreadable: reported, the others go on
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "app",
            "--data-dir",
            str(tmp_path / "data"),
            "import",
            str(tmp_path / "incoming"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert "stored 3, duplicates 1, failed 2" in result.stdout, result.stderr
    assert "gone.dcm: cannot stage it" in result.stdout + result.stderr
    assert result.returncode == 1
    assert len(list((tmp_path / "data" / "storage").rglob("*.dcm"))) == 3
    assert not any((tmp_path / "data" / "storage" / ".incoming").iterdir())


async def test_the_sweep_never_takes_an_instance_replaced_elsewhere_for_an_orphan(context: ArchiveContext) -> None:
    ds = dicom_files.renewed("CT_small.dcm")
    await context.ingest.store(dicom_files.part10(ds))
    (old,) = stored_files(context)
    stale_key = old.relative_to(context.settings.storage_path).as_posix()
    ds.SeriesInstanceUID = "1.2.3.4.5"  # the replacement moves the instance to another series and key
    await context.ingest.store(dicom_files.part10(ds))
    # What a sweep page read before the replace would ask: the stale key is gone, the instance is not.
    assert await context.lifecycle.delete_instance(ds.SOPInstanceUID, only_if_key=stale_key) is None
    assert await context.repository.count_instances() == 1
    assert (await sweep(context.lifecycle, grace_seconds=0)).orphan_records == 0
    assert len(stored_files(context)) == 1


def test_a_file_a_crash_left_without_metadata_is_swept_after_start_up(tmp_path: Path) -> None:
    import os
    import time

    orphan = tmp_path / "storage" / "1.2.3" / "4.5.6" / "7.8.9.dcm"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(dicom_files.part10(dicom_files.renewed("CT_small.dcm")))
    os.utime(orphan, (time.time() - 3600, time.time() - 3600))  # older than the sweep's grace period
    settings = Settings(data_dir=tmp_path, dimse_enabled=False, _env_file=None)  # type: ignore[call-arg]
    with running_archive(settings):
        deadline = time.monotonic() + 30
        while orphan.exists():
            assert time.monotonic() < deadline, "the start-up sweep did not remove the orphan file"
            time.sleep(0.1)


async def test_a_store_cancelled_at_any_point_leaves_the_instance_wholly_stored_or_not_at_all(
    context: ArchiveContext,
) -> None:
    # A cancelled caller (a client gone, a shutdown) must not split the file from its metadata.
    held_or_not = []
    for pause in range(40):
        ds = dicom_files.renewed("CT_small.dcm")
        store = asyncio.ensure_future(context.ingest.store(dicom_files.part10(ds)))
        await asyncio.sleep(pause * 0.0002)  # from before the first step to after the last
        store.cancel()
        await asyncio.gather(store, return_exceptions=True)
        await asyncio.sleep(0.05)  # anything the store left running in the background has ended
        ref = await context.repository.get_instance(ds.SOPInstanceUID)
        files = [p for p in stored_files(context) if p.name == f"{ds.SOPInstanceUID}.dcm"]
        assert (ref is not None) == bool(files), f"cancelled after {pause * 0.2} ms: metadata {ref}, files {files}"
        held_or_not.append(ref is not None)
    assert not held_or_not[0]  # cancelled before it began: nothing stored
