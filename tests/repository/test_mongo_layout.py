"""What is MongoDB's own in the InstanceIndex: its document layout (the SQLite column names, dot-free multi
keys), and the undo and the repair that a store without multi-document transactions needs
(app/repository/mongo/unit_of_work.py, repair.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from pymongo.errors import AutoReconnect, DocumentTooLarge

from app.core.ports import RepositoryUnavailable
from app.repository.mongo.repository import MongoRepository
from app.repository.sqlite.repository import SQLiteRepository
from tests.conftest import opened_repository
from tests.repository.conftest import CT, MR, Factory, patient_aggregates, study_aggregates, uid


async def test_mongo_documents_use_the_sqlite_column_names_and_dot_free_multi_keys(
    mongo_url: str, tmp_path: Path, instance_record: Factory
) -> None:
    record = instance_record(
        PatientName="Doe^John",
        ReferringPhysicianName="House^Gregory",
        OtherPatientIDsSequence=[_item(PatientID="X1"), _item(PatientID="X2")],
    )
    async with opened_repository("mongo", tmp_path, mongo_url) as repository:
        assert isinstance(repository, MongoRepository)
        await repository.store_instance(record)
        db = repository._db  # the layout itself is what is under test here
        documents = {
            name: await db[name].find_one({}, {"_id": 0})
            for name in ("patients", "studies", "series", "instances")
        }
    async with opened_repository("sqlite", tmp_path) as sqlite:
        assert isinstance(sqlite, SQLiteRepository)
        with sqlite3.connect(sqlite.path) as conn:
            columns = {
                table: {row[1] for row in conn.execute(f"PRAGMA table_info({table})")} - {"id"}
                for table in documents
            }

    for name, document in documents.items():
        assert document is not None
        assert columns[name] <= set(document), f"{name} lacks {columns[name] - set(document)}"
    patient, study, instance = documents["patients"], documents["studies"], documents["instances"]
    assert patient is not None and study is not None and instance is not None
    assert instance["dataset"] == record.dataset_json
    assert instance["attributes"] == record.instance.attributes
    assert patient["multi"] == {"00100010": ["DOE", "JOHN"], "00101002_00100020": ["X1", "X2"]}
    assert study["multi"] == {
        "00100010": ["DOE", "JOHN"],
        "00101002_00100020": ["X1", "X2"],
        "00080090": ["HOUSE", "GREGORY"],
    }
    assert study["attributes"] == {**record.patient.attributes, **record.study.attributes}


async def test_mongo_recount_repairs_what_a_crash_before_the_instance_insert_leaves(
    mongo_url: str, tmp_path: Path, instance_record: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = instance_record(SOPInstanceUID=uid(1, 1, 1))
    second = instance_record(SOPInstanceUID=uid(1, 1, 2))
    async with opened_repository("mongo", tmp_path, mongo_url) as repository:
        assert isinstance(repository, MongoRepository)
        await repository.store_instance(first)

        async def connection_lost(*args: Any, **kwargs: Any) -> None:
            raise AutoReconnect("connection lost")

        with monkeypatch.context() as patched:
            patched.setattr(repository._instances, "insert_one", connection_lost)
            with pytest.raises(RepositoryUnavailable):
                await repository.store_instance(second)
        assert await repository.get_instance(second.sop_instance_uid) is None
        await repository.store_instance(second)  # the client's retry succeeds, one count too many remains
        study = first.study_instance_uid
        assert (await repository.study_aggregates(study) or {})["number_of_study_related_instances"] == 3

        await repository.recount_study(study)

        assert await repository.study_aggregates(study) == study_aggregates(1, 2, ["CT"], [CT])
        assert await repository.series_aggregates(first.series_instance_uid) == {
            "number_of_series_related_instances": 2
        }
        assert await repository.patient_aggregates(first.patient_key) == patient_aggregates(1, 1, 2)
        for record in (first, second):
            await repository.delete_instance(record.sop_instance_uid)
        assert await repository.patient_aggregates(first.patient_key) is None


async def test_mongo_recount_agrees_with_the_store_on_a_series_split_over_two_studies(
    mongo_url: str, tmp_path: Path, instance_record: Factory
) -> None:
    """A series counted in the study its newest instance names (unit_of_work.py): recounting either study, while
    some of its instances still name the other, finds what the store keeps."""
    async with opened_repository("mongo", tmp_path, mongo_url) as repository:
        assert isinstance(repository, MongoRepository)
        for n in (1, 2, 3):
            await repository.store_instance(
                instance_record(StudyInstanceUID=uid(1), SeriesInstanceUID=uid(1, 1), SOPInstanceUID=uid(1, 1, n))
            )
        await repository.store_instance(
            instance_record(StudyInstanceUID=uid(2), SeriesInstanceUID=uid(1, 1), SOPInstanceUID=uid(1, 1, 1))
        )

        async def aggregates() -> list[Any]:
            return [
                await repository.study_aggregates(uid(1)),
                await repository.study_aggregates(uid(2)),
                await repository.series_aggregates(uid(1, 1)),
                await repository.patient_aggregates(instance_record().patient_key),
            ]

        kept = await aggregates()
        assert kept[:2] == [study_aggregates(0, 2, [], [CT]), study_aggregates(1, 1, ["CT"], [CT])]
        for study in (uid(1), uid(2)):
            await repository.recount_study(study)
        assert await aggregates() == kept


async def test_mongo_recount_repairs_what_a_crash_after_the_instance_delete_leaves(
    mongo_url: str, tmp_path: Path, instance_record: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = instance_record(SOPInstanceUID=uid(1, 1, 1))
    async with opened_repository("mongo", tmp_path, mongo_url) as repository:
        assert isinstance(repository, MongoRepository)
        await repository.store_instance(record)

        async def connection_lost(*args: Any, **kwargs: Any) -> None:
            raise AutoReconnect("connection lost")

        with monkeypatch.context() as patched:
            patched.setattr(repository, "_uncount", connection_lost)
            with pytest.raises(RepositoryUnavailable):
                await repository.delete_instance(record.sop_instance_uid)
        assert await repository.get_instance(record.sop_instance_uid) is None
        assert await repository.study_aggregates(record.study_instance_uid) is not None  # left empty

        await repository.recount_study(record.study_instance_uid)

        assert await repository.study_aggregates(record.study_instance_uid) is None
        assert await repository.series_aggregates(record.series_instance_uid) is None
        assert await repository.patient_aggregates(record.patient_key) is None


async def test_mongo_undoes_the_counts_of_an_instance_too_large_for_a_document(
    mongo_url: str, tmp_path: Path, instance_record: Factory
) -> None:
    """MongoDB holds at most 16 MB per document; the header of a huge enhanced multi-frame could exceed it."""
    kept = instance_record(SOPInstanceUID=uid(1, 1, 1))
    huge = instance_record(SOPInstanceUID=uid(1, 1, 2))
    huge.dataset_json = "[" + " " * (17 * 1024 * 1024) + "]"
    async with opened_repository("mongo", tmp_path, mongo_url) as repository:
        await repository.store_instance(kept)

        with pytest.raises(DocumentTooLarge):
            await repository.store_instance(huge)

        assert await repository.get_instance(huge.sop_instance_uid) is None
        assert await repository.study_aggregates(kept.study_instance_uid) == study_aggregates(
            1, 1, ["CT"], [CT]
        )
        assert await repository.patient_aggregates(kept.patient_key) == patient_aggregates(1, 1, 1)


async def test_mongo_a_store_that_would_move_a_series_and_fails_leaves_both_studies_as_they_were(
    mongo_url: str, tmp_path: Path, instance_record: Factory
) -> None:
    """The series goes back to its study, and the other study stops counting it, when the copy that moved it is
    not stored (too large for a document)."""
    async with opened_repository("mongo", tmp_path, mongo_url) as repository:
        for n in (1, 2, 3):
            await repository.store_instance(
                instance_record(StudyInstanceUID=uid(1), SeriesInstanceUID=uid(1, 1), SOPInstanceUID=uid(1, 1, n))
            )
        await repository.store_instance(
            instance_record(
                "MR_small.dcm", StudyInstanceUID=uid(2), SeriesInstanceUID=uid(2, 1), SOPInstanceUID=uid(2, 1, 1)
            )
        )
        huge = instance_record(StudyInstanceUID=uid(2), SeriesInstanceUID=uid(1, 1), SOPInstanceUID=uid(1, 1, 4))
        huge.dataset_json = "[" + " " * (17 * 1024 * 1024) + "]"

        with pytest.raises(DocumentTooLarge):
            await repository.store_instance(huge)

        assert await repository.study_aggregates(uid(1)) == study_aggregates(1, 3, ["CT"], [CT])
        assert await repository.study_aggregates(uid(2)) == study_aggregates(1, 1, ["MR"], [MR])
        assert await repository.patient_aggregates(huge.patient_key) == patient_aggregates(2, 2, 4)
        # The series is listed where it was.
        for study in (uid(1), uid(2)):
            await repository.recount_study(study)
        assert await repository.study_aggregates(uid(1)) == study_aggregates(1, 3, ["CT"], [CT])


async def test_mongo_recount_gives_a_series_back_when_the_copy_that_moved_it_was_lost(
    mongo_url: str, tmp_path: Path, instance_record: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection is lost at the write of a copy moving a series to a new study: the new study is left
    counting it with no instance. Recounting that study hands the series back to the study its instances name."""
    async with opened_repository("mongo", tmp_path, mongo_url) as repository:
        assert isinstance(repository, MongoRepository)
        for n in (1, 2, 3):
            await repository.store_instance(
                instance_record(StudyInstanceUID=uid(1), SeriesInstanceUID=uid(1, 1), SOPInstanceUID=uid(1, 1, n))
            )

        async def connection_lost(*args: Any, **kwargs: Any) -> None:
            raise AutoReconnect("connection lost")

        moving = instance_record(StudyInstanceUID=uid(2), SeriesInstanceUID=uid(1, 1), SOPInstanceUID=uid(1, 1, 4))
        with monkeypatch.context() as patched:
            patched.setattr(repository._instances, "insert_one", connection_lost)
            with pytest.raises(RepositoryUnavailable):
                await repository.store_instance(moving)

        await repository.recount_study(uid(2))

        assert await repository.study_aggregates(uid(2)) is None
        assert await repository.study_aggregates(uid(1)) == study_aggregates(1, 3, ["CT"], [CT])
        assert await repository.patient_aggregates(moving.patient_key) == patient_aggregates(1, 1, 3)
        # The series is the first study's again: a study made later under the lost one's UID never held it.
        await repository.store_instance(
            instance_record(
                "MR_small.dcm", StudyInstanceUID=uid(2), SeriesInstanceUID=uid(2, 1), SOPInstanceUID=uid(2, 1, 1)
            )
        )
        await repository.store_instance(
            instance_record(StudyInstanceUID=uid(1), SeriesInstanceUID=uid(1, 1), SOPInstanceUID=uid(1, 1, 1))
        )
        assert await repository.study_aggregates(uid(2)) == study_aggregates(1, 1, ["MR"], [MR])
        assert await repository.study_aggregates(uid(1)) == study_aggregates(1, 3, ["CT"], [CT])


def _item(**values: Any) -> Any:
    from pydicom.dataset import Dataset

    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item
