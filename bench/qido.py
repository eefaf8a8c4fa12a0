"""QIDO-RS throughput and latency at 10k and 100k instances (SQLite): a PatientID query, a wildcard name query.

Run: `python bench/qido.py [--sizes 10000 100000] [--clients 4] [--seconds 10]`.

For each size a fresh SQLite archive is filled through the repository's own unit of work (`add` in
app/repository/sqlite/unit_of_work.py, the code every store runs, batched 2000 instances per transaction so 100k
load in well under a minute) with records made from CT_small.dcm: 4 instances per study in 2 series, a patient per
2 studies, names drawn from a pool of made-up surnames and given names so that a 3-letter prefix matches a
realistic fraction. Then the server runs as its own process (uvicorn, access log off, so the clients do not share
its interpreter) and `--clients` concurrent httpx clients send each query for `--seconds` seconds. Figures:
requests/s, p50 and p99 latency, and the mean number of results per answer.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
from pydicom.data import get_testdata_file

from app.core.dicom.values import name_words
from app.core.ingest.header import build_record, read_header
from app.core.records import InstanceRecord, LevelRecord
from app.repository.sqlite import unit_of_work
from app.repository.sqlite.repository import SQLiteRepository
from bench.common import ROOT, free_port, record, wait_for_port

SYLLABLES = ["AN", "BER", "CAR", "DO", "EL", "FI", "GRA", "HOL", "IN", "JO", "KAR", "LE", "MA", "NOR", "OS",
             "PER", "QUI", "RO", "SAN", "TER", "UL", "VAN", "WIL", "XE", "YO", "ZIM"]
GIVEN = ["ANNA", "BEN", "CLARA", "DAVID", "EVA", "FELIX", "GRETA", "HUGO", "IDA", "JONAS", "KARL", "LENA"]
INSTANCES_PER_STUDY = 4
SERIES_PER_STUDY = 2
STUDIES_PER_PATIENT = 2
BATCH = 2000


def surnames(rng: random.Random, count: int = 3000) -> list[str]:
    return sorted({"".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))) for _ in range(count)})


def records(count: int, seed: int = 7) -> Iterator[InstanceRecord]:
    """`count` instance records cloned from CT_small's, with their own UIDs, patients, names and dates."""
    rng = random.Random(seed)
    names = surnames(rng)
    header = read_header(str(get_testdata_file("CT_small.dcm")))
    template = build_record(header.dataset, pixel_data_present=header.pixel_data_present)
    root = f"1.2.826.0.1.3680043.10.{rng.randint(1, 10**6)}"
    for i in range(count):
        study = i // INSTANCES_PER_STUDY
        series = (i % INSTANCES_PER_STUDY) * SERIES_PER_STUDY // INSTANCES_PER_STUDY
        patient = study // STUDIES_PER_PATIENT
        prng = random.Random(patient)
        name = f"{prng.choice(names)}^{prng.choice(GIVEN)}"
        patient_id = f"PID{patient:07d}"
        date = f"20{10 + study % 15:02d}{1 + study % 12:02d}{1 + study % 28:02d}"
        study_uid = f"{root}.{study}"
        series_uid = f"{study_uid}.{series}"
        sop_uid = f"{series_uid}.{i}"
        yield InstanceRecord(
            study_instance_uid=study_uid,
            series_instance_uid=series_uid,
            sop_instance_uid=sop_uid,
            sop_class_uid=template.sop_class_uid,
            transfer_syntax_uid=template.transfer_syntax_uid,
            patient_key=f"{patient_id}\\",
            patient=_level(template.patient, {"patient_name": name, "patient_id": patient_id},
                           {"00100010": {"vr": "PN", "Value": [{"Alphabetic": name}]},
                            "00100020": {"vr": "LO", "Value": [patient_id]}},
                           {"00100010": name_words(name)}),
            study=_level(template.study, {"study_instance_uid": study_uid, "study_date": date,
                                          "study_datetime": date + "120000.000000", "study_time": "120000.000000",
                                          "accession_number": f"A{study:08d}"},
                         {"0020000D": {"vr": "UI", "Value": [study_uid]}, "00080020": {"vr": "DA", "Value": [date]},
                          "00080030": {"vr": "TM", "Value": ["120000"]},
                          "00080050": {"vr": "SH", "Value": [f"A{study:08d}"]}}),
            series=_level(template.series, {"series_instance_uid": series_uid, "series_number": series + 1,
                                            "modality": "CT" if series == 0 else "MR"},
                          {"0020000E": {"vr": "UI", "Value": [series_uid]},
                           "00080060": {"vr": "CS", "Value": ["CT" if series == 0 else "MR"]},
                           "00200011": {"vr": "IS", "Value": [series + 1]}}),
            instance=_level(template.instance, {"sop_instance_uid": sop_uid, "instance_number": i % 2 + 1},
                            {"00080018": {"vr": "UI", "Value": [sop_uid]},
                             "00200013": {"vr": "IS", "Value": [i % 2 + 1]}}),
            dataset_json=template.dataset_json,
            storage_key=f"{study_uid}/{series_uid}/{sop_uid}.dcm",
            size=39000,
        )


