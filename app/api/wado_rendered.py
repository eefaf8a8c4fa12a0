"""WADO-RS rendered images and thumbnails (PS3.18 §10.4.1.1.3, §8.3.5): what a viewer shows, not the data.

The rendering parameters (window, viewport, quality) are read here, also for WADO-URI (app/api/wado_uri.py);
the rendering itself is app.core.retrieve.render's, in the service's rendering turns. Many images go out one
per part, each made as the one before it is sent (`streamed`, app/api/wado_frames.py).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable
from typing import Annotated, Final

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse

from app.api.accept import negotiate
from app.api.errors import DicomWebError, check_uids, domain_errors
from app.api.multipart_writer import multipart_content_type, new_boundary, stream_multipart
from app.api.wado_accept import negotiate_rendered
from app.api.wado_frames import parse_frame_list, streamed
from app.core.records import StoredInstance
from app.core.retrieve.outcomes import InvalidRequest, NotAcceptable, RetrieveFailed
from app.core.retrieve.render import RenderOptions
from app.deps import Context

router = APIRouter(tags=["WADO-RS"])

THUMBNAIL_SIZE: Final = 128
_WINDOW_FUNCTIONS: Final = {"linear": "LINEAR", "linear-exact": "LINEAR_EXACT", "sigmoid": "SIGMOID"}


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
    return _images_response(streamed(first, rendered, "rendered answer"), media_type)


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
    return _images_response(streamed(first, rendered, "rendered frames answer"), media_type)


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
