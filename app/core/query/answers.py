"""One answer of a search, assembled the same way by both repositories: the returned levels' JSON, aggregates
(counts, ModalitiesInStudy, SOPClassesInStudy) and the unique keys above."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

from app.core.dicom.attributes import LEVEL_ORDER, Kind, Level, at_level
from app.core.query.model import QueryModel
from app.core.records import JSONDict

_SET_VRS = {"ModalitiesInStudy": "CS", "SOPClassesInStudy": "UI"}


@cache
def _aggregates(level: Level) -> tuple[tuple[str, str, str, bool], ...]:
    """(field, key, VR, is a set) of each aggregate of `level`, computed once: answers build one per row."""
    return tuple(
        (a.field, a.key, a.vr, a.keyword in _SET_VRS) for a in at_level(level) if a.kind is Kind.AGGREGATE
    )


def aggregate_json(level: Level, values: Mapping[str, Any]) -> JSONDict:
    """The aggregates of `level` (counts, ModalitiesInStudy, SOPClassesInStudy) as DICOM JSON, from their stored
    fields (a count, or a set as a list or a '\\'-joined string)."""
    out: JSONDict = {}
    for name, key, vr, is_set in _aggregates(level):
        if name not in values:
            continue
        value = values[name]
        if is_set:
            items = value.split("\\") if isinstance(value, str) else list(value or ())
            items = sorted(v for v in items if v)
            out[key] = {"vr": vr, "Value": items} if items else {"vr": vr}
        elif value is not None:
            out[key] = {"vr": vr, "Value": [int(value)]}
    return out


def assemble(
    model: QueryModel,
    levels: Mapping[Level, JSONDict],
    aggregates: Mapping[Level, JSONDict],
    uids: Mapping[str, str],
    dataset: JSONDict | None = None,
) -> JSONDict:
    """One answer: the returned levels' JSON and aggregates, extra upper-level keys, the unique keys of the
    levels above (so every answer can be located and gets its RetrieveURL), tags from a representative header.
    Both repositories build their rows with this, so their answers are identical."""
    out: JSONDict = {}
    for level in LEVEL_ORDER:
        if level in model.returned_levels:
            out.update(levels.get(level) or {})
            out.update(aggregates.get(level) or {})
    for level, keys in model.upper_keys.items():
        source = {**(levels.get(level) or {}), **(aggregates.get(level) or {})}
        out.update({k: source[k] for k in keys if k in source})
    for keyword, tag in (
        ("StudyInstanceUID", "0020000D"),
        ("SeriesInstanceUID", "0020000E"),
        ("SOPInstanceUID", "00080018"),
    ):
        uid = uids.get(keyword)
        if uid and tag not in out:
            out[tag] = {"vr": "UI", "Value": [uid]}
    if dataset:
        for tag in model.dataset_tags:
            element = dataset.get(tag)
            if element is not None and tag not in out and "BulkDataURI" not in element:
                out[tag] = element
    return dict(sorted(out.items()))
