"""Parsing the Accept header of WADO-RS requests (PS3.18 §8.7 content negotiation, RFC 9110 §12.5.1), and the
order in which the `accept` query parameter and the header are heard (`negotiate`, for every resource).

DICOMweb clients put more in Accept than browsers do: media types with a `type` and a `transfer-syntax`
parameter (`multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.90`), several
alternatives with q-values, wildcards. The routers turn the parsed list into the retrieve service's neutral
requests. A header that cannot be parsed is a client error (400), not "nothing acceptable" (406): the client
must learn that it sent something broken.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import groupby
from typing import Final, TypeVar

from fastapi import Request

from app.api.errors import DicomWebError
from app.api.multipart import MultipartError, parse_content_type
from app.core.dicom.uids import is_valid_uid
from app.core.retrieve.negotiation import ANY

_Q_VALUE: Final = re.compile(r"(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)")
_T = TypeVar("_T")


@dataclass(frozen=True)
class MediaRange:
    """One element of Accept: lower-cased media type, its parameters (names lower-cased, q removed), q."""

    media_type: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0
    position: int = 0

    @property
    def part_type(self) -> str | None:
        """The `type` parameter of multipart/related, lower-cased (PS3.18 §8.7.3.1)."""
        value = self.params.get("type")
        return value.strip().lower() if value is not None else None

    @property
    def transfer_syntax(self) -> str | None:
        """The `transfer-syntax` parameter (PS3.18 §8.7.3.5): a UID, `*`, or None when absent."""
        return self.params.get("transfer-syntax")


def split_header(value: str) -> list[str]:
    """Split on commas that are not inside a quoted string."""
    items: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in value:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            items.append("".join(current))
            current = []
            continue
        current.append(char)
    if quoted:
        raise DicomWebError(400, f"malformed Accept header (unterminated quoted string): {value[:200]}")
    items.append("".join(current))
    return [item.strip() for item in items if item.strip()]


def parse_accept(value: str | None) -> list[MediaRange]:
    """Every acceptable media range, best first (q descending, then the order given); q=0 ranges dropped.

    An absent or empty header gives an empty list: the caller applies its resource's default (PS3.18
    §8.7.8.1). Raises DicomWebError(400) for a malformed element, q-value or transfer-syntax parameter.
    """
    if value is None or not value.strip():
        return []
    ranges: list[MediaRange] = []
    for position, item in enumerate(split_header(value)):
        try:
            media_type, params = parse_content_type(item)
        except MultipartError as exc:
            raise DicomWebError(400, f"malformed Accept header: {exc}") from exc
        q_text = params.pop("q", "1")
        if _Q_VALUE.fullmatch(q_text) is None:
            raise DicomWebError(400, f"malformed q-value {q_text[:20]!r} in Accept (RFC 9110 12.4.2)")
        syntax = params.get("transfer-syntax")
        if syntax is not None:
            syntax = syntax.strip()
            if syntax != ANY and not is_valid_uid(syntax):
                raise DicomWebError(400, f"transfer-syntax {syntax[:80]!r} in Accept is not a UID or '*'")
            params["transfer-syntax"] = syntax
        q = float(q_text)
        if q > 0:
            ranges.append(MediaRange(media_type, params, q, position))
    if not ranges:
        raise DicomWebError(406, f"the Accept header ({value[:200]}) accepts nothing (every q is 0)")
    return sorted(ranges, key=lambda r: (-r.q, r.position))


def tiers(ranges: list[MediaRange]) -> list[list[MediaRange]]:
    """Group ranges of equal q (already sorted best first): each group is one preference tier."""
    return [list(group) for _, group in groupby(ranges, key=lambda r: r.q)]


def negotiate(request: Request, choose: Callable[[str | None], _T]) -> _T:
    """What the resource gives, chosen by `choose` from an Accept value, in the order of PS3.18 §8.7.8.1.

    The `accept` query parameter (§8.3.3.1; repeated, its values are one list) is heard first: links and
    viewers that cannot set headers use it, and OHIF sends `?accept=image/jpeg` beside a multipart Accept
    header. Only when nothing it names can be given (`choose` answers 406) does the Accept header field
    decide, and a header that is absent or a wildcard gets the resource's default. `choose` raises
    DicomWebError: 400 for a malformed value, 406 for nothing acceptable; it may check the target too
    (whether its stored form can be given), so "can be given" is judged per resource.
    """
    query = ",".join(request.query_params.getlist("accept"))
    if query.strip():
        try:
            return choose(query)
        except DicomWebError as exc:
            if exc.status != 406:
                raise
    return choose(request.headers.get("accept"))
