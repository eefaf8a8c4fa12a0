"""How much server issue 15's goal leaves room for, through the quick suite's clients here, beside Orthanc and ours.

Run: `python bench/ceiling.py [--count 500] [--studies 20] [--runs 2]`.

The DIMSE rows of bench/sidebyside.py are measured through DCMTK's own tools (storescu, getscu, movescu, and a
`storescp --ignore` as the C-MOVE destination), and its WADO-RS rows through dicomweb-client (threads of this
process, which decode every instance with pydicom); all run on the same two cores as the server. Whatever a
server does, they spend their own CPU on every instance. So for each of those workloads this measures, servers
in turn on the same data:

- the rate of Orthanc, of ours, and of DCMTK's own minimal peer (`storescp --ignore` for C-STORE, which keeps
  nothing: no file, no index, no fsync; `dcmqrscp`, DCMTK's C++ Query/Retrieve SCP over its flat index file,
  one process forked per association, for C-GET and C-MOVE);
- the clients' CPU per instance (`getrusage` of this process's ended children, `/proc` for the long-running
  C-MOVE destination) and each server's (`/proc`, its process group and the children it reaped).

From those it states the server's **budget at the goal** (1.5x Orthanc's rate on the DIMSE rows, 1.2x on
WADO-RS): per instance, what is left of the time the goal allows once the clients have had the least CPU they
needed with any of the three servers (it depends a little on the server: the PDU sizes it sends, for one).
- One at a time, client and server take turns, so the budget is `1 / goal - clients' CPU` of the server's time
  (its CPU and its waits: fsync, round trips). Approximate: some of the clients' work overlaps the server's
  (movescu reads pending responses while the sub-operations go on), so a budget near zero means no room within
  what this measures, not a proof.
- Four DCMTK clients share the two cores with the server: `2 / goal - clients' CPU` of the server's CPU, and that
  only if the cores never idle.
- dicomweb-client's four threads, in this process, get one core's worth of its GIL at most: when they alone need
  more than that at the goal (`clients' cores at the goal` above 1), no server reaches it.
Every DCMTK process, Orthanc and dcmqrscp run with TCP_NODELAY=1. Prints and records
(bench/results/) one row per workload.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import orthanc
from bench.common import ct_copies, free_port, our_server, record, wait_for_port
from bench.cstore import send
from bench.retrieve import (
    DESTINATION,
    dcmtk_env,
    get_study,
    move_study,
    rate,
    storescp,
    study_sizes,
    wado_checked,
)

GOAL = 1.5  # issue 15: at least 1.5x Orthanc on every DIMSE row
WADO_GOAL = 1.2  # and 1.2x on WADO-RS study retrieve with dicomweb-client
DCMQR = "DCMQR"
DCMQR_MAX_PDU = 131072  # the most dcmqrscp takes



class Server(NamedTuple):
    dimse: int
    title: str  # its AE title
    pid: int
    http: int | None = None  # DICOMweb, when it has it


Peer = Callable[[Path, int], AbstractContextManager[Server]]  # (work, C-MOVE destination port) -> Server
Measure = Callable[[Server], float]  # -> instances/s


@dataclass
class Sample:
    rate: float  # instances/s
    clients: float  # the clients' CPU, ms per instance
    server: float  # the server's CPU, ms per instance


def children_cpu() -> float:
    """CPU seconds of this process's children that have ended and been waited for (the clients)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def process_cpu(pid: int) -> float:
    """CPU seconds of `pid`'s process group (or `pid` alone when it leads none), with the children each reaped."""
    found = subprocess.run(["pgrep", "-g", str(pid)], capture_output=True, text=True, check=False).stdout.split()
    return sum(_stat_cpu(int(member)) for member in found or [str(pid)])


