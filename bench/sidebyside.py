"""The quick suite, side by side with Orthanc 1.10 on the same data: STOW-RS, C-STORE, C-GET, C-MOVE, QIDO-RS
and WADO-RS.

Run: `python bench/sidebyside.py [--count 500] [--runs 2]`. Each write workload starts each server from empty:
STOW-RS with dicomweb-client and with curl posting pre-encoded bodies (bench/stow.py), C-STORE with storescu;
then each server is started from empty once more per run, given the read set of bench/reads.py over STOW-RS
(COUNT instances over COUNT/5 studies, plus one 600-instance series) and measured: QIDO-RS by PatientID, by
wildcard name and by date range + modality (4 clients; req/s, p50, p99), WADO-RS study retrieve (instances/s),
series metadata of the 600-instance series (warm p50) and one frame (warm p50). Retrieve workloads
(bench/retrieve.py), on one more server per run given the COUNT write instances over C-STORE in 20 studies:
C-GET with getscu and C-MOVE with movescu to a DCMTK storescp, one study per association, 1 and 4 at a time,
and WADO-RS study retrieve with dicomweb-client, 1 and 4 clients. Runs alternate (ours, Orthanc,
ours, Orthanc...) so machine drift cancels. Prints medians, min/max and the ratio ours/Orthanc as a speed-up
(rates: ours/Orthanc; latencies: Orthanc/ours, so above 1 always means ours is faster) with the load average,
and records them in bench/results/. Without Orthanc installed (Debian: orthanc, orthanc-dicomweb) only our
figures are given.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import orthanc, reads, retrieve
from bench.common import ct_copies, free_port, our_server, record
from bench.cstore import send
from bench.stow import encode_bodies, stow, stow_raw

Server = Callable[[Path], AbstractContextManager[dict[str, int]]]


def servers() -> Iterator[tuple[str, Server, str]]:
    yield "ours", lambda work: our_server(work, dimse=True, env={"AE_TITLE": "DICOMWEB"}), "DICOMWEB"
    if orthanc.available():
        yield "Orthanc 1.10", lambda work: orthanc.orthanc_server(work), orthanc.AE_TITLE


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--series-size", type=int, default=600)
    parser.add_argument("--qido-seconds", type=float, default=4.0)
    parser.add_argument("--no-reads", action="store_true", help="STOW-RS and C-STORE only")
    parser.add_argument("--studies", type=int, default=20, help="studies of the C-GET/C-MOVE/WADO-RS set")
    args = parser.parse_args()
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp, retrieve.storescp(destination := free_port()):
        work = Path(tmp)
        files = ct_copies(work / "files", args.count)
        retrieve_files = ct_copies(work / "retrieve", args.count, studies=args.studies)
        studies = retrieve.study_sizes(retrieve_files)
        bodies = encode_bodies(files, 50, work / "bodies")
        read_set = None if args.no_reads else reads.make_read_set(work / "reads", args.count, args.series_size)
        workloads: dict[str, Callable[[dict[str, int], str], float]] = {
            "STOW-RS, batches of 50, 1 client": lambda p, aet: stow(_dicomweb(p), files, 50, 1),
            "STOW-RS, batches of 50, 4 clients": lambda p, aet: stow(_dicomweb(p), files, 50, 4),
            "STOW-RS, pre-encoded batches of 50, curl, 1 client": lambda p, aet: stow_raw(
                _dicomweb(p), bodies, 1, len(files)),
            "STOW-RS, pre-encoded batches of 50, curl, 4 clients": lambda p, aet: stow_raw(
                _dicomweb(p), bodies, 4, len(files)),
            "C-STORE storescu, 1 association": lambda p, aet: len(files) / send(p["dimse"], files, 1, aet),
            "C-STORE storescu, 4 associations": lambda p, aet: len(files) / send(p["dimse"], files, 4, aet),
        }
        rates: dict[tuple[str, str], list[float]] = {}
        order: list[str] = []
        for run in range(args.runs):
            for name, start, aet in servers():
                for workload, measure in workloads.items():
                    with start(work / f"{name}-{workload}-{run}".replace(" ", "_")) as ports:
                        rate = measure(ports, aet)
                    _keep(rates, order, f"{workload} ({args.count} x CT_small), instances/s", name, rate)
                    print(f"run {run + 1}: {workload} on {name}: {rate:.1f} instances/s", flush=True)
                    loads.append(os.getloadavg()[0])
                with retrieve.loaded(name, work / f"{name}-retrieve-{run}".replace(" ", "_"), retrieve_files,
                                     destination) as (ports, title):
                    for workload, measure in retrieve.workloads(ports, title).items():
                        rate = measure(studies)
                        _keep(rates, order, f"{workload} ({args.count} x CT_small, {args.studies} studies), "
                              "instances/s", name, rate)
                        print(f"run {run + 1}: {workload} on {name}: {rate:.1f} instances/s", flush=True)
                loads.append(os.getloadavg()[0])
                if read_set is not None:
                    with start(work / f"{name}-reads-{run}".replace(" ", "_")) as ports:
                        reads.load(_dicomweb(ports), read_set)
                        figures = reads.measure_reads(_dicomweb(ports), read_set, seconds=args.qido_seconds)
                    for measure_name, value in figures.items():
                        _keep(rates, order, measure_name, name, value)
                    print(f"run {run + 1}: reads on {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in figures.items()),
                          flush=True)
                    loads.append(os.getloadavg()[0])
        rows: list[dict[str, object]] = []
        for measure_name in order:
            lower_is_better = measure_name.endswith(" ms")
            ours_values = rates[(measure_name, "ours")]
            ours = statistics.median(ours_values)
            rival = rates.get((measure_name, "Orthanc 1.10"))
            ratio = "-"
            if rival:
                theirs = statistics.median(rival)
                ratio = str(round(theirs / ours if lower_is_better else ours / theirs, 2))
            rows.append(
                {
                    "workload": measure_name,
                    "ours median": round(ours, 1),
                    "ours min-max": _span(ours_values),
                    "Orthanc median": round(statistics.median(rival), 1) if rival else "-",
                    "Orthanc min-max": _span(rival) if rival else "-",
                    "speed-up": ratio,
                }
            )
    note = (f"load average (1 min) during the runs: min {min(loads):.2f}, median {statistics.median(loads):.2f}, "
            f"max {max(loads):.2f}; {os.cpu_count()} CPUs; speed-up above 1: ours faster "
            "(rates ours/Orthanc, latencies Orthanc/ours)")
    print(note)
    record("sidebyside", rows, note=note)


def _keep(rates: dict[tuple[str, str], list[float]], order: list[str], measure: str, server: str,
          value: float) -> None:
    if measure not in order:
        order.append(measure)
    rates.setdefault((measure, server), []).append(value)


def _dicomweb(ports: dict[str, int]) -> str:
    return f"http://127.0.0.1:{ports['http']}/dicom-web"


def _span(values: list[float]) -> str:
    digits = 1 if max(values) < 100 else 0
    return f"{min(values):.{digits}f}-{max(values):.{digits}f}"


if __name__ == "__main__":
    main()
