"""The AE registry API under `/api/aes`: the remote AEs we send to, and actions on them.

* `GET /api/aes`, `GET /api/aes/{AET}`: the registered AEs (app/core/aes.py);
* `PUT /api/aes/{AET}` `{"host": "...", "port": N, "tls": false}`: create (201) or replace (200);
* `DELETE /api/aes/{AET}`: 204, or 404 when not registered;
* `POST /api/aes/{AET}/echo`: C-ECHO from our AE title; `{"status": 0, ...}`, or 502 with the reason when no
  association can be made;
* `POST /api/aes/{AET}/store` `{"StudyInstanceUID": ..., "SeriesInstanceUID"?: ..., "SOPInstanceUID"?: ...}`:
  C-STORE of the study, series or instance to the AE, answered with the sub-operation counts; with
  `Accept: application/x-ndjson`, answered as it goes instead: one JSON line of counts (`completed`, `failed`,
  `warning`, `remaining`, `done`) at the start and after each sub-operation, as a C-MOVE's pending responses
  count them (PS3.4 C.4.2.1.5), the last with `done: true` and the failed UIDs, or with `error` when no
  association could be made (the status is 200 by then). The sending goes on if the client leaves.

The DIMSE work (dimse_bridge/scu.py) blocks, so it runs in a worker thread, which also reads the instances it
sends (RetrieveService.encoded: stored bytes as they are when the peer accepts their syntax). With authentication on, every route needs the `admin`
scope (the registry decides where the archive's data may be sent).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from app.api.errors import DicomWebError, check_uids
from app.core.aes import InvalidAE, RemoteAE, normalise_ae_title
from app.core.records import StoredInstance
from app.core.retrieve.outcomes import NotFound
from app.deps import Context
from dimse_bridge import scu

AES_PREFIX = "/api/aes"
NDJSON = "application/x-ndjson"
router = APIRouter(tags=["AE registry"])


class AEAddress(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = Field(description="Host name or IP address of the remote AE.")
    port: int = Field(description="Its DICOM port (1-65535).")
    tls: bool = Field(False, description="Associate over TLS (PS3.15 B.1).")


class StoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    StudyInstanceUID: str
    SeriesInstanceUID: str | None = None
    SOPInstanceUID: str | None = None


def _json(ae: RemoteAE) -> dict[str, Any]:
    return {"aeTitle": ae.ae_title, "host": ae.host, "port": ae.port, "tls": ae.tls}


def _title(aet: str) -> str:
    try:
        return normalise_ae_title(aet)
    except InvalidAE as exc:
        raise DicomWebError(400, str(exc)) from exc


async def _registered(context: Context, aet: str) -> RemoteAE:
    remote = await context.aes.get(_title(aet))
    if remote is None:
        raise DicomWebError(404, f"no AE {aet!r} is registered")
    return remote


@router.get("", summary="The registered remote AEs, in AE title order")
async def list_aes(context: Context) -> list[dict[str, Any]]:
    return [_json(ae) for ae in await context.aes.all()]


@router.get("/{aet}", summary="One registered remote AE")
async def get_ae(aet: str, context: Context) -> dict[str, Any]:
    return _json(await _registered(context, aet))


@router.put("/{aet}", summary="Register a remote AE, or change its address (201 created, 200 replaced)")
async def put_ae(aet: str, address: AEAddress, context: Context, response: Response) -> dict[str, Any]:
    try:
        created = await context.aes.put(RemoteAE(_title(aet), address.host, address.port, address.tls))
    except InvalidAE as exc:
        raise DicomWebError(400, str(exc)) from exc
    response.status_code = 201 if created else 200
    return _json(await _registered(context, aet))


@router.delete("/{aet}", status_code=204, summary="Remove a remote AE from the registry")
async def delete_ae(aet: str, context: Context) -> Response:
    if not await context.aes.delete(_title(aet)):
        raise DicomWebError(404, f"no AE {aet!r} is registered")
    return Response(status_code=204)


@router.post("/{aet}/echo", summary="C-ECHO the remote AE (502 when no association can be made)")
async def echo_ae(aet: str, context: Context) -> dict[str, Any]:
    remote = await _registered(context, aet)
    try:
        result = await asyncio.to_thread(scu.echo, remote, scu.ScuOptions.from_settings(context.settings))
    except scu.ScuError as exc:
        raise DicomWebError(502, str(exc)) from exc
    return {**_json(remote), "status": result.status, "seconds": round(result.seconds, 3)}


@router.post(
    "/{aet}/store",
    summary="C-STORE a study, series or instance to the remote AE (counts as it goes with Accept: "
    "application/x-ndjson)",
)
async def store_to_ae(aet: str, request: StoreRequest, context: Context, http: Request) -> Response:
    remote = await _registered(context, aet)
    uids = (request.StudyInstanceUID, request.SeriesInstanceUID, request.SOPInstanceUID)
    check_uids(*uids)
    try:
        refs = await context.retrieve.resolve(*uids)
    except NotFound as exc:
        raise DicomWebError(404, str(exc)) from exc
    options = scu.ScuOptions.from_settings(context.settings)
    if NDJSON in http.headers.get("accept", ""):
        return StreamingResponse(_store_progress(context, remote, refs, options), media_type=NDJSON)
    try:
        report = await asyncio.to_thread(scu.store, remote, refs, context.retrieve.encoded, options)
    except scu.ScuError as exc:
        raise DicomWebError(502, str(exc)) from exc
    return JSONResponse(report.as_dict())


async def _store_progress(
    context: Context, remote: RemoteAE, refs: Sequence[StoredInstance], options: scu.ScuOptions
) -> AsyncIterator[bytes]:
    """The NDJSON lines of a C-STORE in progress: the sending thread's counts are handed to the loop."""
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    def counts(report: scu.StoreReport) -> dict[str, Any]:
        done = report.completed + report.failed + report.warning
        return {
            "completed": report.completed,
            "failed": report.failed,
            "warning": report.warning,
            "remaining": len(refs) - done,
            "done": False,
        }

    def progress(report: scu.StoreReport) -> None:
        loop.call_soon_threadsafe(lines.put_nowait, counts(report))

    yield _line(counts(scu.StoreReport()))
    sending = asyncio.ensure_future(
        asyncio.to_thread(scu.store, remote, refs, context.retrieve.encoded, options, progress)
    )
    sending.add_done_callback(lambda _: lines.put_nowait(None))
    while (line := await lines.get()) is not None:
        yield _line(line)
    try:
        report = sending.result()
    except scu.ScuError as exc:
        yield _line({"error": str(exc), "done": True})
        return
    yield _line({**counts(report), **report.as_dict(), "done": True})


def _line(value: dict[str, Any]) -> bytes:
    return json.dumps(value).encode() + b"\n"
