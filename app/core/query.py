"""The protocol-neutral query model, built from QIDO-RS parameters or a C-FIND identifier.

QIDO-RS (PS3.18 10.6) and C-FIND (PS3.4 C.4.1) ask the same question in two syntaxes, so both doors parse into
one `QueryModel` and one repository method (`Repository.search`) answers it: the matching rules of PS3.4
C.2.2.2 are implemented once per backend, in `app/repository/sqlite_query.py` and `mongo_query.py`, and can
never drift apart between the doors.

Everything a compiler needs is decided here, so the two compilers only translate:

* each key is resolved to an `Attribute` of the attribute table and its value validated against its VR
  (length, characters, date/time syntax), then normalised with the very functions ingest used
  (`app.core.values`), so a match compares like with like;
* the matching kind is chosen (single value, universal, wildcard, range, list of values); a StudyDate range
  with a StudyTime range becomes one combined date-time range (PS3.4 C.2.2.2.5);
* the levels whose attributes are returned, extra upper-level attributes and tags to copy from a
  representative instance header are worked out from `includefield` (PS3.18 8.3.4.3) or the identifier keys.

A value the archive cannot use as asked is a `QueryError` (400 at the HTTP door, 0xA900/0xC000 in DIMSE). A
valid DICOM attribute that is simply not indexed is ignored and reported back (PS3.18 8.3: "The origin server
shall ignore any unsupported Query Parameters"), and the door turns the report into a `Warning` header.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import re
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from functools import cache
from typing import Any, Protocol

from pydicom.datadict import dictionary_VR, keyword_dict, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from app.core.attributes import BY_KEY, BY_KEYWORD, LEVEL_ORDER, Attribute, Kind, Level, at_level
from app.core.records import JSONDict
from app.core.uids import InvalidUIDError, check_uid
from app.core.values import INTEGER_VRS, name_words, normalize_date, normalize_name, normalize_time


class QueryError(ValueError):
    """A query the archive cannot run as asked; the message says which key and why (400 / C-FIND failure)."""


class MatchKind(StrEnum):
    """The matching types of PS3.4 C.2.2.2."""

    SINGLE = "single"  # C.2.2.2.1 single value matching
    UID_LIST = "list"  # C.2.2.2.2 list of UID matching (also used for a list of CS codes, see _parse_value)
    UNIVERSAL = "universal"  # C.2.2.2.3 universal matching: return the attribute, match anything
    WILDCARD = "wildcard"  # C.2.2.2.4 wildcard matching, "*" and "?"; every other character is literal
    RANGE = "range"  # C.2.2.2.5 range matching, DA / TM (and combined date-time)


class AllFields(Enum):
    """`includefield=all` (PS3.18 8.3.4.3): every attribute the archive holds at the returned levels."""

    ALL = "all"


ALL = AllFields.ALL
Include = frozenset[str] | AllFields

# The study's date and time matched as one value (PS3.4 C.2.2.2.5.1); the column/field ingest fills.
STUDY_DATETIME_FIELD = "study_datetime"

# Aggregates that can be matched: each is "some series/instance of the study has this value", so they are
# matched on that lower level's own indexed column (PS3.4 C.6.2.1.2 defines them from the lower levels).
AGGREGATE_SOURCES: dict[str, tuple[Level, str]] = {
    "ModalitiesInStudy": (Level.SERIES, "modality"),
    "SOPClassesInStudy": (Level.IMAGE, "sop_class_uid"),
}

# Maximum value lengths (PS3.5 Table 6.2-1), in characters. A longer query value can match nothing the
# archive holds and is almost always a client bug, so it is refused rather than silently finding nothing.
MAX_LENGTH: dict[str, int] = {
    "AE": 16,
    "AS": 4,
    "CS": 16,
    "DA": 8,
    "DS": 16,
    "DT": 26,
    "IS": 12,
    "LO": 64,
    "LT": 10240,
    "PN": 64,
    "SH": 16,
    "ST": 1024,
    "TM": 14,
    "UI": 64,
    "UC": 2**32 - 2,
    "UR": 2**32 - 2,
    "UT": 2**32 - 2,
}
_TEXT_VRS = frozenset({"LT", "ST", "UT"})  # may hold CR, LF, TAB, FF (PS3.5 6.1.3)
# Wildcards apply to string VRs other than DA, TM, DT, UI and the numeric ones (PS3.4 C.2.2.2.4).
_WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
_INT_BOUNDS = {
    "IS": (-(2**31), 2**31 - 1),
    "US": (0, 2**16 - 1),
    "SS": (-(2**15), 2**15 - 1),
    "UL": (0, 2**32 - 1),
    "SL": (-(2**31), 2**31 - 1),
    "UV": (0, 2**64 - 1),
    "SV": (-(2**63), 2**63 - 1),
}
_TAG_RE = re.compile(r"[0-9A-Fa-f]{8}")
_KEYWORD_RE = re.compile(r"[A-Za-z][A-Za-z0-9]*")
_TIME_RE = re.compile(r"(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?")
_DATE_RE = re.compile(r"\d{8}")
_CONTROL_RE = re.compile(r"[\x00-\x1a\x1c-\x1f\x7f]")  # every C0 control but ESC (ISO 2022), and DEL
_TEXT_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f\x7f]")
_SURROGATE_RE = re.compile(r"[\ud800-\udfff]")

# QIDO-RS query parameters that are not attributes (PS3.18 8.3.4, 8.3.3.1).
RESERVED = frozenset({"limit", "offset", "fuzzymatching", "includefield"})


@dataclass(frozen=True)
class Match:
    """One matching key. `values` by kind: SINGLE (v,), UID_LIST (v1, v2, ...), WILDCARD (pattern,) with `*` and
    `?` as the only special characters, RANGE (low, high) with None for an open end, UNIVERSAL ().

    Values are normalised as ingest normalised what it indexed (app.core.values): upper-case names, padded
    times, integers as int. `combined` marks the StudyDate+StudyTime date-time range (values are then
    "YYYYMMDDHHMMSS.FFFFFF" and the field is `study_datetime`). `words` holds the name prefixes of a fuzzy
    person-name match (PS3.18 8.3.4.5), matched on the name-word index instead of `values`.
    """

    attribute: Attribute
    kind: MatchKind
    values: tuple[Any, ...] = ()
    combined: bool = False
    words: tuple[str, ...] = ()
    point: bool = False  # a single TM value, held as the range of the period it names; never combined

    @property
    def field(self) -> str:
        return STUDY_DATETIME_FIELD if self.combined else self.attribute.field

    @property
    def fuzzy(self) -> bool:
        return bool(self.words)

    @property
    def multi(self) -> bool:
        """Matched on the multi-valued index (attribute_values / `multi.*`) rather than a column."""
        return self.attribute.kind is Kind.MULTI

    @property
    def aggregate(self) -> tuple[Level, str] | None:
        """(level, field) of the lower-level column an aggregate such as ModalitiesInStudy is matched on."""
        return AGGREGATE_SOURCES.get(self.attribute.keyword)


@dataclass(frozen=True)
class QueryModel:
    """A query at one level. `matches` are AND-ed. `limit` None means every match (C-FIND)."""

    level: Level
    matches: tuple[Match, ...] = ()
    include: Include = frozenset()
    limit: int | None = None
    offset: int = 0
    # What to return, decided by the parser (see `returned_levels` etc. in _plan_returns):
    returned_levels: frozenset[Level] = frozenset()
    upper_keys: Mapping[Level, frozenset[str]] = field(default_factory=dict)  # extra keys of other levels
    dataset_tags: frozenset[str] = frozenset()  # keys copied from a representative instance's header
    ignored: tuple[str, ...] = ()  # valid attributes given a value that the archive cannot match on

    @property
    def fetched_levels(self) -> frozenset[Level]:
        """Levels whose stored DICOM JSON the repository must read for each result."""
        return self.returned_levels | frozenset(level for level, keys in self.upper_keys.items() if keys)


@dataclass(frozen=True)
class ParsedQuery:
    model: QueryModel
    ignored_parameters: tuple[str, ...] = ()

    @property
    def ignored_attributes(self) -> tuple[str, ...]:
        return self.model.ignored

    @property
    def warnings(self) -> list[str]:
        """Texts for `Warning: 299` headers (PS3.18 8.3: unsupported parameters are ignored, with a warning)."""
        out = []
        if self.ignored_attributes:
            out.append(
                "The following attributes are not supported as query keys: "
                + ", ".join(self.ignored_attributes)
            )
        if self.ignored_parameters:
            out.append(
                "The following query parameters are not supported: " + ", ".join(self.ignored_parameters)
            )
        return out


@dataclass
class SearchResult:
    """One page of results as DICOM JSON (levels merged, aggregates included, no RetrieveURL), and how many
    further matches lie beyond it (for the `Warning: 299 ... additional results` of PS3.18 8.3.4.4)."""

    rows: list[JSONDict]
    remaining: int = 0


# -- QIDO-RS ------------------------------------------------------------------------------------------------


def parse_qido(
    level: Level,
    params: Iterable[tuple[str, str]],
    scope: Mapping[str, str] | None = None,
    *,
    default_limit: int | None = None,
    max_limit: int | None = None,
) -> ParsedQuery:
    """Parse QIDO-RS query parameters (PS3.18 8.3.4) for a search at `level` within `scope` (path UIDs).

    `limit` above `max_limit` is lowered to it (PS3.18 8.3.4.4: the origin server returns at most what it
    supports, and says how many more there are); the caller learns this from `model.limit`.
    """
    scope = dict(scope or {})
    limit: int | None = default_limit
    offset = 0
    fuzzy = False
    include: set[str] = set()
    include_all = False
    seen: set[str] = set()
    raw: dict[Attribute, str] = {}
    ignored_attributes: list[str] = []
    ignored_parameters: list[str] = []
    for name, value in params:
        if name in ("limit", "offset", "fuzzymatching"):
            if name in seen:
                raise QueryError(f"query parameter {name} is given more than once")
            seen.add(name)
        if name == "limit":
            limit = _non_negative(name, value)
            if max_limit is not None and limit > max_limit:
                limit = max_limit
        elif name == "offset":
            offset = _non_negative(name, value)
        elif name == "fuzzymatching":
            if value.lower() not in ("true", "false"):
                raise QueryError(f"fuzzymatching must be true or false, not {_show(value)} (PS3.18 8.3.4.1)")
            fuzzy = value.lower() == "true"
        elif name == "includefield":
            for item in value.split(","):
                item = item.strip()
                if item.lower() == "all":
                    include_all = True
                elif item:
                    include.add(resolve_path(item)[0])
        else:
            key = _attribute_key(name)
            if key is None:
                ignored_parameters.append(name)
                continue
            attribute = BY_KEY.get(key)
            if attribute is None or not _matchable(attribute):
                # A real DICOM attribute the archive does not index: ignored, reported (PS3.18 8.3).
                include.add(key.split(".")[0])
                if value != "" and name not in ignored_attributes:
                    ignored_attributes.append(name)
                continue
            include.add(key.split(".")[0])
            if attribute in raw:
                if attribute.vr != "UI":
                    raise QueryError(f"{name} is given more than once; only UID keys may repeat (as a list)")
                raw[attribute] = raw[attribute] + "\\" + value if raw[attribute] and value else ""
            else:
                raw[attribute] = value
    for keyword, uid in scope.items():
        try:
            check_uid(uid, keyword)
        except InvalidUIDError as exc:
            raise QueryError(str(exc)) from exc
    matches = _matches(raw, fuzzy)
    matches += tuple(Match(BY_KEYWORD[k], MatchKind.SINGLE, (uid,)) for k, uid in scope.items())
    included: Include = ALL if include_all else frozenset(include)
    returned, upper, tags = _plan_returns(level, included, _qido_default_levels(level, scope))
    model = QueryModel(
        level=level,
        matches=matches,
        include=included,
        limit=limit,
        offset=offset,
        returned_levels=returned,
        upper_keys=upper,
        dataset_tags=tags,
        ignored=tuple(ignored_attributes),
    )
    return ParsedQuery(model, tuple(ignored_parameters))


def _qido_default_levels(level: Level, scope: Mapping[str, str]) -> frozenset[Level]:
    """The levels whose attributes a QIDO-RS answer carries (PS3.18 10.6.3.3): the searched level, plus the
    study (Table 10.6.3-3) and series (Table 10.6.3-4) attributes when the path does not fix them already."""
    levels = {level}
    if level in (Level.SERIES, Level.IMAGE) and "StudyInstanceUID" not in scope:
        levels.add(Level.STUDY)
    if level is Level.IMAGE and "SeriesInstanceUID" not in scope:
        levels.add(Level.SERIES)
    return frozenset(levels)


def _non_negative(name: str, value: str) -> int:
    text = value.strip()
    if not text.isdigit() or not text.isascii() or len(text) > 18:
        raise QueryError(f"{name} must be a non-negative integer, not {_show(value)} (PS3.18 8.3.4.4)")
    return int(text)


def _attribute_key(name: str) -> str | None:
    """The dotted hex key of a query parameter naming an attribute; None for a parameter that names none.

    Names that look like a keyword or tag must resolve (400 otherwise: a typo must not silently widen the
    search); other names (`_`, `callback`, ...) are parameters this server does not support, ignored (PS3.18 8.3).
    """
    first = name[:1]
    if first and (first.isupper() or first.isdigit() or "." in name):
        return resolve_path(name)[0]
    if _KEYWORD_RE.fullmatch(name) and _keyword_ci().get(name.lower()):
        raise QueryError(
            f"unknown attribute {name!r}: keywords are case-sensitive, did you mean "
            f"{_keyword_ci()[name.lower()]}?"
        )
    return None


def resolve_path(name: str) -> tuple[str, tuple[int, ...]]:
    """`PatientName`, `00100010`, `RequestAttributesSequence.RequestedProcedureID` or `00400275.00401001` ->
    (dotted hex key, tags). PS3.18 8.3.4.1: an attribute is a keyword or a tag, a sequence path dotted."""
    if not name or len(name) > 400:
        raise QueryError(f"malformed attribute {_show(name)}")
    tags: list[int] = []
    parts = name.split(".")
    for i, part in enumerate(parts):
        if _TAG_RE.fullmatch(part):
            tag = int(part, 16)
        elif _KEYWORD_RE.fullmatch(part):
            found = keyword_dict.get(part)
            if found is None:
                hint = _keyword_ci().get(part.lower())
                suffix = f"; did you mean {hint}?" if hint else ""
                raise QueryError(f"unknown attribute keyword {part!r} in {_show(name)}{suffix}")
            tag = int(found)
        else:
            raise QueryError(
                f"malformed attribute {_show(name)}: each part must be a keyword or 8 hex digits (PS3.18 8.3.4.1)"
            )
        if i < len(parts) - 1 and _vr(tag) not in ("SQ", ""):
            raise QueryError(f"{_show(name)}: {keyword_for_tag(tag) or f'{tag:08X}'} is not a sequence")
        tags.append(tag)
    return ".".join(f"{t:08X}" for t in tags), tuple(tags)


@cache
def _keyword_ci() -> dict[str, str]:
    return {k.lower(): k for k in keyword_dict}


def _vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return ""


def _matchable(attribute: Attribute) -> bool:
    return attribute.kind in (Kind.COLUMN, Kind.MULTI) or attribute.keyword in AGGREGATE_SOURCES


# -- C-FIND -------------------------------------------------------------------------------------------------


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
    returned, upper, tags = _plan_returns(level, frozenset(include), _levels_down_to(level))
    return QueryModel(
        level=level,
        matches=_matches(raw, False),
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
    if attribute is None or not _matchable(attribute):
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


def _levels_down_to(level: Level) -> frozenset[Level]:
    top = Level.PATIENT if level is Level.PATIENT else Level.STUDY
    return frozenset(lv for lv in LEVEL_ORDER if depth(top) <= depth(lv) <= depth(level))


def keyword_of_path(key: str) -> str:
    return ".".join(str(keyword_for_tag(int(t, 16)) or t) for t in key.split("."))


# -- shared: values ---------------------------------------------------------------------------------------


def _matches(raw: Mapping[Attribute, str], fuzzy: bool) -> tuple[Match, ...]:
    matches = [
        m
        for attribute, value in raw.items()
        if (m := parse_value(attribute, value, fuzzy)).kind is not MatchKind.UNIVERSAL
    ]
    combined = _combine_datetime(matches)
    for m in combined:
        if (
            m.kind is MatchKind.RANGE
            and not m.combined
            and None not in m.values
            and m.values[0] > m.values[1]
        ):
            raise QueryError(f"{m.attribute.keyword}: the range ends before it starts (PS3.4 C.2.2.2.5)")
    return tuple(combined)


def _combine_datetime(matches: list[Match]) -> list[Match]:
    """StudyDate and StudyTime both given as ranges match as one date-time range (PS3.4 C.2.2.2.5.1): from the
    first date at the first time to the last date at the last time, not "each day between the two times"."""
    date = next(
        (m for m in matches if m.attribute.keyword == "StudyDate" and m.kind is MatchKind.RANGE), None
    )
    time = next(
        (m for m in matches if m.attribute.keyword == "StudyTime" and m.kind is MatchKind.RANGE), None
    )
    if date is None or time is None or time.point:
        return matches
    low = None if date.values[0] is None else date.values[0] + (time.values[0] or "000000.000000")
    high = None if date.values[1] is None else date.values[1] + (time.values[1] or "235959.999999")
    combined = Match(date.attribute, MatchKind.RANGE, (low, high), combined=True)
    return [m for m in matches if m is not date and m is not time] + [combined]


def parse_value(attribute: Attribute, value: str, fuzzy: bool = False) -> Match:
    """The Match of one key's value, validated against the attribute's VR (QueryError when it cannot be)."""
    name = attribute.keyword
    vr = attribute.vr
    if _SURROGATE_RE.search(value):
        raise QueryError(f"{name}: the value is not valid Unicode text")
    control = _TEXT_CONTROL_RE if vr in _TEXT_VRS else _CONTROL_RE
    if control.search(value):
        raise QueryError(f"{name}: control characters are not allowed in a {vr} value (PS3.5 6.2)")
    text = value.strip()
    if text == "" or text.strip("*") == "":
        # Empty is universal matching (PS3.4 C.2.2.2.3); so is "*" alone, for any VR (C.2.2.2.4).
        return Match(attribute, MatchKind.UNIVERSAL)
    if vr in ("DA", "TM", "DT"):
        return _parse_range(attribute, text)
    if vr == "UI" or (vr == "CS" and ("\\" in text or "," in text)):
        return _parse_list(attribute, text)
    if "\\" in text and vr not in _TEXT_VRS:
        raise QueryError(
            f"{name}: several values ('\\') are only allowed for UID list matching (PS3.4 C.2.2.2.2)"
        )
    if vr in INTEGER_VRS:
        return Match(attribute, MatchKind.SINGLE, (_integer(attribute, text),))
    _check_length(attribute, text)
    wildcard = vr in _WILDCARD_VRS and ("*" in text or "?" in text)
    if vr == "PN":
        normalised = normalize_name(text)
        if normalised.strip("*") == "":
            return Match(attribute, MatchKind.UNIVERSAL)
        if fuzzy:
            words = tuple(w for w in name_words(normalised.replace("*", " ").replace("?", " ")) if w)
            if not words:
                return Match(attribute, MatchKind.UNIVERSAL)
            return Match(
                attribute, MatchKind.WILDCARD if wildcard else MatchKind.SINGLE, (normalised,), words=words
            )
        return Match(attribute, MatchKind.WILDCARD if wildcard else MatchKind.SINGLE, (normalised,))
    return Match(attribute, MatchKind.WILDCARD if wildcard else MatchKind.SINGLE, (text,))


def _check_length(attribute: Attribute, text: str) -> None:
    limit = MAX_LENGTH.get(attribute.vr)
    if limit is None:
        return
    # A person name's limit is per component group (PS3.5 Table 6.2-1).
    parts = text.split("=") if attribute.vr == "PN" else [text]
    for part in parts:
        if len(part) > limit:
            raise QueryError(
                f"{attribute.keyword}: {_show(text)} is longer than the {limit} characters of its VR "
                f"{attribute.vr} (PS3.5 Table 6.2-1)"
            )


def _parse_list(attribute: Attribute, text: str) -> Match:
    """UIDs separated by '\\' (PS3.4 C.2.2.2.2) or ',' (PS3.18 8.3.4.1). A list of CS codes is accepted the same
    way, an extension viewers use for modality filters (ModalitiesInStudy=CT\\MR): any listed code matches."""
    items = [v.strip() for v in re.split(r"[\\,]", text)]
    if any(v == "" for v in items):
        raise QueryError(f"{attribute.keyword}: empty item in the list {_show(text)}")
    values: list[str] = []
    for item in items:
        if attribute.vr == "UI":
            try:
                check_uid(item, attribute.keyword)
            except InvalidUIDError as exc:
                raise QueryError(f"{exc} (wildcards are not allowed in UIDs, PS3.4 C.2.2.2.4)") from exc
        else:
            _check_length(attribute, item)
            if "*" in item or "?" in item:
                raise QueryError(f"{attribute.keyword}: wildcards are not allowed inside a list of values")
        values.append(item)
    unique = tuple(dict.fromkeys(values))
    if len(unique) == 1:
        return Match(attribute, MatchKind.SINGLE, unique)
    return Match(attribute, MatchKind.UID_LIST, unique)


def _integer(attribute: Attribute, text: str) -> int:
    low, high = _INT_BOUNDS.get(attribute.vr, _INT_BOUNDS["SV"])
    if len(text) > MAX_LENGTH.get(attribute.vr, 20) or not re.fullmatch(r"[+-]?\d+", text):
        raise QueryError(f"{attribute.keyword}: {_show(text)} is not an integer ({attribute.vr})")
    number = int(text)
    if not low <= number <= high:
        raise QueryError(f"{attribute.keyword}: {number} is out of range for {attribute.vr}")
    return number


def _parse_range(attribute: Attribute, text: str) -> Match:
    """DA and TM: a value, `a-`, `-b` or `a-b`, inclusive (PS3.4 C.2.2.2.5). A time with reduced precision
    covers the whole period it names ("1030" is 10:30:00 to 10:30:59.999999), so a single time is a range."""
    name, vr = attribute.keyword, attribute.vr
    if vr == "DT":  # no DT attribute is indexed today; matched as text, for completeness
        low_text, sep, high_text = text.partition("-")
        if not sep:
            return Match(attribute, MatchKind.SINGLE, (text,))
        return Match(attribute, MatchKind.RANGE, (low_text or None, high_text or None))
    if text.count("-") > 1:
        raise QueryError(
            f"{name}: {_show(text)} is not a {_VR_NAME[vr]} or a range of them (PS3.4 C.2.2.2.5)"
        )
    if "-" not in text:
        if vr == "DA":
            return Match(attribute, MatchKind.SINGLE, (_date(attribute, text),))
        return Match(attribute, MatchKind.RANGE, _time(attribute, text), point=True)
    low_text, _, high_text = (part.strip() for part in text.partition("-"))
    if not low_text and not high_text:
        raise QueryError(f"{name}: the range '-' has neither a start nor an end (PS3.4 C.2.2.2.5)")
    if vr == "DA":
        low = _date(attribute, low_text) if low_text else None
        high = _date(attribute, high_text) if high_text else None
    else:
        low = _time(attribute, low_text)[0] if low_text else None
        high = _time(attribute, high_text)[1] if high_text else None
    # A time range may end before it starts when combined with a date range (10:00 on the first day to 09:00 on
    # the last); alone it cannot, which _matches checks once it knows whether the two combine.
    if vr == "DA" and low is not None and high is not None and low > high:
        raise QueryError(f"{name}: the range {_show(text)} ends before it starts")
    return Match(attribute, MatchKind.RANGE, (low, high))


_VR_NAME = {"DA": "date (YYYYMMDD)", "TM": "time (HHMMSS.FFFFFF)"}


def _date(attribute: Attribute, text: str) -> str:
    date = normalize_date(text)  # also accepts the ACR-NEMA "YYYY.MM.DD"
    if not _DATE_RE.fullmatch(date) or not date.isascii():
        raise QueryError(f"{attribute.keyword}: {_show(text)} is not a date (YYYYMMDD, PS3.5 Table 6.2-1)")
    try:
        _dt.date(int(date[:4]), int(date[4:6]), int(date[6:]))
    except ValueError as exc:
        raise QueryError(f"{attribute.keyword}: {_show(text)} is not a valid date ({exc})") from exc
    return date


def _time(attribute: Attribute, text: str) -> tuple[str, str]:
    """(first, last) instant of the period a time names, both normalised as ingest does (values.normalize_time)."""
    compact = text.replace(":", "")
    found = _TIME_RE.fullmatch(compact) if compact.isascii() else None
    if found is None or (found.group(4) and not found.group(3)) or len(text) > MAX_LENGTH["TM"]:
        raise QueryError(
            f"{attribute.keyword}: {_show(text)} is not a time (HHMMSS.FFFFFF, PS3.5 Table 6.2-1)"
        )
    hh, mm, ss, frac = found.groups()
    if int(hh) > 23 or int(mm or 0) > 59 or int(ss or 0) > 60:
        raise QueryError(f"{attribute.keyword}: {_show(text)} is not a valid time")
    first = normalize_time(compact)
    last = f"{hh}{mm or '59'}{ss or '59'}.{(frac or '').ljust(6, '9')}"
    return first, last


# -- shared: what to return ----------------------------------------------------------------------------------


def depth(level: Level) -> int:
    """0 for PATIENT ... 3 for IMAGE."""
    return LEVEL_ORDER.index(level)


def table_level(attribute: Attribute, query_level: Level) -> Level:
    """Where an attribute is held for a query at `query_level`: patient attributes are copied onto studies, so
    every query below the patient level reads them there (Study Root, PS3.4 C.6.2.1)."""
    if attribute.level is Level.PATIENT and query_level is not Level.PATIENT:
        return Level.STUDY
    return attribute.level


def _plan_returns(
    level: Level, include: Include, defaults: frozenset[Level]
) -> tuple[frozenset[Level], dict[Level, frozenset[str]], frozenset[str]]:
    """Which levels' attributes to return, which single attributes of other upper levels, and which tags to
    copy from a representative instance header (for attributes the table does not hold at any level)."""
    if include is ALL:
        return _levels_down_to(level) | defaults, {}, frozenset()
    assert isinstance(include, frozenset)
    upper: dict[Level, set[str]] = {}
    tags: set[str] = set()
    known = _known_keys()
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
def _known_keys() -> dict[str, Attribute]:
    """Top-level tags the table holds in some level's stored JSON or aggregates (sequence paths excluded)."""
    return {a.key: a for a in BY_KEY.values() if "." not in a.key}


