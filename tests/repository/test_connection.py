"""The Connection part of the Repository contract (app/core/ports.py): open, migrations, ping, and an
unreachable server answered as RepositoryUnavailable in bounded time."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from pymongo import WriteConcern
from pymongo.errors import AutoReconnect, WriteConcernError
from pymongo.monitoring import CommandFailedEvent, CommandListener, CommandStartedEvent, CommandSucceededEvent

from app.core.ports import Repository, RepositoryUnavailable, WriteOutcomeUnknown
from app.repository.mongo.connection import journaled
from app.repository.mongo.repository import MongoRepository
from app.repository.sqlite.repository import SQLiteRepository
from tests.repository.conftest import Factory, stored, uid
from tests.servers import free_port


async def test_schema_version_is_at_least_one_and_open_is_idempotent(
    repository: Repository, instance_record: Factory
) -> None:
    record = instance_record(SOPInstanceUID=uid(1, 1, 1))
    await repository.store_instance(record)
    version = await repository.schema_version()

    await repository.open()
    await repository.open()

    assert version >= 1
    assert await repository.schema_version() == version
    assert await repository.get_instance(record.sop_instance_uid) == stored(record)
    await repository.ping()


async def test_a_mongo_repository_on_a_closed_port_is_unavailable_within_bounded_time(
    instance_record: Factory,
) -> None:
    repository = MongoRepository(
        f"mongodb://127.0.0.1:{free_port()}", "nowhere", server_selection_timeout_ms=300
    )
    started = time.monotonic()
    try:
        with pytest.raises(RepositoryUnavailable):
            await repository.ping()
        with pytest.raises(RepositoryUnavailable):
            await repository.open()
        with pytest.raises(RepositoryUnavailable):
            await repository.store_instance(instance_record())
        with pytest.raises(RepositoryUnavailable):
            await repository.find_instances(uid(1))
    finally:
        await repository.close()
    assert time.monotonic() - started < 10


async def test_a_mongo_migration_step_run_again_finds_the_indexes_it_drops_gone_and_goes_on(mongo_url: str) -> None:
    # As after a crash between a step's indexes and its version document, or two replicas starting at once.
    database = f"t_{uuid.uuid4().hex[:12]}"
    repository = MongoRepository(mongo_url, database)
    try:
        await repository.open()
        version = await repository.schema_version()
        await repository._migrations.delete_many({})
        await repository.open()
        assert await repository.schema_version() == version
    finally:
        await repository.close()


async def test_the_sqlite_store_commits_to_disk_before_a_store_is_acknowledged(tmp_path: Path) -> None:
    """synchronous=FULL in WAL mode: a committed row survives a power cut, as the instance's fsync'd file does, so
    the start-up sweep never takes an acknowledged instance's file for an orphan."""
    repository = SQLiteRepository(tmp_path / "index.sqlite3")
    await repository.open()
    try:
        modes = await repository._write(lambda conn: conn.execute("PRAGMA synchronous").fetchone()[0])
        journal = await repository._read(lambda conn: conn.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        await repository.close()
    assert modes == 2 and journal == "wal"  # 2 = FULL (sqlite.org/pragma.html#pragma_synchronous)


class _Writes(CommandListener):
    """The write commands a client sends: (name, collection, its write concern as sent)."""

    NAMES = frozenset({"insert", "update", "delete", "findAndModify"})

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, dict[str, Any]]] = []

    def started(self, event: CommandStartedEvent) -> None:
        if event.command_name in self.NAMES:
            self.sent.append(
                (event.command_name, event.command[event.command_name], dict(event.command.get("writeConcern", {})))
            )

    def succeeded(self, event: CommandSucceededEvent) -> None:
        pass

    def failed(self, event: CommandFailedEvent) -> None:
        pass


