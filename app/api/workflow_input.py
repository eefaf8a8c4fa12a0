"""What the workflow routes read from a request, checked before any I/O: DICOM JSON bodies, path UIDs, AE
titles and QIDO-style query parameters (UPS-RS PS3.18 11, the MPPS and worklist listings).

UPS-RS bodies are DICOM JSON (PS3.18 F.2, the default media type of PS3.18 Table 11.1.3-1): a workitem is one
data set, sent as an object or an array of one (dcm4chee-arc sends either). The core reads them by tag, so the
shape is checked here once - tags as 8 hex digits (upper-cased), each element an object with a known VR, values
a list, sequences of items - and a body that is not a data set is a 400 that says where it went wrong, never a
500 further in. Bulk data has no place in a workitem (PS3.18 11.1.3: "The transactions shall not support
Metadata or Bulkdata objects").

Query keys follow QIDO-RS (PS3.18 8.3.4): a keyword, a tag or a dotted sequence path, with `limit`, `offset`,
`includefield` and `fuzzymatching` meaning what they mean there (app/api/qido_params.py parses the same words);
the keys are matched on the stored JSON by the query model (app/core/query/evaluate.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from fastapi import Request

from app.api.errors import DicomWebError
from app.api.qido_params import attribute_key, non_negative
from app.core.aes import InvalidAE, normalise_ae_title
from app.core.dicom.uids import InvalidUIDError, check_uid
from app.core.query.keys import resolve_path, show
from app.core.query.model import QueryError
from app.core.records import JSONDict

DICOM_JSON: Final = "application/dicom+json"
# A workitem with a long Input Information Sequence is some hundreds of kilobytes; this is far above it.
MAX_BODY_BYTES: Final = 4 * 1024 * 1024
MAX_DEPTH: Final = 16  # sequence nesting a data set may have (real ones have two or three)
_TAG: Final = re.compile(r"[0-9A-Fa-f]{8}")
_VRS: Final = frozenset(  # PS3.5 Table 6.2-1
    {"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF", "OL", "OV"}
    | {"OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN", "UR", "US", "UT", "UV"}
)
_PN_GROUPS: Final = frozenset({"Alphabetic", "Ideographic", "Phonetic"})
# Parameters about the answer, not the search (PS3.18 8.3.3.1).
_RESPONSE_PARAMETERS: Final = frozenset({"accept", "charset"})


class DatasetError(ValueError):
    """A body that is not one DICOM JSON data set; the message says where."""


# --------------------------------------------------------------------------- bodies


def parse_dataset(body: bytes, *, optional: bool = False) -> JSONDict:
    """The one DICOM JSON data set in `body` (an object, or an array of one), tags upper-cased.

    An empty body is an empty data set when `optional`, else a DatasetError, as is anything that is not one
    data set (PS3.18 F.2)."""
    if not body.strip():
        if optional:
            return {}
        raise DatasetError("the request has no body; a DICOM JSON data set is expected (PS3.18 F.2)")
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DatasetError(f"the body is not JSON: {exc}") from None
    except RecursionError:
        raise DatasetError("the body is nested too deeply to read") from None
    if isinstance(parsed, list):
        if len(parsed) != 1:
            raise DatasetError(f"the body is an array of {len(parsed)} data sets; one is expected")
        parsed = parsed[0]
    return check_dataset(parsed)


def check_dataset(value: Any, where: str = "the data set", depth: int = 0) -> JSONDict:
    """`value` as a DICOM JSON data set with upper-case tags; DatasetError saying what is wrong where."""
    if not isinstance(value, dict):
        raise DatasetError(f"{where} is not a JSON object of attributes (PS3.18 F.2)")
    if depth > MAX_DEPTH:
        raise DatasetError(f"{where} is nested deeper than {MAX_DEPTH} sequences")
    out: JSONDict = {}
    for tag, element in value.items():
        if not isinstance(tag, str) or _TAG.fullmatch(tag) is None:
            raise DatasetError(f"{show(str(tag))} in {where} is not a tag of 8 hex digits (PS3.18 F.2.1)")
        out[tag.upper()] = _check_element(element, f"({tag[:4].upper()},{tag[4:].upper()})", depth)
    return out


def _check_element(element: Any, where: str, depth: int) -> JSONDict:
    if not isinstance(element, dict):
        raise DatasetError(f"{where} is not a JSON object with a vr (PS3.18 F.2.2)")
    vr = element.get("vr")
    if vr not in _VRS:
        raise DatasetError(f"{where} has no valid vr ({show(str(vr))})")
    if "BulkDataURI" in element:
        raise DatasetError(f"{where} refers to bulk data, which a workitem cannot carry (PS3.18 11.1.3)")
    if "Value" not in element:
        return _kept(element)
    values = element["Value"]
    if not isinstance(values, list):
        raise DatasetError(f"the Value of {where} is not an array (PS3.18 F.2.3)")
    if vr == "SQ":
        items = [check_dataset(item, f"an item of {where}", depth + 1) for item in values]
        return {"vr": vr, "Value": items}
    for value in values:
        if vr == "PN":
            ok = value is None or (
                isinstance(value, dict)
                and set(value) <= _PN_GROUPS
                and all(isinstance(v, str) for v in value.values())
            )
        else:
            ok = value is None or (isinstance(value, (str, int, float)) and not isinstance(value, bool))
            # Held as signed 64-bit integers by both stores (SV's range, PS3.5 Table 6.2-1).
            ok = ok and not (isinstance(value, int) and not -(2**63) <= value < 2**63)
        if not ok:
            raise DatasetError(f"a value of {where} is not a {vr} value (PS3.18 F.2.4)")
    return _kept(element)


def _kept(element: JSONDict) -> JSONDict:
    """Only what PS3.18 F.2.2 defines of an element: anything else a client adds is not kept and not echoed."""
    return {k: element[k] for k in ("vr", "Value", "InlineBinary") if k in element}


async def read_dataset(request: Request, *, optional: bool = False) -> JSONDict:
    """The request's DICOM JSON data set: 415 for another media type, 413 past MAX_BODY_BYTES, 400 when it is
    not one data set."""
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";")[0].strip().lower()
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise DicomWebError(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
    if body.strip() and media_type not in (DICOM_JSON, "application/json"):
        raise DicomWebError(
            415, f"the body is {content_type[:100]!r}; workitems are sent as {DICOM_JSON} (PS3.18 11.1.3)"
        )
    try:
        return parse_dataset(bytes(body), optional=optional)
    except DatasetError as exc:
        raise DicomWebError(400, str(exc)) from exc


# --------------------------------------------------------------------------- path values


def checked_uid(value: str, name: str) -> str:
    """A UID from the path or the query (PS3.5 9.1), 400 unless it is one."""
    try:
        return check_uid(value, name)
    except InvalidUIDError as exc:
        raise DicomWebError(400, str(exc)) from exc


def checked_ae_title(value: str) -> str:
    """An AE title from the path: at most 16 characters, no backslash, no control characters (PS3.5 Table
    6.2-1, VR AE), its non-significant spaces stripped; 400 otherwise."""
    try:
        return normalise_ae_title(value)
    except InvalidAE as exc:
        raise DicomWebError(400, f"{exc} (PS3.5 Table 6.2-1)") from exc


def boolean(name: str, value: str | None) -> bool:
    """A `true`/`false` query parameter (PS3.18 11.10.1.2, deletionlock); absent is false."""
    if value is None:
        return False
    if value.lower() not in ("true", "false"):
        raise DicomWebError(400, f"{name} must be true or false, not {show(value)}")
    return value.lower() == "true"


# --------------------------------------------------------------------------- query parameters


@dataclass
class WorkflowQuery:
    """Matching keys (attribute path -> value, for `parse_matches`) and paging, as QIDO-RS has them."""

    keys: dict[str, str] = field(default_factory=dict)
    limit: int | None = None
    offset: int = 0
    warnings: list[str] = field(default_factory=list)
    asked_limit: int | None = None  # the limit as asked, when it was lowered to the maximum


def parse_query(
    params: Iterable[tuple[str, str]],
    *,
    default_limit: int | None,
    max_limit: int | None,
    ignore: frozenset[str] = frozenset(),
) -> WorkflowQuery:
    """QIDO-style parameters (PS3.18 8.3.4) -> keys and paging. A name that looks like an attribute must be one
    (400 otherwise), other names are ignored with a warning (PS3.18 8.3); `ignore` names are the caller's."""
    query = WorkflowQuery(limit=default_limit)
    seen: set[str] = set()
    ignored: list[str] = []
    fuzzy = False
    try:
        for name, value in params:
            if name in _RESPONSE_PARAMETERS or name in ignore:
                continue
            if name in seen:
                raise QueryError(f"query parameter {name} is given more than once")
            if name != "includefield":
                seen.add(name)
            if name == "limit":
                query.limit = non_negative(name, value)
                if max_limit is not None and query.limit > max_limit:
                    query.asked_limit, query.limit = query.limit, max_limit
            elif name == "offset":
                query.offset = non_negative(name, value)
            elif name == "fuzzymatching":
                if value.lower() not in ("true", "false"):
                    raise QueryError(
                        f"fuzzymatching must be true or false, not {show(value)} (PS3.18 8.3.4.1)"
                    )
                fuzzy = value.lower() == "true"
            elif name == "includefield":
                # Whole data sets are returned, so every attribute asked for is in them; the names must be real.
                for item in value.split(","):
                    if item.strip() and item.strip().lower() != "all":
                        resolve_path(item.strip())
            elif attribute_key(name) is None:
                ignored.append(name)
            else:
                query.keys[name] = value
    except QueryError as exc:
        raise DicomWebError(400, str(exc)) from exc
    if fuzzy:
        query.warnings.append(
            "Fuzzy matching is not supported for workflow queries; names were matched as given"
        )
    if ignored:
        query.warnings.append("The following query parameters are not supported: " + ", ".join(ignored))
    if query.asked_limit is not None:
        query.warnings.append(
            f"The limit {query.asked_limit} exceeds the maximum of {max_limit} results per request; {max_limit} used"
        )
    return query


def filter_keys(params: Iterable[tuple[str, str]], ignore: frozenset[str]) -> dict[str, str]:
    """The keys of a Filtered Worklist Subscription: `filter=attribute=value,attribute=value` (PS3.18 11.10.1.2),
    and, as dcm4chee-arc takes them, attributes given as query parameters of their own."""
    keys: dict[str, str] = {}
    for name, value in params:
        if name in _RESPONSE_PARAMETERS or name in ignore:
            continue
        pairs = (
            [item.partition("=") for item in value.split(",")] if name == "filter" else [(name, "=", value)]
        )
        for key, equals, text in pairs:
            key = key.strip()
            if not equals or not key:
                raise DicomWebError(
                    400, f"filter {show(value)} is not attribute=value[,attribute=value] (PS3.18 11.10.1.2)"
                )
            if key in keys:
                raise DicomWebError(400, f"filter key {show(key)} is given more than once")
            keys[key] = text
    return keys


# PS3.18 8.3.4.4's text, without the count: the workflow searches stop reading one past the page, so they know
# that more are left, not how many.
MORE_RESULTS = "There are additional results that can be requested"
