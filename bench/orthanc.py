"""Orthanc 1.10 with its DICOMweb plugin, started from empty on this machine as the rival in side-by-side runs.

Debian packages `orthanc` and `orthanc-dicomweb`. Orthanc cannot bind to loopback only, so the configuration
shuts every remote door it can (INTEROP.md): HTTP remote access off, DICOM only from declared peers on 127.0.0.1.

Started with TCP_NODELAY=1 in its environment, its best documented configuration here: Orthanc links the system
DCMTK, whose network layer leaves Nagle's algorithm on unless that variable is set, and then each DIMSE message
waits about 40-90 ms for a delayed ACK (C-STORE: about 21 instances/s instead of about 200). Our DCMTK clients
get the same variable, so both sides of every association have Nagle off.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.common import free_port, wait_for_port

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
AE_TITLE = "ORTHANC"


def available() -> bool:
    return shutil.which(ORTHANC) is not None and Path(DICOMWEB_PLUGIN).is_file()


@contextmanager
def orthanc_server(work: Path, *, peers: dict[str, int] | None = None) -> Iterator[dict[str, int]]:
    """Orthanc on free ports with a fresh storage and index; yields {"http": port, "dimse": port, "pid": pid}.

    `peers`: AE title -> port of the DICOM peers on 127.0.0.1 it accepts (and may send to, as C-MOVE
    destinations); BENCH and STORESCU (the benchmark's SCUs) are always declared."""
    declared = {"BENCH": 4242, "STORESCU": 4242, **(peers or {})}
    ports = {"http": free_port(), "dimse": free_port()}
    work.mkdir(parents=True, exist_ok=True)
    config = {
        "Name": "bench",
        "StorageDirectory": str(work / "storage"),
        "IndexDirectory": str(work / "index"),
        "HttpPort": ports["http"],
        "DicomPort": ports["dimse"],
        "DicomAet": AE_TITLE,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckModalityHost": True,
        "DicomAlwaysAllowStore": False,
        "DicomAlwaysAllowEcho": False,
        "DicomAlwaysAllowFind": False,
        "DicomAlwaysAllowGet": False,
        "DicomAlwaysAllowMove": False,
        "DicomModalities": {title.lower(): [title, "127.0.0.1", port] for title, port in declared.items()},
        "Plugins": [DICOMWEB_PLUGIN],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "StorageCompression": False,
        "HttpThreadsCount": 50,
    }
    path = work / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    log_dir = work / "logs"
    log_dir.mkdir(exist_ok=True)
    process = subprocess.Popen(
        [ORTHANC, f"--logdir={log_dir}", str(path)],
        stdout=subprocess.DEVNULL,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    try:
        wait_for_port(ports["http"], 60)
        wait_for_port(ports["dimse"], 60)
        yield {**ports, "pid": process.pid}
    finally:
        process.terminate()
        process.wait(timeout=60)
