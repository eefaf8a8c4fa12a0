"""The real archive as a separate process, and senders that remember what was acknowledged.

Used by the fault and load tests (tests/system/test_faults.py, tests/system/test_load.py): the server is
`python -m app serve` in a subprocess, so it can be killed with SIGKILL and restarted on the same data, and its
memory measured.
Senders are the real doors' clients: STOW-RS over httpx (one instance per request, so each acknowledgement
names one instance) and C-STORE over pynetdicom (one association, one C-STORE per instance).
"""

from __future__ import annotations

import copy
import hashlib
import io
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests import dicom_files
from tests.servers import free_port
from tests.tools import listening, stop

START_TIMEOUT = 60
# Seconds a sender waits on any one answer, well under the 60 s the fault tests give a sender to end once the
# archive is killed: a client may wait out a whole timeout on a peer that vanished (pynetdicom for a C-STORE
# response and then the release's), and two such waits must still end in time. A store is answered in ms.
SENDER_TIMEOUT = 20
AE_TITLE = "DICOMWEB"
STOW_TYPE = 'multipart/related; type="application/dicom"; boundary=dicom-boundary'
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"



def _server_env(extra: Mapping[str, str]) -> dict[str, str]:
    # Nothing from the developer's environment decides how the archive under test behaves.
    prefixes = ("DIMSE_", "MONGO_", "DATA_", "STORAGE_", "HTTP_", "AE_", "DUPLICATE_", "AUTH_", "INGEST_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update({"DIMSE_ENABLED": "true", "DIMSE_HOST": "127.0.0.1", "AE_TITLE": AE_TITLE, "LOG_LEVEL": "INFO",
                "PYTHONUNBUFFERED": "1"})  # fmt: skip
    env.update(extra)
    return env


@dataclass
class ArchiveProcess:
    """`python -m app serve` on free ports over `data_dir`; `start`/`kill`/`stop` may be called repeatedly."""

    root: Path
    settings: dict[str, str] = field(default_factory=dict)
    data_dir: Path = field(init=False)
    http_port: int = 0
    dimse_port: int = 0
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def __post_init__(self) -> None:
        self.data_dir = self.root / "data"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def storage(self) -> Path:
        return Path(self.settings.get("STORAGE_ROOT", self.data_dir / "storage"))

    @property
    def log_path(self) -> Path:
        return self.root / f"server-{self.starts}.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> None:
        self.starts += 1
        self.http_port, self.dimse_port = free_port(), free_port()
        command = [
            sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(self.http_port),
            "--dimse-port", str(self.dimse_port), "--data-dir", str(self.data_dir),
        ]  # fmt: skip
        with self.log_path.open("wb") as log:
            # cwd is the test's own folder, so a developer's .env is not read.
            self.process = subprocess.Popen(
                command, cwd=self.root, env=_server_env(self.settings), stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not (listening(self.http_port) and listening(self.dimse_port)):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the archive did not start:\n{self.log()[-5000:]}")
            time.sleep(0.05)

    def descendants(self) -> set[int]:
        """The live processes the server started (header parsers, multiprocessing's helpers), at any depth."""
        assert self.process is not None
        parents = {self.process.pid}
        found: set[int] = set()
        while parents:
            children = {pid for pid, ppid in _live_processes().items() if ppid in parents} - found
            found |= children
            parents = children
        return found

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a power cut of the process."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        stop(self.process, timeout=30)
        self.process = None

    def rss_kib(self) -> int:
        """Resident set size of the server process now (VmRSS)."""
        assert self.process is not None
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]

    def peak_rss_kib(self) -> int:
        """Peak resident set size of the server process so far (VmHWM)."""
        assert self.process is not None
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+)", status).group(1))  # type: ignore[union-attr]

    # -- what the archive holds, read where it lands

    def indexed_keys(self) -> dict[str, str]:
        """SOP Instance UID -> storage key, from the SQLite index."""
        db = sqlite3.connect(f"file:{self.data_dir / 'index.sqlite3'}?mode=ro", uri=True, timeout=30)
        try:
            return {
                str(sop): str(key)
                for sop, key in db.execute("SELECT sop_instance_uid, storage_key FROM instances")
            }
        finally:
            db.close()

    def stored_keys(self) -> set[str]:
        """Keys of the committed files in the storage tree (staging excluded)."""
        root = self.storage
        return {str(p.relative_to(root)) for p in root.glob("*/*/*.dcm") if p.is_file()}

    def staged_files(self) -> list[Path]:
        staging = self.storage / ".incoming"  # app/storage/filesystem.py STAGING
        return [p for p in staging.iterdir() if p.is_file()] if staging.is_dir() else []


