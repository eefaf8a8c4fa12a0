"""Shared benchmark plumbing: test data made from real files, our server as a subprocess, result files.

Benchmarks are plain scripts, never tests: figures are reported, not asserted (see bench/README.md).
"""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ct_copies(folder: Path, count: int, *, studies: int = 10, patients: int = 5) -> list[Path]:
    """`count` copies of CT_small.dcm (39 KB) with new UIDs, spread over studies and patients."""
    folder.mkdir(parents=True, exist_ok=True)
    template = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    study_uids = [generate_uid() for _ in range(studies)]
    series_uids = [generate_uid() for _ in range(studies)]
    paths = []
    for i in range(count):
        k = i % studies
        template.StudyInstanceUID = study_uids[k]
        template.SeriesInstanceUID = series_uids[k]
        template.SOPInstanceUID = generate_uid()
        template.file_meta.MediaStorageSOPInstanceUID = template.SOPInstanceUID
        template.PatientID = f"BENCH{k % patients:04d}"
        template.PatientName = f"BENCH^PATIENT{k % patients:04d}"
        template.InstanceNumber = i + 1
        path = folder / f"{i:06d}.dcm"
        template.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@contextmanager
def our_server(
    data_dir: Path, *, dimse: bool = False, env: dict[str, str] | None = None, tree: Path = ROOT
) -> Iterator[dict[str, int]]:
    """`python -m app serve` of the checkout `tree` (this one unless told) on 127.0.0.1 with a fresh data
    directory; yields its ports and pid."""
    ports = {"http": free_port(), "dimse": free_port()}
    environment = {
        **os.environ,
        "DATA_DIR": str(data_dir),
        "DIMSE_ENABLED": "true" if dimse else "false",
        "LOG_LEVEL": "WARNING",
        **(env or {}),
    }
    command = [sys.executable, "-m", "app", "serve", "--port", str(ports["http"]), "--dimse-port", str(ports["dimse"])]
    # Its own process group, so that the header-parser pool (worker, resource tracker) goes with it.
    process = subprocess.Popen(command, cwd=tree, env=environment, start_new_session=True)
    try:
        wait_for_port(ports["http"])
        if dimse:
            wait_for_port(ports["dimse"])
        yield {**ports, "pid": process.pid}
    finally:
        process.terminate()
        process.wait(timeout=30)
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)


def process_group_cpu(pid: int) -> float:
    """CPU seconds (user + system) spent so far by the process group `pid` leads: a server and its parser workers."""
    found = subprocess.run(["pgrep", "-g", str(pid)], capture_output=True, text=True, check=False).stdout.split()
    total = 0
    for member in found or [str(pid)]:
        with suppress(FileNotFoundError):  # ended meanwhile
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (proc(5)), after the state field
    return total / os.sysconf("SC_CLK_TCK")


def wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def machine() -> dict[str, object]:
    # The work folder too: where files are created matters (bench/README.md: file creation under /tmp).
    return {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
            "loadavg": [round(x, 2) for x in os.getloadavg()], "work_folder": tempfile.gettempdir()}


def record(name: str, rows: list[dict[str, object]], note: str = "") -> Path:
    """Write rows as JSON lines plus a Markdown table to bench/results/, one file pair per run."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    base = RESULTS / f"{stamp}-{name}"
    with open(base.with_suffix(".jsonl"), "w") as out:
        for row in rows:
            out.write(json.dumps({"benchmark": name, "machine": machine(), **row}) + "\n")
    columns = list(rows[0])
    table = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    table += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    if note:
        table += ["", note]
    base.with_suffix(".md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    return base
