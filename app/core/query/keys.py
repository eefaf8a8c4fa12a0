"""Query keys: attribute paths resolved to the attribute table, and which levels' attributes an answer returns
(PS3.18 8.3.4.1 and 8.3.4.3, PS3.4 C.2.2.1)."""

from __future__ import annotations

import re
from functools import cache

from pydicom.datadict import dictionary_VR, keyword_dict, keyword_for_tag

from app.core.dicom.attributes import BY_KEY, LEVEL_ORDER, Attribute, Kind, Level
from app.core.query.model import AGGREGATE_SOURCES, ALL, Include, QueryError, depth, table_level

TAG_RE = re.compile(r"[0-9A-Fa-f]{8}")


KEYWORD_RE = re.compile(r"[A-Za-z][A-Za-z0-9]*")


def resolve_path(name: str) -> tuple[str, tuple[int, ...]]:
    """`PatientName`, `00100010`, `RequestAttributesSequence.RequestedProcedureID` or `00400275.00401001` ->
    (dotted hex key, tags). PS3.18 8.3.4.1: an attribute is a keyword or a tag, a sequence path dotted."""
    if not name or len(name) > 400:
        raise QueryError(f"malformed attribute {show(name)}")
    tags: list[int] = []
    parts = name.split(".")
    for i, part in enumerate(parts):
        if TAG_RE.fullmatch(part):
            tag = int(part, 16)
        elif KEYWORD_RE.fullmatch(part):
            found = keyword_dict.get(part)
            if found is None:
                hint = keyword_ci().get(part.lower())
                suffix = f"; did you mean {hint}?" if hint else ""
                raise QueryError(f"unknown attribute keyword {part!r} in {show(name)}{suffix}")
            tag = int(found)
        else:
            raise QueryError(
                f"malformed attribute {show(name)}: each part must be a keyword or 8 hex digits (PS3.18 8.3.4.1)"
            )
        if i < len(parts) - 1 and vr_of(tag) not in ("SQ", ""):
            raise QueryError(f"{show(name)}: {keyword_for_tag(tag) or f'{tag:08X}'} is not a sequence")
        tags.append(tag)
    return ".".join(f"{t:08X}" for t in tags), tuple(tags)


@cache
def keyword_ci() -> dict[str, str]:
    return {k.lower(): k for k in keyword_dict}


def vr_of(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return ""


def matchable(attribute: Attribute) -> bool:
    return attribute.kind in (Kind.COLUMN, Kind.MULTI) or attribute.keyword in AGGREGATE_SOURCES


def keyword_of_path(key: str) -> str:
    return ".".join(str(keyword_for_tag(int(t, 16)) or t) for t in key.split("."))


def levels_down_to(level: Level) -> frozenset[Level]:
    top = Level.PATIENT if level is Level.PATIENT else Level.STUDY
    return frozenset(lv for lv in LEVEL_ORDER if depth(top) <= depth(lv) <= depth(level))


def plan_returns(
    level: Level, include: Include, defaults: frozenset[Level]
) -> tuple[frozenset[Level], dict[Level, frozenset[str]], frozenset[str]]:
    """Which levels' attributes to return, which single attributes of other upper levels, and which tags to
    copy from a representative instance header (for attributes the table does not hold at any level)."""
    if include is ALL:
        return levels_down_to(level) | defaults, {}, frozenset()
    assert isinstance(include, frozenset)
    upper: dict[Level, set[str]] = {}
    tags: set[str] = set()
    known = known_keys()
    for key in include:
        attribute = known.get(key)
        if attribute is None:
            tags.add(key)
            continue
        holder = table_level(attribute, level)
        if depth(holder) > depth(level) or holder in defaults:
            continue  # a lower level's attribute is not an attribute of this level's entities
        if level is Level.PATIENT and holder is not Level.PATIENT:
            continue
        upper.setdefault(holder, set()).add(key)
    return defaults, {lv: frozenset(keys) for lv, keys in upper.items()}, frozenset(tags)


@cache
def known_keys() -> dict[str, Attribute]:
    """Top-level tags the table holds in some level's stored JSON or aggregates (sequence paths excluded)."""
    return {a.key: a for a in BY_KEY.values() if "." not in a.key}


def show(value: str) -> str:
    text = value if len(value) <= 80 else value[:77] + "..."
    return repr(text)
