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
from tests.repository.conftest import CT, Factory, patient_aggregates, study_aggregates, uid


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


def _item(**values: Any) -> Any:
    from pydicom.dataset import Dataset

    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item
