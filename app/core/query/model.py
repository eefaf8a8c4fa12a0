"""The query model: what QIDO-RS (PS3.18 10.6) and C-FIND (PS3.4 C.4.1) both ask, in one form that each repository
compiles (`Repository.search`), and what a search answers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any

from app.core.dicom.attributes import LEVEL_ORDER, Attribute, Kind, Level
from app.core.records import JSONDict


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


@dataclass(frozen=True)
class Match:
    """One matching key. `values` by kind: SINGLE (v,), UID_LIST (v1, v2, ...), WILDCARD (pattern,) with `*` and
    `?` as the only special characters, RANGE (low, high) with None for an open end, UNIVERSAL ().

    Values are normalised as ingest normalised what it indexed (app.core.dicom.values): upper-case names, padded
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
class SortKey:
    """One key of an answer's order (`orderby`, an extension: app/core/query/ordering.py): a column or field of
    the query level, which an index of both stores serves."""

    field: str
    descending: bool = False


@dataclass(frozen=True)
class QueryModel:
    """A query at one level. `matches` are AND-ed. `limit` None means every match (C-FIND). `order` empty means
    insertion order, which lets a store walk its rows in key order until the page is full."""

    level: Level
    matches: tuple[Match, ...] = ()
    include: Include = frozenset()
    limit: int | None = None
    offset: int = 0
    order: tuple[SortKey, ...] = ()
    # What to return, decided by the parser (see `returned_levels` etc. in plan_returns):
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


def depth(level: Level) -> int:
    """0 for PATIENT ... 3 for IMAGE."""
    return LEVEL_ORDER.index(level)


def table_level(attribute: Attribute, query_level: Level) -> Level:
    """Where an attribute is held for a query at `query_level`: patient attributes are copied onto studies, so
    every query below the patient level reads them there (Study Root, PS3.4 C.6.2.1)."""
    if attribute.level is Level.PATIENT and query_level is not Level.PATIENT:
        return Level.STUDY
    return attribute.level
