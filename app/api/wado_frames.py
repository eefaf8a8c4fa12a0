"""WADO-RS bulk data and frames (PS3.18 §10.4.1.1.4, §8.7.3.3): values cut out of an instance.

Bulk data answers are built whole (the service hands the values over in memory) and may be a byte range (RFC
9110 §14). Frames go out one per part, streamed: each is cut as the one before it is sent, so a many-frame
answer is never held whole.
`streamed` carries the rule every many-part WADO-RS answer follows (rendered ones too, app/api/wado_rendered.py):
the first part is made before the headers go out, so that what fails on it (a bad frame number, no rendering
turn free) is an error status rather than a 200 cut short.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Final, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from app.api.accept import negotiate
from app.api.errors import DicomWebError, check_uids, domain_errors
from app.api.multipart_writer import multipart_body, multipart_content_type, new_boundary, stream_multipart
from app.api.wado_accept import frames_choice, negotiate_frames
from app.core.retrieve.negotiation import Frame
from app.core.retrieve.outcomes import InvalidRequest, NotAcceptable, RendersBusy, RetrieveFailed
from app.deps import Context

log = logging.getLogger(__name__)
router = APIRouter(tags=["WADO-RS"])

_FRAME_LIST: Final = re.compile(r"[0-9]+(?:,[0-9]+)*")
_P = TypeVar("_P")


def _frame_content_type(frame: Frame) -> str:
    syntax = f"; transfer-syntax={frame.transfer_syntax}" if frame.transfer_syntax else ""
    return frame.media_type + syntax


def _frames_media_type(boundary: str, frames: Sequence[Frame]) -> str:
    """multipart/related of the first part's media type, naming the transfer syntax when every part has it."""
    first = frames[0]
    params = (
        {"transfer_syntax": first.transfer_syntax}
        if first.transfer_syntax and all(f.transfer_syntax == first.transfer_syntax for f in frames)
        else {}
    )
    return multipart_content_type(boundary, first.media_type, **params)


def _bulk_response(frames: Sequence[Frame], status: int = 200) -> Response:
    boundary = new_boundary()
    parts = []
    for frame in frames:
        headers = {"Content-Type": _frame_content_type(frame)}
        if frame.total_size is not None:
            headers["Content-Range"] = f"bytes {_range_text(frame)}"
        parts.append((headers, frame.data))
    return Response(
        multipart_body(parts, boundary), status_code=status, media_type=_frames_media_type(boundary, frames)
    )


def _range_text(frame: Frame) -> str:
    return f"{frame.offset}-{frame.offset + len(frame.data) - 1}/{frame.total_size}"


def parse_range(value: str | None) -> tuple[int, int | None] | None:
    """`bytes=first-last` or `bytes=first-` (RFC 9110 §14.1.2); anything else is ignored (the whole value
    is sent, which RFC 9110 §14.2 allows)."""
    if not value:
        return None
    match = re.fullmatch(r"\s*bytes\s*=\s*([0-9]{1,15})\s*-\s*([0-9]{0,15})\s*", value)
    if match is None:
        return None
    first = int(match.group(1))
    last = int(match.group(2)) if match.group(2) else None
    if last is not None and last < first:
        return None
    return first, last


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/bulkdata/{path:path}",
    summary="Retrieve bulk data (WADO-RS)",
)
async def bulk_data(
    study: str, series: str, instance: str, path: str, request: Request, context: Context
) -> Response:
    check_uids(study, series, instance)
    accepted, _ = negotiate(request, negotiate_frames)
    byte_range = parse_range(request.headers.get("range"))
    service = context.retrieve
    with domain_errors():
        ref = (await service.resolve(study, series, instance))[0]
        frames = await service.bulk(ref, path, accepted, byte_range)
    if len(frames) == 1 and frames[0].total_size is not None:
        return _bulk_response(frames, status=206)  # RFC 9110 §15.3.7
    return _bulk_response(frames)


def parse_frame_list(text: str) -> list[int]:
    """`1,3,5` -> [1, 3, 5]; 400 for anything else.

    PS3.18 §10.4.1.1.4: a frame list is "one or more non duplicate frame numbers", one-based, in any order. A
    repeated number is refused rather than answered: `1,1,1,...` would make an answer of any size out of one
    frame, while a list without repeats asks at most for every frame of the instance once.
    """
    if _FRAME_LIST.fullmatch(text) is None:
        raise DicomWebError(400, f"{text[:100]!r} is not a comma-separated list of frame numbers")
    numbers = [int(n) for n in text.split(",")]
    if 0 in numbers:
        raise DicomWebError(400, "frame numbers start at 1 (PS3.18 10.4.1.1.4)")
    seen: set[int] = set()
    for number in numbers:
        if number in seen:
            raise DicomWebError(
                400, f"frame {number} is listed twice; a frame list holds non-duplicate numbers (PS3.18 10.4.1.1.4)"
            )
        seen.add(number)
    return numbers


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}",
    summary="Retrieve frames (WADO-RS)",
)
async def retrieve_frames(
    study: str, series: str, instance: str, frames: str, request: Request, context: Context
) -> Response:
    """One frame asked bare: the frame itself. Otherwise one frame per part, streamed: each frame is cut from
    the instance as the one before it has been sent, so the answer is never held whole."""
    check_uids(study, series, instance)
    numbers = parse_frame_list(frames)
    service = context.retrieve
    with domain_errors():
        ref = (await service.resolve(study, series, instance))[0]
    accepted, bare = negotiate(request, lambda accept: frames_choice(accept, ref.transfer_syntax_uid))
    found = service.frames(ref, numbers, accepted)
    with domain_errors():
        first = await anext(found)  # every number checked: a bad one is a 400 before anything is sent
    if bare and len(numbers) == 1:
        await found.aclose()
        return Response(first.data, media_type=_frame_content_type(first))
    parts = (
        ({"Content-Type": _frame_content_type(frame)}, frame.data)
        async for frame in streamed(first, found, "frames answer")
    )
    boundary = new_boundary()
    return StreamingResponse(
        # The frames of one answer share one representation: the first names the parts' type.
        stream_multipart(parts, boundary),
        media_type=_frames_media_type(boundary, [first]),
    )


async def streamed(first: _P | None, rest: AsyncGenerator[_P, None], what: str) -> AsyncIterator[_P]:
    """`first` (made before the headers went out, so that failing to make it was an error status), then
    `rest` as it is made. A later item that cannot be made cuts the answer short - the client sees an
    unterminated body - rather than leaving it out, which would shift every part after it; the reason is
    logged."""
    try:
        if first is not None:
            yield first
            async for item in rest:
                yield item
    except (InvalidRequest, NotAcceptable, RetrieveFailed, RendersBusy) as exc:
        log.warning("%s cut short: %s", what, exc)
        raise
    finally:
        await rest.aclose()