async def test_a_mongo_store_and_a_delete_are_acknowledged_once_in_the_journal(
    mongo_url: str, instance_record: Factory
) -> None:
    """A standalone MongoDB acknowledges a write held in memory unless asked for `j: true`: a crash could then lose
    an acknowledged store, and the start-up sweep remove its file as an orphan. A store's last write and a
    delete's removal ask for the journal (the journal is written in order: the writes before go with them). What
    follows a store's last write only corrects counts and sets, which a crash may leave one too high (a replaced
    predecessor still counted, a series' old modality still listed) until the study is recounted."""
    writes = _Writes()
    repository = MongoRepository(mongo_url, f"t_{uuid.uuid4().hex[:12]}", event_listeners=[writes])
    try:
        await repository.open()
        first = instance_record(SOPInstanceUID=uid(1, 1, 1))
        # The second changes its series' modality, the third replaces it: both correct the study after the store.
        second = instance_record(SOPInstanceUID=uid(1, 1, 2), Modality="OT")
        for record in (first, second, instance_record(SOPInstanceUID=uid(1, 1, 2), Modality="OT")):
            writes.sent.clear()
            await repository.store_instance(record)
            journaled = [n for n, (_, _, concern) in enumerate(writes.sent) if concern.get("j") is True]
            assert len(journaled) == 1, writes.sent
            name, collection, _ = writes.sent[journaled[0]]
            assert (name, collection) == ("update", "studies")  # the study's $addToSet: after the instance's write
            assert any(collection == "instances" for _, collection, _ in writes.sent[: journaled[0]])
            if record is first:
                assert journaled == [len(writes.sent) - 1]

        writes.sent.clear()
        assert await repository.delete_instance(first.sop_instance_uid) == stored(first)
        assert writes.sent[0][:2] == ("findAndModify", "instances")
        assert writes.sent[0][2].get("j") is True
    finally:
        await repository.close()


def test_the_journal_is_asked_for_with_the_url_s_write_concern_unless_the_url_says_otherwise() -> None:
    assert journaled(WriteConcern()).document == {"j": True}
    assert journaled(WriteConcern(w="majority", wtimeout=5000)).document == {"w": "majority", "wtimeout": 5000, "j": True}
    # The URL's own say: journal=false; fsync=true, which the driver refuses beside j; w=0, unacknowledged.
    for concern in (WriteConcern(j=False), WriteConcern(fsync=True), WriteConcern(w=0)):
        assert journaled(concern) is concern


def _fail_after_applying(
    monkeypatch: pytest.MonkeyPatch, collection: Any, name: str, error: Exception, *, applied: bool = True
) -> None:
    """The driver's `collection.name` made to raise `error`, after the server applied the write or before."""
    write = getattr(collection, name)

    async def failing(*args: Any, **kwargs: Any) -> Any:
        if applied:
            await write(*args, **kwargs)
        raise error

    monkeypatch.setattr(collection, name, failing)


