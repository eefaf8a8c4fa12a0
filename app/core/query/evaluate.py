"""Matching a query against DICOM JSON held whole: the query model's rules applied in memory.

Instances are many and are matched by each repository on indexed columns (`Search`). Workflow records
(UPS workitems, the Modality Worklist built from them, UPS filtered subscriptions) are few and their keys are
open-ended (any attribute, inside sequences too), so their repository narrows by state and date and the rest is
matched here, on the stored JSON. The values are parsed by the same `parse_value` as QIDO-RS and C-FIND
(PS3.4 C.2.2.2: single value, list of UIDs, universal, wildcard, range) and normalised as indexing does
(app.core.dicom.values), so one key means the same through every door.

A key inside a sequence (`ScheduledProcedureStepSequence.Modality`) matches when any item matches; every key
naming the same sequence must match in one item (PS3.4 C.2.2.2.6, sequence matching).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import lru_cache
from typing import Any

from app.core.dicom.attributes import Attribute, Kind, Level
from app.core.dicom.values import normalize
from app.core.query.keys import keyword_of_path, resolve_path, vr_of
from app.core.query.matching import parse_value
from app.core.query.model import Match, MatchKind, QueryError
from app.core.query.patterns import wildcard_matches
from app.core.records import JSONDict


@lru_cache(maxsize=1024)
def attribute(key: str) -> Attribute:
    """Any attribute path (keyword, tag or dotted path, PS3.18 8.3.4.1) as an Attribute the matcher can use."""
    dotted, path = resolve_path(key)
    vr = vr_of(path[-1])
    if vr == "SQ":
        raise QueryError(f"{key}: a sequence is matched through its items' attributes (PS3.4 C.2.2.2.6)")
    if not vr:
        raise QueryError(f"{key}: not an attribute of the DICOM data dictionary")
    return Attribute(keyword_of_path(dotted), path, vr, Level.IMAGE, Kind.MULTI, field=dotted)


def parse_matches(raw: Mapping[str, str]) -> tuple[Match, ...]:
    """The matching keys of `raw` (attribute path -> value); universal ones are dropped (they match anything)."""
    parsed = (parse_value(attribute(key), value) for key, value in raw.items())
    return tuple(m for m in parsed if m.kind is not MatchKind.UNIVERSAL)


def identifier_keys(identifier: JSONDict, prefix: str = "") -> dict[str, str]:
    """The matching keys of a C-FIND Identifier in DICOM JSON, as attribute path -> value text (PS3.4 C.2.2.2):
    multiple values joined by '\\', a person name's alphabetic group, a sequence's first item as dotted paths
    (an empty sequence, or an empty item, asks only to return it). Bulk data never matches."""
    keys: dict[str, str] = {}
    for tag, element in identifier.items():
        if not isinstance(element, dict) or not _is_tag(tag) or tag in _NOT_KEYS:
            continue
        path = f"{prefix}{tag}"
        if element.get("vr") == "SQ":
            items = [item for item in element.get("Value", []) if isinstance(item, dict)]
            if items:
                keys.update(identifier_keys(items[0], prefix=f"{path}."))
            continue
        texts = [
            str(v.get("Alphabetic", "")) if isinstance(v, dict) else str(v)
            for v in element.get("Value", [])
            if v is not None
        ]
        if any(texts):
            keys[path] = "\\".join(texts)
    return keys


# Specific Character Set says how the Identifier is encoded; it is not a key (PS3.4 C.4.1.1.3.1).
_NOT_KEYS = frozenset({"00080005"})


def _is_tag(key: str) -> bool:
    return len(key) == 8 and all(c in "0123456789ABCDEFabcdef" for c in key)


def matches_all(dataset: JSONDict, keys: Sequence[Match]) -> bool:
    """True when `dataset` satisfies every key; keys sharing a sequence are satisfied by one item."""
    top = [m for m in keys if len(m.attribute.path) == 1]
    if not all(_matches_values(_values(dataset, m.attribute.path[0]), m) for m in top):
        return False
    nested: dict[int, list[Match]] = {}
    for m in keys:
        if len(m.attribute.path) > 1:
            nested.setdefault(m.attribute.path[0], []).append(m)
    for sequence_tag, inner in nested.items():
        items = _items(dataset, sequence_tag)
        shifted = [_shift(m) for m in inner]
        if not any(matches_all(item, shifted) for item in items):
            return False
    return True


def _shift(m: Match) -> Match:
    """The same key, one sequence level down."""
    a = m.attribute
    return Match(
        Attribute(a.keyword, a.path[1:], a.vr, a.level, a.kind, a.field),
        m.kind,
        m.values,
        combined=m.combined,
        words=m.words,
        point=m.point,
    )


def _element(dataset: JSONDict, tag: int) -> JSONDict | None:
    element = dataset.get(f"{tag:08X}")
    return element if isinstance(element, dict) else None


def _items(dataset: JSONDict, tag: int) -> list[JSONDict]:
    element = _element(dataset, tag)
    if element is None:
        return []
    return [item for item in element.get("Value", []) if isinstance(item, dict)]


def _values(dataset: JSONDict, tag: int) -> list[Any]:
    element = _element(dataset, tag)
    if element is None:
        return []
    values = element.get("Value", [])
    return list(values) if isinstance(values, list) else []


def _texts(values: Iterable[Any], vr: str) -> Iterator[Any]:
    """Each value in its normalised form (a PN value is a JSON object: its alphabetic group is matched)."""
    for value in values:
        if isinstance(value, dict):
            value = value.get("Alphabetic", "")
        found = normalize(vr, value)
        if found is not None:
            yield found


def _matches_values(values: list[Any], m: Match) -> bool:
    vr = m.attribute.vr
    return any(_matches_one(value, m, vr) for value in _texts(values, vr))


def _matches_one(value: Any, m: Match, vr: str) -> bool:
    if m.kind is MatchKind.SINGLE:
        return bool(value == m.values[0])
    if m.kind is MatchKind.UID_LIST:
        return value in m.values
    if m.kind is MatchKind.WILDCARD:
        return wildcard_matches(str(m.values[0]), str(value))
    if m.kind is MatchKind.RANGE:
        low, high = m.values
        text = str(value)
        if vr == "DT":
            # A DT bound may be given to any precision: compare at the bound's own precision.
            return (low is None or text >= low) and (high is None or text[: len(high)] <= high)
        return (low is None or text >= low) and (high is None or text <= high)
    return True