@contextmanager
def archive_process(root: Path, **settings: str) -> Iterator[ArchiveProcess]:
    archive = ArchiveProcess(root, dict(settings))
    archive.start()
    try:
        yield archive
    finally:
        archive.stop()


# --------------------------------------------------------------------------- instances to send

_BASE: dict[str, Dataset] = {}


def new_instance(name: str = "CT_small.dcm", study: str | None = None) -> Dataset:
    """A copy of a pydicom test file with fresh UIDs (the study's when given)."""
    if name not in _BASE:
        _BASE[name] = dicom_files.load(name)
    ds = copy.deepcopy(_BASE[name])
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return ds


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Sent:
    """One instance a sender tried to store: the SOP Instance UID, the study/series (its storage key) and the
    SHA-256 of the data set bytes the archive must hold (File Meta excluded: C-STORE gets a new one)."""

    sop: str
    key: str
    data_set_sha: str
    acknowledged: bool = False
    attempts: int = 0


class Sender:
    """A sender thread that stores `instances` in turn until done, stopped, or the archive goes away.

    `kind` is "stow" or "cstore". Each instance is acknowledged only on success (STOW-RS 200 naming it,
    C-STORE status 0x0000); any error stops the sender (the archive is gone), leaving the rest unacknowledged.
    With `loop`, fresh instances are sent after the given ones until `stop` is set (the load test).
    """

    def __init__(
        self, kind: str, archive: ArchiveProcess, instances: list[Dataset], *, loop: bool = False
    ) -> None:
        self.kind, self.archive, self.instances, self.loop = kind, archive, instances, loop
        self.sent: dict[str, Sent] = {}
        self.errors: list[str] = []
        self.statuses: dict[int, int] = {}
        self.lost_answers = 0  # C-STORE responses the pynetdicom client dropped (re-sent; see _run_cstore)
        self.stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=f"sender-{self.kind}", daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        assert self._thread is not None
        self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def where(self) -> str:
        """Where the sender's thread is now: for the message of a test that finds it still running."""
        frame = sys._current_frames().get(self._thread.ident or -1) if self._thread is not None else None
        return "".join(traceback.format_stack(frame)) if frame is not None else "not running"

    def pending(self) -> list[Dataset]:
        return [
            ds for ds in self.instances if not self.sent.get(ds.SOPInstanceUID, Sent("", "", "")).acknowledged
        ]

    def _todo(self) -> Iterator[Dataset]:
        yield from self.pending()
        while self.loop and not self.stop.is_set():
            ds = new_instance()
            self.instances.append(ds)
            yield ds

    def run(self) -> None:
        try:
            if self.kind == "stow":
                self._run_stow()
            else:
                self._run_cstore()
        except Exception as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def _record(self, ds: Dataset, data_set: bytes) -> Sent:
        key = f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
        entry = self.sent.setdefault(ds.SOPInstanceUID, Sent(ds.SOPInstanceUID, key, digest(data_set)))
        entry.attempts += 1
        return entry

    def _run_stow(self) -> None:
        with httpx.Client(base_url=self.archive.base_url, timeout=SENDER_TIMEOUT) as client:
            for ds in self._todo():
                if self.stop.is_set():
                    return
                raw = dicom_files.part10(ds)
                entry = self._record(ds, dicom_files.data_set_bytes(raw))
                response = client.post(
                    "/dicom-web/studies",
                    content=dicom_files.multipart([raw]),
                    headers={"Content-Type": STOW_TYPE},
                )
                self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
                if response.status_code != 200:
                    self.errors.append(f"STOW {response.status_code}: {response.text[:300]}")
                    return
                referenced = response.json()["00081199"]["Value"]
                assert referenced[0]["00081155"]["Value"] == [ds.SOPInstanceUID]
                entry.acknowledged = True

    def _run_cstore(self) -> None:
        from pynetdicom import AE
        from pynetdicom.dsutils import encode

        ae = AE(ae_title="FAULTSCU")
        ae.add_requested_context(CT_IMAGE_STORAGE, [EXPLICIT_LE])
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = SENDER_TIMEOUT
        assoc = ae.associate("127.0.0.1", self.archive.dimse_port, ae_title=AE_TITLE)
        if not assoc.is_established:
            self.errors.append("association refused")
            return
        try:
            for ds in self._todo():
                if self.stop.is_set():
                    return
                # The archive stores the data set as received: pynetdicom sends exactly this encoding.
                entry = self._record(ds, encode(ds, False, True))
                answer = assoc.send_c_store(ds)
                code = int(answer.Status) if "Status" in answer else -1
                # (pynetdicom aborts the association when its DIMSE timeout expires, so it may be closed here.)
                if code == -1:
                    # pynetdicom's requestor can drop a response it did receive ("Received unexpected C-STORE
                    # service message", pydicom/pynetdicom#875); a sender that hears nothing re-sends on a new
                    # association, as a modality would. Counted, so a run shows how often the client lost one.
                    # (When the archive itself is gone, as after kill -9, the new association is refused.)
                    self.lost_answers += 1
                    if assoc.is_established:
                        assoc.abort()
                    assoc = ae.associate("127.0.0.1", self.archive.dimse_port, ae_title=AE_TITLE)
                    if not assoc.is_established:
                        self.errors.append("association refused on re-send")
                        return
                    answer = assoc.send_c_store(ds)
                    code = int(answer.Status) if "Status" in answer else -1
                self.statuses[code] = self.statuses.get(code, 0) + 1
                if code != 0:
                    self.errors.append(f"C-STORE status {code:#06x}" if code >= 0 else "C-STORE: no answer")
                    return
                entry.acknowledged = True
        finally:
            if assoc.is_established:
                assoc.release()