@pytest.mark.parametrize("failing", ["the instance's write", "the last write"])
async def test_a_mongo_store_whose_write_concern_fails_leaves_the_instance_as_it_was(
    mongo_url: str, instance_record: Factory, failing: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write concern error (w=majority's wtimeout, a server without a journal) leaves the write applied but fails
    the store (unavailable, to be sent again: 503 / 0xA700), whose file ingest then rolls back. A new instance's
    document goes again, or it would name nothing; a replace puts its predecessor's back, as ingest puts back the
    predecessor's file: never an instance lost to the sweep, nor metadata describing another file."""
    repository = MongoRepository(mongo_url, f"t_{uuid.uuid4().hex[:12]}")
    try:
        await repository.open()
        held = instance_record(SOPInstanceUID=uid(1, 1, 1), PatientName="HELD^COPY")
        await repository.store_instance(held)
        unconfirmed = WriteConcernError("waiting for replication timed out", 64, {"wtimeout": True})
        if failing == "the instance's write":
            for name in ("insert_one", "replace_one"):
                _fail_after_applying(monkeypatch, repository._instances, name, unconfirmed)
        else:
            _fail_after_applying(monkeypatch, repository._journaled_studies, "update_one", unconfirmed)

        with pytest.raises(RepositoryUnavailable):
            await repository.store_instance(instance_record(SOPInstanceUID=uid(1, 1, 2)))
        assert await repository.get_instance(uid(1, 1, 2)) is None
        assert await repository.count_instances() == 1

        replacing = instance_record(SOPInstanceUID=uid(1, 1, 1), PatientName="NEW^COPY", storage_key="a/new.dcm")
        with pytest.raises(RepositoryUnavailable):
            await repository.store_instance(replacing)
        assert await repository.get_instance(uid(1, 1, 1)) == stored(held)
        [dataset] = await repository.instance_datasets(held.study_instance_uid)
        assert dataset.dataset_json == held.dataset_json
    finally:
        await repository.close()


@pytest.mark.parametrize("moved_to", ["another series", "another study"])
@pytest.mark.parametrize("cut_off", ["before the replace", "after the replace", "at the last write"])
async def test_a_mongo_replace_cut_off_by_a_lost_connection_leaves_the_instance_as_it_was(
    mongo_url: str, instance_record: Factory, cut_off: str, moved_to: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the server still answers, the store puts the predecessor's document back, and is answered as
    unavailable. A write still under way when the connection went may yet be applied: ingest is told that the
    outcome is not known, and keeps every file a document may name (tests/core/ingest/test_service.py). A copy
    naming another study for its series (a correction) is written over its predecessor too, never after it."""
    repository = MongoRepository(mongo_url, f"t_{uuid.uuid4().hex[:12]}")
    try:
        await repository.open()
        held = instance_record(SOPInstanceUID=uid(1, 1, 1), PatientName="HELD^COPY")
        await repository.store_instance(held)
        lost = AutoReconnect("connection reset")
        if cut_off == "at the last write":
            _fail_after_applying(monkeypatch, repository._journaled_studies, "update_one", lost)
        else:
            applied = cut_off == "after the replace"
            _fail_after_applying(monkeypatch, repository._instances, "replace_one", lost, applied=applied)
        # Moved: its predecessor's file stays where it was until the store succeeds.
        place = {"SeriesInstanceUID": uid(1, 2)} if moved_to == "another series" else {"StudyInstanceUID": uid(2)}
        replacing = instance_record(SOPInstanceUID=uid(1, 1, 1), PatientName="NEW^COPY", **place)

        with pytest.raises(RepositoryUnavailable) as raised:
            await repository.store_instance(replacing)

        assert isinstance(raised.value, WriteOutcomeUnknown) == (cut_off != "at the last write")
        assert await repository.get_instance(uid(1, 1, 1)) == stored(held)
        assert await repository.count_instances() == 1
    finally:
        await repository.close()


async def test_a_mongo_copy_moving_a_series_and_put_back_after_its_write_leaves_the_series_where_it_was(
    mongo_url: str, instance_record: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copy naming another study for its series fails at its last write and its predecessor is put back: the
    series names its old study again, so recounting both studies (what the failure's log line asks for) finds
    each with its own series."""
    repository = MongoRepository(mongo_url, f"t_{uuid.uuid4().hex[:12]}")
    try:
        await repository.open()
        held = instance_record(StudyInstanceUID=uid(1), SeriesInstanceUID=uid(1, 1), SOPInstanceUID=uid(1, 1, 1))
        other = instance_record(StudyInstanceUID=uid(2), SeriesInstanceUID=uid(2, 1), SOPInstanceUID=uid(2, 1, 1))
        for record in (held, other):
            await repository.store_instance(record)
        _fail_after_applying(monkeypatch, repository._journaled_studies, "update_one", AutoReconnect("reset"))
        moving = instance_record(StudyInstanceUID=uid(2), SeriesInstanceUID=uid(1, 1), SOPInstanceUID=uid(1, 1, 1))

        with pytest.raises(RepositoryUnavailable):
            await repository.store_instance(moving)
        monkeypatch.undo()

        assert await repository.get_instance(uid(1, 1, 1)) == stored(held)
        for study in (uid(1), uid(2)):
            await repository.recount_study(study)
        for study in (uid(1), uid(2)):
            aggregates = await repository.study_aggregates(study) or {}
            assert (
                aggregates["number_of_study_related_series"],
                aggregates["number_of_study_related_instances"],
            ) == (1, 1)
    finally:
        await repository.close()


class _Gone:
    """A collection whose server went away."""

    async def delete_one(self, *args: Any, **kwargs: Any) -> Any:
        raise AutoReconnect("connection refused")

    async def replace_one(self, *args: Any, **kwargs: Any) -> Any:
        raise AutoReconnect("connection refused")


@pytest.mark.parametrize(
    "failure",
    [AutoReconnect("connection reset"), WriteConcernError("waiting for replication timed out", 64, {})],
    ids=["a lost connection", "a write concern not met"],
)
async def test_a_mongo_store_failing_with_no_server_left_to_undo_it_says_its_outcome_is_unknown(
    mongo_url: str, instance_record: Factory, monkeypatch: pytest.MonkeyPatch, failure: Exception
) -> None:
    """Ingest must then keep every file a document may name (tests/core/ingest/test_service.py)."""
    repository = MongoRepository(mongo_url, f"t_{uuid.uuid4().hex[:12]}")
    try:
        await repository.open()
        held = instance_record(SOPInstanceUID=uid(1, 1, 1))
        await repository.store_instance(held)
        _fail_after_applying(monkeypatch, repository._journaled_studies, "update_one", failure)
        monkeypatch.setattr(repository._instances, "with_options", lambda **options: _Gone())

        with pytest.raises(WriteOutcomeUnknown):
            await repository.store_instance(instance_record(SOPInstanceUID=uid(1, 1, 1), PatientName="NEW^COPY"))
        with pytest.raises(WriteOutcomeUnknown):
            await repository.store_instance(instance_record(SOPInstanceUID=uid(1, 1, 2)))
    finally:
        await repository.close()
