"""STOW-RS and C-STORE throughput with 1, 2 and 3 archive processes over one MongoDB and one S3 bucket.

Run: `python bench/replicas.py [--count 240] [--clients 6] [--replicas 1 2 3]`.

The replica set-up of README "Scaling out" on one machine, without a balancer: for each run, SecantusDB (the
MongoDB wire server of the tests, in memory) and moto's S3 server are started afresh, then that many
`python -m app serve` processes (DIMSE on); `--replicas 1 2 3 1 2 3` alternates runs so machine drift shows. The same total number of clients is spread
round robin over the replicas, as a balancer would: STOW-RS (httpx, one instance per request, like a modality's
gateway) sends COUNT copies of CT_small.dcm (bench/common.py), then DCMTK storescu (TCP_NODELAY=1, INTEROP.md)
sends COUNT more over as many associations. Wall clock runs from the first request to the last answer. Checks
that the database holds every instance, then prints and records (bench/results/) instances per second.

Everything shares the machine's cores (the archives, SecantusDB, moto, the senders), and SecantusDB is 10 to 100
times slower than a real mongod (INTEROP.md): the figures show that replicas do not slow each other down, not
what a deployment on several machines with a real MongoDB and S3 would reach.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import boto3
import httpx
from pymongo import MongoClient

from app.api.multipart_writer import multipart_body
from bench.common import ct_copies, free_port, our_server, record, wait_for_port
from bench.cstore import send as storescu_send

AE_TITLE = "DICOMWEB"
STOW_TYPE = 'multipart/related; type="application/dicom"; boundary=bench-replicas'


@contextmanager
def background(command: list[str], port: int) -> Iterator[None]:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)


def tool(name: str) -> str:
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found: install the test extra (pip install -e '.[test]')")
    return found


def stow(bases: list[str], files: list[Path], clients: int) -> float:
    """Seconds to STOW `files` one per request from `clients` threads, client i talking to replica i mod N."""
    bodies = [multipart_body([({"Content-Type": "application/dicom"}, p.read_bytes())], "bench-replicas")
              for p in files]  # fmt: skip

    def send(i: int) -> None:
        with httpx.Client(base_url=bases[i % len(bases)], timeout=120) as client:
            for body in bodies[i::clients]:
                answer = client.post("/dicom-web/studies", content=body, headers={"Content-Type": STOW_TYPE})
                if answer.status_code != 200:
                    raise RuntimeError(f"STOW-RS {answer.status_code}: {answer.text[:300]}")

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(send, range(clients)))
    return time.perf_counter() - start


def cstore(ports: list[int], files: list[Path], associations: int) -> float:
    """Seconds to C-STORE `files` over `associations` storescu runs in all, each replica taking its share."""
    share = max(1, associations // len(ports))
    start = time.perf_counter()
    with ThreadPoolExecutor(len(ports)) as pool:
        list(pool.map(lambda n: storescu_send(ports[n], files[n :: len(ports)], share), range(len(ports))))
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=240)
    parser.add_argument("--clients", type=int, default=6, help="STOW-RS clients and C-STORE associations, in all")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 3], help="one run per value, in order")
    args = parser.parse_args()

    rows: list[dict[str, object]] = []
    failed = False
    with tempfile.TemporaryDirectory(prefix="bench-replicas-") as work:
        root = Path(work)
        for run, replicas in enumerate(args.replicas):
            held, timings = measure(root / f"run-{run}", replicas, args.count, args.clients)
            for door, seconds in timings:
                rows.append({"replicas": replicas, "door": door, "clients": args.clients, "instances": args.count,
                             "seconds": round(seconds, 2), "instances_per_s": round(args.count / seconds, 1)})  # fmt: skip
            if held != 2 * args.count:
                print(f"{replicas} replicas: the database holds {held} instances, expected {2 * args.count}",
                      file=sys.stderr)  # fmt: skip
                failed = True
    record("replicas", rows, note=f"{socket.gethostname()}: SecantusDB and moto on the same cores")
    return 1 if failed else 0


def measure(root: Path, replicas: int, count: int, clients: int) -> tuple[int, list[tuple[str, float]]]:
    """One run on fresh servers (SecantusDB slows down as it holds more, whatever the database): the instances
    held at the end, and the seconds STOW-RS and C-STORE took."""
    mongo_port, s3_port = free_port(), free_port()
    mongo_url, s3_url = f"mongodb://127.0.0.1:{mongo_port}", f"http://127.0.0.1:{s3_port}"
    with ExitStack() as servers:
        servers.enter_context(background(
            [tool("secantusd-py"), "--host", "127.0.0.1", "--port", str(mongo_port), "--storage-path", ":memory:"],
            mongo_port))  # fmt: skip
        servers.enter_context(background([tool("moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)], s3_port))
        boto3.client("s3", endpoint_url=s3_url, aws_access_key_id="bench", aws_secret_access_key="bench",
                     region_name="us-east-1").create_bucket(Bucket="bench")  # fmt: skip
        env = {"AE_TITLE": AE_TITLE, "MONGO_URL": mongo_url, "MONGO_DATABASE": "bench", "STORAGE_BACKEND": "s3",
               "S3_BUCKET": "bench", "S3_ENDPOINT_URL": s3_url, "S3_ACCESS_KEY_ID": "bench",
               "S3_SECRET_ACCESS_KEY": "bench", "S3_REGION": "us-east-1", "STARTUP_SWEEP": "false"}  # fmt: skip
        stow_files, cstore_files = ct_copies(root / "stow", count), ct_copies(root / "cstore", count)
        with ExitStack() as archives:
            started = [archives.enter_context(our_server(root / f"data-{n}", dimse=True, env=env))
                       for n in range(replicas)]  # fmt: skip
            timings = [
                ("STOW-RS", stow([f"http://127.0.0.1:{ports['http']}" for ports in started], stow_files, clients)),
                ("C-STORE", cstore([ports["dimse"] for ports in started], cstore_files, clients)),
            ]
        with MongoClient(mongo_url) as client:
            held = client["bench"]["instances"].count_documents({})
    return held, timings


if __name__ == "__main__":
    sys.exit(main())
