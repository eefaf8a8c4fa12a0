"""The CompletionStore part of the Repository contract (app/core/ports.py): a store marks its study pending until
it is marked completed, once per burst; a deleted study is no longer pending. On SQLite and MongoDB alike (the
`repository` fixture of tests/conftest.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from pydicom.uid import generate_uid

from app.core.ports import Repository
from app.core.records import InstanceRecord


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
