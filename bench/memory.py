"""Memory: peak RSS of our server while STOWing one ~1 GB instance, retrieving it, and paging through its frames.

Run: `python bench/memory.py [--mb 1024]`.

The instance is written once to a temporary file without ever being held in memory: a CT header from
CT_small.dcm written by pydicom, then Pixel Data (OW, 16-bit, 512 x 512 frames, as many frames as fit the size)
appended in 4 MB chunks. The STOW-RS body is streamed from that file by httpx (a generator of multipart
preamble, file chunks, epilogue; Content-Length given), and the retrieve is streamed and counted, never kept.
Then 20 of its frames, spread over the instance, are asked one request at a time, as a viewer pages through a
multi-frame instance (`/frames/{n}`, application/octet-stream): seconds for the 20, and the peak RSS; and the
same 20 rendered as PNG (`/frames/{n}/rendered`), as a viewer's or the console's previews ask them.
Our server runs as its own process group (`python -m app serve`, SQLite, default settings); a sampler thread
reads VmRSS of every process in the group (server, header-parser workers) every 20 ms; one small
instance is stored first so that the worker processes are running before the baseline is taken. Figures: RSS before,
peak during STOW, peak during retrieve, growth over the idle baseline (goal: <= 100 MB), seconds and MB/s.
Also printed: VmHWM of the server process (the kernel's own high-water mark), as a cross-check on sampling.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from bench.common import our_server, record

CHUNK = 4 * 1024 * 1024
BOUNDARY = "memory-bench-boundary"


def write_large_instance(path: Path, megabytes: int) -> tuple[str, str, str, int, int]:
    """A multi-frame 16-bit CT-like instance of about `megabytes` MB; (study, series, sop, size in bytes,
    frames)."""
    ds = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    del ds.PixelData
    frame = 512 * 512 * 2
    frames = max(1, megabytes * 1024 * 1024 // frame)
    ds.Rows, ds.Columns, ds.NumberOfFrames = 512, 512, frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    pixel_bytes = frames * frame
    with open(path, "ab") as out:
        out.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixel_bytes))
        block = bytes(range(256)) * (CHUNK // 256)
        left = pixel_bytes
        while left:
            n = min(left, CHUNK)
            out.write(block[:n])
            left -= n
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), path.stat().st_size, frames


def group_rss(session: int) -> int:
    """Sum of VmRSS (bytes) over the processes of one session (our server and its workers)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[3]) != session:  # field 6 of stat: session id
                continue
            with open(f"/proc/{entry}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except (OSError, IndexError, ValueError):
            continue
    return total


def vm_hwm(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


class Sampler:
    def __init__(self, session: int) -> None:
        self.session = session
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, group_rss(self.session))
            time.sleep(0.02)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def body(path: Path) -> Iterator[bytes]:
    yield f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def page(client: httpx.Client, session: int, paths: list[str], accept: str) -> tuple[float, int, int, int]:
    """Ask each path in turn, as a viewer pages: (seconds, bytes received, peak RSS of the group, VmHWM after)."""
    with Sampler(session) as sampler:
        start = time.perf_counter()
        received = 0
        for path in paths:
            answer = client.get(path, headers={"Accept": accept})
            answer.raise_for_status()
            received += len(answer.content)
        seconds = time.perf_counter() - start
    return seconds, received, sampler.peak, vm_hwm(session)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=1024)
    args = parser.parse_args()
    mb = 1024 * 1024
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as work:
        source = Path(work) / "large.dcm"
        start = time.perf_counter()
        study, series, sop, size, frames = write_large_instance(source, args.mb)
        print(f"wrote {size / mb:.0f} MB in {time.perf_counter() - start:.1f} s", flush=True)
        head = len(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n") + len(f"\r\n--{BOUNDARY}--\r\n")
        with our_server(Path(work) / "data") as ports, httpx.Client(
            base_url=f"http://127.0.0.1:{ports['http']}/dicom-web", timeout=1800
        ) as client:
            session = ports["pid"]
            # Warm the server's code paths and start its header-parser workers (their RSS is not the body's).
            small = get_testdata_file("CT_small.dcm")
            assert small is not None
            warm = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            warm += Path(small).read_bytes() + f"\r\n--{BOUNDARY}--\r\n".encode()
            client.post("/studies", content=warm, headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
            }).raise_for_status()
            client.get("/studies")
            time.sleep(1)
            baseline = group_rss(session)
            baseline_main = vm_hwm(session)
            with Sampler(session) as stow_sampler:
                start = time.perf_counter()
                response = client.post(
                    "/studies",
                    content=body(source),
                    headers={
                        "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
                        "Content-Length": str(size + head),
                    },
                )
                stow_seconds = time.perf_counter() - start
            response.raise_for_status()
            hwm_after_stow = vm_hwm(session)
            with Sampler(session) as get_sampler:
                start = time.perf_counter()
                received = 0
                path = f"/studies/{study}/series/{series}/instances/{sop}"
                accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
                with client.stream("GET", path, headers={"Accept": accept}) as answer:
                    answer.raise_for_status()
                    for chunk in answer.iter_raw():
                        received += len(chunk)
                get_seconds = time.perf_counter() - start
            hwm_after_get = vm_hwm(session)
            if received < size:
                raise RuntimeError(f"retrieved {received} bytes, expected at least {size}")
            spread = sorted({1 + k * (frames - 1) // 19 for k in range(20)})
            frames_phase = page(client, session, [f"{path}/frames/{n}" for n in spread],
                                'multipart/related; type="application/octet-stream"; transfer-syntax=*')
            rendered_phase = page(client, session, [f"{path}/frames/{n}/rendered" for n in spread], "image/png")
    rows: list[dict[str, object]] = [
        {
            "phase": phase,
            "instance MB": round(size / mb),
            "seconds": round(seconds, 2),
            "MB/s": round(sent / mb / seconds),
            "RSS before MB (all processes)": round(baseline / mb),
            "peak RSS MB (all processes)": round(peak / mb),
            "growth MB": round((peak - baseline) / mb),
            "server VmHWM MB": round(hwm / mb),
        }
        for phase, seconds, sent, peak, hwm in (
            ("STOW-RS", stow_seconds, size, stow_sampler.peak, hwm_after_stow),
            ("WADO-RS retrieve", get_seconds, size, get_sampler.peak, hwm_after_get),
            ("WADO-RS 20 frames, one request each", *frames_phase),
            ("WADO-RS 20 frames rendered as PNG, one request each", *rendered_phase),
        )
    ]
    record("memory", rows, note=f"server VmHWM before the STOW: {baseline_main / mb:.0f} MB; load average "
                                f"{os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
