"""Matching on DICOM JSON held whole (workitems, worklist items): the query model's rules, in memory."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.core.query.evaluate import identifier_keys, matches_all, parse_matches
from app.core.query.model import QueryError

WORKITEM = {
    "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
    "00100020": {"vr": "LO", "Value": ["PID-1"]},
    "00741000": {"vr": "CS", "Value": ["SCHEDULED"]},
    "00404005": {"vr": "DT", "Value": ["20261206093000"]},
    "00400100": {
        "vr": "SQ",
        "Value": [
            {"00400001": {"vr": "AE", "Value": ["CT1"]}, "00080060": {"vr": "CS", "Value": ["CT"]}},
            {"00400001": {"vr": "AE", "Value": ["MR1"]}, "00080060": {"vr": "CS", "Value": ["MR"]}},
        ],
    },
}


def test_a_person_name_wildcard_matches_regardless_of_case() -> None:
    assert matches_all(WORKITEM, parse_matches({"PatientName": "doe*"}))
    assert not matches_all(WORKITEM, parse_matches({"PatientName": "Smith*"}))


def test_a_date_time_range_matches_at_the_precision_it_is_given() -> None:
    assert matches_all(WORKITEM, parse_matches({"ScheduledProcedureStepStartDateTime": "20261206-20261206"}))
    assert matches_all(WORKITEM, parse_matches({"ScheduledProcedureStepStartDateTime": "2026120609-"}))
    assert not matches_all(WORKITEM, parse_matches({"ScheduledProcedureStepStartDateTime": "20261207-"}))


def test_keys_in_one_sequence_must_match_the_same_item() -> None:
    same_item = {"ScheduledProcedureStepSequence.ScheduledStationAETitle": "CT1", "00400100.00080060": "CT"}
    crossed = {"ScheduledProcedureStepSequence.ScheduledStationAETitle": "CT1", "00400100.00080060": "MR"}
    assert matches_all(WORKITEM, parse_matches(same_item))
    assert not matches_all(WORKITEM, parse_matches(crossed))


def test_a_missing_attribute_matches_only_universally() -> None:
    assert matches_all(WORKITEM, parse_matches({"AccessionNumber": ""}))
    assert not matches_all(WORKITEM, parse_matches({"AccessionNumber": "A1"}))


def test_a_list_of_codes_matches_any_of_them() -> None:
    assert matches_all(WORKITEM, parse_matches({"ProcedureStepState": "IN PROGRESS\\SCHEDULED"}))


def test_a_malformed_key_or_value_is_a_query_error() -> None:
    with pytest.raises(QueryError):
        parse_matches({"NoSuchKeyword": "x"})
    with pytest.raises(QueryError):
        parse_matches({"ScheduledProcedureStepSequence": "x"})  # a sequence is matched through its items
    with pytest.raises(QueryError):
        parse_matches({"ScheduledProcedureStepSequence.ScheduledProcedureStepStartDate": "2026-13-01"})
    with pytest.raises(QueryError):
        parse_matches({"ScheduledProcedureStepStartDateTime": "yesterday"})
    with pytest.raises(QueryError):
        parse_matches({"ScheduledProcedureStepStartDateTime": "20261207-20261206"})
    assert parse_matches({"ScheduledProcedureStepStartDateTime": "2026120610-20261206"})  # one day, from 10:00


def test_an_identifier_becomes_keys_with_its_sequence_items_as_paths() -> None:
    identifier = {
        "00080005": {"vr": "CS", "Value": ["ISO_IR 100"]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "DOE*"}]},
        "00100020": {"vr": "LO"},
        "00400100": {"vr": "SQ", "Value": [{"00400001": {"vr": "AE", "Value": ["CT1"]}, "00080060": {"vr": "CS"}}]},
    }
    assert identifier_keys(identifier) == {"00100010": "DOE*", "00400100.00400001": "CT1"}


names = st.text(alphabet="ABCDEFGH^", min_size=1, max_size=12).filter(lambda s: s.strip("^"))
patterns = st.text(alphabet="ABCD*?", min_size=1, max_size=6).filter(lambda s: s.strip("*"))


@given(name=names, pattern=patterns)
def test_wildcard_matching_agrees_with_a_plain_regular_expression(name: str, pattern: str) -> None:
    """PS3.4 C.2.2.2.4: '*' any run of characters, '?' one character, everything else literal."""
    dataset = {"00100010": {"vr": "PN", "Value": [{"Alphabetic": name}]}}
    expected = re.fullmatch(pattern.replace("*", ".*").replace("?", "."), name.rstrip("^")) is not None
    assert matches_all(dataset, parse_matches({"PatientName": pattern})) == expected


dates = st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2099, 12, 31)).map(lambda d: d.strftime("%Y%m%d"))


@given(value=dates, low=st.none() | dates, high=st.none() | dates)
def test_date_range_matching_is_inclusive_at_both_ends(value: str, low: str | None, high: str | None) -> None:
    if (low is None and high is None) or (low and high and low > high):
        return
    dataset = {"00400002": {"vr": "DA", "Value": [value]}}
    key = f"{low or ''}-{high or ''}"
    expected = (low is None or value >= low) and (high is None or value <= high)
    assert matches_all(dataset, parse_matches({"ScheduledProcedureStepStartDate": key})) == expected
