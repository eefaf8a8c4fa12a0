"""C-FIND identifiers (PS3.4 C.4.1.2.1) -> the query model: the DIMSE door's own syntax, parsed here."""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from app.core.dicom.attributes import BY_KEY, Attribute, Level
from app.core.query.keys import keyword_of_path, levels_down_to, matchable, plan_returns
from app.core.query.matching import match_keys
from app.core.query.model import QueryModel, depth, table_level


def from_identifier(level: Level, ds: Dataset, *, relational: bool = False) -> QueryModel:
    """The query of a C-FIND identifier (PS3.4 C.4.1.2.1) at `level`.

    Every element of the identifier is a return key (PS3.4 C.2.2.1.2); a zero-length one matches anything
    (C.2.2.2.3 universal matching), one with a value is a matching key. A sequence with one item matches on
    the item's keys (C.2.2.2.6). Keys below `level` are matched only with relational queries negotiated
    (C.4.1.2.2.2); otherwise, like values on attributes the archive does not index, they are listed in
    `model.ignored`. `model.include` holds every identifier key, for the C-FIND author to fill the answer.
    """
    raw: dict[Attribute, str] = {}
    include: set[str] = set()
    ignored: list[str] = []
    for elem in ds:
        if elem.tag in (0x00080052, 0x00080005, 0x00080056):  # QueryRetrieveLevel, charset, availability
            continue
        key = f"{int(elem.tag):08X}"
        include.add(key)
        if elem.VR == "SQ":
            items = list(elem.value or ())
            if items:
                for sub in items[0]:
                    _identifier_key(level, f"{key}.{int(sub.tag):08X}", sub, relational, raw, ignored)
            continue
        _identifier_key(level, key, elem, relational, raw, ignored)
    returned, upper, tags = plan_returns(level, frozenset(include), levels_down_to(level))
    return QueryModel(
        level=level,
        matches=match_keys(raw, False),
        include=frozenset(include),
        limit=None,
        offset=0,
        returned_levels=returned,
        upper_keys=upper,
        dataset_tags=tags,
        ignored=tuple(ignored),
    )


def _identifier_key(
    level: Level, key: str, elem: Any, relational: bool, raw: dict[Attribute, str], ignored: list[str]
) -> None:
    text = _element_text(elem)
    attribute = BY_KEY.get(key)
    name = attribute.keyword if attribute else keyword_of_path(key)
    if text == "":
        return
    if attribute is None or not matchable(attribute):
        ignored.append(name)
        return
    if depth(table_level(attribute, level)) > depth(level) and not relational:
        ignored.append(name)
        return
    raw[attribute] = text


def _element_text(elem: Any) -> str:
    value = elem.value
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join("" if v is None else str(v) for v in value)
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)