# --------------------------------------------------------------------------- reading back


def retrieve_data_set(client: httpx.Client, sent: Sent) -> bytes | None:
    """The instance as stored, by WADO-RS (transfer-syntax=*: byte for byte), data set only; None if 404."""
    study, series, name = sent.key.split("/")
    response = client.get(
        f"/dicom-web/studies/{study}/series/{series}/instances/{name.removesuffix('.dcm')}",
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
    )
    if response.status_code == 404:
        return None
    assert response.status_code == 200, (response.status_code, response.text[:300])
    boundary = re.search(r'boundary="?([^";]+)"?', response.headers["content-type"]).group(1)  # type: ignore[union-attr]
    body = response.content
    start = body.index(b"\r\n\r\n") + 4
    end = body.rindex(b"\r\n--" + boundary.encode() + b"--")
    return dicom_files.data_set_bytes(body[start:end])


def part10_of(ds: Dataset) -> Dataset:
    return pydicom.dcmread(io.BytesIO(dicom_files.part10(ds)))


def any_sender_alive(senders: list[Any]) -> bool:
    return any(s.is_alive() for s in senders)


def _live_processes() -> dict[int, int]:
    """pid -> parent pid of every process not yet ended (zombies count as ended)."""
    out: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            out[int(entry.name)] = int(fields[1])
    return out


def still_running(pids: set[int], timeout: float) -> set[int]:
    """Those of `pids` still running after up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while (alive := pids & set(_live_processes())) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive

