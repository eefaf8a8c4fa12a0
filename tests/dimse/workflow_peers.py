"""What the workflow DIMSE tests share: an archive with its DICOM door on, workitems scheduled the way a RIS
schedules them (UPS-RS over HTTP), and the peers that talk to the door (pynetdicom SCUs, DCMTK's findscu -W,
dcmjs-dimse scripts under tests/node/).

Every peer runs on 127.0.0.1. The archive is the real app (tests/servers.py) in this process's thread; its
remote AE registry is given by DIMSE_REMOTE_AES, so the archive knows where to send event reports.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any, Final

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pymongo import MongoClient
from pynetdicom import AE
from pynetdicom.association import Association

from app.config import Settings
from tests.servers import ArchiveServer, free_port, running_archive
from tests.tools import require

AE_TITLE: Final = "DICOMWEB"  # the archive's own (Settings default)
MWL_FIND: Final = "1.2.840.10008.5.1.4.31"
MPPS: Final = "1.2.840.10008.3.1.2.3.3"
UPS_PUSH: Final = "1.2.840.10008.5.1.4.34.6.1"
UPS_WATCH: Final = "1.2.840.10008.5.1.4.34.6.2"
UPS_PULL: Final = "1.2.840.10008.5.1.4.34.6.3"
UPS_EVENT: Final = "1.2.840.10008.5.1.4.34.6.4"
UPS_QUERY: Final = "1.2.840.10008.5.1.4.34.6.5"
GLOBAL_SUBSCRIPTION: Final = "1.2.840.10008.5.1.4.34.5"
FILTERED_GLOBAL_SUBSCRIPTION: Final = "1.2.840.10008.5.1.4.34.5.1"
NODE_DIR: Final = Path(__file__).resolve().parent.parent / "node"
TOOL_TIMEOUT: Final = 60
DICOM_JSON: Final = "application/dicom+json"


# -- the archive ------------------------------------------------------------------------------------------------


BACKENDS: Final = ("sqlite", "mongo")


@contextmanager
def workflow_archive(
    data_dir: Path, remote_aes: str = "", *, mongo_url: str | None = None, **settings: Any
) -> Iterator[ArchiveServer]:
    """The archive with its DIMSE door on a free port of 127.0.0.1 and `remote_aes` in its AE registry; on
    MongoDB (a database of its own, dropped afterwards) when `mongo_url` is given, else on SQLite."""
    base = Settings(  # type: ignore[call-arg]
        data_dir=data_dir,
        dimse_enabled=True,
        dimse_host="127.0.0.1",
        dimse_port=free_port(),
        dimse_remote_aes=remote_aes,
        dimse_scu_timeout=10,
        _env_file=None,
    )
    if mongo_url is not None:
        settings = {**settings, "mongo_url": mongo_url, "mongo_database": f"test_{uuid.uuid4().hex[:16]}"}
    try:
        with running_archive(base.model_copy(update=settings)) as server:
            yield server
    finally:
        if mongo_url is not None:
            with MongoClient(mongo_url, serverSelectionTimeoutMS=5000) as admin:
                admin.drop_database(settings["mongo_database"])


def backend_url(request: pytest.FixtureRequest) -> str | None:
    """For a fixture parametrized over BACKENDS: the session's MongoDB URL, or None for SQLite."""
    return str(request.getfixturevalue("mongo_url")) if request.param == "mongo" else None


# -- scheduling through UPS-RS ----------------------------------------------------------------------------------


def element(vr: str, *values: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"vr": vr}
    if values:
        out["Value"] = [{"Alphabetic": v} if vr == "PN" else v for v in values]
    return out


def code(value: str, scheme: str, meaning: str) -> dict[str, Any]:
    return {
        "00080100": element("SH", value),
        "00080102": element("SH", scheme),
        "00080104": element("LO", meaning),
    }


