"""WADO-RS metadata (PS3.18 §10.4.1.1.2): the DICOM JSON (or XML) of a study's, a series' or an instance's
instances, the call viewers make most.

Answers are assembled from the stored DICOM JSON text by text substitution of the relative BulkDataURIs, so
no JSON is parsed or re-serialised per request; only the XML answer parses it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Final

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.accept import negotiate, parse_accept
from app.api.dicom_response import DICOM_JSON, DICOM_XML, negotiate_dataset_media_type, to_xml
from app.api.errors import check_uids, domain_errors
from app.api.multipart_writer import multipart_body, multipart_content_type, new_boundary
from app.api.urls import instance_url, service_root
from app.core.records import StoredDataset
from app.deps import Context

router = APIRouter(tags=["WADO-RS"])

_BULK_PREFIX: Final = '"BulkDataURI":"bulkdata/'


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
