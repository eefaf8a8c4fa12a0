"""The Search role's `orderby` (an extension, app/core/query/ordering.py) on SQLite and MongoDB alike: every
sortable key orders the whole match list both ways, with studies lacking the value first ascending and last
descending and ties in insertion order (in the last key's direction), so `offset` pages follow one another with
no study twice or missing; and an index serves each order, so a sorted page does not sort the archive.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import pytest

from app.api.qido_params import parse_qido
from app.core.dicom.attributes import Level
from app.core.ports import Repository
from app.core.query.model import QueryModel
from app.core.query.ordering import SORTABLE
from app.repository.sqlite.repository import SQLiteRepository
from tests.repository.conftest import MR, Factory, query_plan, uid

# (PatientName, PatientID, AccessionNumber, StudyDescription, StudyDate, StudyTime, series, instances per series)
STUDIES: list[tuple[Any, ...]] = [
    ("Doe^John", "P2", "A3", "chest", "20200105", "101500", 1, 2),
    ("doe^jane", "P1", None, "Head", "20200105", "080000", 2, 1),
    ("Smith^Anna", "P3", "A1", None, "20190101", None, 1, 1),
    ("Able^Zed", "P2", "A2", "chest", None, None, 1, 3),
    ("Doe^John", "P5", "A5", "abdomen", "20200105", "101500", 2, 2),
    (None, "P4", "A4", "Head", "20210301", "000000", 1, 1),
    ("Zulu^Y", "P0", "A0", "chest", "20200105", None, 1, 1),
]
# The value each key sorts by, as the stores index it (names upper-cased, StudyDate with its time, no time = 0h).
SORTED_BY: dict[str, Any] = {
    "PatientName": lambda s: s[0] and s[0].upper(),
    "PatientID": lambda s: s[1],
    "AccessionNumber": lambda s: s[2],
    "StudyDescription": lambda s: s[3],
    "StudyDate": lambda s: s[4] and s[4] + (s[5] or "000000") + ".000000",
    "NumberOfStudyRelatedSeries": lambda s: s[6],
    "NumberOfStudyRelatedInstances": lambda s: s[6] * s[7],
}


async def _store_studies(repository: Repository, instance_record: Factory) -> None:
    for n, (name, pid, accession, description, date, time, series, per_series) in enumerate(STUDIES):
        for se in range(series):
            for i in range(per_series):
                await repository.store_instance(instance_record(
                    "MR_small.dcm", SOPClassUID=MR, StudyInstanceUID=uid(n), SeriesInstanceUID=uid(n, se),
                    SOPInstanceUID=uid(n, se, i), PatientName=name, PatientID=pid, AccessionNumber=accession,
                    StudyDescription=description, StudyDate=date, StudyTime=time,
                ))


def expected(orderby: str) -> list[str]:
    """The studies in the order `orderby` asks for, worked out in Python: stable sorts from the last key to the
    first, after insertion order in the last key's direction; a missing value below every other."""
    keys = [(item.lstrip("-"), item.startswith("-")) for item in orderby.split(",") if item != "-StudyTime"]
    order = sorted(range(len(STUDIES)), reverse=keys[-1][1])
    for keyword, descending in reversed(keys):
        value = SORTED_BY[keyword]
        order.sort(key=lambda n: (value(STUDIES[n]) is not None, value(STUDIES[n]) or 0), reverse=descending)
    return [uid(n) for n in order]


def ordered(orderby: str, *params: tuple[str, str], limit: int = 100) -> QueryModel:
    return parse_qido(Level.STUDY, [("orderby", orderby), *params], default_limit=limit).model


def uids(rows: list[dict[str, Any]]) -> list[str]:
    return [row["0020000D"]["Value"][0] for row in rows]


ORDERS = [f"{sign}{keyword}" for keyword in SORTABLE[Level.STUDY] for sign in ("", "-")] + [
    "-StudyDate,-StudyTime",
    "PatientName,-StudyDate",
    "StudyDescription,PatientID",
    "-NumberOfStudyRelatedInstances,AccessionNumber",
]


