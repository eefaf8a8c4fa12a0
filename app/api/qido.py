"""QIDO-RS (PS3.18 10.6): search for studies, series, instances (and patients) over HTTP.

A thin door: the parameters are parsed (qido_params.py) into the protocol-neutral QueryModel (app/core/query/,
shared with C-FIND), the repository answers it, and this module only adds what is HTTP's own: content negotiation,
RetrieveURL (0008,1190) built from the public service root, paging limits and `Warning` headers.

Decisions taken from the standard:
* Zero matches is `200 []`: CP-2473 replaced the older "204 No Content" text of PS3.18 8.3.4.4.1, and
  dicomweb-client reads either as an empty list.
* `limit` above the configured maximum is lowered to it, not refused: PS3.18 8.3.4.4 has the origin server
  return at most the number of results it supports with a `Warning: 299 ... "There are {n} additional results
  that can be requested"`; clients page on with `offset`, as dicomweb-client's `get_remaining=True` does.
* Unknown keywords and malformed values are 400 (PS3.18 8.3: "If a supported Query Parameter has an invalid
  value, the origin server shall return a 400"); valid attributes that are not indexed are ignored with a
  warning (PS3.18 8.3: "The origin server shall ignore any unsupported Query Parameters").
* Answers are application/dicom+json (the default) or multipart/related; type="application/dicom+xml" with
  one Native DICOM Model part per result (PS3.18 10.6.3.2, PS3.19 A.1). The `accept` query parameter
  (PS3.18 8.3.3.1) is heard before the Accept header, as on every WADO-RS resource (app/api/accept.py).
* `orderby` on `/studies` is an extension (PS3.18 defines no order; dcm4chee-arc's name and syntax): the
  whole match list sorted before `offset`/`limit` cut the page (app/core/query/ordering.py).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from functools import partial

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.accept import negotiate
from app.api.dicom_response import DICOM_XML, negotiate_dataset_media_type, to_xml
from app.api.errors import DicomWebError, check_uids, warning
from app.api.multipart_writer import multipart_body, multipart_content_type, new_boundary
from app.api.qido_params import parse_qido
from app.api.urls import instance_url, series_url, service_root, study_url
from app.core.dicom.attributes import Level
from app.core.query.model import QueryError, SearchResult
from app.core.query.ordering import SORTABLE
from app.core.records import JSONDict
from app.deps import Context

router = APIRouter(tags=["QIDO-RS"])

DICOM_JSON = "application/dicom+json"
# Query parameters about the response, not the search (PS3.18 8.3.3.1).
_RESPONSE_PARAMETERS = frozenset({"accept", "charset"})


# Documented here, read with every other parameter by parse_qido (the routes take the raw query string).
_ORDERBY = {
    "name": "orderby",
    "in": "query",
    "required": False,
    "schema": {"type": "string"},
    "example": "-StudyDate,-StudyTime",
    "description": (
        "An extension (PS3.18 defines no order; dcm4chee-arc's syntax): the order of the whole answer, applied "
        "before `offset` and `limit`, so pages follow one another in it. A comma list of keys, each descending "
        f"with a leading `-`: {', '.join(SORTABLE[Level.STUDY])}; `StudyTime` only right after `StudyDate` in the "
        "same direction (StudyDate already sorts by date and time; a study without a time counts as midnight). "
        "Studies without a value come first ascending, last descending; ties follow storage order in the last "
        "key's direction. One key is read in order from an index; several sort every match first. Any other "
        "key, or a key given twice, is 400. Without it, storage order. Ignored (with a Warning) on series and "
        "instance searches."
    ),
}


@router.get("/studies", summary="Search for studies (QIDO-RS)", openapi_extra={"parameters": [_ORDERBY]})
async def search_studies(request: Request, context: Context) -> Response:
    return await _search(request, context, Level.STUDY, {})


@router.get("/studies/{study}/series", summary="Search for series of a study (QIDO-RS)")
async def search_study_series(study: str, request: Request, context: Context) -> Response:
    return await _search(request, context, Level.SERIES, _scope(StudyInstanceUID=study))


@router.get("/series", summary="Search for series (QIDO-RS)")
async def search_series(request: Request, context: Context) -> Response:
    return await _search(request, context, Level.SERIES, {})


@router.get(
    "/studies/{study}/series/{series}/instances", summary="Search for instances of a series (QIDO-RS)"
)
async def search_series_instances(study: str, series: str, request: Request, context: Context) -> Response:
    return await _search(
        request, context, Level.IMAGE, _scope(StudyInstanceUID=study, SeriesInstanceUID=series)
    )


@router.get("/studies/{study}/instances", summary="Search for instances of a study (QIDO-RS)")
async def search_study_instances(study: str, request: Request, context: Context) -> Response:
    return await _search(request, context, Level.IMAGE, _scope(StudyInstanceUID=study))


@router.get("/instances", summary="Search for instances (QIDO-RS)")
async def search_instances(request: Request, context: Context) -> Response:
    return await _search(request, context, Level.IMAGE, {})


@router.get("/patients", summary="Search for patients (Patient level, an extension of QIDO-RS)")
async def search_patients(request: Request, context: Context) -> Response:
    """Patient-level search over the patients table (Patient Root information model, PS3.4 C.6.1.1.2)."""
    return await _search(request, context, Level.PATIENT, {})


def _scope(**uids: str) -> dict[str, str]:
    """Path UIDs, checked before any query (PS3.5 9.1): a malformed one is a bad request."""
    check_uids(uids["StudyInstanceUID"], uids.get("SeriesInstanceUID"))
    return uids


async def _search(request: Request, context: Context, level: Level, scope: dict[str, str]) -> Response:
    items = request.query_params.multi_items()
    media_type = negotiate(request, negotiate_dataset_media_type)
    settings = context.settings
    try:
        parsed = parse_qido(
            level,
            [(k, v) for k, v in items if k not in _RESPONSE_PARAMETERS],
            scope,
            default_limit=settings.qido_default_limit,
            max_limit=settings.qido_max_limit,
        )
    except QueryError as exc:
        raise DicomWebError(400, str(exc)) from exc
    result = await context.repository.search(parsed.model)  # an outage answers 503 (api/errors.py)
    root = service_root(request, settings)
    rows = [_with_retrieve_url(row, level, root) for row in result.rows]
    warnings = list(parsed.warnings) + _paging_warnings(
        request, parsed.model.limit, result, settings.qido_max_limit
    )
    # A page of up to QIDO_MAX_LIMIT rows is megabytes of text: written off the event loop when it is large.
    offload = len(rows) > 100
    if media_type == DICOM_XML:
        boundary = new_boundary()
        body = await asyncio.to_thread(_xml_multipart, rows, boundary)
        response = Response(body, media_type=multipart_content_type(boundary, DICOM_XML))
    else:
        encode = partial(json.dumps, rows, separators=(",", ":"), ensure_ascii=False)
        text = await asyncio.to_thread(encode) if offload else encode()
        response = Response(text.encode("utf-8"), media_type=DICOM_JSON)
    for text in warnings:
        response.headers.append("Warning", warning(text))
    return response


def _paging_warnings(request: Request, limit: int | None, result: SearchResult, max_limit: int) -> list[str]:
    out = []
    asked = request.query_params.get("limit", "")
    if asked.isdigit() and int(asked) > max_limit:
        out.append(
            f"The limit {asked} exceeds the maximum of {max_limit} results per request; {max_limit} used"
        )
    if result.remaining:
        # PS3.18 8.3.4.4: the exact text clients look for.
        out.append(f"There are {result.remaining} additional results that can be requested")
    return out


def _with_retrieve_url(row: JSONDict, level: Level, root: str) -> JSONDict:
    """RetrieveURL (0008,1190) of the study, series or instance (PS3.18 Tables 10.6.3-3/-4/-5). Patients
    have no retrieve resource in PS3.18, so patient answers carry none."""
    study = _uid(row, "0020000D")
    series = _uid(row, "0020000E")
    if level is Level.STUDY and study:
        url = study_url(root, study)
    elif level is Level.SERIES and study and series:
        url = series_url(root, study, series)
    elif level is Level.IMAGE and study and series and (sop := _uid(row, "00080018")):
        url = instance_url(root, study, series, sop)
    else:
        return row
    row["00081190"] = {"vr": "UR", "Value": [url]}
    return dict(sorted(row.items()))


def _uid(row: JSONDict, tag: str) -> str | None:
    values = (row.get(tag) or {}).get("Value") or []
    return str(values[0]) if values else None


def _xml_multipart(rows: Sequence[JSONDict], boundary: str) -> bytes:
    """One application/dicom+xml part per result (PS3.18 10.6.3.2); an empty answer is the close delimiter."""
    headers = {"Content-Type": f"{DICOM_XML}; charset=utf-8"}
    return multipart_body([(headers, to_xml(row).encode("utf-8")) for row in rows], boundary)
