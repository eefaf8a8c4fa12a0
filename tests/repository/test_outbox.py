"""The Outbox part of the Repository contract (app/core/ports.py): the newest version of an entry is kept until
it is done, retries are scheduled with their reason. On SQLite and MongoDB alike (the `repository` fixture of
tests/conftest.py)."""

from __future__ import annotations

import time

from app.core.ports import Repository


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
