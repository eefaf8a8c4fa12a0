"""WADO-URI (PS3.18 §9): `GET /wado?requestType=WADO&studyUID=..&seriesUID=..&objectUID=..`.

The oldest DICOM web retrieval, still what Weasis and many report viewers and EHR links use. One query string
names one instance and how to deliver it: the DICOM file (`contentType=application/dicom`, optionally in a
`transferSyntax`) or a rendered image (`image/jpeg`, `image/png`, `image/gif`) with `frameNumber`, `rows`,
`columns`, `region`, `windowCenter`/`windowWidth` and `imageQuality`. Like WADO-RS it is a thin door onto the
retrieve service; only the parameter grammar and the single-part answers differ.

Errors (PS3.18 §9.5 / §8.6.1.2): 400 for a malformed or inconsistent request, 404 for an unknown instance,
406 when none of the requested content types can be produced for it.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Final

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from starlette.datastructures import QueryParams

from app.api.accept import split_header
from app.api.errors import DicomWebError, check_uids, domain_errors
from app.api.wado_rendered import render_options
from app.core.dicom.uids import is_valid_uid
from app.core.retrieve.bulk import PIXEL_DATA_TAGS
from app.core.retrieve.negotiation import ANY, DEFAULT, AcceptedSyntaxes
from app.core.retrieve.render import RENDER_MEDIA_TYPES, RenderOptions
from app.deps import Context

router = APIRouter(tags=["WADO-URI"])

DICOM: Final = "application/dicom"
# Parameters that only make sense for a rendered image (PS3.18 §9.1.2.2, Table 9.1-1 "image only").
_RENDERING_PARAMETERS: Final = (
    "frameNumber",
    "rows",
    "columns",
    "region",
    "windowCenter",
    "windowWidth",
    "imageQuality",
)
# PS3.18 §9.1.2.2: parameters the archive does not implement are refused, never silently ignored, because
# ignoring them would hand back something other than what was asked (an identified object for `anonymize`).
_UNSUPPORTED: Final = ("anonymize", "presentationUID", "presentationSeriesUID")


def _query(name: str, description: str, *, required: bool = False, kind: str = "string") -> dict[str, object]:
    return {"name": name, "in": "query", "required": required, "description": description,
            "schema": {"type": kind}}


# The parameters are read from the query string as PS3.18 9.1.2 spells them (camelCase, some repeatable only
# as errors), so FastAPI cannot infer them: they are declared here for the OpenAPI document.
_OPENAPI: Final[dict[str, object]] = {
    "parameters": [
        _query("requestType", "Must be WADO (PS3.18 9.1.2.1).", required=True),
        _query("studyUID", "Study Instance UID.", required=True),
        _query("seriesUID", "Series Instance UID.", required=True),
        _query("objectUID", "SOP Instance UID.", required=True),
        _query("contentType", "application/dicom, image/jpeg, image/png or image/gif, comma list with q-values; "
               "default image/jpeg for images, application/dicom otherwise."),
        _query("transferSyntax", "Transfer syntax UID for application/dicom (lossless transcoding only)."),
        _query("frameNumber", "Frame to render (1-based).", kind="integer"),
        _query("rows", "Rendered height in pixels (bounded by MAX_RENDER_SIDE).", kind="integer"),
        _query("columns", "Rendered width in pixels (bounded by MAX_RENDER_SIDE).", kind="integer"),
        _query("region", "x1,y1,x2,y2 as fractions 0.0-1.0 of the image."),
        _query("windowCenter", "Window center (with windowWidth).", kind="number"),
        _query("windowWidth", "Window width (with windowCenter).", kind="number"),
        _query("imageQuality", "JPEG quality 1-100.", kind="integer"),
    ],
    "responses": {
        "200": {"description": "The instance or its rendered image.",
                "content": {media: {} for media in ("application/dicom", "image/jpeg", "image/png", "image/gif")}},
        "400": {"description": "Malformed or inconsistent parameters (DICOM JSON with the reason)."},
        "404": {"description": "No such instance."},
        "406": {"description": "None of the requested content types can be produced."},
    },
}


@router.get(
    "/wado",
    summary="Retrieve an instance or a rendered image (WADO-URI, PS3.18 9)",
    response_class=Response,
    openapi_extra=_OPENAPI,
)
async def wado(request: Request, context: Context) -> Response:
    params = request.query_params
    if params.get("requestType") != "WADO":
        raise DicomWebError(400, "requestType=WADO is required (PS3.18 9.1.2.1)")
    study, series, instance = (params.get(name, "") for name in ("studyUID", "seriesUID", "objectUID"))
    for name, value in (("studyUID", study), ("seriesUID", series), ("objectUID", instance)):
        if not value:
            raise DicomWebError(400, f"{name} is required (PS3.18 9.1.2.1)")
    check_uids(study, series, instance)
    for name in _UNSUPPORTED:
        if name in params:
            raise DicomWebError(400, f"{name} is not supported by this archive")
    for name in params:
        if len(params.getlist(name)) > 1:
            raise DicomWebError(400, f"{name} is given more than once")
    content_types = _content_types(params.get("contentType"))
    service = context.retrieve
    with domain_errors():
        ref = (await service.resolve(study, series, instance))[0]
    header = await _header(context, study, series, instance)
    is_image = _has_pixels(header)
    if not content_types:
        # PS3.18 §9.1.2.1: an image is returned as image/jpeg by default; other objects (reports, plans) as
        # the DICOM object itself, since this archive renders no text/html.
        content_types = ["image/jpeg"] if is_image else [DICOM]
    rendered_asked = any(name in params for name in _RENDERING_PARAMETERS)
    failures: list[str] = []
    for content_type in content_types:
        if content_type == DICOM:
            if rendered_asked:
                raise DicomWebError(
                    400, "frameNumber, rows, columns, region, window and imageQuality apply to images only"
                )
            accepted = _transfer_syntax(params.get("transferSyntax"))
            try:
                with domain_errors():
                    stream = await service.open_instance(ref, accepted)
            except DicomWebError as exc:
                if exc.status != 406:
                    raise
                failures.append(exc.reason)
                continue
            return StreamingResponse(stream, media_type=f"{DICOM}; transfer-syntax={stream.transfer_syntax}")
        if content_type in RENDER_MEDIA_TYPES or content_type in ("image/*", "*/*"):
            media_type = content_type if content_type in RENDER_MEDIA_TYPES else "image/jpeg"
            if not is_image:
                failures.append(f"instance {instance} has no pixel data to render as {media_type}")
                continue
            if "transferSyntax" in params:
                raise DicomWebError(400, "transferSyntax applies to application/dicom only")
            options = _render_options(params, media_type, header)
            try:
                with domain_errors():
                    image = await service.rendered(ref, options)
            except DicomWebError as exc:
                if exc.status != 406:
                    raise
                failures.append(exc.reason)
                continue
            return Response(image, media_type=media_type)
        failures.append(f"content type {content_type} is not supported")
    raise DicomWebError(406, "; ".join(failures) or "no requested content type can be produced")


def _content_types(value: str | None) -> list[str]:
    """`contentType` is a list of media types, best first (PS3.18 §9.1.2.1); q-values order it."""
    if value is None:
        return []
    ranked: list[tuple[float, int, str]] = []
    for position, item in enumerate(split_header(value)):
        media_type, *rest = (piece.strip() for piece in item.split(";"))
        q = 1.0
        for parameter in rest:
            name, _, raw = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(raw)
                except ValueError as exc:
                    raise DicomWebError(400, f"malformed q-value in contentType: {raw[:20]!r}") from exc
        if "/" not in media_type:
            raise DicomWebError(400, f"contentType {media_type[:80]!r} is not a media type")
        if q > 0:
            ranked.append((-q, position, media_type.lower()))
    if not ranked:
        raise DicomWebError(400, "contentType names no media type")
    return [media_type for _, _, media_type in sorted(ranked)]


def _transfer_syntax(value: str | None) -> AcceptedSyntaxes:
    """`transferSyntax` (PS3.18 §9.1.2.2): one UID, or absent for the §8.7.3.4 default."""
    if value is None:
        return AcceptedSyntaxes(((DEFAULT,),), web=True)
    value = value.strip()
    if value != ANY and not is_valid_uid(value):
        raise DicomWebError(400, f"transferSyntax {value[:80]!r} is not a UID")
    return AcceptedSyntaxes(((value,),), web=True)


async def _header(context: Context, study: str, series: str, instance: str) -> dict[str, object]:
    with domain_errors():
        stored = await context.retrieve.metadata(study, series, instance)
    header: dict[str, object] = json.loads(stored[0].dataset_json)
    return header


def _has_pixels(header: dict[str, object]) -> bool:
    return any(f"{tag:08X}" in header for tag in PIXEL_DATA_TAGS)


def _int_value(header: dict[str, object], tag: str) -> int | None:
    element = header.get(tag)
    if isinstance(element, dict):
        values = element.get("Value")
        if isinstance(values, list) and values and isinstance(values[0], int | float):
            return int(values[0])
    return None


def _positive(params: QueryParams, name: str) -> int | None:
    raw = params.get(name)
    if raw is None:
        return None
    # isascii: str.isdigit accepts '²' and other digits int() refuses.
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        raise DicomWebError(400, f"{name} must be a positive integer (PS3.18 9.1.2.2)")
    return int(raw)


def _render_options(params: QueryParams, media_type: str, header: dict[str, object]) -> RenderOptions:
    center, width = params.get("windowCenter"), params.get("windowWidth")
    if (center is None) != (width is None):
        raise DicomWebError(400, "windowCenter and windowWidth go together (PS3.18 9.1.2.2)")
    if "imageQuality" in params and media_type != "image/jpeg":
        raise DicomWebError(400, "imageQuality applies to lossy images (image/jpeg) only")
    frame = _positive(params, "frameNumber") or 1
    rows, columns = _positive(params, "rows"), _positive(params, "columns")
    viewport = None
    if rows is not None or columns is not None:
        viewport = f"{columns or ''},{rows or ''}"
    options = render_options(
        media_type,
        window=f"{center},{width}" if center is not None else None,
        viewport=viewport,
        quality=params.get("imageQuality"),
        frame=frame,
    )
    region = params.get("region")
    if region is None:
        return options
    # region=x1,y1,x2,y2 as fractions of the image (PS3.18 9.1.2.2): the source rectangle to render.
    try:
        x1, y1, x2, y2 = (float(v) for v in region.split(","))
    except ValueError as exc:
        raise DicomWebError(400, "region is x1,y1,x2,y2 with values from 0.0 to 1.0") from exc
    if not (0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1):
        raise DicomWebError(400, "region needs 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1")
    image_rows, image_columns = _int_value(header, "00280010"), _int_value(header, "00280011")
    if not image_rows or not image_columns:
        raise DicomWebError(400, "region needs an image with Rows and Columns")
    crop = (
        int(x1 * image_columns),
        int(y1 * image_rows),
        max(1, round((x2 - x1) * image_columns)),
        max(1, round((y2 - y1) * image_rows)),
    )
    try:
        return dataclasses.replace(options, crop=crop)
    except ValueError as exc:
        raise DicomWebError(400, f"invalid rendering parameter: {exc}") from exc
