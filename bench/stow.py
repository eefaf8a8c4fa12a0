"""STOW-RS throughput: 500 small CT instances (CT_small.dcm, 39 KB) in batches of 50, 1 and 4 clients.

Run: `python bench/stow.py [--count 500] [--batch 50] [--runs 3]`. Each run starts our server from empty.

Two senders. `stow` is dicomweb-client, as a Python application would send: it encodes every data set and
the multipart body itself, about 3 ms of CPU per instance here, on the same cores as the server. `stow_raw`
posts bodies encoded beforehand with curl, so that what is measured is the server.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pydicom
from dicomweb_client.api import DICOMwebClient

from app.api.multipart_writer import multipart_body
from bench.common import ct_copies, our_server, record


def stow(url: str, files: list[Path], batch: int, clients: int) -> float:
    datasets = [pydicom.dcmread(p) for p in files]
    batches = [datasets[i : i + batch] for i in range(0, len(datasets), batch)]

    def send(group: list[list[pydicom.Dataset]]) -> None:
        client = DICOMwebClient(url)
        for b in group:
            client.store_instances(b)

    groups = [batches[i::clients] for i in range(clients)]
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(send, groups))
    return len(datasets) / (time.perf_counter() - start)


BOUNDARY = "bench-stow-boundary"


def encode_bodies(files: list[Path], batch: int, folder: Path) -> list[Path]:
    """The multipart/related bodies of `files` in batches, written to `folder` for curl to post."""
    folder.mkdir(parents=True, exist_ok=True)
    bodies = []
    for start in range(0, len(files), batch):
        parts = [({"Content-Type": "application/dicom"}, path.read_bytes()) for path in files[start : start + batch]]
        body = folder / f"body-{start:06d}.bin"
        body.write_bytes(multipart_body(parts, BOUNDARY))
        bodies.append(body)
    return bodies


def stow_raw(url: str, bodies: list[Path], clients: int, instances: int) -> float:
    """Instances/s for `clients` concurrent curl senders posting the pre-encoded `bodies` to `url`/studies."""

    def post(body: Path) -> None:
        subprocess.run(
            ["curl", "-sS", "--fail", "-o", "/dev/null", "-X", "POST",
             "-H", f'Content-Type: multipart/related; type="application/dicom"; boundary={BOUNDARY}',
             "-H", "Accept: application/dicom+json",
             # No "Expect: 100-continue": curl would wait a second per request for a 100 that Orthanc never sends.
             "-H", "Expect:",
             "--data-binary", f"@{body}", f"{url}/studies"],
            check=True,
        )

    groups = [bodies[i::clients] for i in range(clients)]
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda group: [post(body) for body in group], groups))
    return instances / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as work:
        files = ct_copies(Path(work) / "files", args.count)
        for clients in (1, 4):
            rates = []
            for run in range(args.runs):
                with our_server(Path(work) / f"data-{clients}-{run}") as ports:
                    rates.append(stow(f"http://127.0.0.1:{ports['http']}/dicom-web", files, args.batch, clients))
            rows.append(
                {
                    "workload": f"STOW-RS {args.count} x CT_small, batches of {args.batch}, {clients} client(s)",
                    "server": "ours (SQLite)",
                    "median instances/s": round(statistics.median(rates), 1),
                    "min": round(min(rates), 1),
                    "max": round(max(rates), 1),
                }
            )
    record("stow", rows)


if __name__ == "__main__":
    main()
