"""Header parsing in worker processes gives what parsing in-process gives, and survives a dead worker."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pydicom
import pytest

from app.core.ingest.outcomes import FailureReason
from app.core.ingest.parsing import HeaderParser, Parsed, ParseFailure, parse_instance
from app.storage.base import LocalStaging
from tests import dicom_files


async def test_a_worker_process_builds_the_same_record_as_this_process() -> None:
    data = dicom_files.part10(dicom_files.renewed("JPEG2000.dcm"))
    parser = HeaderParser(workers=1)
    try:
        remote = await parser.parse(data)
    finally:
        parser.close()
    local = parse_instance(data)
    assert isinstance(remote, Parsed) and isinstance(local, Parsed)
    assert remote.record == local.record


async def test_unreadable_and_unidentifiable_instances_come_back_as_failures() -> None:
    parser = HeaderParser(workers=1)
    no_uid = dicom_files.renewed("CT_small.dcm")
    no_uid.SOPInstanceUID = "not a uid"
    try:
        garbage = await parser.parse(b"not DICOM at all")
        bad_uid = await parser.parse(dicom_files.part10(no_uid))
    finally:
        parser.close()
    assert isinstance(garbage, ParseFailure) and garbage.reason is FailureReason.CANNOT_UNDERSTAND
    assert isinstance(bad_uid, ParseFailure)
    assert bad_uid.reason is FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS
    assert bad_uid.sop_class_uid == no_uid.SOPClassUID


async def test_a_killed_worker_costs_no_instance() -> None:
    parser = HeaderParser(workers=1)
    data = dicom_files.part10(dicom_files.renewed("CT_small.dcm"))
    try:
        assert isinstance(await parser.parse(data), Parsed)
        for pid in parser._workers().pids():
            os.kill(pid, signal.SIGKILL)
        assert isinstance(await parser.parse(data), Parsed)
        assert isinstance(await parser.parse(data), Parsed)
    finally:
        parser.close()


async def test_the_dataset_is_kept_only_when_asked_for() -> None:
    data = dicom_files.part10(dicom_files.renewed("CT_small.dcm"))
    parser = HeaderParser(workers=1)
    try:
        with_dataset = await parser.parse(data, keep_dataset=True)
        without = await parser.parse(data)
    finally:
        parser.close()
    assert isinstance(with_dataset, Parsed) and isinstance(with_dataset.dataset, pydicom.Dataset)
    assert isinstance(without, Parsed) and without.dataset is None


async def test_a_worker_process_stages_an_instance_whole_and_a_staging_failure_comes_back_as_os_error(
    tmp_path: Path,
) -> None:
    data = dicom_files.part10(dicom_files.renewed("CT_small.dcm"))
    staging = LocalStaging(tmp_path / "incoming")
    parser = HeaderParser(workers=1)
    try:
        await parser.start()
        staged, parsed = await parser.stage_and_parse(data, staging.new_path())
        assert isinstance(parsed, Parsed) and staged.handle is None
        assert staged.path.parent == staging.folder and staged.path.read_bytes() == data
        staging.discard(staged)
        staging.folder.rmdir()  # the staging area gone (an unmounted volume): ingest answers 0xA700 for this
        with pytest.raises(OSError):
            await parser.stage_and_parse(data, staging.new_path())
    finally:
        parser.close()


def _refuse_to_start() -> None:
    raise SystemExit(3)


async def test_workers_that_cannot_start_fail_every_job_at_once_instead_of_hanging() -> None:
    from concurrent.futures.process import BrokenProcessPool

    from app.core.ingest.worker_pool import WorkerPool

    pool = WorkerPool(1, _refuse_to_start)
    try:
        for _ in range(2):
            with pytest.raises(BrokenProcessPool):
                await asyncio.wait_for(pool.run(len, b"abc"), 30)
    finally:
        pool.close()


async def test_a_caller_cancelled_while_its_job_runs_leaves_the_worker_serving_the_next() -> None:
    data = dicom_files.part10(dicom_files.renewed("CT_small.dcm"))
    parser = HeaderParser(workers=1)
    try:
        await parser.start()
        waiting = asyncio.ensure_future(parser.parse(data * 20))  # big: cancelled while it is written or parsed
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert isinstance(await asyncio.wait_for(parser.parse(data), 30), Parsed)
    finally:
        parser.close()
