"""Workflow figures: UPS-RS Create Workitem rate, and Modality Worklist C-FIND latency with N scheduled steps.

Run: `python bench/workflow.py [--steps 10000] [--clients 4] [--queries 30]`.

Starts our server from an empty data directory (`python -m app serve`, SQLite, DIMSE on), creates `--steps`
workitems over UPS-RS (httpx, `--clients` concurrent clients, each POST one workitem, as a RIS feeds it) spread
over 10 scheduled stations and 30 days, then times DCMTK `findscu -W` (TCP_NODELAY=1, a new association per
query, as a modality asks) for three worklist queries a modality makes: its station for one day, its station
and a patient-name prefix, and one day for every station. Each query is run `--queries` times; p50 and p90 of
the whole findscu run (process start, association, C-FIND, release) are recorded, with the matches it returned.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import our_server, record

AE_TITLE = "DICOMWEB"
STATIONS = 10
DAYS = 30


def workitem(i: int) -> dict[str, Any]:
    station = f"CT{i % STATIONS}"
    day = 1 + (i // STATIONS) % DAYS
    code = {"00080100": {"vr": "SH", "Value": [station]}, "00080102": {"vr": "SH", "Value": ["99LOCAL"]},
            "00080104": {"vr": "LO", "Value": [f"{station} room"]}}  # fmt: skip
    modality = {"00080100": {"vr": "SH", "Value": ["CT"]}, "00080102": {"vr": "SH", "Value": ["DCM"]},
                "00080104": {"vr": "LO", "Value": ["Computed Tomography"]}}  # fmt: skip
    return {
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": f"PATIENT{i % 997:03d}^BENCH"}]},
        "00100020": {"vr": "LO", "Value": [f"P{i:06d}"]},
        "00741000": {"vr": "CS", "Value": ["SCHEDULED"]},
        "00741200": {"vr": "CS", "Value": ["MEDIUM"]},
        "00741204": {"vr": "LO", "Value": ["CT chest"]},
        "00404005": {"vr": "DT", "Value": [f"202612{day:02d}{8 + i % 10:02d}0000"]},
        "00404041": {"vr": "CS", "Value": ["READY"]},
        "00404025": {"vr": "SQ", "Value": [code]},
        "00404026": {"vr": "SQ", "Value": [modality]},
        "0040A370": {"vr": "SQ", "Value": [{"00080050": {"vr": "SH", "Value": [f"A{i:07d}"]}}]},
    }


def create_all(base: str, steps: int, clients: int) -> float:
    """Seconds to create `steps` workitems with `clients` concurrent clients."""
    errors: list[str] = []

    def work(part: range) -> None:
        with httpx.Client(base_url=base, timeout=60) as client:
            for i in part:
                response = client.post(
                    "/workitems", json=workitem(i), headers={"Content-Type": "application/dicom+json"}
                )
                if response.status_code != 201:
                    errors.append(f"{response.status_code} {response.text[:200]}")

    threads = [threading.Thread(target=work, args=(range(k, steps, clients),)) for k in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"{len(errors)} creates failed, e.g. {errors[0]}")
    return time.perf_counter() - start


def findscu(port: int, keys: list[str]) -> tuple[float, int]:
    """(seconds, matches) of one `findscu -W` run asking for the worklist with `keys`."""
    command = ["findscu", "-W", "-aet", "BENCH", "-aec", AE_TITLE, "127.0.0.1", str(port),
               "-k", "ScheduledProcedureStepSequence[0].ScheduledStationAETitle",
               "-k", "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate",
               "-k", "PatientName", "-k", "PatientID", "-k", "AccessionNumber", *keys]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, env={**os.environ, "TCP_NODELAY": "1"}, capture_output=True, timeout=120)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(done.stderr.decode(errors="replace")[-2000:])
    matches = done.stderr.decode(errors="replace").count("Find Response:") - 1  # the last is the final success
    return seconds, matches


QUERIES = {
    "station CT3, one day": ["-k", "ScheduledProcedureStepSequence[0].ScheduledStationAETitle=CT3",
                             "-k", "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20261207"],
    "station CT3, PatientName=PATIENT01*": ["-k", "ScheduledProcedureStepSequence[0].ScheduledStationAETitle=CT3",
                                            "-k", "PatientName=PATIENT01*"],
    "one day, every station": ["-k", "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20261207"],
}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--queries", type=int, default=30)
    args = parser.parse_args()
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="bench-workflow-") as work, our_server(
        Path(work) / "data", dimse=True, env={"AE_TITLE": AE_TITLE}
    ) as ports:
        base = f"http://127.0.0.1:{ports['http']}/dicom-web"
        seconds = create_all(base, args.steps, args.clients)
        rows.append({"workload": f"UPS-RS Create Workitem, {args.clients} clients", "scheduled": args.steps,
                     "result": f"{args.steps / seconds:.1f} workitems/s", "matches": ""})  # fmt: skip
        for name, keys in QUERIES.items():
            findscu(ports["dimse"], keys)  # warm
            runs = [findscu(ports["dimse"], keys) for _ in range(args.queries)]
            times = sorted(s * 1000 for s, _ in runs)
            rows.append({
                "workload": f"findscu -W: {name}", "scheduled": args.steps,
                "result": f"p50 {statistics.median(times):.1f} ms, p90 {times[int(len(times) * 0.9) - 1]:.1f} ms",
                "matches": runs[0][1],
            })  # fmt: skip
    record("workflow", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
