"""The read half of the side-by-side suite: the same data set on each server, then QIDO-RS and WADO-RS.

Used by bench/sidebyside.py; no command of its own. The data set is CT_small.dcm copies written on disk once:
- a query set: `query_count` instances over `query_count / 5` studies (one series each) and half as many patients,
  names drawn from bench/qido.py's pool of made-up names, study dates spread over 2010-2024, CT and MR studies;
- a large study: one series of `series_size` instances (600 by default), for study retrieve, series metadata and
  frames.
Both are sent over STOW-RS (raw multipart with httpx, batches of 50, bench/wado.py's `store`), then measured with
the same clients against either server: QIDO-RS through bench/qido.py's `measure` (concurrent httpx clients for a
fixed time; req/s, p50, p99), WADO-RS through bench/wado.py's `timed_get` (whole responses streamed and counted).
"""

from __future__ import annotations

import asyncio
import random
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from bench.qido import GIVEN, measure, surnames
from bench.wado import curl_get, store, timed_get

INSTANCES_PER_STUDY = 5
RETRIEVE_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
FRAME_ACCEPT = "multipart/related; type=application/octet-stream; transfer-syntax=*"


@dataclass
class ReadSet:
    query_files: list[Path]
    series_files: list[Path]
    patients: int
    prefixes: list[str]
    big_study: str
    big_series: str
    first_instance: str


def make_read_set(folder: Path, query_count: int = 500, series_size: int = 600, seed: int = 11) -> ReadSet:
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    pool = surnames(rng, 400)
    template = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    studies = max(1, query_count // INSTANCES_PER_STUDY)
    patients = max(1, studies // 2)
    names = [f"{rng.choice(pool)}^{rng.choice(GIVEN)}" for _ in range(patients)]
    query_files: list[Path] = []
    for s in range(studies):
        patient = s % patients
        template.PatientID = f"RP{patient:05d}"
        template.PatientName = names[patient]
        template.StudyInstanceUID = generate_uid()
        template.SeriesInstanceUID = generate_uid()
        template.StudyDate = f"{2010 + s % 15}{1 + s % 12:02d}{1 + s % 28:02d}"
        template.Modality = "CT" if s % 2 == 0 else "MR"
        for i in range(INSTANCES_PER_STUDY):
            _fresh_instance(template, i + 1)
            path = folder / f"q{s:05d}-{i}.dcm"
            template.save_as(path, enforce_file_format=True)
            query_files.append(path)
    big_study, big_series = generate_uid(), generate_uid()
    template.PatientID, template.PatientName = "RPBIG", "BIG^SERIES"
    template.StudyInstanceUID, template.SeriesInstanceUID = big_study, big_series
    template.StudyDate, template.Modality = "20200101", "CT"
    series_files: list[Path] = []
    first = ""
    for i in range(series_size):
        _fresh_instance(template, i + 1)
        first = first or str(template.SOPInstanceUID)
        path = folder / f"s{i:05d}.dcm"
        template.save_as(path, enforce_file_format=True)
        series_files.append(path)
    prefixes = sorted({name[:3] for name in names})
    return ReadSet(query_files, series_files, patients, prefixes, big_study, big_series, first)


def _fresh_instance(template: pydicom.Dataset, number: int) -> None:
    template.SOPInstanceUID = generate_uid()
    template.file_meta.MediaStorageSOPInstanceUID = template.SOPInstanceUID
    template.InstanceNumber = number


def load(base: str, data: ReadSet) -> float:
    """STOW the whole read set (batches of 50, one client); seconds taken."""
    start = time.perf_counter()
    with httpx.Client(base_url=base, timeout=600) as client:
        for files in (data.query_files, data.series_files):
            stored = store(client, (path.read_bytes() for path in files))
            assert stored == len(files)
    return time.perf_counter() - start


def queries(data: ReadSet) -> dict[str, Callable[[random.Random], dict[str, str]]]:
    return {
        "QIDO PatientID=<one patient>": lambda rng: {"PatientID": f"RP{rng.randrange(data.patients):05d}"},
        "QIDO PatientName=<3 letters>*": lambda rng: {"PatientName": rng.choice(data.prefixes) + "*"},
        "QIDO StudyDate=<1 year range>&ModalitiesInStudy=CT": lambda rng: _date_range(rng),
    }


def _date_range(rng: random.Random) -> dict[str, str]:
    year = rng.randrange(2010, 2025)
    return {"StudyDate": f"{year}0101-{year}1231", "ModalitiesInStudy": "CT"}


def measure_reads(base: str, data: ReadSet, *, clients: int = 4, seconds: float = 4.0,
                  runs: int = 10, budget: float = 15.0) -> dict[str, float]:
    """Figures keyed by measure name: QIDO req/s, p50 and p99 (ms) per query; study retrieve instances/s;
    series metadata p50 (ms, warm); one frame p50 (ms, warm). Latency loops stop after `budget` seconds."""
    out: dict[str, float] = {}
    for label, make in queries(data).items():
        figures = asyncio.run(measure(base, make, clients, seconds))
        if not figures["mean results"]:
            raise RuntimeError(f"{label} found nothing on {base}")
        out[f"{label} req/s"] = float(figures["req/s"])  # type: ignore[arg-type]
        out[f"{label} p50 ms"] = float(figures["p50 ms"])  # type: ignore[arg-type]
        out[f"{label} p99 ms"] = float(figures["p99 ms"])  # type: ignore[arg-type]
    with httpx.Client(base_url=base, timeout=600) as client:
        count = len(data.series_files)
        study = f"/studies/{data.big_study}"
        timed_get(client, study, RETRIEVE_ACCEPT)  # warm
        seconds_each = _repeat(lambda: timed_get(client, study, RETRIEVE_ACCEPT)[0], 3, budget * 2)
        out[f"WADO study retrieve, {count} instances, httpx, instances/s"] = count / statistics.median(seconds_each)
        if shutil.which("curl"):
            url = f"{base}{study}"
            seconds_each = _repeat(lambda: curl_get(url, RETRIEVE_ACCEPT), 5, budget * 2)
            out[f"WADO study retrieve, {count} instances, curl, instances/s"] = count / statistics.median(seconds_each)
        metadata = f"{study}/series/{data.big_series}/metadata"
        timed_get(client, metadata, "application/dicom+json")  # warm
        seconds_each = _repeat(lambda: timed_get(client, metadata, "application/dicom+json")[0], runs, budget)
        out[f"WADO series metadata, {count} instances, warm p50 ms"] = 1000 * statistics.median(seconds_each)
        frame = f"{study}/series/{data.big_series}/instances/{data.first_instance}/frames/1"
        timed_get(client, frame, FRAME_ACCEPT)  # warm
        seconds_each = _repeat(lambda: timed_get(client, frame, FRAME_ACCEPT)[0], 5 * runs, budget)
        out["WADO one frame, warm p50 ms"] = 1000 * statistics.median(seconds_each)
    return out


def _repeat(call: Callable[[], float], runs: int, budget: float) -> list[float]:
    deadline = time.perf_counter() + budget
    times = [call()]
    while len(times) < runs and time.perf_counter() < deadline:
        times.append(call())
    return times
