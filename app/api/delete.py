"""DELETE of studies, series and instances under the DICOMweb root (an extension: PS3.18 defines no delete).

`DELETE /studies/{s}`, `/studies/{s}/series/{se}`, `/studies/{s}/series/{se}/instances/{i}`: the metadata
and the files go together through app/core/lifecycle/delete.py (metadata first, then files), aggregates are corrected
in the same transaction. The answer is `204 No Content` as dcm4chee-arc gives; an `X-Deleted-Instances`
header says how many instances went. Unknown UIDs are 404, invalid ones 400. With authentication on, the
`delete` scope is required (app/api/auth.py).
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from app.api.errors import DicomWebError, check_uids
from app.core.lifecycle.delete import DeleteReport, NothingToDelete
from app.deps import Context

router = APIRouter(tags=["Delete"])


@router.delete("/studies/{study}", status_code=204, summary="Delete a study")
async def delete_study(study: str, context: Context) -> Response:
    return await _delete(context, study)


@router.delete("/studies/{study}/series/{series}", status_code=204, summary="Delete a series")
async def delete_series(study: str, series: str, context: Context) -> Response:
    return await _delete(context, study, series)


@router.delete(
    "/studies/{study}/series/{series}/instances/{instance}", status_code=204, summary="Delete an instance"
)
async def delete_instance(study: str, series: str, instance: str, context: Context) -> Response:
    return await _delete(context, study, series, instance)


async def delete_uids(
    context: Context, study: str, series: str | None = None, instance: str | None = None
) -> DeleteReport:
    """Check the UIDs (400 before any I/O), delete, and turn "not held" into 404."""
    check_uids(study, series, instance)
    try:
        return await context.lifecycle.delete(study, series, instance)
    except NothingToDelete as exc:
        raise DicomWebError(404, str(exc)) from exc


async def _delete(
    context: Context, study: str, series: str | None = None, instance: str | None = None
) -> Response:
    report = await delete_uids(context, study, series, instance)
    return Response(status_code=204, headers={"X-Deleted-Instances": str(report.count)})
