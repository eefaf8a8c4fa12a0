"""Workitems as a RIS would post them (DICOM JSON, PS3.18 F.2), for the workflow tests of every door."""

from __future__ import annotations

from typing import Any

from app.core.workflow.ups import new_uid


def code(value: str, meaning: str, scheme: str = "99LOCAL") -> dict[str, Any]:
    return {
        "00080100": {"vr": "SH", "Value": [value]},
        "00080102": {"vr": "SH", "Value": [scheme]},
        "00080104": {"vr": "LO", "Value": [meaning]},
    }


def workitem_json(
    *,
    patient_name: str = "DOE^JANE",
    patient_id: str = "PID-1",
    start: str = "20261206093000",
    station_ae: str = "CT1",
    modality: str = "CT",
    label: str = "CT chest",
    accession: str = "ACC-1",
    study_uid: str | None = None,
    requested_procedure_id: str = "RP-1",
) -> dict[str, Any]:
    """A workitem to schedule on a modality: the Scheduled Station Name Code carries its AE title and the
    Scheduled Station Class Code its modality (the worklist mapping, app/core/workflow/worklist.py)."""
    request = {
        "00080050": {"vr": "SH", "Value": [accession]},
        "00401001": {"vr": "SH", "Value": [requested_procedure_id]},
        "0020000D": {"vr": "UI", "Value": [study_uid or new_uid()]},
        "00321060": {"vr": "LO", "Value": ["Chest CT"]},
    }
    return {
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": patient_name}]},
        "00100020": {"vr": "LO", "Value": [patient_id]},
        "00100030": {"vr": "DA", "Value": ["19700101"]},
        "00100040": {"vr": "CS", "Value": ["F"]},
        "00741000": {"vr": "CS", "Value": ["SCHEDULED"]},
        "00741200": {"vr": "CS", "Value": ["MEDIUM"]},
        "00741204": {"vr": "LO", "Value": [label]},
        "00404005": {"vr": "DT", "Value": [start]},
        "00404041": {"vr": "CS", "Value": ["READY"]},
        "00404025": {"vr": "SQ", "Value": [code(station_ae, f"{station_ae} scanner")]},
        "00404026": {"vr": "SQ", "Value": [code(modality, modality, "DCM")]},
        "0040A370": {"vr": "SQ", "Value": [request]},
    }


def performed_procedure(start: str = "20261206093100", end: str = "20261206094500") -> dict[str, Any]:
    """The Unified Procedure Step Performed Procedure Sequence a performer sets before COMPLETED."""
    return {
        "00741216": {
            "vr": "SQ",
            "Value": [
                {
                    "00404050": {"vr": "DT", "Value": [start]},
                    "00404051": {"vr": "DT", "Value": [end]},
                }
            ],
        }
    }
