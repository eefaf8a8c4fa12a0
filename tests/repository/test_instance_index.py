"""The InstanceIndex part of the Repository contract (app/core/ports.py): store, replace, delete, find and page
instances, and the aggregates kept with them, on SQLite and MongoDB alike.

Each test takes the `repository` fixture, parametrised over SQLite and MongoDB (SecantusDB, or MONGO_TEST_URL),
so a service can rely on one behaviour whichever store is configured. The aggregates are also held against a
plain model under concurrent bursts and random sequences (test_instance_index_model.py).
"""

from __future__ import annotations

import asyncio

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from app.api.qido_params import parse_qido
from app.core.dicom.attributes import Level
from app.core.ports import Repository
from app.core.records import InstanceRecord
from tests.repository.conftest import CT, MR, Factory, patient_aggregates, stored, study_aggregates, uid

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


async def test_a_replace_that_empties_its_series_takes_the_series_modality_out_of_the_study(
    repository: Repository, instance_record: Factory
) -> None:
    """The copy is counted in its new series before its predecessor leaves the old one (so a series or study it
    stays in keeps its place): the old series, emptied then, still takes its modality with it."""
    study = uid(1)
    await repository.store_instance(
        instance_record(StudyInstanceUID=study, SeriesInstanceUID=uid(1, 1), SOPInstanceUID=uid(1, 1, 1))
    )
    await repository.store_instance(
        instance_record(StudyInstanceUID=study, SeriesInstanceUID=uid(1, 2), SOPInstanceUID=uid(1, 2, 1), Modality="MR")
    )

    # The same class, in the same study: the study's SOP classes are left as they are, its modalities are not.
    await repository.store_instance(
        instance_record(StudyInstanceUID=study, SeriesInstanceUID=uid(1, 2), SOPInstanceUID=uid(1, 1, 1), Modality="MR")
    )

    assert await repository.series_aggregates(uid(1, 1)) is None
    assert await repository.study_aggregates(study) == study_aggregates(1, 2, ["MR"], [CT])


async def test_a_copy_naming_another_study_for_its_series_moves_the_series_with_its_counts(
    repository: Repository, instance_record: Factory
) -> None:
    """The series of a re-sent instance that now names another study (a correction) is counted there, and no
    longer in its old study, whichever patient each study is of."""
    await repository.store_instance(
        instance_record(StudyInstanceUID=uid(1), SeriesInstanceUID=uid(1, 0), SOPInstanceUID=uid(1, 0, 1))
    )
    await repository.store_instance(
        instance_record(StudyInstanceUID=uid(1), SeriesInstanceUID=uid(1, 1), SOPInstanceUID=uid(1, 1, 1))
    )
    await repository.store_instance(
        instance_record(
            StudyInstanceUID=uid(2), SeriesInstanceUID=uid(2, 2), SOPInstanceUID=uid(2, 2, 1), PatientID="OTHER"
        )
    )

    corrected = instance_record(
        StudyInstanceUID=uid(2), SeriesInstanceUID=uid(1, 1), SOPInstanceUID=uid(1, 1, 1), PatientID="OTHER"
    )
    previous = await repository.store_instance(corrected)

    assert previous is not None and previous.study_instance_uid == uid(1)
    assert await repository.study_aggregates(uid(1)) == study_aggregates(1, 1, ["CT"], [CT])
    assert await repository.study_aggregates(uid(2)) == study_aggregates(2, 2, ["CT"], [CT])
    assert await repository.patient_aggregates(corrected.patient_key) == patient_aggregates(1, 2, 2)
    held = instance_record(SOPInstanceUID=uid(1, 0, 1))
    assert await repository.patient_aggregates(held.patient_key) == patient_aggregates(1, 1, 1)


async def test_a_series_re_sent_one_instance_at_a_time_under_another_study_moves_there_with_its_counts(
    repository: Repository, instance_record: Factory
) -> None:
    """A study corrected by re-sending a series under the right Study Instance UID, SOP Instance UIDs kept: the
    series is counted in the study its newest instance names from the first copy on, and no longer in its old
    study; once every instance is re-sent the old study holds only what was left in it."""
    await repository.store_instance(
        instance_record(
            "MR_small.dcm", StudyInstanceUID=uid(1), SeriesInstanceUID=uid(1, 0), SOPInstanceUID=uid(1, 0, 1)
        )
    )
    for n in (1, 2, 3):
        await repository.store_instance(
            instance_record(StudyInstanceUID=uid(1), SeriesInstanceUID=uid(1, 1), SOPInstanceUID=uid(1, 1, n))
        )
    patient = instance_record().patient_key

    for n in (1, 2, 3):
        await repository.store_instance(
            instance_record(StudyInstanceUID=uid(2), SeriesInstanceUID=uid(1, 1), SOPInstanceUID=uid(1, 1, n))
        )
        left_in_study_1 = study_aggregates(1, 4 - n, ["MR"], [CT, MR] if n < 3 else [MR])
        assert await repository.study_aggregates(uid(1)) == left_in_study_1
        assert await repository.study_aggregates(uid(2)) == study_aggregates(1, n, ["CT"], [CT])
        assert await repository.series_aggregates(uid(1, 1)) == {"number_of_series_related_instances": 3}
        assert await repository.patient_aggregates(patient) == patient_aggregates(2, 2, 4)


