"""Claims and leases in the Repository contract (app/core/ports.py): what several archive processes sharing one
store do once, they do once. Leases (`LeaseStore`), claims on outbox entries and on study completions, and a
change feed appended by several connections at once that readers still see whole and in order. On SQLite and
MongoDB alike (the `repository` fixture of tests/conftest.py); a second connection to the same store stands for
a second process where the store itself must keep order (the change feed).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from app.core.lifecycle.feed import NewChange
from app.core.ports import Repository
from app.core.records import InstanceRecord
from app.repository.mongo.repository import MongoRepository
from app.repository.sqlite.repository import SQLiteRepository
from tests.conftest import opened_repository

LEASE = 60.0


async def test_a_lease_has_one_holder_until_released_or_expired(repository: Repository) -> None:
    now = time.time()
    assert await repository.acquire_lease("webhook:a", "one", now, now + LEASE)
    assert not await repository.acquire_lease("webhook:a", "two", now, now + LEASE)
    assert await repository.acquire_lease("webhook:a", "one", now, now + LEASE)  # a renewal
    assert await repository.acquire_lease("webhook:b", "two", now, now + LEASE)  # another name is free
    await repository.release_lease("webhook:a", "two")  # not the holder: nothing happens
    assert not await repository.acquire_lease("webhook:a", "two", now, now + LEASE)
    # Its holder died: once the lease has ended, another process takes it.
    assert await repository.acquire_lease("webhook:a", "two", now + LEASE, now + 2 * LEASE)
    assert not await repository.acquire_lease("webhook:a", "one", now + LEASE, now + 2 * LEASE)
    await repository.release_lease("webhook:a", "two")
    assert await repository.acquire_lease("webhook:a", "one", now, now + LEASE)


async def test_a_lease_taken_by_many_at_once_has_one_holder(repository: Repository) -> None:
    now = time.time()
    won = await asyncio.gather(
        *(repository.acquire_lease("instance:1.2.3", f"holder-{n}", now, now + LEASE) for n in range(8))
    )
    assert sum(won) == 1


async def test_a_due_outbox_entry_is_claimed_once_until_done_retried_or_expired(repository: Repository) -> None:
    await repository.outbox_put("fhir", "1.2", '{"n": 1}')
    now = time.time() + 1
    (entry,) = await repository.outbox_due("fhir", now, 10)
    assert await repository.outbox_claim("fhir", "1.2", entry.version, now, now + LEASE)
    assert not await repository.outbox_claim("fhir", "1.2", entry.version, now, now + LEASE)
    assert await repository.outbox_due("fhir", now, 10) == []  # claimed entries are nobody else's work
    # The claimer died: the entry is due again, and claimable, once the claim has ended.
    later = now + LEASE
    assert [e.key for e in await repository.outbox_due("fhir", later, 10)] == ["1.2"]
    assert await repository.outbox_claim("fhir", "1.2", entry.version, later, later + LEASE)
    # A failed attempt ends the claim; the entry is due when the retry says.
    await repository.outbox_retry("fhir", "1.2", entry.version, later + 5, "HTTP 503")
    assert await repository.outbox_due("fhir", later, 10) == []
    assert not await repository.outbox_claim("fhir", "1.2", entry.version, later, later + LEASE)  # not due yet
    assert await repository.outbox_claim("fhir", "1.2", entry.version, later + 5, later + 5 + LEASE)
    assert await repository.outbox_done("fhir", "1.2", entry.version)
    assert await repository.outbox_due("fhir", later + 5, 10) == []


async def test_an_entry_put_again_while_claimed_is_due_as_soon_as_the_claim_ends(repository: Repository) -> None:
    await repository.outbox_put("fhir", "1.2", '{"n": 1}')
    now = time.time() + 1
    (first,) = await repository.outbox_due("fhir", now, 10)
    assert await repository.outbox_claim("fhir", "1.2", first.version, now, now + LEASE)
    await repository.outbox_put("fhir", "1.2", '{"n": 2}')
    # Still one worker at a time: the newer version waits for the claim on the older one...
    assert await repository.outbox_due("fhir", now, 10) == []
    assert not await repository.outbox_claim("fhir", "1.2", first.version + 1, now, now + LEASE)
    # ...which ends when that worker is done; the newer version is kept, and due at once.
    assert not await repository.outbox_done("fhir", "1.2", first.version)
    (newer,) = await repository.outbox_due("fhir", now, 10)
    assert newer.payload == '{"n": 2}'
    assert await repository.outbox_claim("fhir", "1.2", newer.version, now, now + LEASE)
    # A retry of an outdated version ends the claim too.
    await repository.outbox_put("fhir", "1.2", '{"n": 3}')
    await repository.outbox_retry("fhir", "1.2", newer.version, now + 3600, "HTTP 503")
    (newest,) = await repository.outbox_due("fhir", now, 10)
    assert newest.payload == '{"n": 3}' and newest.attempts == 0


async def test_a_pending_completion_is_claimed_once_and_marking_it_ends_the_claim(
    repository: Repository, instance_record: Callable[..., InstanceRecord]
) -> None:
    await repository.store_instance(instance_record(StudyInstanceUID="1.2.3", SOPInstanceUID="1.2.3.1"))
    study = await repository.pending_completion("1.2.3")
    assert study is not None
    now, activity = time.time() + 1, study.activity_at
    assert not await repository.claim_completion("1.2.3", activity - 1, now, now + LEASE)  # not that activity
    assert not await repository.claim_completion("9.9", activity, now, now + LEASE)  # nothing pending
    assert await repository.claim_completion("1.2.3", activity, now, now + LEASE)
    assert not await repository.claim_completion("1.2.3", activity, now, now + LEASE)
    # The claimer died before marking it: another process reports it once the claim has ended.
    assert await repository.claim_completion("1.2.3", activity, now + LEASE, now + 2 * LEASE)
    assert await repository.mark_completed("1.2.3", activity)
    assert not await repository.claim_completion("1.2.3", activity, now, now + LEASE)


async def test_a_store_during_a_claimed_completion_ends_the_claim_and_completes_again_later(
    repository: Repository, instance_record: Callable[..., InstanceRecord]
) -> None:
    await repository.store_instance(instance_record(StudyInstanceUID="1.2.3", SOPInstanceUID="1.2.3.1"))
    first = await repository.pending_completion("1.2.3")
    assert first is not None
    now = time.time() + 1
    assert await repository.claim_completion("1.2.3", first.activity_at, now, now + LEASE)
    await asyncio.sleep(0.01)
    await repository.store_instance(instance_record(StudyInstanceUID="1.2.3", SOPInstanceUID="1.2.3.2"))
    assert not await repository.mark_completed("1.2.3", first.activity_at)
    again = await repository.pending_completion("1.2.3")
    assert again is not None and again.activity_at > first.activity_at
    assert await repository.claim_completion("1.2.3", again.activity_at, now, now + LEASE)


@asynccontextmanager
async def second_connection(repository: Repository) -> AsyncIterator[Repository]:
    """Another connection to the same store, as a second archive process would open."""
    other: Repository
    if isinstance(repository, SQLiteRepository):
        other = SQLiteRepository(repository.path)
    else:
        assert isinstance(repository, MongoRepository)
        other = MongoRepository(repository.url, repository.database)
    await other.open()
    try:
        yield other
    finally:
        await other.close()


async def test_a_change_feed_appended_through_several_connections_is_read_whole_and_in_order(
    repository: Repository,
) -> None:
    batches, per_batch = 6, 3
    done = asyncio.Event()
    seen: list[int] = []

    async def append(writer: Repository, name: str) -> None:
        for n in range(batches):
            await writer.append_changes(
                [NewChange("instance.created", f"{name}.{n}", None, f"{name}.{n}.{i}", time.time())
                 for i in range(per_batch)]
            )  # fmt: skip

    async def follow() -> None:
        # As a webhook worker or GET /api/changes does: from the last seq seen, a page at a time.
        while True:
            finished = done.is_set()
            page = await repository.changes(seen[-1] if seen else 0, 5)
            seen.extend(change.seq for change in page)
            if finished and not page:
                return
            await asyncio.sleep(0)

    async with second_connection(repository) as other:
        reader = asyncio.ensure_future(follow())
        # Several appends at once on each connection too, as when a process's feed writer and a study
        # completion's flush meet.
        await asyncio.gather(*(append(writer, f"{n}.{k}") for n, writer in enumerate((repository, other))
                               for k in range(3)))  # fmt: skip
        done.set()
        await reader
    total = 2 * 3 * batches * per_batch
    assert seen == list(range(1, total + 1))
    assert await repository.last_change_seq() == total


async def test_a_mongo_change_feed_append_cut_short_by_a_crash_is_never_read(tmp_path: Path, mongo_url: str) -> None:
    async with opened_repository("mongo", tmp_path, mongo_url) as repository:
        assert isinstance(repository, MongoRepository)
        first = NewChange("instance.created", "1.2", None, "1.2.1", time.time())
        assert await repository.append_changes([first]) == 1
        # A process took the counter, inserted entry 2 and died before committing it.
        await repository._counters.update_one(
            {"_id": "changes"}, {"$set": {"writer": "dead", "writer_until": time.time() - 1}}
        )
        await repository._changes.insert_one({**first.__dict__, "seq": 2, "study_instance_uid": "lost"})
        assert [c.seq for c in await repository.changes(0, 10)] == [1]
        assert await repository.last_change_seq() == 1
        # The next append takes the expired counter, drops the uncommitted entry and numbers on from 1.
        assert await repository.append_changes([first]) == 2
        assert [c.study_instance_uid for c in await repository.changes(0, 10)] == ["1.2", "1.2"]
