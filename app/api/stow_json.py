"""STOW-RS of metadata and bulk data: `multipart/related; type="application/dicom+json"` (PS3.18 10.5.1.2.2).

The first part(s) hold a DICOM JSON array of data sets whose BulkDataURIs name later parts by their
Content-Location. Each data set is assembled here into a Part 10 instance and then goes through the same
ingest path as any other instance; nothing about it is stored differently. A metadata part that cannot be read
(not JSON, or nested deeper than the parser can follow) fails alone with 0xC000 and its reason, like any other
part that is not an instance.
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

from app.api.multipart import parse_content_type
from app.api.multipart_parser import Part
from app.core.ingest.outcomes import FailureReason, StoreOutcome, StoreStatus

# Bulk data of this form of STOW is held in memory until its metadata arrives; larger bodies should use
# application/dicom parts, which stream.
MAX_BULK_BYTES = 512 * 1024 * 1024


class JsonInstanceAssembler:
    def __init__(self) -> None:
        self._datasets: list[dict[str, Any]] = []
        self._unreadable: list[StoreOutcome] = []  # metadata parts that are not DICOM JSON
        self._bulk: dict[str, tuple[bytes, str | None]] = {}
        self._bulk_size = 0

    @property
    def instance_count(self) -> int:
        """The data sets described so far (each will be an instance to store)."""
        return len(self._datasets)

    async def add(self, part: Part) -> None:
        media_type, params = parse_content_type(part.content_type or "application/octet-stream")
        if media_type in ("application/dicom+json", "application/json"):
            text = await part.read(limit=64 * 1024 * 1024)
            try:
                parsed = json.loads(text)
            except ValueError as exc:
                self._unreadable.append(unreadable(f"a metadata part is not valid DICOM JSON: {exc}"))
                return
            except RecursionError:
                # json's parser follows nesting by recursion and gives up near Python's limit of 1,000 levels;
                # DICOM JSON (PS3.18 F.2) takes three a sequence, so no real data set comes near it.
                self._unreadable.append(unreadable("a metadata part is nested too deeply to read"))
                return
            self._datasets.extend(parsed if isinstance(parsed, list) else [parsed])
            return
        data = await part.read(limit=MAX_BULK_BYTES - self._bulk_size)
        self._bulk_size += len(data)
        location = part.headers.get("content-location", "")
        self._bulk[location] = (data, params.get("transfer-syntax"))

    async def instances(self) -> list[bytes | StoreOutcome]:
        """Each data set as a Part 10 instance, or the failure it is; then the unreadable metadata parts."""
        # Dataset.from_json and dcmwrite block: assembled in a worker thread, not on the event loop.
        assembled = await asyncio.to_thread(lambda: [self._assemble(body) for body in self._datasets])
        return [*assembled, *self._unreadable]

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
        except Exception as exc:  # any defect of the client's metadata (RecursionError too) fails it alone
            outcome = unreadable(str(exc) or type(exc).__name__)
            if isinstance(body, dict):
                outcome.sop_class_uid = _first(body, "00080016")
                outcome.sop_instance_uid = _first(body, "00080018")
            return outcome


def unreadable(reason: str) -> StoreOutcome:
    """A part that is no instance the archive can understand (0xC000), and why."""
    return StoreOutcome(StoreStatus.FAILED, failure=FailureReason.CANNOT_UNDERSTAND, reason=reason)


def _first(body: dict[str, Any], tag: str) -> str | None:
    """The first value of a top-level attribute of the client's JSON, when it is a string (whatever its shape)."""
    element = body.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    first = values[0] if isinstance(values, list) and values else None
    return first if isinstance(first, str) and first else None