def _level(template: LevelRecord, values: dict[str, str | int], attributes: dict[str, object],
           multi: dict[str, list[str]] | None = None) -> LevelRecord:
    out = LevelRecord(copy.deepcopy(template.attributes), dict(template.values), dict(template.multi))
    out.values.update({k: (v.upper() if k == "patient_name" and isinstance(v, str) else v) for k, v in values.items()})
    out.attributes.update(attributes)
    if multi is not None:
        out.multi.update(multi)
    return out


async def load(path: Path, count: int) -> float:
    """Fill a fresh archive through the repository's unit of work, BATCH instances per transaction."""
    repository = SQLiteRepository(path)
    await repository.open()
    start = time.perf_counter()
    batch: list[InstanceRecord] = []

    def store(conn: object, items: list[InstanceRecord]) -> None:
        for item in items:
            unit_of_work.add(conn, item)  # type: ignore[arg-type]

    for item in records(count):
        batch.append(item)
        if len(batch) == BATCH:
            await repository._write(lambda conn, items=batch: store(conn, items))
            batch = []
    if batch:
        await repository._write(lambda conn, items=batch: store(conn, items))
    elapsed = time.perf_counter() - start
    await repository.close()
    return elapsed


SERVER = """
import sys, uvicorn
from pathlib import Path
from app.config import Settings
from app.main import create_app
settings = Settings(data_dir=Path(sys.argv[1]), dimse_enabled=False, startup_sweep=False, _env_file=None)
uvicorn.run(create_app(settings), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", access_log=False)
"""


@contextmanager
def server(data_dir: Path) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", SERVER, str(data_dir), str(port)], cwd=ROOT)
    try:
        wait_for_port(port, timeout=60)
        yield f"http://127.0.0.1:{port}/dicom-web"
    finally:
        process.terminate()
        process.wait(timeout=30)


async def measure(base: str, make_params: Callable[[random.Random], dict[str, str]], clients: int,
                  seconds: float) -> dict[str, object]:
    latencies: list[float] = []
    results: list[int] = []
    deadline = time.perf_counter() + seconds

    async def client(seed: int) -> None:
        rng = random.Random(seed)
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            await http.get("/studies", params={"limit": "1"})  # connect before the clock matters
            while time.perf_counter() < deadline:
                params = make_params(rng)
                start = time.perf_counter()
                # `*` and `^` unescaped: Orthanc 1.10 does not percent-decode them in QIDO-RS keys (no match).
                response = await http.get("/studies?" + urlencode(params, safe="*^-"))
                latencies.append(time.perf_counter() - start)
                response.raise_for_status()
                results.append(len(json.loads(response.content)))

    start = time.perf_counter()
    await asyncio.gather(*(client(seed) for seed in range(clients)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "requests": len(latencies),
        "req/s": round(len(latencies) / elapsed, 1),
        "p50 ms": round(1000 * latencies[len(latencies) // 2], 1),
        "p99 ms": round(1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 1),
        "mean results": round(statistics.fmean(results), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    names = surnames(random.Random(7))
    rows: list[dict[str, object]] = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix="qido-bench-") as folder:
            data_dir = Path(folder)
            loaded = asyncio.run(load(data_dir / "index.sqlite3", size))
            patients = size // INSTANCES_PER_STUDY // STUDIES_PER_PATIENT
            print(f"{size} instances loaded in {loaded:.1f} s", flush=True)
            queries: dict[str, Callable[[random.Random], dict[str, str]]] = {
                "PatientID=<one patient>": lambda rng, n=patients: {"PatientID": f"PID{rng.randrange(n):07d}"},
                "PatientName=<3 letters>*&limit=50": lambda rng: {
                    "PatientName": rng.choice(names)[:3] + "*", "limit": "50"
                },
            }
            with server(data_dir) as base:
                for label, make in queries.items():
                    figures = asyncio.run(measure(base, make, args.clients, args.seconds))
                    rows.append({"instances": size, "studies": size // INSTANCES_PER_STUDY, "query": label,
                                 "clients": args.clients, **figures})
                    print(rows[-1], flush=True)
    record("qido", rows)


if __name__ == "__main__":
    main()
