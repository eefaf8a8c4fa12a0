"""The audit trail: one JSON line per store, retrieve, query, delete, admin action and DIMSE association.

Each record says who (the authenticated user or API key name, else "anonymous"; for DIMSE the calling AE
title), what (action, the request and the study/series/instance it named, the outcome), when (UTC) and from
where (client address, after trusted-proxy resolution). The fields follow the questions of an IHE ATNA audit
message (DICOM PS3.15 A.5 / RFC 3881: EventIdentification, ActiveParticipant, NetworkAccessPoint,
ParticipantObjectIdentification) in a flat form log shippers index directly; `AUDIT_FORMAT=atna` writes the
same records as DICOM Audit Messages (PS3.15 A.5.1 XML, one message per line) for an ATNA audit repository.

Records go through a queue to a writer thread, so the request path never waits for the disk. `AUDIT_LOG=-`
writes to stdout; a path appends to that file (opened per batch of records, so logrotate needs no signal);
empty turns the trail off.
"""

from __future__ import annotations

import base64
import json
import logging
import queue
import sys
import threading
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from typing import Any

from app.core.logs import REQUEST_ID

log = logging.getLogger(__name__)
ACTIONS = frozenset({"store", "retrieve", "query", "delete", "admin", "association"})


class AuditLog:
    def __init__(self, target: str | None, fmt: str = "json") -> None:
        self.enabled = bool(target)
        self._target = target
        self._render = atna_message if fmt == "atna" else _json_line
        self._lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        if target:
            if target != "-":
                # Fail at start-up, not at the first record, when the file cannot be written.
                with open(target, "a", encoding="utf-8"):
                    pass
            self._writer = threading.Thread(target=self._write, name="audit-writer", daemon=True)
            self._writer.start()

    def record(
        self,
        action: str,
        *,
        outcome: int | str,
        user: str | None,
        client: str | None,
        **details: Any,
    ) -> None:
        """Queue one record; `details` (method, path, study, series, instance, AE titles...) are added as is."""
        if not self.enabled:
            return
        entry: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "action": action,
            "outcome": outcome,
            "user": user or "anonymous",
            "client": client,
            "request_id": REQUEST_ID.get(),
        }
        entry.update({key: value for key, value in details.items() if value is not None})
        self._lines.put(self._render(entry))

    def _write(self) -> None:
        """The writer thread: appends each record as one line; the file is reopened per batch, so a rotated-away
        file is followed by a new one (no signal needed)."""
        assert self._target is not None
        while True:
            line = self._lines.get()
            batch = [line]
            while not self._lines.empty():
                batch.append(self._lines.get())
            done = None in batch
            text = "".join(item + "\n" for item in batch if item is not None)
            if text:
                try:
                    if self._target == "-":
                        sys.stdout.write(text)
                        sys.stdout.flush()
                    else:
                        with open(self._target, "a", encoding="utf-8") as out:
                            out.write(text)
                except OSError as exc:
                    log.error("cannot write the audit trail to %s: %s", self._target, exc)
            if done:
                return

    def close(self) -> None:
        """Write what is queued and stop the writer thread."""
        if self._writer is not None:
            self._lines.put(None)
            self._writer.join(timeout=10)
            self._writer = None


def _json_line(entry: dict[str, Any]) -> str:
    return json.dumps(entry, ensure_ascii=False)


# --- DICOM Audit Messages (PS3.15 A.5, PS3.16 CID 400-405) -------------------------------------------------------

AUDIT_SOURCE = "dicomweb-archive"
# action -> (EventID code, its meaning, EventActionCode: Create, Read, Update, Delete, Execute)
_EVENTS = {
    "store": ("110104", "DICOM Instances Transferred", "C"),
    "retrieve": ("110104", "DICOM Instances Transferred", "R"),
    "query": ("110112", "Query", "E"),
    "delete": ("110103", "DICOM Instances Accessed", "D"),
    "admin": ("110100", "Application Activity", "E"),
    "association": ("110114", "User Authenticated", "E"),
}
def _outcome(outcome: Any) -> str:
    """EventOutcomeIndicator: 0 success, 4 minor failure, 8 serious failure, 12 major failure."""
    if isinstance(outcome, int):  # an HTTP status
        return "0" if outcome < 400 else "4" if outcome < 500 else "12"
    text = str(outcome)
    if text.startswith("0x"):  # a DIMSE status: success, warnings (0xB...) and cancel are not failures
        status = int(text, 16)
        return "0" if status == 0 or status & 0xF000 == 0xB000 or status == 0xFE00 else "8"
    return "0" if text in ("released", "accepted") else "4" if text == "aborted" else "8"


