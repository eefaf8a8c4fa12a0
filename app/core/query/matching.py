"""Matching values: each key's value validated against its VR and normalised as ingest normalised what it indexed
(app.core.dicom.values), and its matching kind chosen (PS3.4 C.2.2.2): single value, universal, wildcard, range, list;
a StudyDate range with a StudyTime range becomes one combined date-time range (C.2.2.2.5.1)."""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Mapping

from app.core.dicom.attributes import Attribute
from app.core.dicom.uids import InvalidUIDError, check_uid
from app.core.dicom.values import INTEGER_VRS, name_words, normalize_date, normalize_name, normalize_time
from app.core.query.keys import show
from app.core.query.model import Match, MatchKind, QueryError

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


_TIME_RE = re.compile(r"(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?")


_DATE_RE = re.compile(r"\d{8}")


_CONTROL_RE = re.compile(r"[\x00-\x1a\x1c-\x1f\x7f]")  # every C0 control but ESC (ISO 2022), and DEL


_TEXT_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f\x7f]")


_SURROGATE_RE = re.compile(r"[\ud800-\udfff]")


def match_keys(raw: Mapping[Attribute, str], fuzzy: bool) -> tuple[Match, ...]:
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
                f"{attribute.keyword}: {show(text)} is longer than the {limit} characters of its VR "
                f"{attribute.vr} (PS3.5 Table 6.2-1)"
            )


def _parse_list(attribute: Attribute, text: str) -> Match:
    """UIDs separated by '\\' (PS3.4 C.2.2.2.2) or ',' (PS3.18 8.3.4.1). A list of CS codes is accepted the same
    way, an extension viewers use for modality filters (ModalitiesInStudy=CT\\MR): any listed code matches."""
    items = [v.strip() for v in re.split(r"[\\,]", text)]
    if any(v == "" for v in items):
        raise QueryError(f"{attribute.keyword}: empty item in the list {show(text)}")
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
        raise QueryError(f"{attribute.keyword}: {show(text)} is not an integer ({attribute.vr})")
    number = int(text)
    if not low <= number <= high:
        raise QueryError(f"{attribute.keyword}: {number} is out of range for {attribute.vr}")
    return number


def _parse_range(attribute: Attribute, text: str) -> Match:
    """DA and TM: a value, `a-`, `-b` or `a-b`, inclusive (PS3.4 C.2.2.2.5). A time with reduced precision
    covers the whole period it names ("1030" is 10:30:00 to 10:30:59.999999), so a single time is a range."""
    name, vr = attribute.keyword, attribute.vr
    if vr == "DT":  # matched as text at the precision given (workflow keys, app/core/query/evaluate.py)
        return _parse_datetime(attribute, text)
    if text.count("-") > 1:
        raise QueryError(f"{name}: {show(text)} is not a {_VR_NAME[vr]} or a range of them (PS3.4 C.2.2.2.5)")
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
    # the last); alone it cannot, which matches checks once it knows whether the two combine.
    if vr == "DA" and low is not None and high is not None and low > high:
        raise QueryError(f"{name}: the range {show(text)} ends before it starts")
    return Match(attribute, MatchKind.RANGE, (low, high))


_VR_NAME = {"DA": "date (YYYYMMDD)", "TM": "time (HHMMSS.FFFFFF)"}
# A DT of any precision from the year down, with an optional UTC offset (PS3.5 Table 6.2-1).
_DT = r"\d{4}(?:\d{2}){0,5}(?:\.\d{1,6})?(?:[+-]\d{4})?"
_DT_RE = re.compile(_DT)
_DT_RANGE_RE = re.compile(f"({_DT})?-({_DT})?")


def _parse_datetime(attribute: Attribute, text: str) -> Match:
    if _DT_RE.fullmatch(text):
        return Match(attribute, MatchKind.SINGLE, (text,))
    found = _DT_RANGE_RE.fullmatch(text)
    if found is None or not any(found.groups()):
        raise QueryError(
            f"{attribute.keyword}: {show(text)} is not a date-time (YYYYMMDDHHMMSS.FFFFFF&ZZXX) or a range of "
            "them (PS3.4 C.2.2.2.5)"
        )
    low, high = found.groups()
    shared = min(len(low or ""), len(high or ""))
    if low and high and low[:shared] > high[:shared]:
        raise QueryError(f"{attribute.keyword}: the range {show(text)} ends before it starts")
    return Match(attribute, MatchKind.RANGE, (low, high))


def _date(attribute: Attribute, text: str) -> str:
    date = normalize_date(text)  # also accepts the ACR-NEMA "YYYY.MM.DD"
    if not _DATE_RE.fullmatch(date) or not date.isascii():
        raise QueryError(f"{attribute.keyword}: {show(text)} is not a date (YYYYMMDD, PS3.5 Table 6.2-1)")
    try:
        _dt.date(int(date[:4]), int(date[4:6]), int(date[6:]))
    except ValueError as exc:
        raise QueryError(f"{attribute.keyword}: {show(text)} is not a valid date ({exc})") from exc
    return date


def _time(attribute: Attribute, text: str) -> tuple[str, str]:
    """(first, last) instant of the period a time names, both normalised as ingest does (values.normalize_time)."""
    compact = text.replace(":", "")
    found = _TIME_RE.fullmatch(compact) if compact.isascii() else None
    if found is None or (found.group(4) and not found.group(3)) or len(text) > MAX_LENGTH["TM"]:
        raise QueryError(
            f"{attribute.keyword}: {show(text)} is not a time (HHMMSS.FFFFFF, PS3.5 Table 6.2-1)"
        )
    hh, mm, ss, frac = found.groups()
    if int(hh) > 23 or int(mm or 0) > 59 or int(ss or 0) > 60:
        raise QueryError(f"{attribute.keyword}: {show(text)} is not a valid time")
    first = normalize_time(compact)
    last = f"{hh}{mm or '59'}{ss or '59'}.{(frac or '').ljust(6, '9')}"
    return first, last
