"""Normalised forms of attribute values, shared by indexing (ingest) and matching (query).

Both sides must agree byte for byte, or a range or prefix match silently misses: a time stored as "1030" and
matched against "103000" is the classic bug. So every value is reduced here, once, to a form whose plain
string (or integer) order is the DICOM order: DA as YYYYMMDD, TM as HHMMSS.FFFFFF padded (PS3.5 Table 6.2-1),
person names upper-cased for case-insensitive matching (PS3.4 C.2.2.2.1 allows it for PN), integers as int.
"""

from __future__ import annotations

INTEGER_VRS = frozenset({"IS", "US", "UL", "SS", "SL", "UV", "SV"})


def normalize_date(value: str) -> str:
    # ACR-NEMA era "YYYY.MM.DD" dates still arrive from old modalities (PS3.5 6.2 note).
    return value.strip().replace(".", "")


def normalize_time(value: str) -> str:
    """HHMMSS.FFFFFF with missing minutes, seconds and fraction padded with zeros (PS3.5 Table 6.2-1)."""
    value = value.strip().replace(":", "")
    if not value:
        return ""
    whole, _, fraction = value.partition(".")
    whole = (whole + "000000")[:6]
    return f"{whole}.{(fraction + '000000')[:6]}"


def normalize_name(value: str) -> str:
    """Upper-cased, trailing empty components and spaces dropped: 'Doe^John^^' -> 'DOE^JOHN'."""
    groups = value.split("=")
    # Matching uses the alphabetic group; ideographic and phonetic groups are returned, not matched.
    return groups[0].strip().rstrip("^").upper()


def name_words(value: str) -> list[str]:
    """Each component of the alphabetic group, for fuzzy matching on any component's prefix."""
    words: list[str] = []
    for component in normalize_name(value).split("^"):
        words.extend(w for w in component.replace(",", " ").split() if w)
    return words


def normalize(vr: str, value: object) -> str | int | None:
    """The indexed form of one value of an attribute with this VR; None when there is nothing to index."""
    if value is None:
        return None
    if vr in INTEGER_VRS:
        try:
            return int(str(value).strip())
        except ValueError:
            return None
    text = str(value).strip()
    if not text:
        return None
    if vr == "DA":
        return normalize_date(text)
    if vr == "TM":
        return normalize_time(text)
    if vr == "PN":
        return normalize_name(text)
    return text


def study_datetime(date: str | None, time: str | None) -> str | None:
    """StudyDate and StudyTime as one sortable key, for combined date-time range matching (PS3.4 C.2.2.2.5.1)."""
    if not date:
        return None
    return date + (time or "000000.000000")
