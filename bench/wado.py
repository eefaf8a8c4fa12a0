"""WADO-RS benchmark: study retrieve throughput and series metadata latency, through the real HTTP door.

Why these two: a viewer opening a study asks `/series/{uid}/metadata` for each series before it can draw
anything (the slowest call it makes, INTEROP.md), and a prefetching viewer or a migration pulls whole studies.

    python bench/wado.py [--instances 500] [--series-size 600] [--runs 20]

Starts the archive (uvicorn on 127.0.0.1, SQLite, fsync off to make the setup quick; retrieval does not
write), stores CT_small.dcm copies with generated UIDs over STOW-RS, then measures with httpx on loopback.
Plain Python, no pytest. Prints a small table.
"""

from __future__ import annotations

import argparse
import io
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pydicom
import uvicorn
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.config import Settings  # noqa: E402
from app.main import create_app  # noqa: E402

BOUNDARY = "bench-boundary"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def archive(data_dir: Path) -> Iterator[str]:
    port = free_port()
    settings = Settings(data_dir=data_dir, dimse_enabled=False, storage_fsync=False, _env_file=None)  # type: ignore[call-arg]
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the archive did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/dicom-web"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def copies(count: int, study_uid: str, series_per: int) -> Iterator[bytes]:
    """CT_small.dcm with a fresh SOP Instance UID each, `series_per` instances per series."""
    template = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    template.StudyInstanceUID = study_uid
    series_uid = generate_uid()
    for number in range(count):
        if number and number % series_per == 0:
            series_uid = generate_uid()
        template.SeriesInstanceUID = series_uid
        template.SOPInstanceUID = generate_uid()
        template.file_meta.MediaStorageSOPInstanceUID = template.SOPInstanceUID
        template.InstanceNumber = number + 1
        out = io.BytesIO()
        pydicom.dcmwrite(out, template, enforce_file_format=True)
        yield out.getvalue()


def store(client: httpx.Client, instances: Iterator[bytes], batch: int = 50) -> int:
    stored = 0
    pending: list[bytes] = []

    def send() -> None:
        nonlocal stored
        body = b"".join(
            f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n" for p in pending
        ) + f"--{BOUNDARY}--\r\n".encode()
        response = client.post(
            "/studies",
            content=body,
            headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'},
        )
        response.raise_for_status()
        stored += len(pending)
        pending.clear()

    for instance in instances:
        pending.append(instance)
        if len(pending) == batch:
            send()
    if pending:
        send()
    return stored


def timed_get(client: httpx.Client, path: str, accept: str) -> tuple[float, int]:
    start = time.perf_counter()
    size = 0
    with client.stream("GET", path, headers={"Accept": accept}) as response:
        response.raise_for_status()
        for chunk in response.iter_raw():
            size += len(chunk)
    return time.perf_counter() - start, size


def curl_get(url: str, accept: str) -> float:
    """Seconds for curl to fetch `url` to /dev/null: a client in C, so that a fast answer is not measured
    by how quickly Python can read it (httpx tops out near 400 MB/s on loopback here)."""
    out = subprocess.run(
        ["curl", "-sS", "--fail", "-o", "/dev/null", "-w", "%{time_total}", "-H", f"Accept: {accept}", url],
        capture_output=True, text=True, check=True,
    )
    return float(out.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument("--series-size", type=int, default=600)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as data, archive(Path(data)) as base, httpx.Client(
        base_url=base, timeout=300
    ) as client:
        study_uid = generate_uid()
        start = time.perf_counter()
        store(client, copies(args.instances, study_uid, series_per=100))
        store_seconds = time.perf_counter() - start
        big_study = generate_uid()
        store(client, copies(args.series_size, big_study, series_per=args.series_size))
        series_uid = client.get(f"/studies/{big_study}/metadata").json()[0]["0020000E"]["Value"][0]

        rows = []
        retrieve = [
            timed_get(client, f"/studies/{study_uid}", 'multipart/related; type="application/dicom"; transfer-syntax=*')
            for _ in range(max(3, args.runs // 4))
        ]
        best = min(t for t, _ in retrieve)
        median = statistics.median(t for t, _ in retrieve)
        size = retrieve[0][1]
        rows.append(
            (
                f"WADO-RS study retrieve, {args.instances} instances (as stored)",
                f"{args.instances / median:,.0f} instances/s",
                f"median {median * 1000:.0f} ms, best {best * 1000:.0f} ms, {size / median / 1e6:.0f} MB/s",
            )
        )
        zipped = [timed_get(client, f"/studies/{study_uid}", "application/zip") for _ in range(3)]
        zip_median = statistics.median(t for t, _ in zipped)
        rows.append(
            (
                f"WADO-RS study as application/zip, {args.instances} instances",
                f"{args.instances / zip_median:,.0f} instances/s",
                f"median {zip_median * 1000:.0f} ms",
            )
        )
        path = f"/studies/{big_study}/series/{series_uid}/metadata"
        timed_get(client, path, "application/dicom+json")  # warm: SQLite pages and code paths
        latencies = sorted(timed_get(client, path, "application/dicom+json")[0] for _ in range(args.runs))
        body = timed_get(client, path, "application/dicom+json")[1]
        rows.append(
            (
                f"series metadata, {args.series_size} instances (warm)",
                f"p50 {statistics.median(latencies) * 1000:.1f} ms",
                f"p90 {latencies[int(len(latencies) * 0.9) - 1] * 1000:.1f} ms, {body / 1e6:.1f} MB JSON",
            )
        )
        first_instance = client.get(path).json()[0]["00080018"]["Value"][0]
        frame_path = f"/studies/{big_study}/series/{series_uid}/instances/{first_instance}/frames/1"
        frame_times = sorted(
            timed_get(client, frame_path, "multipart/related; type=application/octet-stream; transfer-syntax=*")[0]
            for _ in range(args.runs)
        )
        rows.append(("one frame (OHIF Accept), warm", f"p50 {statistics.median(frame_times) * 1000:.1f} ms", ""))
        rows.append(
            ("(setup) STOW-RS of the study", f"{args.instances / store_seconds:,.0f} instances/s", "fsync off")
        )

    width = max(len(r[0]) for r in rows)
    print(f"{'measure'.ljust(width)}  {'result':>22}  notes")
    for label, result, notes in rows:
        print(f"{label.ljust(width)}  {result:>22}  {notes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
