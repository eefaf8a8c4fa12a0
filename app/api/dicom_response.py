"""Answer bodies for data sets: DICOM JSON (PS3.18 F.2) or the Native DICOM Model XML (PS3.19 A.1).

Data sets travel through the archive as DICOM JSON dicts; XML is made from them only when a client asks for
`application/dicom+xml`, so there is one source of truth and a mechanical translation.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from pydicom.datadict import keyword_for_tag

from app.api.errors import DicomWebError
from app.api.multipart import MultipartError, parse_content_type

DICOM_JSON = "application/dicom+json"
DICOM_XML = "application/dicom+xml"
_PN_COMPONENTS = ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")


def negotiate_dataset_media_type(accept: str | None) -> str:
    """DICOM JSON unless the client prefers XML (PS3.18 8.7.5); 406 when it accepts neither."""
    if not accept:
        return DICOM_JSON
    best: tuple[float, str] | None = None
    for item in accept.split(","):
        try:
            media_type, params = parse_content_type(item)
        except MultipartError:
            continue
        if media_type == "multipart/related":
            media_type = params.get("type", "").lower()
        candidate = {
            DICOM_JSON: DICOM_JSON,
            "application/json": DICOM_JSON,
            "*/*": DICOM_JSON,
            "application/*": DICOM_JSON,
            DICOM_XML: DICOM_XML,
        }.get(media_type)
        if candidate is None:
            continue
        try:
            q = float(params.get("q", "1"))
        except ValueError:
            q = 1.0
        if q > 0 and (best is None or q > best[0]):
            best = (q, candidate)
    if best is None:
        raise DicomWebError(406, f"none of the accepted media types ({accept[:200]}) can be produced")
    return best[1]


def render_dataset(body: Mapping[str, Any], media_type: str) -> bytes:
    if media_type == DICOM_XML:
        return to_xml(body).encode("utf-8")
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def to_xml(body: Mapping[str, Any]) -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<NativeDicomModel xml:space="preserve">'
        + "".join(_attributes(body))
        + "</NativeDicomModel>"
    )


def _attributes(body: Mapping[str, Any]) -> Iterable[str]:
    for tag, element in sorted(body.items()):
        vr = element.get("vr", "UN")
        keyword = keyword_for_tag(int(tag, 16)) if len(tag) == 8 else ""
        head = f'<DicomAttribute tag="{tag}" vr="{vr}"' + (f' keyword="{keyword}"' if keyword else "") + ">"
        yield head + "".join(_value(vr, element)) + "</DicomAttribute>"


def _value(vr: str, element: Mapping[str, Any]) -> Iterable[str]:
    if "BulkDataURI" in element:
        yield f"<BulkData uri={quoteattr(str(element['BulkDataURI']))}/>"
        return
    if "InlineBinary" in element:
        yield f"<InlineBinary>{escape(str(element['InlineBinary']))}</InlineBinary>"
        return
    for number, value in enumerate(element.get("Value", ()), start=1):
        if vr == "SQ":
            yield f'<Item number="{number}">' + "".join(_attributes(value)) + "</Item>"
        elif vr == "PN":
            yield f'<PersonName number="{number}">' + "".join(_person_name(value)) + "</PersonName>"
        else:
            yield f'<Value number="{number}">{"" if value is None else escape(str(value))}</Value>'


def _person_name(value: Mapping[str, str]) -> Iterable[str]:
    for group in ("Alphabetic", "Ideographic", "Phonetic"):
        if group in value:
            parts = value[group].split("^")
            inner = "".join(
                f"<{n}>{escape(p)}</{n}>" for n, p in zip(_PN_COMPONENTS, parts, strict=False) if p
            )
            yield f"<{group}>{inner}</{group}>"