async def test_each_order_sorts_the_whole_match_list(repository: Repository, instance_record: Factory) -> None:
    await _store_studies(repository, instance_record)
    for orderby in ORDERS:
        result = await repository.search(ordered(orderby))
        assert uids(result.rows) == expected(orderby), orderby


async def test_pages_in_order_follow_one_another_without_repeats(
    repository: Repository, instance_record: Factory
) -> None:
    await _store_studies(repository, instance_record)
    for orderby in ("-StudyDate,-StudyTime", "PatientName", "-NumberOfStudyRelatedSeries"):
        pages: list[str] = []
        model = ordered(orderby, limit=3)
        for offset in range(0, len(STUDIES), 3):
            page = await repository.search(dataclasses.replace(model, offset=offset))
            assert page.remaining == max(len(STUDIES) - offset - 3, 0)
            pages += uids(page.rows)
        assert pages == expected(orderby), orderby
    # A filter and an order together: the matches only, still in order.
    narrowed = await repository.search(ordered("-StudyDate", ("PatientName", "DOE*"), limit=2))
    assert uids(narrowed.rows) == [u for u in expected("-StudyDate") if u in {uid(0), uid(1), uid(4)}][:2]
    assert narrowed.remaining == 1


async def test_a_re_sent_instance_keeps_its_place_and_its_study_s(repository: Repository, instance_record: Factory) -> None:
    """A copy sent again replaces the instance where it stood: studies tied on the order keep their insertion
    order (a page does not shift under a client paging through), and the study's first stored instance, whose
    header answers `includefield` for what no study column holds, is still that instance, now as re-sent."""
    for n in range(3):
        await repository.store_instance(instance_record(
            "MR_small.dcm", SOPClassUID=MR, StudyInstanceUID=uid(n), SeriesInstanceUID=uid(n, 0),
            SOPInstanceUID=uid(n, 0, 0), PatientName="Tie^Same", Manufacturer="FIRST",
        ))
    await repository.store_instance(instance_record(
        "MR_small.dcm", SOPClassUID=MR, StudyInstanceUID=uid(0), SeriesInstanceUID=uid(0, 0),
        SOPInstanceUID=uid(0, 0, 1), PatientName="Tie^Same", Manufacturer="SECOND",
    ))
    # Study 1's only instance, and study 0's first, sent again.
    for n in (1, 0):
        await repository.store_instance(instance_record(
            "MR_small.dcm", SOPClassUID=MR, StudyInstanceUID=uid(n), SeriesInstanceUID=uid(n, 0),
            SOPInstanceUID=uid(n, 0, 0), PatientName="Tie^Same", Manufacturer="RE-SENT",
        ))

    result = await repository.search(ordered("PatientName", ("includefield", "Manufacturer")))

    assert uids(result.rows) == [uid(0), uid(1), uid(2)]
    assert [row["00080070"]["Value"] for row in result.rows] == [["RE-SENT"], ["RE-SENT"], ["FIRST"]]


# Each key both ways, and with a match on the key itself: one stretch of one index, read in order.
PLANNED = [(orderby, ()) for orderby in ORDERS[: 2 * len(SORTABLE[Level.STUDY])]] + [
    ("-StudyDate,-StudyTime", (("StudyDate", "20200101-20201231"),)),
    ("PatientName", (("PatientName", "DOE*"),)),
]


@pytest.mark.parametrize(("orderby", "params"), PLANNED)
async def test_an_index_serves_each_order(
    repository: Repository, instance_record: Factory, orderby: str, params: tuple[tuple[str, str], ...]
) -> None:
    await _store_studies(repository, instance_record)
    plan = await query_plan(repository, ordered(orderby, *params, limit=3))
    if isinstance(repository, SQLiteRepository):
        assert not any("TEMP B-TREE" in step for step in plan), plan
        assert any("USING INDEX" in step for step in plan), plan
    else:
        assert "IXSCAN" in plan[0] and "studies_order_" in plan[0], plan
        # SecantusDB sorts in memory after any bounded index scan, even one already in the sort's order (a real
        # mongod reads the stretch backwards and needs no SORT), so there a match is asked only to use the index.
        if not params or os.environ.get("MONGO_TEST_URL"):
            assert '"SORT"' not in plan[0], plan