def _code(parent: ET.Element, tag: str, code: str, meaning: str, system: str = "DCM") -> None:
    ET.SubElement(parent, tag, {"csd-code": code, "codeSystemName": system, "originalText": meaning})


def _participant(message: ET.Element, object_id: str, type_code: str, role: str) -> ET.Element:
    return ET.SubElement(message, "ParticipantObjectIdentification", {
        "ParticipantObjectID": object_id, "ParticipantObjectTypeCode": type_code,
        "ParticipantObjectTypeCodeRole": role,
    })


def atna_message(entry: dict[str, Any]) -> str:
    """One record as a DICOM Audit Message (PS3.15 A.5.1), on one line.

    The study (ParticipantObjectIDTypeCode 110180, with the instance named in its description) is the object
    when the request names one; a query carries its text, base64, in ParticipantObjectQuery (A.5.3.12); an
    instance known without its study (a C-STORE) and the request id use local codes (codeSystemName
    `dicomweb-archive`), as PS3.15 has none for them.
    """
    code, meaning, action_code = _EVENTS.get(entry["action"], ("110100", "Application Activity", "E"))
    message = ET.Element("AuditMessage")
    event = ET.SubElement(message, "EventIdentification", {
        "EventActionCode": action_code, "EventDateTime": entry["time"],
        "EventOutcomeIndicator": _outcome(entry["outcome"]),
    })
    _code(event, "EventID", code, meaning)
    if entry.get("reason"):  # why an association was rejected
        ET.SubElement(event, "EventOutcomeDescription").text = str(entry["reason"])
    requestor = {"UserID": str(entry["user"]), "UserIsRequestor": "true"}
    if entry.get("client"):
        requestor |= {"NetworkAccessPointID": str(entry["client"]), "NetworkAccessPointTypeCode": "2"}
    _code(ET.SubElement(message, "ActiveParticipant", requestor), "RoleIDCode", "110153", "Source Role ID")
    archive_id = {"UserID": AUDIT_SOURCE, "UserIsRequestor": "false"}
    if entry.get("called"):  # the AE title a DIMSE peer called (PS3.15 A.5.2.2: AlternativeUserID "AETITLES=")
        archive_id["AlternativeUserID"] = f"AETITLES={entry['called']}"
    archive = ET.SubElement(message, "ActiveParticipant", archive_id)
    _code(archive, "RoleIDCode", "110152", "Destination Role ID")
    ET.SubElement(message, "AuditSourceIdentification", {"AuditSourceID": AUDIT_SOURCE})
    instance = entry.get("instance")
    if entry.get("study"):
        study = _participant(message, str(entry["study"]), "2", "3")
        _code(study, "ParticipantObjectIDTypeCode", "110180", "Study Instance UID")
        if instance:
            description = ET.SubElement(study, "ParticipantObjectDescription")
            sop_class = ET.SubElement(description, "SOPClass", {"UID": str(entry.get("sop_class", "")),
                                                                "NumberOfInstances": "1"})
            ET.SubElement(sop_class, "Instance", {"UID": str(instance)})
    elif instance:
        alone = _participant(message, str(instance), "2", "3")
        _code(alone, "ParticipantObjectIDTypeCode", "sop-instance-uid", "SOP Instance UID", AUDIT_SOURCE)
    if entry.get("query"):
        query = _participant(message, str(entry.get("path", "")), "2", "3")
        _code(query, "ParticipantObjectIDTypeCode", "qido-rs", "QIDO-RS query", AUDIT_SOURCE)
        ET.SubElement(query, "ParticipantObjectQuery").text = base64.b64encode(
            str(entry["query"]).encode()).decode("ascii")
    request = _participant(message, str(entry.get("request_id", "")), "4", "13")
    _code(request, "ParticipantObjectIDTypeCode", "request-id", "Request or association id", AUDIT_SOURCE)
    return ET.tostring(message, encoding="unicode")
