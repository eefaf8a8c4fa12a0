"""Reading and writing workflow attributes in DICOM JSON (PS3.18 F.2), by keyword.

Workitems and performed procedure steps are held as DICOM JSON, as both doors deliver them (UPS-RS bodies are
JSON; DIMSE data sets are turned into JSON with the same element encoder as ingest), so the rules of the
services read and set attributes here rather than through pydicom.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword

from app.core.records import JSONDict


@cache
def key(keyword: str) -> str:
    """The DICOM JSON key (8 upper-case hex digits) of a keyword."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return f"{tag:08X}"


def values(dataset: JSONDict, keyword: str) -> list[Any]:
    element = dataset.get(key(keyword))
    if not isinstance(element, dict):
        return []
    found = element.get("Value", [])
    return list(found) if isinstance(found, list) else []


def text(dataset: JSONDict, keyword: str) -> str:
    """The first value as text ('' when absent or empty); a person name's alphabetic group."""
    found = values(dataset, keyword)
    if not found:
        return ""
    first = found[0]
    if isinstance(first, dict):
        return str(first.get("Alphabetic", ""))
    return str(first).strip()


def items(dataset: JSONDict, keyword: str) -> list[JSONDict]:
    return [item for item in values(dataset, keyword) if isinstance(item, dict)]


def present(dataset: JSONDict, keyword: str) -> bool:
    return key(keyword) in dataset


@cache
def _vr(keyword: str) -> str:
    return str(dictionary_VR(key(keyword)))


def element(keyword: str, *value: Any) -> JSONDict:
    """A DICOM JSON element; no value gives an empty one (a Type 2 attribute present but empty)."""
    vr = _vr(keyword)
    out: JSONDict = {"vr": vr}
    if value:
        out["Value"] = [{"Alphabetic": v} if vr == "PN" and isinstance(v, str) else v for v in value]
    return out


def put(dataset: JSONDict, keyword: str, *value: Any) -> None:
    dataset[key(keyword)] = element(keyword, *value)


def project(dataset: JSONDict, template: JSONDict) -> JSONDict:
    """The attributes `template` asks for, with `dataset`'s values (C-FIND return keys, PS3.4 C.2.2.1.2):
    an attribute the data set lacks is returned empty; a sequence asked for with item keys returns those keys of
    each item (an empty template item returns the items whole)."""
    out: JSONDict = {}
    for tag, wanted in template.items():
        have = dataset.get(tag)
        if not isinstance(wanted, dict):
            continue
        if not isinstance(have, dict):
            out[tag] = {"vr": wanted.get("vr", "UN")}
            continue
        shape = [item for item in wanted.get("Value", []) if isinstance(item, dict)]
        if have.get("vr") == "SQ" and shape and shape[0]:
            out[tag] = {
                "vr": "SQ",
                "Value": [project(item, shape[0]) for item in have.get("Value", []) if isinstance(item, dict)],
            }
        else:
            out[tag] = have
    return out
