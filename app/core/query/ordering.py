"""`orderby`: the order of a QIDO-RS answer across its pages.

An extension: PS3.18 10.6 lets the origin server answer in any order and defines no sort parameter, so a client
that pages through `limit`/`offset` can only sort what one page holds. dcm4chee-arc's `orderby` is what viewers
and consoles already send, so its name and syntax are kept: a comma list of attributes, each descending when
prefixed with `-` (`orderby=-StudyDate,-StudyTime`).

Only keys that every store can sort from an index are accepted (the fields of each below have a (fields,
insertion order) index in both: migrations/*/0008_study_order.*), so a page sorted by one key costs what an
unsorted one does, at 100,000 studies as at 100 (several keys sort every match first); anything else is a
`QueryError` naming the keys that are. Ties are broken by insertion order in the direction of the last key, so
`offset` pages neither repeat nor skip a study, and for one key one index serves the whole order. An instance
sent again takes its predecessor's place, and its study keeps its own. The series and
instance levels have no order: `orderby` is ignored there, with a warning, as an unknown parameter is.
"""

from __future__ import annotations

from app.core.dicom.attributes import BY_KEY, Level
from app.core.query.keys import resolve_path, show
from app.core.query.model import STUDY_DATETIME_FIELD, QueryError, SortKey

# Each key's fields, which an index of each store serves in this order (then insertion order). StudyDate sorts by
# the date, then by the combined date-time value ingest indexes (a study without a time counts as the start of its
# day, as in combined date-time range matching, PS3.4 C.2.2.2.5.1), so the studies of one day come in time order
# and `-StudyDate,-StudyTime` needs no index of its own; the date first, so a StudyDate range and the order read
# one stretch of one index and a page ends the walk.
SORTABLE: dict[Level, dict[str, tuple[str, ...]]] = {
    Level.STUDY: {
        "StudyDate": ("study_date", STUDY_DATETIME_FIELD),
        "PatientName": ("patient_name",),
        "PatientID": ("patient_id",),
        "AccessionNumber": ("accession_number",),
        "StudyDescription": ("study_description",),
        "NumberOfStudyRelatedSeries": ("number_of_study_related_series",),
        "NumberOfStudyRelatedInstances": ("number_of_study_related_instances",),
    },
}


def parse_order(level: Level, text: str) -> tuple[SortKey, ...] | None:
    """`-StudyDate,PatientName` -> sort keys; `StudyTime` right after `StudyDate` in the same direction is what
    StudyDate sorts by already, and is dropped. None at a level without an order (the caller ignores it)."""
    sortable = SORTABLE.get(level)
    if sortable is None:
        return None
    if not text.strip():
        return ()
    keys: list[SortKey] = []
    named: set[str] = set()
    previous: tuple[str, bool] | None = None
    for item in text.split(","):
        item = item.strip()
        descending = item.startswith("-")
        name = item[1:].strip() if descending else item
        if not name:
            raise QueryError(f"orderby {show(text)} has an empty key")
        attribute = BY_KEY.get(resolve_path(name)[0])
        keyword = attribute.keyword if attribute is not None else name
        if keyword == "StudyTime" and previous == ("StudyDate", descending):
            previous = (keyword, descending)
            continue
        if keyword not in sortable:
            raise QueryError(
                f"cannot order by {show(name)}: orderby takes {', '.join(sortable)} (each with - for descending;"
                " StudyTime only right after StudyDate)"
            )
        if keyword in named:
            raise QueryError(f"orderby names {keyword} twice")
        named.add(keyword)
        keys.extend(SortKey(field, descending) for field in sortable[keyword])
        previous = (keyword, descending)
    return tuple(keys)


def with_tie_break(order: tuple[SortKey, ...], insertion_field: str) -> tuple[SortKey, ...]:
    """The full order a store sorts by: the keys, then insertion order in the last key's direction (ascending
    without keys), so the (key, insertion) index serves it in one scan, forwards or backwards."""
    return (*order, SortKey(insertion_field, order[-1].descending if order else False))