def _stat_cpu(pid: int) -> float:
    """CPU seconds of one process and the children it reaped (proc(5): utime, stime, cutime, cstime)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:  # ended meanwhile
        return 0.0
    return sum(int(field) for field in fields[11:15]) / os.sysconf("SC_CLK_TCK")


@contextmanager
def ours(work: Path, destination: int) -> Iterator[Server]:
    env = {"AE_TITLE": "DICOMWEB", "DIMSE_REMOTE_AES": f"{DESTINATION}@127.0.0.1:{destination}"}
    with our_server(work, dimse=True, env=env) as ports:
        yield Server(ports["dimse"], "DICOMWEB", ports["pid"], ports["http"])


@contextmanager
def rival(work: Path, destination: int) -> Iterator[Server]:
    with orthanc.orthanc_server(work, peers={DESTINATION: destination}) as ports:
        yield Server(ports["dimse"], orthanc.AE_TITLE, ports["pid"], ports["http"])


@contextmanager
def dcmtk(command: list[str], port: int, title: str) -> Iterator[Server]:
    process = subprocess.Popen(command, env=dcmtk_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield Server(port, title, process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)


def null_receiver(work: Path, destination: int) -> AbstractContextManager[Server]:
    """storescp --ignore: the least a C-STORE SCP can do."""
    port = free_port()
    return dcmtk(["storescp", "--ignore", "-aet", "DICOMWEB", str(port)], port, "DICOMWEB")


def dcmqrscp(work: Path, destination: int) -> AbstractContextManager[Server]:
    """DCMTK's Query/Retrieve SCP with an empty storage area, the C-MOVE destination in its host table."""
    port = free_port()
    area = work / "area"
    area.mkdir(parents=True)
    config = work / "dcmqrscp.cfg"
    config.write_text(
        f"NetworkTCPPort = {port}\nMaxPDUSize = {DCMQR_MAX_PDU}\nMaxAssociations = 16\n"
        f"HostTable BEGIN\ndestination = ({DESTINATION}, 127.0.0.1, {destination})\nHostTable END\n"
        "VendorTable BEGIN\nVendorTable END\n"
        f"AETable BEGIN\n{DCMQR} {area} RW (500, 1024mb) ANY\nAETable END\n"
    )
    return dcmtk(["dcmqrscp", "-c", str(config)], port, DCMQR)


def storing(files: list[Path], associations: int) -> Measure:
    return lambda server: len(files) / send(server.dimse, files, associations, server.title)