async def test_a_series_whose_moving_copy_is_deleted_goes_back_to_the_study_of_its_other_instances(
    repository: Repository, instance_record: Factory
) -> None:
    """The one copy that moved a series to another study is deleted, and that study goes with it: the series is
    counted again where its other instances are, so that the study made again under that UID later does not hold
    a series it never counted."""
    for n in (1, 2, 3):
        await repository.store_instance(
            instance_record(StudyInstanceUID=uid(1), SeriesInstanceUID=uid(1, 1), SOPInstanceUID=uid(1, 1, n))
        )
    await repository.store_instance(
        instance_record(StudyInstanceUID=uid(2), SeriesInstanceUID=uid(1, 1), SOPInstanceUID=uid(1, 1, 1))
    )
    await repository.delete_instance(uid(1, 1, 1))
    patient = instance_record().patient_key

    assert await repository.study_aggregates(uid(2)) is None
    assert await repository.study_aggregates(uid(1)) == study_aggregates(1, 2, ["CT"], [CT])
    assert await repository.patient_aggregates(patient) == patient_aggregates(1, 1, 2)
    # Another series makes the study again; the first one's copy then moves there once more.
    await repository.store_instance(
        instance_record(StudyInstanceUID=uid(2), SeriesInstanceUID=uid(2, 1), SOPInstanceUID=uid(2, 1, 1))
    )
    assert await repository.study_aggregates(uid(2)) == study_aggregates(1, 1, ["CT"], [CT])
    await repository.store_instance(
        instance_record(StudyInstanceUID=uid(2), SeriesInstanceUID=uid(1, 1), SOPInstanceUID=uid(1, 1, 2))
    )
    assert await repository.study_aggregates(uid(1)) == study_aggregates(0, 1, [], [CT])
    assert await repository.study_aggregates(uid(2)) == study_aggregates(2, 2, ["CT"], [CT])
    assert await repository.patient_aggregates(patient) == patient_aggregates(2, 2, 3)
    for sop in (uid(1, 1, 2), uid(1, 1, 3), uid(2, 1, 1)):
        await repository.delete_instance(sop)
    assert await repository.study_aggregates(uid(1)) is None
    assert await repository.study_aggregates(uid(2)) is None
    assert await repository.series_aggregates(uid(1, 1)) is None
    assert await repository.patient_aggregates(patient) is None


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


async def test_each_instance_of_a_series_leaves_its_levels_matching_what_the_newest_says(
    repository: Repository, instance_record: Factory
) -> None:
    """The patient, study and series rows are written only when an instance changes them (unit_of_work._upsert):
    instances that repeat them leave every value matchable, and one that changes them, single values and
    sequence-borne ones alike, makes the new ones the ones matched."""

    async def matches(level: Level, *params: tuple[str, str]) -> int:
        return len((await repository.search(parse_qido(level, list(params), default_limit=10).model)).rows)

    series = dict(StudyInstanceUID=uid(1), SeriesInstanceUID=uid(1, 1))
    first = dict(
        PatientName="DOE^JOHN", SeriesDescription="FIRST", OtherPatientIDsSequence=_other_patient_ids("OLD-ID")
    )
    for n in (1, 2, 3):
        await repository.store_instance(instance_record(**series, SOPInstanceUID=uid(1, 1, n), **first))
        assert await matches(Level.SERIES, ("SeriesDescription", "FIRST")) == 1
        assert await matches(Level.STUDY, ("PatientName", "DOE"), ("fuzzymatching", "true")) == 1
        assert await matches(Level.STUDY, ("OtherPatientIDsSequence.PatientID", "OLD-ID")) == 1

    await repository.store_instance(
        instance_record(
            **series,
            SOPInstanceUID=uid(1, 1, 4),
            PatientName="ROE^JANE",
            SeriesDescription="SECOND",
            OtherPatientIDsSequence=_other_patient_ids("NEW-ID"),
        )
    )

    assert await matches(Level.SERIES, ("SeriesDescription", "FIRST")) == 0
    assert await matches(Level.SERIES, ("SeriesDescription", "SECOND")) == 1
    assert await matches(Level.STUDY, ("PatientName", "DOE"), ("fuzzymatching", "true")) == 0
    assert await matches(Level.STUDY, ("PatientName", "ROE"), ("fuzzymatching", "true")) == 1
    assert await matches(Level.STUDY, ("OtherPatientIDsSequence.PatientID", "OLD-ID")) == 0
    assert await matches(Level.STUDY, ("OtherPatientIDsSequence.PatientID", "NEW-ID")) == 1

    # Two at once, in one transaction, changing a value that is only returned (PatientAge, not matched).
    await asyncio.gather(
        *(
            repository.store_instance(
                instance_record(**series, SOPInstanceUID=uid(1, 1, n), PatientName="ROE^JANE", PatientAge="045Y")
            )
            for n in (5, 6)
        )
    )
    [study] = (await repository.search(parse_qido(Level.STUDY, [("includefield", "PatientAge")]).model)).rows
    assert study["00101010"]["Value"] == ["045Y"]
    assert await matches(Level.STUDY, ("PatientName", "ROE"), ("fuzzymatching", "true")) == 1
    assert await repository.series_aggregates(uid(1, 1)) == {"number_of_series_related_instances": 6}


def _other_patient_ids(patient_id: str) -> Sequence:
    item = Dataset()
    item.PatientID = patient_id
    return Sequence([item])


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
