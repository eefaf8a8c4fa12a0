"""STOW-RS (PS3.18 10.5): POST /studies and /studies/{StudyInstanceUID}.

The body is parsed as it arrives: each part is spooled (memory for small parts, a staged file on the storage
volume for large ones) and handed to the ingest service while the next part is still being received, so a
1 GB body never sits in memory and a batch of small instances overlaps network, parsing and writes. One bad
part fails alone; the answer lists every instance (PS3.18 10.5.3, Annex I), and says why each failed one failed
in a `Warning: 299` header (Table I.1-1 has no place for the text; dcm4chee-arc answers the same way).

A body is bounded in parts as well as bytes (MAX_REQUEST_PARTS): each part costs a store attempt however small,
so 50,000 parts of a few bytes were half a minute of work. The refusals of a request are logged in one line,
not one per part.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response

from app.api.dicom_response import negotiate_dataset_media_type, render_dataset
from app.api.errors import DicomWebError, check_uids, warning
from app.api.multipart import MultipartError, parse_content_type
from app.api.multipart_parser import Part, iter_parts
from app.api.stow_json import JsonInstanceAssembler, unreadable
from app.api.urls import instance_url, service_root, study_url
from app.context import ArchiveContext
from app.core.ingest.outcomes import FailureReason, StoreOutcome, StoreStatus
from app.core.ingest.parsing import MAX_NOTES
from app.deps import Context
from app.storage.base import StagedFile

log = logging.getLogger(__name__)
router = APIRouter(tags=["STOW-RS"])

# Parts up to this size are kept in memory (and staged by the header parser); larger ones are staged as they arrive.
SPOOL_IN_MEMORY = 8 * 1024 * 1024
# Instances of one request being parsed and written at once: enough to overlap I/O, few enough to bound memory.
PIPELINE_DEPTH = 4

RETRY_AFTER_SECONDS = 5  # Retry-After on answers with 0xA700 failures, as QIDO/WADO give with their 503
FAILURES_NAMED = 3  # failed instances whose reasons the Warning header spells out; the others are counted
DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"


@router.post("/studies", summary="Store instances (STOW-RS)")
async def store_instances(
    request: Request, context: Context, content_type: Annotated[str | None, Header()] = None
) -> Response:
    return await _store(request, context, content_type, None)


@router.post("/studies/{study}", summary="Store instances of one study (STOW-RS)")
async def store_study_instances(
    study: str, request: Request, context: Context, content_type: Annotated[str | None, Header()] = None
) -> Response:
    check_uids(study)
    return await _store(request, context, content_type, study)


async def _store(request: Request, context: Context, content_type: str | None, study: str | None) -> Response:
    response_type = negotiate_dataset_media_type(request.headers.get("accept"))
    boundary, part_type = _check_request(request, context, content_type)
    outcomes = await _ingest_parts(request, context, boundary, part_type, study)
    if not outcomes:
        raise DicomWebError(400, "the request holds no instance")
    body = _response_dataset(service_root(request, context.settings), outcomes, study)
    stored = sum(o.ok for o in outcomes)
    warned = any(o.ok and o.warnings for o in outcomes)
    # PS3.18 Table 10.5.3-1: 202 when stored with warnings (e.g. 0xB000 coercion by an ingest rule) or failures.
    status = 200 if stored == len(outcomes) and not warned else 202 if stored else 409
    headers = {}
    warning_values = []
    failed = [o for o in outcomes if not o.ok]
    if failed:
        warning_values.append(warning(f"{len(failed)} instance(s) not stored: {_reasons(failed)}"))
    replaced = [o.sop_instance_uid for o in outcomes if o.status is StoreStatus.REPLACED]
    if replaced:
        # The duplicate policy `replace` is a success that the sender should hear about (DuplicatePolicy).
        warning_values.append(warning(f"replaced {len(replaced)} instance(s) already held"))
    if warning_values:
        headers["Warning"] = ", ".join(warning_values)  # RFC 7234 5.5: Warning is a list
    if any(o.failure == FailureReason.OUT_OF_RESOURCES for o in outcomes):
        # 0xA700: the disk or the metadata store is unavailable for now; the sender may try again later.
        headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return Response(
        render_dataset(body, response_type), status_code=status, media_type=response_type, headers=headers
    )


def _check_request(request: Request, context: ArchiveContext, content_type: str | None) -> tuple[str, str]:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > context.settings.max_request_bytes:
        raise DicomWebError(413, f"the body exceeds the {context.settings.max_request_bytes} byte limit")
    if not content_type:
        raise DicomWebError(415, 'Content-Type must be multipart/related; type="application/dicom"')
    try:
        media_type, params = parse_content_type(content_type)
    except MultipartError as exc:
        raise DicomWebError(400, f"malformed Content-Type: {exc}") from exc
    if media_type != "multipart/related":
        raise DicomWebError(415, f"{media_type} is not supported; send multipart/related (PS3.18 10.5.2)")
    part_type = params.get("type", DICOM).lower()
    if part_type not in (DICOM, DICOM_JSON):
        raise DicomWebError(415, f"multipart/related type {part_type} is not supported")
    boundary = params.get("boundary")
    if not boundary:
        raise DicomWebError(400, "the multipart Content-Type has no boundary parameter")
    return boundary, part_type


def _reasons(failed: list[StoreOutcome]) -> str:
    """Why instances were not stored (the Warning header, the log): the first few with their reasons, the rest
    counted."""
    named = "; ".join(
        f"{o.sop_instance_uid or 'a part'} 0x{o.failure or FailureReason.PROCESSING_FAILURE:04X} {o.reason}"
        for o in failed[:FAILURES_NAMED]
    )
    more = f"; {len(failed) - FAILURES_NAMED} more" if len(failed) > FAILURES_NAMED else ""
    return named + more


async def _ingest_parts(
    request: Request, context: ArchiveContext, boundary: str, part_type: str, study: str | None
) -> list[StoreOutcome]:
    origin = f"STOW-RS {request.client.host if request.client else '?'}"
    limit = context.settings.max_request_parts
    gate = asyncio.Semaphore(PIPELINE_DEPTH)
    tasks: list[asyncio.Task[StoreOutcome]] = []

    async def ingest(payload: bytes | StagedFile) -> StoreOutcome:
        try:
            # Refusals and pydicom's notes are logged once for the whole request (`_log_summary`).
            return await context.ingest.store(payload, expected_study_uid=study, origin=origin, log_outcome=False)
        except Exception as exc:
            # An unforeseen fault in one instance is that instance's failure, not the whole request's.
            log.exception("store of a STOW-RS part failed")
            return StoreOutcome(StoreStatus.FAILED, failure=FailureReason.PROCESSING_FAILURE, reason=str(exc))
        finally:
            gate.release()

    assembler = JsonInstanceAssembler() if part_type == DICOM_JSON else None
    try:
        parts = 0
        async for part in iter_parts(_limited(request, context.settings.max_request_bytes), boundary):
            parts += 1
            if parts > limit:
                raise DicomWebError(413, f"the body holds more than {limit} parts (MAX_REQUEST_PARTS)")
            if assembler is not None:
                await assembler.add(part)
                if assembler.instance_count > limit:
                    raise DicomWebError(
                        413, f"the metadata describes more than {limit} instances (MAX_REQUEST_PARTS)"
                    )
                continue
            if (part.content_type or DICOM).split(";")[0].strip().lower() != DICOM:
                await _drain(part)
                tasks.append(
                    _done(unreadable(f"a part of type {part.content_type} is not application/dicom"))
                )
                continue
            try:
                payload = await _spool(part, context)
            except OSError as exc:  # disk full, staging area gone: this part fails, the others go on
                await _drain(part)
                log.warning("a STOW-RS part could not be staged: %s", exc)
                tasks.append(
                    _done(
                        StoreOutcome(
                            StoreStatus.FAILED,
                            failure=FailureReason.OUT_OF_RESOURCES,
                            reason=f"cannot stage the instance: {exc}",
                        )
                    )
                )
                continue
            await gate.acquire()
            tasks.append(asyncio.create_task(ingest(payload)))
        if assembler is not None:
            for payload_or_outcome in await assembler.instances():
                if isinstance(payload_or_outcome, StoreOutcome):
                    tasks.append(_done(payload_or_outcome))
                else:
                    await gate.acquire()
                    tasks.append(asyncio.create_task(ingest(payload_or_outcome)))
    except MultipartError as exc:
        # Instances already received stay stored (nothing is lost); the truncated rest is reported.
        outcomes = list(await asyncio.gather(*tasks))
        if not outcomes:
            raise DicomWebError(400, f"malformed multipart body: {exc}") from exc
        outcomes.append(unreadable(f"malformed multipart body: {exc}"))
    except BaseException:
        # A refusal mid-body (413 past a limit, the client gone): the instances already being stored finish
        # first, so each ends stored or not, never half-way and unobserved.
        settled = await asyncio.gather(*tasks, return_exceptions=True)
        _log_summary(origin, [o for o in settled if isinstance(o, StoreOutcome)])
        raise
    else:
        outcomes = list(await asyncio.gather(*tasks))
    _log_summary(origin, outcomes)
    return outcomes


def _log_summary(origin: str, outcomes: list[StoreOutcome]) -> None:
    """A request's refusals in one log line, and what pydicom warned about its instances in another: a body of
    50,000 bad parts is two lines, not 50,000."""
    failed = [o for o in outcomes if not o.ok]
    if failed:
        counts = Counter(o.failure or FailureReason.PROCESSING_FAILURE for o in failed)
        log.warning(
            "%s: %d of %d instance(s) refused (%s): %s",
            origin,
            len(failed),
            len(outcomes),
            ", ".join(f"0x{code:04X} x{count}" for code, count in counts.most_common()),
            _reasons(failed),
        )
    noted = [o for o in outcomes if o.notes]
    if noted:
        notes = list(dict.fromkeys(note for o in noted for note in o.notes))
        log.warning(
            "%s: pydicom warns about values of %d instance(s) (the first %s): %s",
            origin,
            len(noted),
            noted[0].sop_instance_uid or "?",
            " | ".join(notes[:MAX_NOTES]),
        )


async def _spool(part: Part, context: ArchiveContext) -> bytes | StagedFile:
    chunks: list[bytes] = []
    size = 0
    staged: StagedFile | None = None
    try:
        async for chunk in part.body:
            if staged is not None:
                await asyncio.to_thread(staged.write, chunk)
                continue
            chunks.append(chunk)
            size += len(chunk)
            if size > SPOOL_IN_MEMORY:
                staged = await asyncio.to_thread(context.storage.stage)
                await asyncio.to_thread(staged.write, b"".join(chunks))
                chunks.clear()
    except BaseException:
        if staged is not None:
            await asyncio.to_thread(context.storage.discard, staged)
        raise
    return staged if staged is not None else b"".join(chunks)


async def _drain(part: Part) -> None:
    async for _ in part.body:
        pass


async def _limited(request: Request, limit: int) -> AsyncIterator[bytes]:
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise DicomWebError(413, f"the body exceeds the {limit} byte limit")
        yield chunk


def _done(outcome: StoreOutcome) -> asyncio.Task[StoreOutcome]:
    async def value() -> StoreOutcome:
        return outcome

    return asyncio.ensure_future(value())


def _response_dataset(root: str, outcomes: list[StoreOutcome], study: str | None) -> dict[str, object]:
    """The STOW-RS response (PS3.18 Table I.1-1): RetrieveURL, ReferencedSOPSequence, FailedSOPSequence."""
    stored_studies = {o.study_instance_uid for o in outcomes if o.ok and o.study_instance_uid}
    study_for_url = study or (next(iter(stored_studies)) if len(stored_studies) == 1 else None)
    body: dict[str, object] = {
        "00081190": _ur(study_url(root, study_for_url)) if study_for_url else {"vr": "UR"}
    }
    referenced, failed, other = [], [], []
    for o in outcomes:
        if o.ok:
            assert o.study_instance_uid and o.series_instance_uid and o.sop_instance_uid
            url = instance_url(root, o.study_instance_uid, o.series_instance_uid, o.sop_instance_uid)
            item = {**_reference(o), "00081190": _ur(url)}
            if o.warnings:
                item["00081196"] = _us(int(o.warnings[0]))  # Warning Reason (PS3.18 Table I.1-1)
            referenced.append(item)
        elif o.sop_instance_uid and o.sop_class_uid:
            failed.append(
                {**_reference(o), "00081197": _us(int(o.failure or FailureReason.PROCESSING_FAILURE))}
            )
        else:
            # No identifiable instance: Other Failures Sequence (PS3.18 Table I.1-1).
            other.append({"00081197": _us(int(o.failure or FailureReason.CANNOT_UNDERSTAND))})
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if other:
        body["0008119A"] = {"vr": "SQ", "Value": other}
    return body


def _reference(o: StoreOutcome) -> dict[str, object]:
    return {
        "00081150": {"vr": "UI", "Value": [o.sop_class_uid]},
        "00081155": {"vr": "UI", "Value": [o.sop_instance_uid]},
    }


def _ur(url: str) -> dict[str, object]:
    return {"vr": "UR", "Value": [url]}


def _us(value: int) -> dict[str, object]:
    return {"vr": "US", "Value": [value]}
