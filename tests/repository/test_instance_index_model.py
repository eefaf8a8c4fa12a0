"""The InstanceIndex contract against a plain model: after concurrent bursts and random sequences of stores,
replaces and deletes, every aggregate of SQLite and MongoDB is what the instances actually held make it.

The property test drives both stores and a plain Python model through the same random stores, replaces and
deletes and requires all three to agree on every instance and every aggregate.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.core.ports import Repository
from tests.conftest import make_record, opened_repository
from tests.repository.conftest import CT, MR, Factory, patient_aggregates, study_aggregates, uid


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


# --------------------------------------------------------------------------- both stores against a model

SOPS = [uid(1, 0, n) for n in range(5)]
# A series belongs to one study and has one modality; patients may change within a study (corrected IDs).
SERIES = {uid(2, 1): (uid(2), "CT"), uid(2, 2): (uid(2), "MR"), uid(3, 1): (uid(3), "CT")}
PATIENTS = ["P1", "P2"]
SOURCES = {"CT_small.dcm": CT, "MR_small.dcm": MR}

# Each example opens both stores: no deadline, and function-scoped fixtures shared by the examples are fine.
BOTH_STORES = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

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


async def _observed(
    repository: Repository, studies: Iterable[str] = sorted({s for s, _ in SERIES.values()})
) -> dict[str, Any]:
    return {
        "instances": await repository.page_instances(None, 100),
        "studies": {s: await repository.study_aggregates(s) for s in studies},
        "series": {s: await repository.series_aggregates(s) for s in sorted(SERIES)},
        "patients": {f"{p}\\": await repository.patient_aggregates(f"{p}\\") for p in PATIENTS},
    }


@BOTH_STORES
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


# --------------------------------------------------------------------------- series re-sent under other studies

STUDIES = [uid(2), uid(3)]
moving_store = st.tuples(
    st.just("store"), st.sampled_from(SOPS), st.sampled_from(sorted(SERIES)), st.sampled_from(STUDIES)
)
moving_operations = st.lists(st.one_of(moving_store, moving_store, delete_op), min_size=1, max_size=12)


@BOTH_STORES
@given(ops=moving_operations)
async def test_series_re_sent_under_other_studies_keep_both_stores_agreeing_and_end_as_the_model(
    ops: list[tuple[Any, ...]], mongo_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Copies that name another study for their series (a study being corrected, or a modality's mistake):
    while a series' instances are split over studies, it is counted in the study its newest instance names, on
    both stores alike, and every study's and the patient's counts add up; once each series is re-sent whole
    under one study, every aggregate is what its instances make it."""
    directory = tmp_path_factory.mktemp("moves")

    def record(sop: str, series: str, study: str) -> Any:
        return make_record(
            "CT_small.dcm", StudyInstanceUID=study, SeriesInstanceUID=series, SOPInstanceUID=sop,
            PatientID="P1", Modality=SERIES[series][1],
        )  # fmt: skip

    async with (
        opened_repository("sqlite", directory) as sqlite,
        opened_repository("mongo", directory, mongo_url) as mongo,
    ):
        stores = (sqlite, mongo)
        for op in ops:
            for repository in stores:
                if op[0] == "store":
                    await repository.store_instance(record(*op[1:]))
                else:
                    await repository.delete_instance(op[1])
            from_sqlite, from_mongo = await _observed(sqlite, STUDIES), await _observed(mongo, STUDIES)
            assert from_sqlite == from_mongo
            held = from_sqlite["instances"]
            studies = {s: a for s, a in from_sqlite["studies"].items() if a is not None}
            assert {s: a["number_of_study_related_instances"] for s, a in studies.items()} == {
                s: sum(1 for i in held if i.study_instance_uid == s)
                for s in {i.study_instance_uid for i in held}
            }
            assert from_sqlite["patients"]["P1\\"] == (
                patient_aggregates(
                    len(studies),
                    sum(a["number_of_study_related_series"] for a in studies.values()),
                    len(held),
                )
                if held
                else None
            )

        # Each series re-sent whole under the study its newest copy names.
        held = (await _observed(sqlite, STUDIES))["instances"]
        newest = {i.series_instance_uid: i.study_instance_uid for i in held}
        for i in held:
            for repository in stores:
                await repository.store_instance(
                    record(i.sop_instance_uid, i.series_instance_uid, newest[i.series_instance_uid])
                )
        settled = Model(
            {i.sop_instance_uid: (newest[i.series_instance_uid], i.series_instance_uid, CT) for i in held}
        )
        settled.study_patient = {study: "P1" for study in newest.values()}
        for repository in stores:
            observed = await _observed(repository, STUDIES)
            assert {s: a for s, a in observed["studies"].items() if a is not None} == settled.studies()
            assert observed["series"] == settled.series()
            assert observed["patients"] == settled.patients()
