"""STOW-RS throughput: 500 small CT instances (CT_small.dcm, 39 KB) in batches of 50, 1 and 4 clients.

Run: `python bench/stow.py [--count 500] [--runs 3]`. Each run starts our server from empty.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pydicom
from dicomweb_client.api import DICOMwebClient

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
