"""Read-only HTTP views of the DIMSE workflow for operators and a RIS: the Modality Performed Procedure Steps
modalities reported (PS3.4 Annex F) and the Modality Worklist as modalities see it (PS3.4 Annex K).

PS3.18 has no resource for either (UPS-RS, PS3.18 11, is the web's worklist), so these are extensions under
the DICOMweb root, read with the `read` scope like QIDO-RS:
* `GET /mpps{?StudyInstanceUID,limit,offset}`: the steps, newest first, as a DICOM JSON array;
* `GET /mpps/{uid}`: one step, as an array of one data set (404 when not held);
* `GET /worklist{?keys,limit,offset}`: the worklist items a C-FIND of the Modality Worklist Information Model
  would match with the same keys (QIDO-style: `PatientID=123`,
  `ScheduledProcedureStepSequence.Modality=CT`, `ScheduledProcedureStepSequence.ScheduledProcedureStepStartDate=
  20260101-20260131`), built by the core's worklist view of the scheduled workitems (app/core/workflow/worklist.py).
Paging and its warnings are QIDO-RS's (PS3.18 8.3.4.4), with its limits.
"""

from __future__ import annotations

from typing import Final

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from app.api.accept import negotiate
from app.api.dicom_response import negotiate_dataset_media_type
from app.api.errors import warning
from app.api.ups import datasets_response, matches, one_past, paged_response, responses
from app.api.workflow_errors import Transaction, workflow_errors
from app.api.workflow_input import MORE_RESULTS, checked_uid, parse_query
from app.deps import Context

router = APIRouter(tags=["Workflow (operators)"])

_MPPS_PARAMETERS: Final = frozenset({"StudyInstanceUID"})
_BAD = "A UID, query key, limit or offset is not valid (DICOM JSON body with Error Comment)."


@router.get(
    "/mpps",
    summary="List Modality Performed Procedure Steps (an extension; PS3.4 F.7.2)",
    description="The performed procedure steps modalities reported by MPPS N-CREATE/N-SET, newest first, as a "
    "DICOM JSON array; optionally those naming a study (`StudyInstanceUID`); paged with `limit` and `offset`.",
    responses=responses(_200="The steps (maybe none).", _400=_BAD, _406="No acceptable media type."),
)
async def list_mpps(
    request: Request,
    context: Context,
    StudyInstanceUID: str | None = Query(
        None, description="Only the steps that name this study."
    ),  # the attribute's keyword, as QIDO-RS names it
) -> Response:
    media_type = negotiate(request, negotiate_dataset_media_type)
    study = checked_uid(StudyInstanceUID, "StudyInstanceUID") if StudyInstanceUID is not None else None
    query = parse_query(
        request.query_params.multi_items(),
        default_limit=context.settings.qido_default_limit,
        max_limit=context.settings.qido_max_limit,
        ignore=_MPPS_PARAMETERS,
    )
    if query.keys:
        query.warnings.append("Only StudyInstanceUID is matched here; ignored: " + ", ".join(query.keys))
        query.keys.clear()
    limit = query.limit if query.limit is not None else context.settings.qido_max_limit
    with workflow_errors(Transaction.LISTING):
        # One more than asked: whether more are left is all the warning can say without counting them all.
        steps = await context.mpps.list(study_instance_uid=study, offset=query.offset, limit=limit + 1)
    response = datasets_response([step.dataset for step in steps[:limit]], media_type)
    for text in query.warnings:
        response.headers.append("Warning", warning(text))
    if len(steps) > limit:
        response.headers.append("Warning", warning(MORE_RESULTS))
    return response


@router.get(
    "/mpps/{uid}",
    summary="Retrieve a Modality Performed Procedure Step (an extension; PS3.4 F.7.2)",
    description="One performed procedure step as a DICOM JSON array of one data set.",
    responses=responses(_200="The step.", _400=_BAD, _404="No such performed procedure step."),
)
async def retrieve_mpps(uid: str, request: Request, context: Context) -> Response:
    checked = checked_uid(uid, "SOP Instance UID")
    media_type = negotiate(request, negotiate_dataset_media_type)
    with workflow_errors(Transaction.LISTING):
        step = await context.mpps.get(checked)
    return datasets_response([step.dataset], media_type)


@router.get(
    "/worklist",
    summary="List Modality Worklist items (an extension; PS3.4 K.6)",
    description="What a modality's Modality Worklist C-FIND would find with the same keys, as a DICOM JSON array "
    "of worklist items: the SCHEDULED workitems no MPPS has reported performed. QIDO-style keys, sequence keys "
    "dotted; `limit` and `offset`.",
    responses=responses(_200="The matching items (maybe none).", _400=_BAD, _406="No acceptable media type."),
)
async def list_worklist(request: Request, context: Context) -> Response:
    media_type = negotiate(request, negotiate_dataset_media_type)
    query = parse_query(
        request.query_params.multi_items(),
        default_limit=context.settings.qido_default_limit,
        max_limit=context.settings.qido_max_limit,
    )
    keys = matches(query)
    with workflow_errors(Transaction.LISTING):
        limit = one_past(query)
        items = await context.worklist.find(keys, limit=None if limit is None else query.offset + limit)
    return paged_response(items[query.offset :], query, media_type)
