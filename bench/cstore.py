"""C-STORE throughput of the DIMSE door: DCMTK storescu sending CT_small.dcm copies, 1 then 4 associations.

Run: `python bench/cstore.py [--count 500] [--no-fsync] [--max-pdu N]`.

Writes 2 x COUNT copies of pydicom's CT_small.dcm (39 KB) with new UIDs (bench/common.py), so the second phase
stores new instances rather than replacing the first's; starts our server from an empty data directory
(`python -m app serve`, SQLite, DIMSE on, default settings unless told otherwise); sends the first set over one
storescu association, then the second split over four concurrent storescu associations. TCP_NODELAY=1 is set
for storescu (INTEROP.md: without it each C-STORE waits on Nagle's algorithm). Wall clock runs from starting
the senders to the last one exiting, so association set-up is included. Checks that the index holds every
instance, then prints and records (bench/results/) instances per second.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ct_copies, our_server, record

AE_TITLE = "DICOMWEB"


def storescu(port: int, files: Sequence[Path], called_ae: str = AE_TITLE) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TCP_NODELAY": "1"}
    command = ["storescu", "-aet", "BENCH", "-aec", called_ae, "127.0.0.1", str(port), *map(str, files)]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def send(port: int, files: Sequence[Path], associations: int, called_ae: str = AE_TITLE) -> float:
    """Seconds to send `files` over `associations` concurrent storescu runs (files split evenly)."""
    groups = [files[i::associations] for i in range(associations)]
    start = time.perf_counter()
    senders = [storescu(port, group, called_ae) for group in groups]
    for sender in senders:
        _, err = sender.communicate(timeout=900)
        if sender.returncode != 0:
            message = err.decode(errors="replace")[-2000:]
            raise RuntimeError(f"storescu failed ({sender.returncode}): {message}")
    return time.perf_counter() - start


def count_instances(data_dir: Path) -> int:
    db = sqlite3.connect(f"file:{data_dir / 'index.sqlite3'}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT COUNT(*) FROM instances").fetchone()[0])
    finally:
        db.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--no-fsync", action="store_true", help="STORAGE_FSYNC=false")
    parser.add_argument("--max-pdu", type=int, help="DIMSE_MAX_PDU (default: the server's setting)")
    args = parser.parse_args()

    env = {"AE_TITLE": AE_TITLE}
    if args.no_fsync:
        env["STORAGE_FSYNC"] = "false"
    if args.max_pdu is not None:
        env["DIMSE_MAX_PDU"] = str(args.max_pdu)
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="bench-cstore-") as work:
        root = Path(work)
        single = ct_copies(root / "single", args.count)
        parallel = ct_copies(root / "parallel", args.count)
        data_dir = root / "data"
        with our_server(data_dir, dimse=True, env=env) as ports:
            for files, associations in ((single, 1), (parallel, 4)):
                seconds = send(ports["dimse"], files, associations)
                rows.append(
                    {
                        "associations": associations,
                        "instances": len(files),
                        "seconds": round(seconds, 2),
                        "instances_per_s": round(len(files) / seconds, 1),
                        "fsync": not args.no_fsync,
                    }
                )
            held = count_instances(data_dir)
    record("cstore", rows)
    if held != 2 * args.count:
        print(f"the index holds {held} instances, expected {2 * args.count}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
