"""WADO-RS instances (PS3.18 §10.4.1.1.1): a study, a series or one instance, as DICOM files.

A thin door onto app.core.retrieve: this module resolves the path UIDs, negotiates (app/api/wado_accept.py)
and streams what the service opens. A study goes out one file chunk at a time, with the next instances opened
(or transcoded) in worker threads while the current one is sent; the first instance is opened before the
headers go out, so that failing to open it is an error status rather than a 200 cut short.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Mapping

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from app.api.accept import negotiate
from app.api.errors import check_uids, domain_errors, warning
from app.api.multipart_writer import multipart_content_type, new_boundary, stream_multipart
from app.api.wado_accept import DICOM, ZIP, Packaging, instance_plan
from app.core.retrieve.outcomes import NotAcceptable, RetrieveFailed
from app.core.retrieve.streaming import InstanceStream
from app.deps import Context

log = logging.getLogger(__name__)
router = APIRouter(tags=["WADO-RS"])


@router.get("/studies/{study}", summary="Retrieve a study's instances (WADO-RS)")
async def retrieve_study(study: str, request: Request, context: Context) -> Response:
    return await _retrieve(request, context, study)


@router.get("/studies/{study}/series/{series}", summary="Retrieve a series' instances (WADO-RS)")
async def retrieve_series(study: str, series: str, request: Request, context: Context) -> Response:
    return await _retrieve(request, context, study, series)


@router.get("/studies/{study}/series/{series}/instances/{instance}", summary="Retrieve an instance (WADO-RS)")
async def retrieve_instance(
    study: str, series: str, instance: str, request: Request, context: Context
) -> Response:
    return await _retrieve(request, context, study, series, instance)


async def _retrieve(
    request: Request, context: Context, study: str, series: str | None = None, instance: str | None = None
) -> Response:
    check_uids(study, series, instance)
    service = context.retrieve
    with domain_errors():
        refs = await service.resolve(study, series, instance)
    packaging, accepted, plan = negotiate(
        request, lambda accept: instance_plan(accept, refs, single_allowed=instance is not None)
    )
    if packaging is Packaging.ZIP:
        name = instance or series or study
        return StreamingResponse(
            service.zip_stored(refs),
            media_type=ZIP,
            headers={"Content-Disposition": f'attachment; filename="{name}.zip"'},
        )
    opened = service.open_instances([ref for ref, _ in plan], accepted)
    first = await anext(opened)
    if not isinstance(first, InstanceStream):
        await opened.aclose()
        with domain_errors():
            raise first
    headers: dict[str, str] = {}
    if len(plan) < len(refs):
        headers["Warning"] = warning(
            f"{len(refs) - len(plan)} instance(s) left out: no accepted transfer syntax"
        )
    if packaging is Packaging.SINGLE:
        await opened.aclose()
        return StreamingResponse(first, media_type=f"{DICOM}; transfer-syntax={first.transfer_syntax}")
    boundary = new_boundary()
    syntaxes = {syntax for _, syntax in plan}
    params = {"transfer_syntax": syntaxes.pop()} if len(syntaxes) == 1 else {}
    return StreamingResponse(
        stream_multipart(_instance_parts(first, opened), boundary),
        media_type=multipart_content_type(boundary, DICOM, **params),
        headers=headers,
    )


async def _instance_parts(
    first: InstanceStream, rest: AsyncGenerator[InstanceStream | NotAcceptable | RetrieveFailed, None]
) -> AsyncIterator[tuple[Mapping[str, str], AsyncIterable[bytes] | bytes]]:
    """Each instance as a part whose Content-Type names its transfer syntax (PS3.18 §8.7.3.5); the service
    reads the next instances ahead meanwhile (`RetrieveService.open_instances`)."""
    current: InstanceStream | NotAcceptable | RetrieveFailed | None = first
    try:
        while current is not None:
            if isinstance(current, InstanceStream):
                headers = {"Content-Type": f"{DICOM}; transfer-syntax={current.transfer_syntax}"}
                whole = current.whole
                yield headers, current if whole is None else whole
                await current.aclose()
            else:
                # Headers are sent: the instance is left out and the reason logged.
                log.warning("instance left out of a WADO-RS answer: %s", current)
            current = await anext(rest, None)
    finally:
        if isinstance(current, InstanceStream):
            await current.aclose()
        await rest.aclose()
