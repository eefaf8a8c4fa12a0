"""The quick suite, side by side with Orthanc 1.10 on the same data: STOW-RS and C-STORE throughput.

Run: `python bench/sidebyside.py [--count 500] [--runs 2]`. Each run starts each server from empty; runs
alternate (ours, Orthanc, ours, Orthanc...) so machine drift cancels. Prints medians, min/max and the ratio
ours/Orthanc, and records them in bench/results/. Without Orthanc installed (Debian: orthanc, orthanc-dicomweb)
only our figures are given.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import orthanc
from bench.common import ct_copies, our_server, record
from bench.cstore import send
from bench.stow import stow

Server = Callable[[Path], AbstractContextManager[dict[str, int]]]


def servers() -> Iterator[tuple[str, Server, str]]:
    yield "ours", lambda work: our_server(work, dimse=True, env={"AE_TITLE": "DICOMWEB"}), "DICOMWEB"
    if orthanc.available():
        yield "Orthanc 1.10", orthanc.orthanc_server, orthanc.AE_TITLE


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        files = ct_copies(work / "files", args.count)
        workloads: dict[str, Callable[[dict[str, int], str], float]] = {
            "STOW-RS, batches of 50, 1 client": lambda p, aet: stow(_dicomweb(p), files, 50, 1),
            "STOW-RS, batches of 50, 4 clients": lambda p, aet: stow(_dicomweb(p), files, 50, 4),
            "C-STORE storescu, 1 association": lambda p, aet: len(files) / send(p["dimse"], files, 1, aet),
            "C-STORE storescu, 4 associations": lambda p, aet: len(files) / send(p["dimse"], files, 4, aet),
        }
        rates: dict[tuple[str, str], list[float]] = {}
        for run in range(args.runs):
            for name, start, aet in servers():
                for workload, measure in workloads.items():
                    with start(work / f"{name}-{workload}-{run}".replace(" ", "_")) as ports:
                        rate = measure(ports, aet)
                    rates.setdefault((workload, name), []).append(rate)
                    print(f"run {run + 1}: {workload} on {name}: {rate:.1f} instances/s", flush=True)
        rows: list[dict[str, object]] = []
        for workload in workloads:
            ours = statistics.median(rates[(workload, "ours")])
            rival = rates.get((workload, "Orthanc 1.10"))
            rows.append(
                {
                    "workload": f"{workload} ({args.count} x CT_small)",
                    "ours median/s": round(ours, 1),
                    "ours min-max": _span(rates[(workload, "ours")]),
                    "Orthanc median/s": round(statistics.median(rival), 1) if rival else "-",
                    "Orthanc min-max": _span(rival) if rival else "-",
                    "ratio": round(ours / statistics.median(rival), 2) if rival else "-",
                }
            )
    record("sidebyside", rows)


def _dicomweb(ports: dict[str, int]) -> str:
    return f"http://127.0.0.1:{ports['http']}/dicom-web"


def _span(values: list[float]) -> str:
    return f"{min(values):.0f}-{max(values):.0f}"


if __name__ == "__main__":
    main()
