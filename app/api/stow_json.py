"""STOW-RS of metadata and bulk data: `multipart/related; type="application/dicom+json"` (PS3.18 10.5.1.2.2).

The first part(s) hold a DICOM JSON array of data sets whose BulkDataURIs name later parts by their
Content-Location. Each data set is assembled here into a Part 10 instance and then goes through the same
ingest path as any other instance; nothing about it is stored differently.
"""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, ExplicitVRLittleEndian

from app.api.multipart import MultipartError, Part, parse_content_type
from app.core.outcomes import FailureReason, StoreOutcome, StoreStatus

# Bulk data of this form of STOW is held in memory until its metadata arrives; larger bodies should use
# application/dicom parts, which stream.
MAX_BULK_BYTES = 512 * 1024 * 1024


class JsonInstanceAssembler:
    def __init__(self) -> None:
        self._datasets: list[dict[str, Any]] = []
        self._bulk: dict[str, tuple[bytes, str | None]] = {}
        self._bulk_size = 0

    async def add(self, part: Part) -> None:
        media_type, params = parse_content_type(part.content_type or "application/octet-stream")
        if media_type in ("application/dicom+json", "application/json"):
            try:
                parsed = json.loads(await part.read(limit=64 * 1024 * 1024))
            except ValueError as exc:
                raise MultipartError(f"a metadata part is not valid DICOM JSON: {exc}") from exc
            self._datasets.extend(parsed if isinstance(parsed, list) else [parsed])
            return
        data = await part.read(limit=MAX_BULK_BYTES - self._bulk_size)
        self._bulk_size += len(data)
        location = part.headers.get("content-location", "")
        self._bulk[location] = (data, params.get("transfer-syntax"))

    async def instances(self) -> list[bytes | StoreOutcome]:
        # Dataset.from_json and dcmwrite block: assembled in a worker thread, not on the event loop.
        return await asyncio.to_thread(lambda: [self._assemble(body) for body in self._datasets])

    def _assemble(self, body: Any) -> bytes | StoreOutcome:
        syntax: list[str | None] = [None]

        def bulk(tag: str, vr: str, uri: str) -> bytes:
            if uri not in self._bulk:
                raise KeyError(f"no part with Content-Location {uri}")
            data, transfer_syntax = self._bulk[uri]
            if tag.upper() == "7FE00010" and transfer_syntax:
                syntax[0] = transfer_syntax
            return data

        try:
            if not isinstance(body, dict):
                raise ValueError("a metadata item is not a JSON object")
            ds = Dataset.from_json(body, bulk_data_uri_handler=bulk)
            transfer_syntax = UID(syntax[0] or ExplicitVRLittleEndian)
            if transfer_syntax.is_compressed and "PixelData" in ds:
                # A compressed frame arrives as its own bytes; Part 10 wants it encapsulated (PS3.5 A.4).
                ds.PixelData = encapsulate([ds.PixelData])
                ds["PixelData"].VR = "OB"
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = ds.SOPClassUID
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            meta.TransferSyntaxUID = transfer_syntax
            ds.file_meta = meta
            out = io.BytesIO()
            pydicom.dcmwrite(out, ds, enforce_file_format=True)
            return out.getvalue()
        except Exception as exc:  # any defect of the client's metadata is that instance's failure alone
            outcome = StoreOutcome(
                StoreStatus.FAILED, failure=FailureReason.CANNOT_UNDERSTAND, reason=str(exc)
            )
            if isinstance(body, dict):
                outcome.sop_class_uid = _first(body, "00080016")
                outcome.sop_instance_uid = _first(body, "00080018")
            return outcome


def _first(body: dict[str, Any], tag: str) -> str | None:
    values = body.get(tag, {}).get("Value") or [None]
    return str(values[0]) if values[0] else None
