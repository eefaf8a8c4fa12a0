"""The Repository contract (app/core/ports.py), run against every implementation.

Each test takes the `repository` fixture, parametrised over SQLite and MongoDB (SecantusDB, or MONGO_TEST_URL),
so a service can rely on one behaviour whichever store is configured. The property test at the end drives both
stores and a plain Python model through the same random stores, replaces and deletes and requires all three to
agree on every instance and every aggregate.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymongo.errors import AutoReconnect, DocumentTooLarge

from app.core.ports import Repository, RepositoryUnavailable
from app.core.records import InstanceRecord, StoredInstance
from app.repository.mongo import MongoRepository
from app.repository.sqlite import SQLiteRepository
from tests.conftest import make_record, opened_repository
from tests.servers import free_port

Factory = Callable[..., InstanceRecord]

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
ROOT = "1.2.826.0.1.3680043.8.498.7"  # a UID root for test data


def uid(*parts: int) -> str:
    return ".".join([ROOT, *map(str, parts)])


def stored(record: InstanceRecord) -> StoredInstance:
    return StoredInstance(
        record.study_instance_uid,
        record.series_instance_uid,
        record.sop_instance_uid,
        record.sop_class_uid,
        record.transfer_syntax_uid,
        record.storage_key,
        record.size,
    )


def study_aggregates(
    series: int, instances: int, modalities: list[str], classes: list[str]
) -> dict[str, Any]:
    return {
        "number_of_study_related_series": series,
        "number_of_study_related_instances": instances,
        "modalities_in_study": modalities,
        "sop_classes_in_study": classes,
    }


def patient_aggregates(studies: int, series: int, instances: int) -> dict[str, Any]:
    return {
        "number_of_patient_related_studies": studies,
        "number_of_patient_related_series": series,
        "number_of_patient_related_instances": instances,
    }


# --------------------------------------------------------------------------- store and get


async def test_a_stored_instance_reads_back_as_it_was_stored(
    repository: Repository, instance_record: Factory
) -> None:
    record = instance_record(
        StudyInstanceUID=uid(1), SeriesInstanceUID=uid(1, 1), SOPInstanceUID=uid(1, 1, 1)
    )

    assert await repository.store_instance(record) is None
    assert await repository.get_instance(record.sop_instance_uid) == stored(record)
    assert await repository.get_instance(uid(9, 9, 9)) is None


async def test_storing_the_same_sop_instance_uid_again_keeps_one_and_returns_the_previous(
    repository: Repository, instance_record: Factory
) -> None:
    first = instance_record(SOPInstanceUID=uid(1, 1, 1), storage_key="a/first.dcm", size=10)
    second = instance_record(SOPInstanceUID=uid(1, 1, 1), storage_key="a/second.dcm", size=20)
    await repository.store_instance(first)

    assert await repository.store_instance(second) == stored(first)
    assert await repository.get_instance(uid(1, 1, 1)) == stored(second)
    assert await repository.count_instances() == 1
    assert await repository.series_aggregates(second.series_instance_uid) == {
        "number_of_series_related_instances": 1
    }


async def test_a_replace_that_moves_an_instance_to_another_series_corrects_both_series(
    repository: Repository, instance_record: Factory
) -> None:
    study = uid(1)
    for n in (1, 2):
        await repository.store_instance(
            instance_record(StudyInstanceUID=study, SeriesInstanceUID=uid(1, 1), SOPInstanceUID=uid(1, 1, n))
        )
    await repository.store_instance(
        instance_record(
            "MR_small.dcm", StudyInstanceUID=study, SeriesInstanceUID=uid(1, 2), SOPInstanceUID=uid(1, 2, 1)
        )
    )

    moved = instance_record(
        "MR_small.dcm", StudyInstanceUID=study, SeriesInstanceUID=uid(1, 2), SOPInstanceUID=uid(1, 1, 2)
    )
    previous = await repository.store_instance(moved)

    assert previous is not None and previous.series_instance_uid == uid(1, 1)
    assert await repository.series_aggregates(uid(1, 1)) == {"number_of_series_related_instances": 1}
    assert await repository.series_aggregates(uid(1, 2)) == {"number_of_series_related_instances": 2}
    assert await repository.study_aggregates(study) == study_aggregates(2, 3, ["CT", "MR"], [CT, MR])


async def test_aggregates_follow_a_sequence_of_stores_and_deletes(
    repository: Repository, instance_record: Factory
) -> None:
    def ct(study: int, series: int, n: int) -> InstanceRecord:
        return instance_record(
            StudyInstanceUID=uid(study),
            SeriesInstanceUID=uid(study, series),
            SOPInstanceUID=uid(study, series, n),
            PatientID="P1",
        )

    def mr(study: int, series: int, n: int) -> InstanceRecord:
        return instance_record(
            "MR_small.dcm",
            StudyInstanceUID=uid(study),
            SeriesInstanceUID=uid(study, series),
            SOPInstanceUID=uid(study, series, n),
            PatientID="P1",
        )

    for record in (ct(1, 1, 1), ct(1, 1, 2), mr(1, 2, 1), mr(2, 1, 1)):
        await repository.store_instance(record)
    patient = ct(1, 1, 1).patient_key

    assert await repository.study_aggregates(uid(1)) == study_aggregates(2, 3, ["CT", "MR"], [CT, MR])
    assert await repository.study_aggregates(uid(2)) == study_aggregates(1, 1, ["MR"], [MR])
    assert await repository.series_aggregates(uid(1, 1)) == {"number_of_series_related_instances": 2}
    assert await repository.patient_aggregates(patient) == patient_aggregates(2, 3, 4)

    assert await repository.delete_instance(uid(1, 2, 1)) == stored(mr(1, 2, 1))

    assert await repository.study_aggregates(uid(1)) == study_aggregates(1, 2, ["CT"], [CT])
    assert await repository.series_aggregates(uid(1, 2)) is None
    assert await repository.patient_aggregates(patient) == patient_aggregates(2, 2, 3)

    await repository.delete_instance(uid(1, 1, 1))

    assert await repository.study_aggregates(uid(1)) == study_aggregates(1, 1, ["CT"], [CT])
    assert await repository.patient_aggregates(patient) == patient_aggregates(2, 2, 2)


async def test_an_instance_of_another_sop_class_in_a_series_adds_to_the_study_classes_until_deleted(
    repository: Repository, instance_record: Factory
) -> None:
    ct = instance_record(StudyInstanceUID=uid(1), SeriesInstanceUID=uid(1, 1), SOPInstanceUID=uid(1, 1, 1))
    mr_class = instance_record(
        StudyInstanceUID=uid(1), SeriesInstanceUID=uid(1, 1), SOPInstanceUID=uid(1, 1, 2), SOPClassUID=MR
    )
    await repository.store_instance(ct)
    await repository.store_instance(mr_class)
    assert await repository.study_aggregates(uid(1)) == study_aggregates(1, 2, ["CT"], [CT, MR])

    await repository.delete_instance(ct.sop_instance_uid)

    assert await repository.study_aggregates(uid(1)) == study_aggregates(1, 1, ["CT"], [MR])


async def test_a_new_modality_for_a_series_replaces_the_old_one_in_the_study(
    repository: Repository, instance_record: Factory
) -> None:
    await repository.store_instance(
        instance_record(StudyInstanceUID=uid(1), SeriesInstanceUID=uid(1, 1), SOPInstanceUID=uid(1, 1, 1))
    )
    # Another instance of the series says OT: the newest instance's series attributes win, as for any other.
    await repository.store_instance(
        instance_record(
            StudyInstanceUID=uid(1), SeriesInstanceUID=uid(1, 1), SOPInstanceUID=uid(1, 1, 2), Modality="OT"
        )
    )

    assert await repository.study_aggregates(uid(1)) == study_aggregates(1, 2, ["OT"], [CT])


async def test_a_replaced_copy_keeps_or_changes_sop_classes_in_study_as_its_class_says(
    repository: Repository, instance_record: Factory
) -> None:
    one, two = (
        dict(StudyInstanceUID=uid(1), SeriesInstanceUID=uid(1, 1), SOPInstanceUID=uid(1, 1, n)) for n in (1, 2)
    )
    await repository.store_instance(instance_record(**one))
    await repository.store_instance(instance_record(**two))
    await repository.store_instance(instance_record(**two))  # the same class again: nothing to change
    assert await repository.study_aggregates(uid(1)) == study_aggregates(1, 2, ["CT"], [CT])
    await repository.store_instance(instance_record(**two, SOPClassUID=MR))  # another class: both are held
    assert await repository.study_aggregates(uid(1)) == study_aggregates(1, 2, ["CT"], [CT, MR])
    await repository.store_instance(instance_record(**two))  # and back: MR is no longer held
    assert await repository.study_aggregates(uid(1)) == study_aggregates(1, 2, ["CT"], [CT])


async def test_deleting_the_last_instance_removes_its_series_study_and_patient(
    repository: Repository, instance_record: Factory
) -> None:
    record = instance_record(
        StudyInstanceUID=uid(1), SeriesInstanceUID=uid(1, 1), SOPInstanceUID=uid(1, 1, 1)
    )
    await repository.store_instance(record)

    assert await repository.delete_instance(record.sop_instance_uid) == stored(record)

    assert await repository.get_instance(record.sop_instance_uid) is None
    assert await repository.study_aggregates(uid(1)) is None
    assert await repository.series_aggregates(uid(1, 1)) is None
    assert await repository.patient_aggregates(record.patient_key) is None
    assert await repository.find_instances(uid(1)) == []
    assert await repository.count_instances() == 0


async def test_deleting_an_instance_not_held_returns_none_and_changes_nothing(
    repository: Repository, instance_record: Factory
) -> None:
    record = instance_record(SOPInstanceUID=uid(1, 1, 1))
    await repository.store_instance(record)

    assert await repository.delete_instance(uid(9, 9, 9)) is None
    assert await repository.delete_instance(record.sop_instance_uid) is not None
    assert await repository.delete_instance(record.sop_instance_uid) is None
    assert await repository.count_instances() == 0


async def test_a_study_moving_to_another_patient_carries_its_counts(
    repository: Repository, instance_record: Factory
) -> None:
    """Instances of one study arriving under a corrected PatientID: the newest instance's patient owns the
    study, the counts move with it, and the old patient goes once it owns nothing."""
    for n in (1, 2):
        await repository.store_instance(
            instance_record(SeriesInstanceUID=uid(1, 1), SOPInstanceUID=uid(1, 1, n), PatientID="OLD")
        )
    corrected = instance_record(SeriesInstanceUID=uid(1, 2), SOPInstanceUID=uid(1, 2, 1), PatientID="NEW")
    await repository.store_instance(corrected)

    assert await repository.patient_aggregates("OLD\\") is None
    assert await repository.patient_aggregates("NEW\\") == patient_aggregates(1, 2, 3)

    for sop in (uid(1, 1, 1), uid(1, 1, 2), uid(1, 2, 1)):
        await repository.delete_instance(sop)
    assert await repository.patient_aggregates("NEW\\") is None
    assert await repository.study_aggregates(corrected.study_instance_uid) is None


async def test_concurrent_stores_into_one_study_count_every_instance_once(
    repository: Repository, instance_record: Factory
) -> None:
    same = [
        instance_record(StudyInstanceUID=uid(1), SOPInstanceUID=uid(1, 1, 1), storage_key=f"copy-{n}.dcm")
        for n in range(4)
    ]
    others = [
        instance_record(
            "MR_small.dcm",
            StudyInstanceUID=uid(1),
            SeriesInstanceUID=uid(1, 2),
            SOPInstanceUID=uid(1, 2, n),
            PatientID=same[0].patient.values["patient_id"],
        )
        for n in range(4)
    ]

    await asyncio.gather(*(repository.store_instance(r) for r in [*same, *others]))

    study = same[0].study_instance_uid
    assert await repository.count_instances() == 5
    assert await repository.study_aggregates(study) == study_aggregates(2, 5, ["CT", "MR"], [CT, MR])
    assert await repository.series_aggregates(same[0].series_instance_uid) == {
        "number_of_series_related_instances": 1
    }
    assert await repository.patient_aggregates(same[0].patient_key) == patient_aggregates(1, 2, 5)


async def test_get_instances_answers_those_held_in_batches_however_many_are_asked(
    repository: Repository, instance_record: Factory
) -> None:
    records = [instance_record(StudyInstanceUID=uid(4), SOPInstanceUID=uid(4, 1, n)) for n in range(3)]
    for record in records:
        await repository.store_instance(record)
    # More than one `IN` / `$in` batch of UIDs, most not held.
    asked = [uid(4, 9, n) for n in range(1200)] + [r.sop_instance_uid for r in records]
    found = await repository.get_instances(asked)
    assert found == {r.sop_instance_uid: stored(r) for r in records}
    assert await repository.get_instances([]) == {}


async def test_a_record_that_cannot_be_written_fails_alone_among_concurrent_stores(
    repository: Repository, instance_record: Factory
) -> None:
    # SQLite writes concurrent stores in one transaction (group commit): a failing record must not take the
    # others with it, nor leave anything of itself behind.
    records = [instance_record(StudyInstanceUID=uid(3), SOPInstanceUID=uid(3, 1, n)) for n in range(5)]
    broken = records[2]
    broken.instance.values["instance_number"] = object()  # no store can encode this value

    outcomes = await asyncio.gather(*(repository.store_instance(r) for r in records), return_exceptions=True)

    assert [isinstance(o, Exception) for o in outcomes] == [False, False, True, False, False]
    assert await repository.get_instance(broken.sop_instance_uid) is None
    assert await repository.count_instances() == 4
    assert await repository.study_aggregates(uid(3)) == study_aggregates(1, 4, ["CT"], [CT])


async def test_concurrent_stores_replaces_and_deletes_keep_every_aggregate_true(
    repository: Repository, instance_record: Factory
) -> None:
    """Bursts of stores, replaces across series and studies, and deletes at once (as parallel STOW-RS requests
    and C-STOREs make them): after each burst every aggregate matches the instances actually held."""
    rng = random.Random(20240611)
    sops = [uid(9, n) for n in range(6)]
    for _ in range(6):
        burst = []
        for _ in range(10):
            sop = rng.choice(sops)
            if rng.random() < 0.6:
                series = rng.choice(sorted(SERIES))
                study, modality = SERIES[series]
                record = instance_record(
                    rng.choice(sorted(SOURCES)),
                    StudyInstanceUID=study,
                    SeriesInstanceUID=series,
                    SOPInstanceUID=sop,
                    PatientID="P1",
                    Modality=modality,
                )
                burst.append(repository.store_instance(record))
            else:
                burst.append(repository.delete_instance(sop))
        await asyncio.gather(*burst)

        held = await repository.page_instances(None, 100)
        model = Model(
            {i.sop_instance_uid: (i.study_instance_uid, i.series_instance_uid, i.sop_class_uid) for i in held}
        )
        model.study_patient = {study: "P1" for study, _, _ in model.instances.values()}
        observed = await _observed(repository)
        assert {s: a for s, a in observed["studies"].items() if a is not None} == model.studies()
        assert observed["patients"] == model.patients()
        assert observed["series"] == model.series()


# --------------------------------------------------------------------------- finding and paging


async def test_find_instances_answers_a_study_series_or_instance_in_series_then_instance_number_order(
    repository: Repository, instance_record: Factory
) -> None:
    records = [
        instance_record(SeriesInstanceUID=uid(1, 2), SOPInstanceUID=uid(1, 2, 9), InstanceNumber=1),
        instance_record(SeriesInstanceUID=uid(1, 1), SOPInstanceUID=uid(1, 1, 1), InstanceNumber=10),
        instance_record(SeriesInstanceUID=uid(1, 1), SOPInstanceUID=uid(1, 1, 2), InstanceNumber=2),
        instance_record(SeriesInstanceUID=uid(1, 1), SOPInstanceUID=uid(1, 1, 3), InstanceNumber=None),
        instance_record(StudyInstanceUID=uid(2), SeriesInstanceUID=uid(2, 1), SOPInstanceUID=uid(2, 1, 1)),
    ]
    for record in records:
        await repository.store_instance(record)
    study = records[0].study_instance_uid

    found = await repository.find_instances(study)
    # No InstanceNumber sorts first, as NULL does in SQL and null in MongoDB; numbers sort as numbers.
    assert [i.sop_instance_uid for i in found] == [uid(1, 1, 3), uid(1, 1, 2), uid(1, 1, 1), uid(1, 2, 9)]
    assert found[0] == stored(records[3])
    in_series = await repository.find_instances(study, uid(1, 2))
    assert [i.sop_instance_uid for i in in_series] == [uid(1, 2, 9)]
    assert await repository.find_instances(study, uid(1, 1), uid(1, 1, 2)) == [stored(records[2])]
    assert await repository.find_instances(study, uid(1, 2), uid(1, 1, 2)) == []
    assert await repository.find_instances(uid(9)) == []


async def test_instance_datasets_answer_the_stored_json_in_find_instances_order(
    repository: Repository, instance_record: Factory
) -> None:
    # WADO-RS metadata (app/core/retrieve/service.py) is built from these texts without parsing them.
    records = [
        instance_record(SeriesInstanceUID=uid(3, 2), SOPInstanceUID=uid(3, 2, 1), InstanceNumber=1),
        instance_record(SeriesInstanceUID=uid(3, 1), SOPInstanceUID=uid(3, 1, 1), InstanceNumber=7),
        instance_record(SeriesInstanceUID=uid(3, 1), SOPInstanceUID=uid(3, 1, 2), InstanceNumber=2),
    ]
    for record in records:
        await repository.store_instance(record)
    study = records[0].study_instance_uid
    found = await repository.instance_datasets(study)
    assert [(d.series_instance_uid, d.sop_instance_uid) for d in found] == [
        (i.series_instance_uid, i.sop_instance_uid) for i in await repository.find_instances(study)
    ]
    by_uid = {r.sop_instance_uid: r.dataset_json for r in records}
    assert all(d.dataset_json == by_uid[d.sop_instance_uid] for d in found)
    assert [d.sop_instance_uid for d in await repository.instance_datasets(study, uid(3, 1))] == [
        uid(3, 1, 2),
        uid(3, 1, 1),
    ]
    assert [
        d.sop_instance_uid for d in await repository.instance_datasets(study, uid(3, 2), uid(3, 2, 1))
    ] == [uid(3, 2, 1)]
    assert await repository.instance_datasets(uid(9)) == []


async def test_page_instances_pages_through_everything_in_uid_order(
    repository: Repository, instance_record: Factory
) -> None:
    sops = [uid(1, 1, n) for n in (5, 12, 1, 7, 3, 10, 2)]
    for sop in sops:
        await repository.store_instance(instance_record(SOPInstanceUID=sop))

    pages: list[list[str]] = []
    after: str | None = None
    while page := await repository.page_instances(after, 3):
        pages.append([i.sop_instance_uid for i in page])
        after = page[-1].sop_instance_uid

    assert await repository.page_instances(None, 0) == []
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [sop for p in pages for sop in p] == sorted(sops)  # string order, as UIDs are compared
    assert await repository.count_instances() == len(sops)


async def test_count_instances_follows_stores_and_deletes(
    repository: Repository, instance_record: Factory
) -> None:
    assert await repository.count_instances() == 0
    for n in range(3):
        await repository.store_instance(instance_record(SOPInstanceUID=uid(1, 1, n)))
    await repository.store_instance(instance_record(SOPInstanceUID=uid(1, 1, 0)))
    assert await repository.count_instances() == 3
    await repository.delete_instance(uid(1, 1, 1))
    assert await repository.count_instances() == 2


# --------------------------------------------------------------------------- lifecycle


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


# --------------------------------------------------------------------------- MongoDB layout and repair


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


# --------------------------------------------------------------------------- both stores against a model

SOPS = [uid(1, 0, n) for n in range(5)]
# A series belongs to one study and has one modality; patients may change within a study (corrected IDs).
SERIES = {uid(2, 1): (uid(2), "CT"), uid(2, 2): (uid(2), "MR"), uid(3, 1): (uid(3), "CT")}
PATIENTS = ["P1", "P2"]
SOURCES = {"CT_small.dcm": CT, "MR_small.dcm": MR}

store_op = st.tuples(
    st.just("store"),
    st.sampled_from(SOPS),
    st.sampled_from(sorted(SERIES)),
    st.sampled_from(PATIENTS),
    st.sampled_from(sorted(SOURCES)),
    st.integers(min_value=1, max_value=3),
)
delete_op = st.tuples(st.just("delete"), st.sampled_from(SOPS))
operations = st.lists(st.one_of(store_op, store_op, delete_op), min_size=1, max_size=12)


@dataclass
class Model:
    """What the aggregates must be, computed the obvious way from the instances held."""

    instances: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # sop -> study, series, class
    study_patient: dict[str, str] = field(default_factory=dict)

    def remove(self, sop: str) -> None:
        study = self.instances.pop(sop)[0]
        if not any(s == study for s, _, _ in self.instances.values()):
            del self.study_patient[study]

    def studies(self) -> dict[str, dict[str, Any]]:
        out = {}
        for study in self.study_patient:
            held = [(series, cls) for s, series, cls in self.instances.values() if s == study]
            series = {se for se, _ in held}
            out[study] = study_aggregates(
                len(series), len(held), sorted({SERIES[se][1] for se in series}), sorted({c for _, c in held})
            )
        return out

    def series(self) -> dict[str, dict[str, Any] | None]:
        out: dict[str, dict[str, Any] | None] = {}
        for series in sorted(SERIES):
            held = sum(1 for _, se, _ in self.instances.values() if se == series)
            out[series] = {"number_of_series_related_instances": held} if held else None
        return out

    def patients(self) -> dict[str, dict[str, Any] | None]:
        studies = self.studies()
        out: dict[str, dict[str, Any] | None] = {}
        for patient in PATIENTS:
            owned = [studies[s] for s, p in self.study_patient.items() if p == patient]
            out[f"{patient}\\"] = (
                patient_aggregates(
                    len(owned),
                    sum(s["number_of_study_related_series"] for s in owned),
                    sum(s["number_of_study_related_instances"] for s in owned),
                )
                if owned
                else None
            )
        return out


async def _observed(repository: Repository) -> dict[str, Any]:
    return {
        "instances": await repository.page_instances(None, 100),
        "studies": {s: await repository.study_aggregates(s) for s in sorted({s for s, _ in SERIES.values()})},
        "series": {s: await repository.series_aggregates(s) for s in sorted(SERIES)},
        "patients": {f"{p}\\": await repository.patient_aggregates(f"{p}\\") for p in PATIENTS},
    }


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=operations)
async def test_random_stores_replaces_and_deletes_leave_both_stores_agreeing_with_the_model(
    ops: list[tuple[Any, ...]], mongo_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    directory = tmp_path_factory.mktemp("property")
    model = Model()
    async with (
        opened_repository("sqlite", directory) as sqlite,
        opened_repository("mongo", directory, mongo_url) as mongo,
    ):
        for op in ops:
            if op[0] == "store":
                _, sop, series, patient, source, number = op
                study, modality = SERIES[series]
                record = make_record(
                    source,
                    StudyInstanceUID=study,
                    SeriesInstanceUID=series,
                    SOPInstanceUID=sop,
                    PatientID=patient,
                    Modality=modality,
                    InstanceNumber=number,
                )
                expected_previous = sop in model.instances
                if expected_previous:
                    model.remove(sop)
                model.instances[sop] = (study, series, SOURCES[source])
                model.study_patient[study] = patient
                for repository in (sqlite, mongo):
                    assert (await repository.store_instance(record) is not None) == expected_previous
            else:
                _, sop = op
                if sop in model.instances:
                    model.remove(sop)
                for repository in (sqlite, mongo):
                    await repository.delete_instance(sop)

            from_sqlite, from_mongo = await _observed(sqlite), await _observed(mongo)
            assert from_sqlite == from_mongo
            assert [i.sop_instance_uid for i in from_sqlite["instances"]] == sorted(model.instances)
            assert {s: a for s, a in from_sqlite["studies"].items() if a is not None} == model.studies()
            assert from_sqlite["patients"] == model.patients()
            assert from_sqlite["series"] == model.series()