def workitem_json(
    *,
    station: str,
    modality: str = "CT",
    start: str = "20300105090000",
    patient_name: str = "DOE^JANE",
    patient_id: str = "WF-1",
    label: str = "CT chest",
    study_uid: str | None = None,
    accession: str = "",
) -> dict[str, Any]:
    """A valid SCHEDULED workitem (PS3.4 Table CC.2.5-3) for `station` (its AE title as the Scheduled Station
    Name Code Sequence's code value, as the worklist view reads it) and `modality` (the Station Class code)."""
    body: dict[str, Any] = {
        "00100010": element("PN", patient_name),
        "00100020": element("LO", patient_id),
        "00100030": element("DA"),
        "00100040": element("CS", "F"),
        "00741000": element("CS", "SCHEDULED"),
        "00741200": element("CS", "MEDIUM"),
        "00741204": element("LO", label),
        "00404005": element("DT", start),
        "00404041": element("CS", "READY"),
        "00404025": {"vr": "SQ", "Value": [code(station, "99LOCAL", f"Station {station}")]},
        "00404026": {"vr": "SQ", "Value": [code(modality, "DCM", modality)]},
    }
    request: dict[str, Any] = {}
    if study_uid:
        request["0020000D"] = element("UI", study_uid)
    if accession:
        request["00080050"] = element("SH", accession)
    if request:
        request["00401001"] = element("SH", "RP-" + (accession or "1"))
        body["0040A370"] = {"vr": "SQ", "Value": [request]}
    return body


def schedule(archive: ArchiveServer, body: dict[str, Any], uid: str | None = None) -> str:
    """Create Workitem over UPS-RS (PS3.18 11.4): POST /workitems?{uid}; the workitem's UID."""
    uid = uid or generate_uid()
    response = httpx.post(
        f"{archive.dicomweb}/workitems?{uid}",
        content=json.dumps([body]),
        headers={"Content-Type": DICOM_JSON, "Accept": DICOM_JSON},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    return uid


# -- pynetdicom as SCU ------------------------------------------------------------------------------------------


@contextmanager
def association(archive: ArchiveServer, calling: str, *sop_classes: str) -> Iterator[Association]:
    ae = AE(ae_title=calling)
    for uid in sop_classes:
        ae.add_requested_context(uid)
    assoc = ae.associate("127.0.0.1", archive.settings.dimse_port, ae_title=archive.settings.ae_title)
    assert assoc.is_established, "the archive refused the association"
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def c_find(assoc: Association, identifier: Dataset, sop_class: str) -> tuple[list[Dataset], Dataset]:
    """(the pending answers, the final status) of one C-FIND."""
    answers: list[Dataset] = []
    final = Dataset()
    for status, found in assoc.send_c_find(identifier, sop_class):
        assert "Status" in status, "no C-FIND response (timeout or abort)"
        if status.Status in (0xFF00, 0xFF01):
            answers.append(found)
        else:
            final = status
    return answers, final


# -- DCMTK ------------------------------------------------------------------------------------------------------


def findscu_worklist(
    archive: ArchiveServer, out: Path, *keys: str, calling: str = "MODALITY"
) -> list[Dataset]:
    """DCMTK `findscu -W` with `-k` keys; its answers as written by -X (one file per pending response)."""
    require("findscu")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    command = ["findscu", "-W", "-aet", calling, "-aec", archive.settings.ae_title, "-X", "-od", str(out)]
    for k in keys:
        command += ["-k", k]
    command += ["127.0.0.1", str(archive.settings.dimse_port)]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=TOOL_TIMEOUT, env={**os.environ, "TCP_NODELAY": "1"}
    )
    assert done.returncode == 0, f"findscu failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return [pydicom.dcmread(path) for path in sorted(out.glob("rsp*.dcm"))]


# -- dcmjs-dimse ------------------------------------------------------------------------------------------------


@cache
def install_node_peer() -> Path:
    """tests/node with its pinned packages installed (npm ci once, when node_modules is missing); a test
    module's session fixture calls it."""
    require("node", "npm")
    if not (NODE_DIR / "node_modules" / "dcmjs-dimse").is_dir():
        done = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, f"npm ci failed in {NODE_DIR}:\n{done.stdout}\n{done.stderr}"
    return NODE_DIR


def run_node(node_dir: Path, script: str, archive: ArchiveServer, steps: list[dict[str, Any]],
             calling: str = "NODESCU") -> list[dict[str, Any]]:  # fmt: skip
    """Run a Node script of tests/node with the steps on its standard input; the JSON lines it printed."""
    done = subprocess.run(
        ["node", script, "127.0.0.1", str(archive.settings.dimse_port), archive.settings.ae_title, calling],
        cwd=node_dir,
        input=json.dumps(steps),
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
    )
    assert done.returncode == 0, f"node {script} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
