"""Retrieve throughput of both doors: C-GET (getscu), C-MOVE (movescu to a DCMTK storescp) and WADO-RS study
retrieve (dicomweb-client), one study per request, over 1 association (or client) and 4 in parallel.

Run: `python bench/retrieve.py [--count 500] [--studies 20] [--runs 2] [--ours-only]`.

The data are COUNT copies of pydicom's CT_small.dcm (39 KB) with new UIDs over STUDIES studies, stored into each
server over C-STORE (storescu, 4 associations) before anything is measured. Each figure is COUNT divided by the
wall-clock time of retrieving every study once: one study per getscu / movescu run (each its own association, so
association set-up is included, as a workstation pulling priors pays it), the studies taken in turn by 1 or by
4 concurrent senders. getscu receives with `--ignore` (acknowledged, not written); C-MOVE sends to a DCMTK
`storescp --ignore` that both servers know as STORESCP. Every DCMTK tool runs with TCP_NODELAY=1, and so does
Orthanc (bench/orthanc.py). Each run checks from the tools' final responses that every instance was sent.

Used by bench/sidebyside.py; alone it prints and records (bench/results/) the same rows.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import orthanc
from bench.common import ct_copies, free_port, our_server, record, wait_for_port
from bench.cstore import send

DESTINATION = "STORESCP"
CALLING = "BENCH"
# The last response getscu / movescu -v report (a C-GET's pending ones too); Success (0x0000) means every sub-operation completed (PS3.4
# C.4.2.1.5), a warning or failure means some did not.
_FINAL = re.compile(r"Received (?:Final Move|C-GET) Response \((\w+)\)")


def dcmtk_env() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}


@contextmanager
def storescp(port: int) -> Iterator[None]:
    """DCMTK's storescp as the C-MOVE destination: acknowledges every instance, writes none."""
    process = subprocess.Popen(
        ["storescp", "--ignore", "-aet", DESTINATION, str(port)],
        env=dcmtk_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)


def _run(command: list[str]) -> None:
    """Run a DCMTK SCU; raise unless its final response is Success."""
    done = subprocess.run(command, env=dcmtk_env(), capture_output=True, text=True, timeout=600, check=False)
    output = done.stdout + done.stderr
    if done.returncode != 0 or _FINAL.findall(output)[-1:] != ["Success"]:
        raise RuntimeError(f"{command[0]} failed ({done.returncode}): {output[-2000:]}")


def get_study(port: int, called: str, study: str) -> None:
    _run(["getscu", "-v", "-aet", CALLING, "-aec", called, "-S", "--ignore",
                 "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}", "127.0.0.1", str(port)])


def move_study(port: int, called: str, study: str) -> None:
    _run(["movescu", "-v", "-aet", CALLING, "-aec", called, "-aem", DESTINATION, "-S",
                 "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}", "127.0.0.1", str(port)])


def rate(studies: dict[str, int], one: Callable[[str], object], parallel: int) -> float:
    """Instances per second to retrieve every study once (`studies`: UID -> instances), `parallel` at a time."""
    start = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(one, studies))
    return sum(studies.values()) / (time.perf_counter() - start)


def wado_checked(base_url: str, studies: dict[str, int]) -> Callable[[str], None]:
    def one(study: str) -> None:
        from dicomweb_client.api import DICOMwebClient

        got = len(DICOMwebClient(url=base_url).retrieve_study(study))
        if got != studies[study]:
            raise RuntimeError(f"WADO-RS gave {got} instances of study {study}, expected {studies[study]}")

    return one


def workloads(ports: dict[str, int], called: str) -> dict[str, Callable[[dict[str, int]], float]]:
    """Name -> measure(studies) for one loaded server."""
    dimse, base = ports["dimse"], f"http://127.0.0.1:{ports['http']}/dicom-web"
    found: dict[str, Callable[[dict[str, int]], float]] = {}
    for parallel in (1, 4):
        many = "1 association" if parallel == 1 else f"{parallel} associations"
        found[f"C-GET getscu per study, {many}"] = lambda s, n=parallel: rate(
            s, lambda uid: get_study(dimse, called, uid), n)
        found[f"C-MOVE movescu per study to storescp, {many}"] = lambda s, n=parallel: rate(
            s, lambda uid: move_study(dimse, called, uid), n)
    for parallel in (1, 4):
        clients = "1 client" if parallel == 1 else f"{parallel} clients"
        found[f"WADO-RS study retrieve, dicomweb-client, {clients}"] = lambda s, n=parallel: rate(
            s, wado_checked(base, s), n)
    return found


@contextmanager
def loaded(name: str, work: Path, files: Sequence[Path], destination_port: int) -> Iterator[tuple[dict[str, int], str]]:
    """The server `name` from empty, with `files` stored over C-STORE; yields its ports and AE title."""
    if name == "ours":
        env = {"AE_TITLE": "DICOMWEB", "DIMSE_REMOTE_AES": f"{DESTINATION}@127.0.0.1:{destination_port}"}
        server, title = our_server(work, dimse=True, env=env), "DICOMWEB"
    else:
        server, title = orthanc.orthanc_server(work, peers={DESTINATION: destination_port}), orthanc.AE_TITLE
    with server as ports:
        send(ports["dimse"], files, 4, title)
        yield ports, title


def servers(ours_only: bool) -> list[str]:
    return ["ours"] if ours_only or not orthanc.available() else ["ours", "Orthanc 1.10"]


def study_sizes(files: Sequence[Path]) -> dict[str, int]:
    """Study Instance UID -> number of instances."""
    sizes: dict[str, int] = {}
    for path in files:
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
        sizes[uid] = sizes.get(uid, 0) + 1
    return dict(sorted(sizes.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--ours-only", action="store_true")
    args = parser.parse_args()
    figures: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-retrieve-") as tmp:
        work = Path(tmp)
        files = ct_copies(work / "files", args.count, studies=args.studies)
        studies = study_sizes(files)
        destination_port = free_port()
        with storescp(destination_port):
            for run in range(args.runs):
                for name in servers(args.ours_only):
                    with loaded(name, work / f"{name}-{run}".replace(" ", "_"), files, destination_port) as (ports, title):
                        for workload, measure in workloads(ports, title).items():
                            value = measure(studies)
                            figures.setdefault((workload, name), []).append(value)
                            print(f"run {run + 1}: {workload} on {name}: {value:.1f} instances/s", flush=True)
    rows = []
    for (workload, name), values in figures.items():
        rows.append({"workload": f"{workload} ({args.count} x CT_small), instances/s", "server": name,
                     "median": round(statistics.median(values), 1), "runs": len(values)})
    record("retrieve", rows)


if __name__ == "__main__":
    main()
