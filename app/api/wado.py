"""WADO-RS (PS3.18 §10.4): instances, metadata, bulk data, frames, rendered images and thumbnails.

A thin door onto app.core.retrieve: this module reads what the client asked for (path UIDs, Accept and the
`accept` query parameter, query parameters), turns it into the retrieve service's neutral requests, and turns
the service's outcomes into status codes. Everything is streamed that can be: a study goes out one file chunk
at a time, with the next instances opened (or transcoded) in worker threads while the current one is sent;
frames and rendered images go out one part at a time, the next made only when this one is sent. The first
part of a many-part answer is made before the headers go out, so that what fails on it (a bad frame number, no
rendering turn free) is an error status rather than a 200 cut short.

Metadata answers (the call viewers make most, PS3.18 §10.4.1.1.2) are assembled from the stored DICOM JSON
text by text substitution of the relative BulkDataURIs, so no JSON is parsed or re-serialised per request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Mapping, Sequence
from enum import Enum
from typing import Annotated, Final, TypeVar

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse

from app.api.accept import MediaRange, negotiate, parse_accept, tiers
from app.api.dicom_response import DICOM_JSON, DICOM_XML, negotiate_dataset_media_type, to_xml
from app.api.errors import DicomWebError, check_uids, domain_errors, warning
from app.api.multipart import multipart_body, multipart_content_type, new_boundary, stream_multipart
from app.api.urls import instance_url, service_root
from app.core.records import StoredDataset, StoredInstance
from app.core.retrieve.negotiation import DEFAULT, AcceptedFrames, AcceptedSyntaxes, Frame, FrameRange
from app.core.retrieve.outcomes import InvalidRequest, NotAcceptable, RendersBusy, RetrieveFailed
from app.core.retrieve.render import RENDER_MEDIA_TYPES, RenderOptions
from app.core.retrieve.streaming import InstanceStream
from app.deps import Context

log = logging.getLogger(__name__)
router = APIRouter(tags=["WADO-RS"])

DICOM: Final = "application/dicom"
ZIP: Final = "application/zip"
OCTET_STREAM: Final = "application/octet-stream"
THUMBNAIL_SIZE: Final = 128
_BULK_PREFIX: Final = '"BulkDataURI":"bulkdata/'
_FRAME_LIST: Final = re.compile(r"[0-9]+(?:,[0-9]+)*")
# dicomweb-client and older viewers still send the pre-registration names of these media types.
_MEDIA_ALIASES: Final = {"image/x-jls": "image/jls", "image/x-dicom-rle": "image/dicom-rle"}
_WINDOW_FUNCTIONS: Final = {"linear": "LINEAR", "linear-exact": "LINEAR_EXACT", "sigmoid": "SIGMOID"}
_P = TypeVar("_P")


# --- negotiation ----------------------------------------------------------------------------------------------


class Packaging(Enum):
    MULTIPART = "multipart"  # multipart/related; type="application/dicom" (PS3.18 §10.4.1.1.1)
    SINGLE = "single"  # application/dicom, one instance
    ZIP = "zip"  # application/zip (PS3.18 §8.7.3.1, Table 8.7.3-2)


def _instance_packaging(r: MediaRange, single_allowed: bool) -> Packaging | None:
    if r.media_type == "multipart/related":
        return Packaging.MULTIPART if r.part_type in (None, DICOM, "*/*", "application/*") else None
    if r.media_type in ("multipart/*", "*/*", "application/*"):
        # PS3.18 §8.7.8.1: a wildcard selects the default media type of the resource category.
        return Packaging.MULTIPART
    if r.media_type == DICOM:
        return Packaging.SINGLE if single_allowed else Packaging.MULTIPART
    if r.media_type == ZIP:
        return Packaging.ZIP
    return None


def negotiate_instances(accept: str | None, *, single_allowed: bool) -> tuple[Packaging, AcceptedSyntaxes]:
    """How to package instances, and in which transfer syntaxes (PS3.18 §8.7.3, §8.7.8).

    The packaging is that of the best acceptable range; the syntaxes come from every range of that packaging,
    in q order. A range without transfer-syntax means the §8.7.3.4 default (Explicit VR Little Endian).
    """
    ranges = parse_accept(accept)
    if not ranges:
        return Packaging.MULTIPART, AcceptedSyntaxes(((DEFAULT,),), web=True)
    usable = [(r, p) for r in ranges if (p := _instance_packaging(r, single_allowed)) is not None]
    if not usable:
        raise DicomWebError(406, f"none of the accepted media types ({accept}) can carry DICOM instances")
    packaging = usable[0][1]
    chosen = [r for r, p in usable if p is packaging]
    syntax_tiers = tuple(tuple(r.transfer_syntax or DEFAULT for r in tier) for tier in tiers(chosen))
    return packaging, AcceptedSyntaxes(syntax_tiers, web=True)


def instance_plan(
    accept: str | None, refs: Sequence[StoredInstance], *, single_allowed: bool
) -> tuple[Packaging, AcceptedSyntaxes, list[tuple[StoredInstance, str]]]:
    """The packaging, the accepted syntaxes, and the instances that can be given with the syntax of each;
    406 when none can (so that `negotiate` can turn to the Accept header, PS3.18 §8.7.8.1)."""
    packaging, accepted = negotiate_instances(accept, single_allowed=single_allowed)
    if packaging is Packaging.ZIP:
        return packaging, accepted, [(ref, ref.transfer_syntax_uid) for ref in refs]  # the files as stored
    plan = [(ref, syntax) for ref in refs if (syntax := accepted.choose(ref.transfer_syntax_uid))]
    if not plan:
        stored = sorted({ref.transfer_syntax_uid for ref in refs})
        raise DicomWebError(
            406, f"no accepted transfer syntax can be produced from the stored ones ({', '.join(stored)})"
        )
    return packaging, accepted, plan


def negotiate_frames(accept: str | None) -> tuple[AcceptedFrames, bool]:
    """Acceptable frame/bulk data representations, and whether a bare (non-multipart) answer is wanted.

    No Accept, `*/*` and `multipart/related; type="*/*"` take frames as stored (PS3.18 §8.7.8.1 leaves the
    default to the resource; the stored form needs no work and the part says what it is).
    """
    ranges = parse_accept(accept)
    if not ranges:
        return AcceptedFrames.of([FrameRange("*/*")]), False
    bare = True
    result: list[list[FrameRange]] = []
    for tier in tiers(ranges):
        entries = []
        for r in tier:
            if r.media_type == "multipart/related":
                bare = False
                media_type = r.part_type or "*/*"
            elif r.media_type in ("multipart/*", "*/*"):
                bare = False
                media_type = "*/*"
            else:
                media_type = r.media_type
            entries.append(FrameRange(_MEDIA_ALIASES.get(media_type, media_type), r.transfer_syntax))
        result.append(entries)
    return AcceptedFrames(tuple(tuple(t) for t in result)), bare


def frames_choice(accept: str | None, stored: str) -> tuple[AcceptedFrames, bool]:
    """`negotiate_frames`, and 406 when no accepted representation can carry frames stored in `stored`."""
    accepted, bare = negotiate_frames(accept)
    if accepted.choose(stored) is None:
        raise DicomWebError(406, f"no accepted media type ({accept}) can carry frames stored as {stored}")
    return accepted, bare


def negotiate_rendered(accept: str | None) -> str:
    """The rendered media type (PS3.18 §8.7.4): JPEG unless the client prefers PNG or GIF; 406 otherwise."""
    ranges = parse_accept(accept)
    if not ranges:
        return "image/jpeg"
    for r in ranges:
        media_type = r.part_type or "*/*" if r.media_type == "multipart/related" else r.media_type
        if media_type in RENDER_MEDIA_TYPES:
            return media_type
        if media_type in ("*/*", "image/*"):
            return "image/jpeg"  # PS3.18 §8.7.8.1: the category's default
    raise DicomWebError(406, f"none of the accepted media types ({accept}) is a rendered image type")


# --- instances ------------------------------------------------------------------------------------------------


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


# --- metadata -------------------------------------------------------------------------------------------------


@router.get("/studies/{study}/metadata", summary="Retrieve a study's metadata (WADO-RS)")
async def study_metadata(study: str, request: Request, context: Context) -> Response:
    return await _metadata(request, context, study)


@router.get("/studies/{study}/series/{series}/metadata", summary="Retrieve a series' metadata (WADO-RS)")
async def series_metadata(study: str, series: str, request: Request, context: Context) -> Response:
    return await _metadata(request, context, study, series)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/metadata",
    summary="Retrieve an instance's metadata (WADO-RS)",
)
async def instance_metadata(
    study: str, series: str, instance: str, request: Request, context: Context
) -> Response:
    return await _metadata(request, context, study, series, instance)


async def _metadata(
    request: Request, context: Context, study: str, series: str | None = None, instance: str | None = None
) -> Response:
    check_uids(study, series, instance)
    media_type = negotiate(request, _metadata_media_type)
    with domain_errors():
        datasets = await context.retrieve.metadata(study, series, instance)
    root = service_root(request, context.settings)
    if media_type == DICOM_JSON:
        if len(datasets) > 100:
            # A big study's answer is megabytes of text: built off the event loop so other requests go on.
            body = await asyncio.to_thread(metadata_json, root, study, datasets)
        else:
            body = metadata_json(root, study, datasets)
        return Response(body, media_type=DICOM_JSON)
    # Native DICOM Model XML: one part per instance (PS3.18 §10.4.1.1.2, §8.7.3.2).
    boundary = new_boundary()

    def xml_parts() -> bytes:
        parts = [
            (
                {"Content-Type": DICOM_XML},
                to_xml(json.loads(absolute_bulk_data(root, study, d))).encode("utf-8"),
            )
            for d in datasets
        ]
        return multipart_body(parts, boundary)

    # XML is written element by element in Python: always off the event loop.
    body = await asyncio.to_thread(xml_parts)
    return Response(body, media_type=multipart_content_type(boundary, DICOM_XML))


def _metadata_media_type(accept: str | None) -> str:
    parse_accept(accept)  # a malformed value is a 400, before the lenient choice below
    return negotiate_dataset_media_type(accept)


def absolute_bulk_data(root: str, study: str, dataset: StoredDataset) -> str:
    """The stored JSON with each relative BulkDataURI made absolute (PS3.18 F.2.6), by text substitution.

    Safe on JSON text: inside a JSON string every `"` is escaped, so `"BulkDataURI":"` can only be a key
    and the start of its value. The URL is escaped for JSON in case the service root holds odd characters.
    """
    text = dataset.dataset_json
    if _BULK_PREFIX not in text:
        return text
    url = instance_url(root, study, dataset.series_instance_uid, dataset.sop_instance_uid)
    return text.replace(_BULK_PREFIX, '"BulkDataURI":' + json.dumps(url + "/bulkdata/")[:-1])


def metadata_json(root: str, study: str, datasets: Sequence[StoredDataset]) -> bytes:
    return ("[" + ",".join([absolute_bulk_data(root, study, d) for d in datasets]) + "]").encode("utf-8")


# --- bulk data and frames -------------------------------------------------------------------------------------


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
        async for frame in _streamed(first, found, "frames answer")
    )
    boundary = new_boundary()
    return StreamingResponse(
        # The frames of one answer share one representation: the first names the parts' type.
        stream_multipart(parts, boundary),
        media_type=_frames_media_type(boundary, [first]),
    )


async def _streamed(first: _P | None, rest: AsyncGenerator[_P, None], what: str) -> AsyncIterator[_P]:
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


# --- rendered and thumbnails ----------------------------------------------------------------------------------


def render_options(
    media_type: str,
    *,
    window: str | None = None,
    viewport: str | None = None,
    quality: str | None = None,
    frame: int = 1,
) -> RenderOptions:
    """Rendering parameters of PS3.18 §8.3.5.1; anything malformed is a 400."""
    try:
        window_value: tuple[float, float, str] | None = None
        if window is not None:
            parts = [p.strip() for p in window.split(",")]
            if len(parts) not in (2, 3):
                raise ValueError("window is center,width,function (PS3.18 8.3.5.1.3)")
            function = _WINDOW_FUNCTIONS.get(parts[2].lower() if len(parts) == 3 else "linear")
            if function is None:
                raise ValueError(f"window function {parts[2]!r} is not linear, linear-exact or sigmoid")
            window_value = (float(parts[0]), float(parts[1]), function)
        viewport_value: tuple[int, int] | None = None
        crop: tuple[int, int, int, int] | None = None
        if viewport is not None:
            parts = [p.strip() for p in viewport.split(",")]
            if len(parts) not in (2, 6):
                raise ValueError("viewport is vw,vh or vw,vh,sx,sy,sw,sh (PS3.18 8.3.5.1.2)")
            if not parts[0] and not parts[1]:
                raise ValueError("viewport needs vw or vh")
            # An omitted vw or vh leaves that dimension free (the other one decides the scale).
            vw = int(parts[0]) if parts[0] else 1 << 16
            vh = int(parts[1]) if parts[1] else 1 << 16
            viewport_value = (vw, vh)
            if len(parts) == 6 and any(parts[2:]):
                sx, sy, sw, sh = (int(p) for p in parts[2:])
                crop = (sx, sy, sw, sh)
        quality_value = int(quality) if quality is not None else None
        return RenderOptions(
            media_type=media_type,
            quality=quality_value,
            window=window_value,
            viewport=viewport_value,
            crop=crop,
            frame=frame,
        )
    except ValueError as exc:
        raise DicomWebError(400, f"invalid rendering parameter: {exc}") from exc


WindowParam = Annotated[str | None, Query(description="center,width,function (PS3.18 8.3.5.1.3)")]
ViewportParam = Annotated[str | None, Query(description="vw,vh[,sx,sy,sw,sh] (PS3.18 8.3.5.1.2)")]
QualityParam = Annotated[str | None, Query(description="1..100, JPEG only (PS3.18 8.3.5.1.4)")]


@router.get("/studies/{study}/rendered", summary="Retrieve a rendered study (WADO-RS)")
async def study_rendered(
    study: str,
    request: Request,
    context: Context,
    window: WindowParam = None,
    viewport: ViewportParam = None,
    quality: QualityParam = None,
) -> Response:
    return await _rendered_many(request, context, study, None, window, viewport, quality)


@router.get("/studies/{study}/series/{series}/rendered", summary="Retrieve a rendered series (WADO-RS)")
async def series_rendered(
    study: str,
    series: str,
    request: Request,
    context: Context,
    window: WindowParam = None,
    viewport: ViewportParam = None,
    quality: QualityParam = None,
) -> Response:
    return await _rendered_many(request, context, study, series, window, viewport, quality)


async def _rendered_many(
    request: Request,
    context: Context,
    study: str,
    series: str | None,
    window: str | None,
    viewport: str | None,
    quality: str | None,
) -> Response:
    """Each instance's first frame rendered, one image per part (PS3.18 §10.4.1.1.3); instances that cannot
    be rendered (reports, plans) are left out."""
    check_uids(study, series)
    media_type = negotiate(request, negotiate_rendered)
    options = render_options(media_type, window=window, viewport=viewport, quality=quality)
    service = context.retrieve
    with domain_errors():
        refs = await service.resolve(study, series)

    async def images() -> AsyncGenerator[bytes, None]:
        for ref in refs:
            try:
                image = await service.rendered(ref, options)
            except (InvalidRequest, NotAcceptable, RetrieveFailed):
                continue
            yield image

    rendered = images()
    with domain_errors():
        first = await anext(rendered, None)  # no rendering turn free is a 503, not a 200 cut short
    return _images_response(_streamed(first, rendered, "rendered answer"), media_type)


def _images_response(images: AsyncIterable[bytes], media_type: str) -> StreamingResponse:
    """One rendered image per part (PS3.18 §8.7.4), streamed: each is made as the one before it is sent."""
    boundary = new_boundary()
    parts = (({"Content-Type": media_type}, image) async for image in images)
    return StreamingResponse(
        stream_multipart(parts, boundary), media_type=multipart_content_type(boundary, media_type)
    )


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/rendered",
    summary="Retrieve a rendered instance (WADO-RS)",
)
async def instance_rendered(
    study: str,
    series: str,
    instance: str,
    request: Request,
    context: Context,
    window: WindowParam = None,
    viewport: ViewportParam = None,
    quality: QualityParam = None,
) -> Response:
    check_uids(study, series, instance)
    media_type = negotiate(request, negotiate_rendered)
    options = render_options(media_type, window=window, viewport=viewport, quality=quality)
    with domain_errors():
        ref = (await context.retrieve.resolve(study, series, instance))[0]
        image = await context.retrieve.rendered(ref, options)
    return Response(image, media_type=media_type)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/rendered",
    summary="Retrieve rendered frames (WADO-RS)",
)
async def frames_rendered(
    study: str,
    series: str,
    instance: str,
    frames: str,
    request: Request,
    context: Context,
    window: WindowParam = None,
    viewport: ViewportParam = None,
    quality: QualityParam = None,
) -> Response:
    """One frame: the image itself. Several: one image per part (multipart/related), streamed."""
    check_uids(study, series, instance)
    numbers = parse_frame_list(frames)
    media_type = negotiate(request, negotiate_rendered)
    options = [
        render_options(media_type, window=window, viewport=viewport, quality=quality, frame=n)
        for n in numbers
    ]
    service = context.retrieve

    async def images(ref: StoredInstance) -> AsyncGenerator[bytes, None]:
        for each in options:
            yield await service.rendered(ref, each)

    with domain_errors():
        ref = (await service.resolve(study, series, instance))[0]
        if len(numbers) > 1:
            await service.check_frames(ref, numbers)  # a frame the instance lacks is a 400 before any part
        rendered = images(ref)
        first = await anext(rendered)
    if len(numbers) == 1:
        await rendered.aclose()
        return Response(first, media_type=media_type)
    return _images_response(_streamed(first, rendered, "rendered frames answer"), media_type)


async def _thumbnail(
    request: Request, context: Context, ref: StoredInstance, viewport: str | None, frame: int = 1
) -> Response:
    media_type = negotiate(request, negotiate_rendered)
    service = context.retrieve
    with domain_errors():
        if viewport is not None or frame != 1:
            options = render_options(
                media_type, viewport=viewport or f"{THUMBNAIL_SIZE},{THUMBNAIL_SIZE}", frame=frame
            )
            image = await service.rendered(ref, options)
        else:
            image = await service.thumbnail(ref, THUMBNAIL_SIZE, media_type)
    return Response(image, media_type=media_type)


@router.get("/studies/{study}/thumbnail", summary="Retrieve a study thumbnail (WADO-RS)")
async def study_thumbnail(
    study: str, request: Request, context: Context, viewport: ViewportParam = None
) -> Response:
    check_uids(study)
    with domain_errors():
        ref = await context.retrieve.representative(study)
    return await _thumbnail(request, context, ref, viewport)


@router.get("/studies/{study}/series/{series}/thumbnail", summary="Retrieve a series thumbnail (WADO-RS)")
async def series_thumbnail(
    study: str, series: str, request: Request, context: Context, viewport: ViewportParam = None
) -> Response:
    check_uids(study, series)
    with domain_errors():
        ref = await context.retrieve.representative(study, series)
    return await _thumbnail(request, context, ref, viewport)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/thumbnail",
    summary="Retrieve an instance thumbnail (WADO-RS)",
)
async def instance_thumbnail(
    study: str, series: str, instance: str, request: Request, context: Context, viewport: ViewportParam = None
) -> Response:
    check_uids(study, series, instance)
    with domain_errors():
        ref = (await context.retrieve.resolve(study, series, instance))[0]
    return await _thumbnail(request, context, ref, viewport)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/thumbnail",
    summary="Retrieve a frame thumbnail (WADO-RS)",
)
async def frame_thumbnail(
    study: str,
    series: str,
    instance: str,
    frames: str,
    request: Request,
    context: Context,
    viewport: ViewportParam = None,
) -> Response:
    check_uids(study, series, instance)
    numbers = parse_frame_list(frames)
    if len(numbers) != 1:
        raise DicomWebError(400, "a thumbnail is of one frame")
    with domain_errors():
        ref = (await context.retrieve.resolve(study, series, instance))[0]
    return await _thumbnail(request, context, ref, viewport, numbers[0])
