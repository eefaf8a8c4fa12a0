"""The workflow door's parsers (app/api/workflow_input.py) over any input: a body is one DICOM JSON data set or
a 400 saying why, never an exception that would become a 500; an AE title from a URL is a valid one or a 400."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.api.errors import DicomWebError
from app.api.workflow_input import DatasetError, checked_ae_title, parse_dataset

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
TAG = st.from_regex(r"[0-9A-Fa-f]{8}", fullmatch=True)
TEXT_ELEMENT = st.fixed_dictionaries(
    {"vr": st.sampled_from(["LO", "CS", "DT", "UI"]), "Value": st.lists(st.text(max_size=8), max_size=3)}
)
DATASETS = st.recursive(
    st.dictionaries(TAG, TEXT_ELEMENT, max_size=4),
    lambda inner: st.dictionaries(
        TAG, st.builds(lambda items: {"vr": "SQ", "Value": items}, st.lists(inner, max_size=2)), max_size=3
    ),
    max_leaves=10,
)


@given(JSON)
def test_any_json_body_is_a_data_set_or_a_reason(value: Any) -> None:
    try:
        dataset = parse_dataset(json.dumps(value).encode())
    except DatasetError as exc:
        assert str(exc)
        return
    assert isinstance(dataset, dict)


@given(st.binary(max_size=64))
def test_any_bytes_are_a_data_set_or_a_reason(body: bytes) -> None:
    with contextlib.suppress(DatasetError):
        parse_dataset(body, optional=True)


@given(DATASETS, st.booleans())
def test_a_data_set_reads_back_with_upper_case_tags_alone_or_in_an_array(
    dataset: dict[str, Any], wrapped: bool
) -> None:
    body = json.dumps([dataset] if wrapped else dataset).encode()
    assert parse_dataset(body) == _upper(dataset)


def _upper(dataset: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for tag, element in dataset.items():
        if element["vr"] == "SQ":
            element = {**element, "Value": [_upper(item) for item in element["Value"]]}
        out[tag.upper()] = element
    return out


def test_a_data_set_nested_past_the_limit_is_refused() -> None:
    body: dict[str, Any] = {}
    for _ in range(40):
        body = {"00400275": {"vr": "SQ", "Value": [body]}}
    with pytest.raises(DatasetError, match="nested"):
        parse_dataset(json.dumps(body).encode())


@given(st.text(max_size=24))
def test_an_ae_title_from_a_url_is_valid_or_refused_with_400(text: str) -> None:
    try:
        title = checked_ae_title(text)
    except DicomWebError as exc:
        assert exc.status == 400
        return
    assert 0 < len(title) <= 16 and "\\" not in title
    assert all(0x20 <= ord(c) < 0x7F for c in title) and title == title.strip(" ")
