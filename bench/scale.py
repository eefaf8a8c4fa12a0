"""The scale suite (ours only): QIDO-RS latency and STOW-RS rate as the archive grows to 10k, 100k and 1M instances.

Run: `python bench/scale.py [--sizes 10000 100000 1000000] [--seconds 5] [--stow 500]`.

One SQLite archive grows step by step: instance records (bench/qido.py's `records`: 4 instances per study in 2
series, a patient per 2 studies, made-up names, dates over 2010-2024) are loaded through the repository's own unit
of work, 2000 instances per transaction (`add` in app/repository/sqlite/unit_of_work.py, the code every store
runs; no files are written, the records name files that do not exist, which QIDO never reads; the start-up sweep
is turned off so that it does not remove them). At each size our server starts on
that archive (`python -m app serve`, default settings, fsync on) and is measured:
- QIDO-RS by PatientID, by wildcard name (`limit=50`), by a 10-day date range + ModalitiesInStudy=CT
  (`limit=50`) and by ModalitiesInStudy=CT alone (`limit=50`): p50/p99 with 1 client (latency), req/s with
  4 clients (throughput);
- STOW-RS: `--stow` fresh CT_small copies (dicomweb-client, batches of 50, 1 client), instances/s, compared with
  the same on the empty archive measured first (goal: >= 80% of it at 1M).
Figures go to bench/results/ as each size completes, so a long run interrupted still leaves what it measured.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.repository.sqlite import unit_of_work
from app.repository.sqlite.repository import SQLiteRepository
from bench.common import ct_copies, our_server, record
from bench.qido import BATCH, INSTANCES_PER_STUDY, STUDIES_PER_PATIENT, measure, records, surnames
from bench.stow import stow


async def grow(path: Path, start: int, stop: int) -> float:
    """Add records start..stop-1 to the archive at `path`, BATCH per transaction; seconds taken."""
    repository = SQLiteRepository(path)
    await repository.open()
    began = time.perf_counter()

    def store(conn: object, items: list[object]) -> None:
        for item in items:
            unit_of_work.add(conn, item)  # type: ignore[arg-type]

    source = itertools.islice(records(stop), start, None)
    while batch := list(itertools.islice(source, BATCH)):
        await repository._write(lambda conn, items=batch: store(conn, items))  # type: ignore[misc]
    elapsed = time.perf_counter() - began
    await repository.close()
    return elapsed


def queries(size: int) -> dict[str, Callable[[random.Random], dict[str, str]]]:
    names = surnames(random.Random(7))
    patients = max(1, size // INSTANCES_PER_STUDY // STUDIES_PER_PATIENT)

    def date_range(rng: random.Random) -> dict[str, str]:
        year, month = rng.randrange(2010, 2025), rng.randrange(1, 13)
        day = rng.randrange(1, 19)
        return {"StudyDate": f"{year}{month:02d}{day:02d}-{year}{month:02d}{day + 9:02d}",
                "ModalitiesInStudy": "CT", "limit": "50"}

    return {
        "PatientID=<one patient>": lambda rng: {"PatientID": f"PID{rng.randrange(patients):07d}"},
        "PatientName=<3 letters>*&limit=50": lambda rng: {"PatientName": rng.choice(names)[:3] + "*", "limit": "50"},
        "StudyDate=<10 days>&ModalitiesInStudy=CT&limit=50": date_range,
        "ModalitiesInStudy=CT&limit=50": lambda rng: {"ModalitiesInStudy": "CT", "limit": "50"},
    }


def measure_size(data_dir: Path, size: int, stow_files: list[Path], seconds: float) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    # STARTUP_SWEEP off: the records name files that were never written, which the sweep would remove.
    with our_server(data_dir, env={"STARTUP_SWEEP": "false"}) as ports:
        base = f"http://127.0.0.1:{ports['http']}/dicom-web"
        if size:
            for label, make in queries(size).items():
                single = asyncio.run(measure(base, make, 1, seconds))
                several = asyncio.run(measure(base, make, 4, seconds))
                rows.append({"instances": size, "measure": f"QIDO {label}", "p50 ms (1 client)": single["p50 ms"],
                             "p99 ms (1 client)": single["p99 ms"], "req/s (4 clients)": several["req/s"],
                             "mean results": several["mean results"], "load": round(os.getloadavg()[0], 2)})
                print(rows[-1], flush=True)
        rate = stow(base, stow_files, 50, 1)
        rows.append({"instances": size, "measure": f"STOW-RS {len(stow_files)} x CT_small, batches of 50, 1 client",
                     "p50 ms (1 client)": "-", "p99 ms (1 client)": "-", "req/s (4 clients)": "-",
                     "mean results": "-", "instances/s": round(rate, 1), "load": round(os.getloadavg()[0], 2)})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--stow", type=int, default=500)
    args = parser.parse_args()
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as folder:
        work = Path(folder)
        data_dir = work / "data"
        data_dir.mkdir()
        empty = measure_size(data_dir, 0, ct_copies(work / "stow-0", args.stow), args.seconds)
        empty_rate = float(empty[-1]["instances/s"])  # type: ignore[arg-type]
        rows += empty
        held = 0
        previous: Path | None = None
        for size in sorted(args.sizes):
            seconds = asyncio.run(grow(data_dir / "index.sqlite3", held, size))
            print(f"grew the archive from {held} to {size} instances in {seconds:.0f} s "
                  f"({(size - held) / seconds:,.0f} records/s)", flush=True)
            held = size
            measured = measure_size(data_dir, size, ct_copies(work / f"stow-{size}", args.stow), args.seconds)
            for row in measured:
                if "instances/s" in row:
                    row["% of empty"] = round(100 * float(row["instances/s"]) / empty_rate)  # type: ignore[arg-type]
            rows += measured
            # Written after each size so that an interrupted run keeps what it measured; the previous (partial)
            # files of this run are then removed, leaving one pair per run.
            written = record("scale", _uniform(rows), note=f"{os.cpu_count()} CPUs")
            if previous is not None and previous != written:
                for suffix in (".jsonl", ".md"):
                    previous.with_suffix(suffix).unlink(missing_ok=True)
            previous = written


def _uniform(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    return [{c: row.get(c, "-") for c in columns} for row in rows]


if __name__ == "__main__":
    main()