def measured(measure: Measure, server: Server, destination: int, instances: int) -> Sample:
    """The rate of `measure`, and the clients' and the server's CPU per instance over it. The clients: the DCMTK
    tools run and ended, the C-MOVE destination (one process), and this process (dicomweb-client runs in it).
    The server's CPU is read outside the clients' window: the pgrep it takes would count as theirs."""

    def clients() -> float:
        return children_cpu() + _stat_cpu(destination) + time.process_time()

    serving = process_cpu(server.pid)
    before = clients()
    speed = measure(server)
    spent = clients() - before
    return Sample(speed, spent / instances * 1000, (process_cpu(server.pid) - serving) / instances * 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    if not orthanc.available():
        raise SystemExit("Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)")
    cores = len(os.sched_getaffinity(0))  # the cores this process (and the servers it starts) may use
    servers: list[tuple[str, Peer, Peer]] = [
        ("Orthanc", rival, rival),
        ("ours", ours, ours),
        ("DCMTK minimal peer", null_receiver, dcmqrscp),
    ]
    stores: dict[str, int] = {"C-STORE storescu, 1 association": 1, "C-STORE storescu, 4 associations": 4}
    samples: dict[tuple[str, str], list[Sample]] = {}

    def keep(workload: str, server: str, sample: Sample) -> None:
        samples.setdefault((workload, server), []).append(sample)
        print(f"{workload} on {server}: {sample.rate:.1f} instances/s; CPU per instance: clients "
              f"{sample.clients:.2f} ms, server {sample.server:.2f} ms", flush=True)

    with tempfile.TemporaryDirectory() as tmp, storescp(destination_port := free_port()):
        [destination] = [int(pid) for pid in subprocess.run(
            ["pgrep", "-f", f"storescp --ignore -aet {DESTINATION} {destination_port}"],
            capture_output=True, text=True, check=True).stdout.split()]
        work = Path(tmp)
        retrieve_files = ct_copies(work / "retrieve", args.count, studies=args.studies)
        studies = study_sizes(retrieve_files)
        retrieves: dict[str, Measure] = {}
        for n in (1, 4):
            many = f"{n} association{'s' if n > 1 else ''}"
            retrieves[f"C-GET getscu per study, {many}"] = lambda server, n=n: rate(
                studies, lambda uid: get_study(server.dimse, server.title, uid), n)
            retrieves[f"C-MOVE movescu per study to storescp, {many}"] = lambda server, n=n: rate(
                studies, lambda uid: move_study(server.dimse, server.title, uid), n)
        for n in (1, 4):
            retrieves[f"WADO-RS study retrieve, dicomweb-client, {n} client{'s' if n > 1 else ''}"] = (
                lambda server, n=n: rate(studies, wado_checked(f"http://127.0.0.1:{server.http}/dicom-web", studies), n))
        for run in range(args.runs):
            for name, store_peer, retrieve_peer in servers:
                for workload, associations in stores.items():
                    files = ct_copies(work / f"store-{run}-{name}-{associations}".replace(" ", "_"), args.count)
                    with store_peer(work / f"{name}-{workload}-{run}".replace(" ", "_"), destination_port) as server:
                        keep(workload, name, measured(storing(files, associations), server, destination, args.count))
                with retrieve_peer(work / f"{name}-retrieve-{run}".replace(" ", "_"), destination_port) as server:
                    # Over one association: dcmqrscp names its files after the clock, and the processes it forks
                    # for several associations at once collide on those names ("Index database error").
                    send(server.dimse, retrieve_files, 1, server.title)
                    for workload, retrieve in retrieves.items():
                        if server.http is not None or not workload.startswith("WADO"):
                            keep(workload, name, measured(retrieve, server, destination, args.count))
    rows: list[dict[str, object]] = []
    for workload in [*stores, *retrieves]:
        def median(name: str, field: str, workload: str = workload) -> float:
            return float(statistics.median(getattr(s, field) for s in samples[(workload, name)]))

        # The clients' CPU depends a little on the server (the PDU sizes it sends, for one): the least any of the
        # three needed is what a server could hope for.
        clients = min(median(name, "clients") for name, _, _ in servers if (workload, name) in samples)
        wado = workload.startswith("WADO")
        goal = (WADO_GOAL if wado else GOAL) * median("Orthanc", "rate")
        # Over one association, client and server take turns: the goal's time per instance is shared between
        # them. Four clients share the cores with the server; dicomweb-client's four threads, in this one
        # process, can use one core's worth of its GIL at most, and the server has what they leave.
        one_at_a_time = workload.endswith((" 1 association", " 1 client"))
        needed = clients * goal / 1000  # the clients' cores at the goal
        if one_at_a_time:
            budget = f"{1000 / goal - clients:.2f}"
        elif wado and needed > 1:
            budget = "none: dicomweb-client's threads alone need more than their one core"
        else:
            budget = f"{min(cores, 4) * 1000 / goal - clients:.2f}"
        rows.append({
            "workload": f"{workload} ({args.count} x CT_small)",
            "Orthanc": round(median("Orthanc", "rate"), 1),
            "ours": round(median("ours", "rate"), 1),
            "DCMTK minimal peer": "-" if wado else round(median("DCMTK minimal peer", "rate"), 1),
            "clients' CPU, least / with ours": f"{clients:.2f} / {median('ours', 'clients'):.2f}",
            "Orthanc's CPU": round(median("Orthanc", "server"), 2),
            "our CPU": round(median("ours", "server"), 2),
            "goal": f"{goal:.1f} ({WADO_GOAL if wado else GOAL}x Orthanc)",
            "clients' cores at the goal": round(needed, 2),
            "server budget at the goal": budget,
        })
    note = (
        f"medians of {args.runs} runs; rates in instances/s, CPU and budget in ms per instance; {cores} CPUs. Budget, "
        "from the least CPU the clients needed with any of the three: one at a time, the server's time per instance "
        "(CPU and waits) the goal leaves once the client has had its CPU (approximate: some client work overlaps "
        "the server's, such as movescu reading pending responses, so a value near zero means no room within the "
        f"measure, not a proof); four at a time, the server's CPU per instance that {min(cores, 4)} busy cores leave "
        "beside the clients', or none when dicomweb-client's threads alone need more than the one core their GIL "
        "gives them. /proc counts CPU in 10 ms ticks: 0.02 ms per instance at 500 instances"
    )
    print(note)
    record("ceiling", rows, note=note)


if __name__ == "__main__":
    main()