# -- shared: assembling an answer ---------------------------------------------------------------------------

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


# -- shared: wildcard helpers for the compilers -----------------------------------------------------------


def literal_prefix(pattern: str) -> str:
    """The characters before the first wildcard: what an index range can narrow on."""
    cut = min((i for i in (pattern.find("*"), pattern.find("?")) if i >= 0), default=len(pattern))
    return pattern[:cut]


def prefix_successor(prefix: str) -> str | None:
    """The least string greater than every string starting with `prefix` (code point order, which is also the
    byte order of UTF-8 that SQLite's BINARY collation and MongoDB's simple collation use); None if none."""
    chars = list(prefix)
    while chars:
        code = ord(chars[-1]) + 1
        if 0xD800 <= code <= 0xDFFF:
            code = 0xE000
        if code <= 0x10FFFF:
            chars[-1] = chr(code)
            return "".join(chars)
        chars.pop()
    return None


def wildcard_regex(pattern: str) -> str:
    """An anchored regular expression for a DICOM wildcard pattern: `*` -> `.*`, `?` -> `.`, all else escaped."""
    out = []
    for char in pattern:
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        else:
            out.append(re.escape(char))
    return "^" + "".join(out) + "$"


def _show(value: str) -> str:
    text = value if len(value) <= 80 else value[:77] + "..."
    return repr(text)


class _Searcher(Protocol):
    async def search(self, query: QueryModel) -> SearchResult: ...


async def search_pages(
    repository: _Searcher, model: QueryModel, page_size: int
) -> AsyncIterator[list[JSONDict]]:
    """Every match of `model`, a page at a time (C-FIND streams its pending responses from these)."""
    offset = 0
    while True:
        result = await repository.search(dataclasses.replace(model, limit=page_size, offset=offset))
        if result.rows:
            yield result.rows
        if not result.remaining or not result.rows:
            return
        offset += len(result.rows)
