"""Load: 8 concurrent senders (4 STOW-RS, 4 C-STORE) for `LOAD_SECONDS` plus 8 concurrent QIDO/WADO readers,
against the real archive process.

Checked: no error on any door, no lost instance (every acknowledged instance is indexed and its file's data set
has the SHA-256 of what was sent; nothing else is held), readers get back exactly the bytes sent, and the
server's memory is stable: peak RSS under `PEAK_RSS_MIB`, and the resident size of the last quarter of the run
no more than `RSS_GROWTH_MIB` above the second quarter's. Some growth is expected and bounded: each SQLite
connection keeps a page cache of up to 64 MiB (app/repository/sqlite/connection.py), which fills as the index grows (about
40 MiB over a run here); a leak per request or per association would go past it. The figures (instances sent
and acknowledged, reads, peak RSS) are printed; run with -s.

LOAD_SECONDS is 120 because the reliability issue asks for two minutes under load: long enough for a leak or a
slow accumulation (locks, WAL, file handles, association threads) to show against the second-quarter baseline,
and the only long test of the suite.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests import dicom_files
from tests.archive_process import (
    ArchiveProcess,
    Sender,
    archive_process,
    digest,
    retrieve_data_set,
)

pytestmark = pytest.mark.faults

LOAD_SECONDS = 120.0
SENDERS_PER_DOOR = 4
READERS = 8
RSS_GROWTH_MIB = 96
PEAK_RSS_MIB = 1024


class Reader:
    """QIDO-RS and WADO-RS in turn on instances already acknowledged; every answer must be a success and every
    retrieved instance must be the bytes sent."""

    def __init__(self, archive: ArchiveProcess, senders: list[Sender], seed: int) -> None:
        self.archive, self.senders, self.random = archive, senders, random.Random(seed)
        self.stop = threading.Event()
        self.reads = 0
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._run, name="reader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            with httpx.Client(base_url=self.archive.base_url, timeout=60) as client:
                while not self.stop.is_set():
                    self._once(client)
        except Exception as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def _once(self, client: httpx.Client) -> None:
        acknowledged = [e for s in self.senders for e in list(s.sent.values()) if e.acknowledged]
        if not acknowledged:
            time.sleep(0.05)
            return
        entry = self.random.choice(acknowledged)
        study, series, _ = entry.key.split("/")
        kind = self.reads % 4
        if kind == 0:
            response = client.get("/dicom-web/studies", params={"limit": 50, "PatientID": "*"})
        elif kind == 1:
            response = client.get(f"/dicom-web/studies/{study}/series/{series}/instances")
            if response.status_code == 200 and len(response.json()) != 1:
                self.errors.append(f"series {series} answered {len(response.json())} instances")
        elif kind == 2:
            response = client.get(f"/dicom-web/studies/{study}/metadata")
        else:
            held = retrieve_data_set(client, entry)
            if held is None or digest(held) != entry.data_set_sha:
                self.errors.append(f"WADO-RS of {entry.sop} is not what was sent")
            self.reads += 1
            return
        if response.status_code != 200:
            self.errors.append(
                f"{response.request.url.path} -> {response.status_code}: {response.text[:200]}"
            )
        self.reads += 1


def test_eight_senders_and_eight_readers_for_two_minutes(tmp_path: Path) -> None:
    with archive_process(tmp_path) as archive:
        senders = [
            Sender(kind, archive, [], loop=True)
            for kind in ("stow",) * SENDERS_PER_DOOR + ("cstore",) * SENDERS_PER_DOOR
        ]
        readers = [Reader(archive, senders, seed) for seed in range(READERS)]
        samples: list[tuple[float, int]] = []
        started = time.monotonic()
        for worker in (*senders, *readers):
            worker.start()
        try:
            while (elapsed := time.monotonic() - started) < LOAD_SECONDS:
                samples.append((elapsed, archive.rss_kib()))
                broken = [s.errors for s in senders if s.errors] + [r.errors for r in readers if r.errors]
                assert not broken, broken
                time.sleep(1)
        finally:
            for worker in (*senders, *readers):
                worker.stop.set()
            for worker in (*senders, *readers):
                worker.join(timeout=60)
        peak_kib = archive.peak_rss_kib()
        assert not [s.errors for s in senders if s.errors]
        assert not [r.errors for r in readers if r.errors]

        attempted = [e for s in senders for e in s.sent.values()]
        acknowledged = [e for e in attempted if e.acknowledged]
        # A sender stopped between its request and the answer leaves none unacknowledged: stop is only
        # looked at between instances.
        assert len(acknowledged) == len(attempted)
        indexed = archive.indexed_keys()
        assert set(indexed) == {e.sop for e in acknowledged}, "lost or extra instances"
        assert archive.stored_keys() == set(indexed.values())
        for entry in acknowledged:
            stored = (archive.storage / indexed[entry.sop]).read_bytes()
            assert digest(dicom_files.data_set_bytes(stored)) == entry.data_set_sha, (
                f"{entry.sop} differs from what was sent"
            )

        quarter = LOAD_SECONDS / 4
        second = [kib for t, kib in samples if quarter <= t < 2 * quarter]
        last = [kib for t, kib in samples if t >= 3 * quarter]
        growth_mib = (sum(last) / len(last) - sum(second) / len(second)) / 1024
        stow = sum(len(s.sent) for s in senders if s.kind == "stow")
        print(
            f"\n[load {LOAD_SECONDS:.0f} s] sent={len(attempted)} (STOW-RS {stow}, C-STORE {len(attempted) - stow}) "
            f"acknowledged={len(acknowledged)} indexed={len(indexed)} checksummed={len(acknowledged)} "
            f"reads={sum(r.reads for r in readers)} client_lost_answers={sum(s.lost_answers for s in senders)} "
            f"peak_rss={peak_kib / 1024:.0f} MiB "
            f"rss_second_quarter={sum(second) / len(second) / 1024:.0f} MiB "
            f"rss_last_quarter={sum(last) / len(last) / 1024:.0f} MiB",
            flush=True,
        )
        assert growth_mib < RSS_GROWTH_MIB, f"resident memory grew {growth_mib:.0f} MiB in the second half"
        assert peak_kib / 1024 < PEAK_RSS_MIB
