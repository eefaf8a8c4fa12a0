"""UPS-RS, the Worklist Service (PS3.18 11): create, retrieve, update, change the state of, request the
cancellation of, and search for workitems over HTTP. Subscriptions are in ups_subscriptions.py, the event
channel in ups_events.py.

A thin door: bodies and path values are checked here (workflow_input.py), every rule of the Unified Procedure
Step state machine is the core's (app/core/workflow/ups.py, the one path DIMSE takes too), and its refusals
become HTTP statuses in one table (workflow_errors.py). Decisions taken from the standard:
* Create takes the workitem's UID from `?workitem={uid}`, from a bare `?{uid}` (the URI template of PS3.18
  11.4.1 is read both ways) or from the data set's SOP Instance UID; with none, the archive makes one. It
  answers 201 with Location (PS3.18 11.4.3) and no body.
* Update takes the Transaction UID from `?transaction={uid}` (PS3.18 11.6.1.2) or, as a DIMSE N-SET carries
  it, from the data set.
* Request Cancellation answers 202 Accepted (PS3.18 Table 11.8.3-1). Its optional body carries Reason For
  Cancellation, Procedure Step Discontinuation Reason Code Sequence, Contact URI and Contact Display Name
  (PS3.4 Table CC.2.2-1); the Requesting AE (0074,1236) that the UPS Cancel Requested event names (PS3.4 Table
  CC.2.4-1) is taken from the body when given, since HTTP carries no calling AE title.
* Search answers zero matches with `200 []`, as QIDO-RS does here (app/api/qido.py), pages with `limit` and
  `offset` under the QIDO limits, and returns each workitem whole (a superset of the Return Key Type 1 and 2
  attributes and of any `includefield`, PS3.18 11.9.2).
* Answers are DICOM JSON, or multipart/related; type="application/dicom+xml" when asked (PS3.18 Table
  11.1.3-1); the Transaction UID is never in them (PS3.18 11.5.2, PS3.4 CC.2.6.3), the core keeps it apart.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from app.api.accept import negotiate
from app.api.dicom_response import DICOM_JSON, DICOM_XML, negotiate_dataset_media_type, to_xml
from app.api.errors import DicomWebError, warning
from app.api.multipart_writer import multipart_body, multipart_content_type, new_boundary
from app.api.urls import service_root
from app.api.workflow_errors import WARNING_TEXT, Transaction, workflow_errors
from app.api.workflow_input import (
    MORE_RESULTS,
    WorkflowQuery,
    checked_ae_title,
    checked_uid,
    parse_query,
    read_dataset,
)
from app.core.dicom.uids import is_valid_uid
from app.core.query.evaluate import parse_matches
from app.core.query.model import Match, QueryError
from app.core.records import JSONDict
from app.core.workflow import attributes as a
from app.core.workflow.outcomes import WorkflowWarning
from app.deps import Context

router = APIRouter(tags=["UPS-RS"])

WORKITEM_UID: Final = "Workitem UID"
_CREATE_PARAMETERS: Final = frozenset({"workitem", "accept", "charset"})


def responses(**described: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` from `_201="Created ..."`-style keywords: the statuses a route answers."""
    return {name.lstrip("_"): {"description": text} for name, text in described.items()}


_BAD = (
    "The request is malformed: a path UID, AE title, query key or body that is not valid (DICOM JSON body)."
)
_MISSING = "No such workitem (DICOM JSON body with Error Comment)."


# --------------------------------------------------------------------------- create, retrieve, update


@router.post(
    "/workitems",
    status_code=201,
    summary="Create Workitem (UPS-RS, PS3.18 11.4)",
    description="Adds a SCHEDULED workitem to the worklist (N-CREATE of UPS Push, PS3.4 CC.2.5). The body is a "
    "DICOM JSON data set (or an array of one); the UID comes from `?workitem=`, a bare `?{uid}`, the data set's "
    "SOP Instance UID, or is made. Answers 201 with Location; `Warning: 299` when the archive added attributes.",
    responses=responses(
        _201="Created; Location names the workitem.",
        _400=_BAD
        + " Also: a required attribute is missing, the state is not SCHEDULED, a Transaction UID is given.",
        _409="A workitem with this UID exists.",
        _413="The body is too large.",
        _415="The body is not application/dicom+json.",
    ),
)
async def create_workitem(request: Request, context: Context) -> Response:
    uid = _uid_to_create(request)
    dataset = await read_dataset(request)
    given = a.text(dataset, "SOPInstanceUID")
    if uid and given and given != uid:
        raise DicomWebError(
            400, f"the query names workitem {uid} but the data set's SOP Instance UID is {given}"
        )
    with workflow_errors(Transaction.CREATE):
        workitem, modified = await context.ups.create(dataset, uid or None)
    location = f"{service_root(request, context.settings)}/workitems/{workitem.sop_instance_uid}"
    response = Response(status_code=201, headers={"Location": location})
    if modified:
        response.headers.append("Warning", warning(WARNING_TEXT[WorkflowWarning.CREATED_WITH_MODIFICATIONS]))
    return response


def _uid_to_create(request: Request) -> str:
    """`?workitem={uid}`, or the bare `?{uid}` form; '' when neither (PS3.18 11.4.1.1)."""
    named = request.query_params.get("workitem")
    if named is not None:
        return checked_uid(named, WORKITEM_UID)
    bare = [k for k, v in request.query_params.multi_items() if not v and k not in _CREATE_PARAMETERS]
    if len(bare) == 1 and is_valid_uid(bare[0]):
        return bare[0]
    if bare:
        raise DicomWebError(400, f"{bare[0][:80]!r} in the query is not a workitem UID (PS3.18 11.4.1.1)")
    return ""


@router.get(
    "/workitems/{workitem}",
    summary="Retrieve Workitem (UPS-RS, PS3.18 11.5)",
    description="The workitem (N-GET, PS3.4 CC.2.7) as a DICOM JSON array of one data set, or multipart "
    "application/dicom+xml; never its Transaction UID (PS3.18 11.5.2).",
    responses=responses(_200="The workitem.", _400=_BAD, _404=_MISSING, _406="No acceptable media type."),
)
async def retrieve_workitem(workitem: str, request: Request, context: Context) -> Response:
    uid = checked_uid(workitem, WORKITEM_UID)
    media_type = negotiate(request, negotiate_dataset_media_type)
    with workflow_errors(Transaction.RETRIEVE):
        found = await context.ups.get(uid)
    return datasets_response([found.dataset], media_type)


@router.post(
    "/workitems/{workitem}",
    summary="Update Workitem (UPS-RS, PS3.18 11.6)",
    description="Changes attributes of a workitem (N-SET, PS3.4 CC.2.6): a SCHEDULED one by anyone, an IN "
    "PROGRESS one only with its Transaction UID (`?transaction=`, or in the data set), a COMPLETED or CANCELED "
    "one never. Answers 200 without a body.",
    responses=responses(
        _200="Updated.",
        _400=_BAD + " Also: the workitem is COMPLETED or CANCELED (PS3.18 11.6.2), or the Transaction UID is "
        "missing or wrong (Table 11.6.3-1).",
        _404=_MISSING,
        _409="The change is inconsistent with the workitem's state.",
        _413="The body is too large.",
        _415="The body is not application/dicom+json.",
    ),
)
async def update_workitem(
    workitem: str,
    request: Request,
    context: Context,
    transaction: str | None = Query(None, description="The Transaction UID of an IN PROGRESS workitem."),
) -> Response:
    uid = checked_uid(workitem, WORKITEM_UID)
    if transaction is not None:
        checked_uid(transaction, "Transaction UID")
    changes = await read_dataset(request)
    in_body = a.text(changes, "TransactionUID")
    if transaction and in_body and in_body != transaction:
        raise DicomWebError(400, "the Transaction UID of the query and that of the data set differ")
    given = transaction or in_body or None
    with workflow_errors(Transaction.UPDATE, transaction_uid_given=given is not None):
        await context.ups.update(uid, changes, given)
    return Response(status_code=200)


# --------------------------------------------------------------------------- state


@router.put(
    "/workitems/{workitem}/state",
    summary="Change Workitem State (UPS-RS, PS3.18 11.7)",
    description="Claims (IN PROGRESS, with a new Transaction UID), completes or cancels a workitem (N-ACTION "
    "Change UPS State, PS3.4 CC.2.1). The body is a DICOM JSON data set with Procedure Step State (0074,1000) and "
    "Transaction UID (0008,1195). Answers 200 without a body; `Warning: 299` when it was in that state already.",
    responses=responses(
        _200="The state changed (or already was the one asked: see the Warning header).",
        _400=_BAD
        + " Also: the Transaction UID is missing or wrong (Table 11.7.3-1), the state is not one of "
        "IN PROGRESS, COMPLETED, CANCELED.",
        _404=_MISSING,
        _409="The change is inconsistent with the workitem's state: claimed already, not claimed yet, final, or "
        "COMPLETED without the final state attributes (PS3.4 CC.2.5.1.3.2).",
        _415="The body is not application/dicom+json.",
    ),
)
async def change_workitem_state(workitem: str, request: Request, context: Context) -> Response:
    uid = checked_uid(workitem, WORKITEM_UID)
    body = await read_dataset(request)
    state = a.text(body, "ProcedureStepState")
    if state == "CANCELLED":  # so spelled in PS3.18 11.7.1.4; the Defined Term is CANCELED (PS3.3 C.30.1)
        state = "CANCELED"
    given = a.text(body, "TransactionUID") or None
    if given is not None:
        checked_uid(given, "Transaction UID")
    with workflow_errors(Transaction.CHANGE_STATE, transaction_uid_given=given is not None):
        remark = await context.ups.change_state(uid, state, given)
    return _with_warning(Response(status_code=200), remark)


@router.post(
    "/workitems/{workitem}/cancelrequest",
    status_code=202,
    summary="Request Cancellation (UPS-RS, PS3.18 11.8)",
    description="Asks for a workitem to be canceled (N-ACTION Request UPS Cancel, PS3.4 CC.2.2): a SCHEDULED "
    "one is canceled at once, the performer of an IN PROGRESS one is told through the UPS Cancel Requested event. "
    "The optional DICOM JSON body may carry Reason For Cancellation, Procedure Step Discontinuation Reason Code "
    "Sequence, Contact URI, Contact Display Name, and the Requesting AE. Answers 202 without a body.",
    responses=responses(
        _202="Accepted (`Warning: 299` when the workitem was CANCELED already).",
        _400=_BAD,
        _404=_MISSING,
        _409="The workitem is COMPLETED.",
        _415="The body is not application/dicom+json.",
    ),
)
async def request_cancellation(workitem: str, request: Request, context: Context) -> Response:
    uid = checked_uid(workitem, WORKITEM_UID)
    information = await read_dataset(request, optional=True)
    requesting = a.text(information, "RequestingAE")
    requesting_ae = checked_ae_title(requesting) if requesting else None
    with workflow_errors(Transaction.REQUEST_CANCELLATION):
        remark = await context.ups.request_cancellation(uid, information, requesting_ae)
    return _with_warning(Response(status_code=202), remark)


# --------------------------------------------------------------------------- search


@router.get(
    "/workitems",
    summary="Search for Workitems (UPS-RS, PS3.18 11.9)",
    description="Workitems matching QIDO-style keys (PS3.18 8.3.4: keyword, tag or dotted sequence path; single "
    "value, wildcard, range, UID list), with `limit`, `offset` and `includefield` (C-FIND of UPS Watch/Pull/Query, "
    "PS3.4 CC.2.8). A DICOM JSON array of whole workitems; `[]` when none match.",
    responses=responses(
        _200="The matching workitems (maybe none).", _400=_BAD, _406="No acceptable media type."
    ),
)
async def search_workitems(request: Request, context: Context) -> Response:
    media_type = negotiate(request, negotiate_dataset_media_type)
    query = parse_query(
        request.query_params.multi_items(),
        default_limit=context.settings.qido_default_limit,
        max_limit=context.settings.qido_max_limit,
    )
    keys = matches(query)
    with workflow_errors(Transaction.SEARCH):
        found = await context.ups.search(keys, offset=query.offset, limit=one_past(query))
    return paged_response([w.dataset for w in found], query, media_type)


def matches(query: WorkflowQuery) -> tuple[Match, ...]:
    """The query model's Matches of the keys (app/core/query/evaluate.py); 400 for a key it cannot match."""
    try:
        return parse_matches(query.keys)
    except QueryError as exc:
        raise DicomWebError(400, str(exc)) from exc


# --------------------------------------------------------------------------- answers


def one_past(query: WorkflowQuery) -> int | None:
    """How many matches past the offset to read: one more than the page, to know whether more are left."""
    return None if query.limit is None else query.limit + 1


def paged_response(datasets: Sequence[JSONDict], query: WorkflowQuery, media_type: str) -> Response:
    """One page of `datasets` (the matches past the offset, one past the page at most) with the warnings
    QIDO-RS gives (PS3.18 8.3.4.4)."""
    page = list(datasets if query.limit is None else datasets[: query.limit])
    response = datasets_response(page, media_type)
    notes = list(query.warnings)
    if len(datasets) > len(page):
        notes.append(MORE_RESULTS)
    for text in notes:
        response.headers.append("Warning", warning(text))
    return response


def datasets_response(datasets: Sequence[JSONDict], media_type: str) -> Response:
    """A DICOM JSON array, or one application/dicom+xml part per data set (PS3.18 Table 11.1.3-1)."""
    if media_type == DICOM_XML:
        boundary = new_boundary()
        headers = {"Content-Type": f"{DICOM_XML}; charset=utf-8"}
        parts = [(headers, to_xml(dataset).encode("utf-8")) for dataset in datasets]
        return Response(
            multipart_body(parts, boundary), media_type=multipart_content_type(boundary, DICOM_XML)
        )
    body = json.dumps(list(datasets), separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return Response(body, media_type=DICOM_JSON)


def _with_warning(response: Response, remark: WorkflowWarning | None) -> Response:
    if remark is not None:
        response.headers.append("Warning", warning(WARNING_TEXT[remark]))
    return response
