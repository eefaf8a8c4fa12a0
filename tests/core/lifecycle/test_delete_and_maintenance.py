"""Deletion, statistics, sweep, re-index and migration status through the real HTTP door and the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from app.config import Settings
from tests import dicom_files
from tests.servers import ArchiveServer, running_archive

ROOT = Path(__file__).resolve().parents[3]  # tests/core/lifecycle/ -> the repository root



def one_study(series_count: int = 2, per_series: int = 2, name: str = "CT_small.dcm") -> list[pydicom.Dataset]:
    """A study of `series_count` series with `per_series` instances each, all fresh UIDs."""
    study = generate_uid()
    out = []
    for _ in range(series_count):
        series = generate_uid()
        for number in range(1, per_series + 1):
            out.append(dicom_files.renewed(name, StudyInstanceUID=study, SeriesInstanceUID=series,
                                           InstanceNumber=number))
    return out


def file_of(server: ArchiveServer, ds: pydicom.Dataset) -> Path:
    return server.settings.storage_path / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"


def qido(server: ArchiveServer, path: str, **params: str) -> list[dict[str, Any]]:
    response = httpx.get(server.dicomweb + path, params=params, timeout=30)
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()
    return rows


def value(row: dict[str, Any], tag: str) -> Any:
    return row[tag]["Value"][0]


def wado_status(server: ArchiveServer, path: str) -> int:
    return httpx.get(server.dicomweb + path, headers={"Accept": "multipart/related; type=\"application/dicom\""},
                     timeout=30).status_code


# --------------------------------------------------------------------------- DICOMweb DELETE


def test_deleting_an_instance_removes_its_file_and_corrects_the_study_counts(
    backend_archive_server: ArchiveServer,
) -> None:
    server = backend_archive_server
    datasets = one_study()
    dicom_files.stow(server.dicomweb, datasets)
    gone, kept = datasets[0], datasets[1]

    response = httpx.delete(
        f"{server.dicomweb}/studies/{gone.StudyInstanceUID}/series/{gone.SeriesInstanceUID}"
        f"/instances/{gone.SOPInstanceUID}", timeout=30
    )

    assert response.status_code == 204
    assert response.headers["X-Deleted-Instances"] == "1"
    assert not file_of(server, gone).exists()
    assert file_of(server, kept).exists()
    instances = qido(server, f"/studies/{gone.StudyInstanceUID}/instances")
    assert sorted(value(r, "00080018") for r in instances) == sorted(ds.SOPInstanceUID for ds in datasets[1:])
    (study,) = qido(server, "/studies", StudyInstanceUID=gone.StudyInstanceUID)
    assert value(study, "00201208") == 3  # NumberOfStudyRelatedInstances
    assert wado_status(server, f"/studies/{gone.StudyInstanceUID}/series/{gone.SeriesInstanceUID}"
                               f"/instances/{gone.SOPInstanceUID}") == 404


def test_deleting_a_series_leaves_the_other_series_of_the_study(backend_archive_server: ArchiveServer) -> None:
    server = backend_archive_server
    datasets = one_study()
    dicom_files.stow(server.dicomweb, datasets)
    first = datasets[0]

    response = httpx.delete(
        f"{server.dicomweb}/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}", timeout=30
    )

    assert response.status_code == 204
    assert response.headers["X-Deleted-Instances"] == "2"
    assert not (server.settings.storage_path / first.StudyInstanceUID / first.SeriesInstanceUID).exists()
    series = qido(server, f"/studies/{first.StudyInstanceUID}/series")
    assert [value(r, "0020000E") for r in series] == [datasets[2].SeriesInstanceUID]
    (study,) = qido(server, "/studies", StudyInstanceUID=first.StudyInstanceUID)
    assert value(study, "00201206") == 1  # NumberOfStudyRelatedSeries
    assert wado_status(server, f"/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}") == 404
    assert wado_status(server, f"/studies/{first.StudyInstanceUID}") == 200


def test_deleting_a_study_hides_it_from_qido_and_wado_and_removes_its_folder(
    backend_archive_server: ArchiveServer,
) -> None:
    server = backend_archive_server
    datasets = one_study()
    dicom_files.stow(server.dicomweb, datasets)
    study_uid = datasets[0].StudyInstanceUID

    response = httpx.delete(f"{server.dicomweb}/studies/{study_uid}", timeout=30)

    assert response.status_code == 204
    assert response.headers["X-Deleted-Instances"] == "4"
    assert qido(server, "/studies", StudyInstanceUID=study_uid) == []
    assert qido(server, "/instances", StudyInstanceUID=study_uid) == []
    assert wado_status(server, f"/studies/{study_uid}") == 404
    assert httpx.get(f"{server.dicomweb}/studies/{study_uid}/metadata", timeout=30).status_code == 404
    assert not (server.settings.storage_path / study_uid).exists()


def test_deleting_what_is_not_held_is_404_and_a_malformed_uid_400(archive_server: ArchiveServer) -> None:
    assert httpx.delete(f"{archive_server.dicomweb}/studies/1.2.3.999", timeout=30).status_code == 404
    response = httpx.delete(f"{archive_server.dicomweb}/studies/1.2.abc", timeout=30)
    assert response.status_code == 400
    assert "StudyInstanceUID" in response.json()["00000902"]["Value"][0]


def test_a_deleted_instance_can_be_stored_again(archive_server: ArchiveServer) -> None:
    (ds,) = one_study(1, 1)
    dicom_files.stow(archive_server.dicomweb, [ds])
    url = f"{archive_server.dicomweb}/studies/{ds.StudyInstanceUID}"
    assert httpx.delete(url, timeout=30).status_code == 204
    dicom_files.stow(archive_server.dicomweb, [ds])
    assert file_of(archive_server, ds).exists()
    assert len(qido(archive_server, f"/studies/{ds.StudyInstanceUID}/instances")) == 1


# --------------------------------------------------------------------------- admin API


def test_admin_delete_reports_what_it_removed(archive_server: ArchiveServer) -> None:
    datasets = one_study(1, 2)
    dicom_files.stow(archive_server.dicomweb, datasets)
    size = sum(file_of(archive_server, ds).stat().st_size for ds in datasets)

    response = httpx.delete(f"{archive_server.base_url}/api/admin/studies/{datasets[0].StudyInstanceUID}")

    assert response.status_code == 200
    assert response.json() == {"instances": 2, "bytes": size, "files_not_removed": 0}
    assert httpx.delete(f"{archive_server.base_url}/api/admin/studies/{datasets[0].StudyInstanceUID}"
                        ).status_code == 404


def test_admin_statistics_follow_stores_and_deletes(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, dimse_enabled=False, _env_file=None)  # type: ignore[call-arg]
    with running_archive(settings) as server:
        stats_url = f"{server.base_url}/api/admin/statistics"
        assert httpx.get(stats_url).json() == {"studies": 0, "series": 0, "instances": 0, "bytes": 0, "files": 0}
        datasets = one_study(2, 2)
        dicom_files.stow(server.dicomweb, datasets)
        size = sum(file_of(server, ds).stat().st_size for ds in datasets)
        assert httpx.get(stats_url).json() == {"studies": 1, "series": 2, "instances": 4, "bytes": size, "files": 4}
        httpx.delete(f"{server.dicomweb}/studies/{datasets[0].StudyInstanceUID}")
        assert httpx.get(stats_url).json()["instances"] == 0


def test_admin_sweep_removes_a_file_no_metadata_names(archive_server: ArchiveServer) -> None:
    orphan = archive_server.settings.storage_path / "1.2.826.1" / "1.2.826.2" / "1.2.826.3.dcm"
    orphan.parent.mkdir(parents=True)
    shutil.copy(dicom_files.path("CT_small.dcm"), orphan)

    response = httpx.post(f"{archive_server.base_url}/api/admin/sweep", params={"grace_seconds": 0}, timeout=60)

    assert response.status_code == 200
    assert response.json()["orphan_files"] == 1
    assert not orphan.exists()


def test_admin_migrations_show_every_shipped_step_applied(backend_archive_server: ArchiveServer) -> None:
    status = httpx.get(f"{backend_archive_server.base_url}/api/admin/migrations").json()
    assert status["pending"] == []
    assert status["schema_version"] == status["latest"] >= 1


# --------------------------------------------------------------------------- re-index


def snapshot(server: ArchiveServer) -> dict[str, Any]:
    """Every QIDO-RS answer a viewer would see, at each level, with every field."""
    def rows(path: str) -> list[dict[str, Any]]:
        found = qido(server, path, includefield="all", limit="1000")
        return sorted(found, key=lambda r: json.dumps(r, sort_keys=True))

    out: dict[str, Any] = {"patients": rows("/patients"), "studies": rows("/studies"), "series": rows("/series"),
                           "instances": rows("/instances")}
    for study in out["studies"]:
        uid = value(study, "0020000D")
        metadata = httpx.get(f"{server.dicomweb}/studies/{uid}/metadata", timeout=30).json()
        out[f"metadata {uid}"] = sorted(metadata, key=lambda r: value(r, "00080018"))
    return out


@pytest.fixture
def stored_archive(tmp_path: Path) -> Iterator[tuple[Settings, dict[str, Any]]]:
    """An archive holding a few studies of several kinds, stopped; with the QIDO answers it gave."""
    settings = Settings(data_dir=tmp_path / "data", dimse_enabled=False, _env_file=None)  # type: ignore[call-arg]
    with running_archive(settings) as server:
        dicom_files.stow(server.dicomweb, one_study(2, 2))
        dicom_files.stow(server.dicomweb, one_study(1, 1, "MR_small.dcm"))
        # Several of these have no PatientID, so they share one patient whose attributes are the last stored
        # instance's: stored one request at a time, "last" is the file order that re-index replays.
        for name in ("JPEG2000.dcm", "test-SR.dcm", "emri_small.dcm"):
            dicom_files.stow(server.dicomweb, [dicom_files.renewed(name)])
        before = snapshot(server)
    yield settings, before


def test_reindex_rebuilds_the_same_answers_into_an_empty_sqlite_repository(
    stored_archive: tuple[Settings, dict[str, Any]], tmp_path: Path
) -> None:
    settings, before = stored_archive
    # An empty index over the same storage tree (the old index is moved away, not reused).
    fresh = settings.model_copy(update={"data_dir": tmp_path / "fresh", "storage_root": settings.storage_path})
    with running_archive(fresh) as server:
        assert qido(server, "/studies") == []
        report = httpx.post(f"{server.base_url}/api/admin/reindex", timeout=120).json()
        assert report == {"indexed": 8, "failed": []}
        after = snapshot(server)
    assert after == _rebased(before, after)


def test_reindex_rebuilds_the_same_answers_into_an_empty_mongo_repository(
    stored_archive: tuple[Settings, dict[str, Any]], tmp_path: Path, mongo_url: str
) -> None:
    settings, before = stored_archive
    fresh = settings.model_copy(update={
        "data_dir": tmp_path / "fresh-mongo", "storage_root": settings.storage_path, "mongo_url": mongo_url,
        "mongo_database": f"reindex_{generate_uid()[-12:].replace('.', '')}",
    })
    with running_archive(fresh) as server:
        report = httpx.post(f"{server.base_url}/api/admin/reindex", timeout=120).json()
        assert report == {"indexed": 8, "failed": []}
        after = snapshot(server)
    assert after == _rebased(before, after)


def _rebased(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """`before` with its server's address replaced by the new server's (RetrieveURL, BulkDataURI)."""
    old = json.dumps(before)
    new_root = _first_root(after)
    old_root = _first_root(before)
    return dict(json.loads(old.replace(old_root, new_root)))


def _first_root(snap: dict[str, Any]) -> str:
    url: str = value(snap["studies"][0], "00081190")
    return url.split("/dicom-web/")[0]


def test_reindex_reports_a_file_that_is_not_dicom_and_indexes_the_rest(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, dimse_enabled=False, _env_file=None)  # type: ignore[call-arg]
    bad = settings.storage_path / "1.2.3" / "4.5.6" / "7.8.9.dcm"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not dicom at all" * 10)
    good = dicom_files.renewed("CT_small.dcm")
    target = settings.storage_path / good.StudyInstanceUID / good.SeriesInstanceUID / f"{good.SOPInstanceUID}.dcm"
    target.parent.mkdir(parents=True)
    target.write_bytes(dicom_files.part10(good))
    with running_archive(settings) as server:
        report = httpx.post(f"{server.base_url}/api/admin/reindex", timeout=60).json()
        assert report["indexed"] == 1
        assert [line.split(":")[0] for line in report["failed"]] == ["1.2.3/4.5.6/7.8.9.dcm"]
        assert [value(r, "0020000D") for r in qido(server, "/studies")] == [good.StudyInstanceUID]


# --------------------------------------------------------------------------- CLI


def run_cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("MONGO_", "STORAGE_", "DATA_DIR"))}
    return subprocess.run(
        [sys.executable, "-m", "app", "--data-dir", str(data_dir), *args],
        capture_output=True, text=True, cwd=data_dir, env=env, timeout=120, check=False,
    )


def test_cli_reindex_and_stats_rebuild_a_lost_index(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, dimse_enabled=False, _env_file=None)  # type: ignore[call-arg]
    with running_archive(settings) as server:
        datasets = one_study(1, 3)
        dicom_files.stow(server.dicomweb, datasets)
    settings.sqlite_path.unlink()
    for leftover in tmp_path.glob("index.sqlite3-*"):
        leftover.unlink()

    empty = run_cli(tmp_path, "stats")
    assert empty.returncode == 0, empty.stderr
    assert json.loads(empty.stdout)["instances"] == 0
    assert json.loads(empty.stdout)["files"] == 3

    rebuilt = run_cli(tmp_path, "reindex")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "indexed 3 files, failed 0" in rebuilt.stdout
    stats = json.loads(run_cli(tmp_path, "stats").stdout)
    assert stats["studies"] == 1 and stats["series"] == 1 and stats["instances"] == 3


def test_reindex_keeps_a_held_file_that_ingest_would_now_refuse(tmp_path: Path) -> None:
    """An instance archived before ingest refused leading-zero UIDs (PS3.5 9.1) is indexed again, not reported
    failed: a file without metadata is what the sweep removes."""
    ds = dicom_files.renewed("CT_small.dcm")
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.2.1125.01.7"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    held = tmp_path / "storage" / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
    held.parent.mkdir(parents=True)
    held.write_bytes(dicom_files.part10(ds))

    rebuilt = run_cli(tmp_path, "reindex")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "indexed 1 files, failed 0" in rebuilt.stdout
    settings = Settings(data_dir=tmp_path, dimse_enabled=False, _env_file=None)  # type: ignore[call-arg]
    with running_archive(settings) as server:
        found = httpx.get(f"{server.dicomweb}/instances", params={"SOPInstanceUID": ds.SOPInstanceUID}).json()
        assert [value(r, "00080018") for r in found] == [ds.SOPInstanceUID]
        again = httpx.post(f"{server.dicomweb}/studies", content=dicom_files.multipart([dicom_files.part10(ds)]),
                           headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=dicom-boundary'})
        assert again.status_code == 409  # offered anew, it is refused (0xA900)


def test_the_change_feed_records_each_deleted_instance(archive_server: ArchiveServer) -> None:
    datasets = one_study(1, 2)
    dicom_files.stow(archive_server.dicomweb, datasets)
    since = httpx.get(f"{archive_server.base_url}/api/changes", params={"limit": 10000}).json()["last"]
    assert httpx.delete(f"{archive_server.dicomweb}/studies/{datasets[0].StudyInstanceUID}").status_code == 204
    deadline = time.monotonic() + 10
    deleted: list[str] = []
    while time.monotonic() < deadline and len(deleted) < 2:
        changes = httpx.get(f"{archive_server.base_url}/api/changes", params={"since": since}).json()["changes"]
        deleted = [c["SOPInstanceUID"] for c in changes if c["type"] == "instance.deleted"]
        time.sleep(0.05)
    assert sorted(deleted) == sorted(ds.SOPInstanceUID for ds in datasets)


def test_a_study_deleted_over_http_is_gone_from_c_find(tmp_path: Path) -> None:
    from tests.dimse.test_store import AE_TITLE, dcmtk, storescu
    from tests.dimse.test_store import running_archive as dimse_archive

    datasets = one_study(1, 2)
    files = []
    for n, ds in enumerate(datasets):
        files.append(tmp_path / f"{n}.dcm")
        files[-1].write_bytes(dicom_files.part10(ds))
    study = datasets[0].StudyInstanceUID

    def c_find() -> str:
        found = dcmtk("findscu", "-S", "-aet", "FINDSCU", "-aec", AE_TITLE, "-k", "QueryRetrieveLevel=STUDY",
                      "-k", f"StudyInstanceUID={study}", "127.0.0.1", archive.dimse_port)
        assert found.returncode == 0, found.stderr
        return found.stderr + found.stdout

    with dimse_archive(tmp_path) as archive:
        assert storescu(archive, *files).returncode == 0
        assert study in c_find()
        assert httpx.delete(f"http://127.0.0.1:{archive.http_port}/dicom-web/studies/{study}").status_code == 204
        assert study not in c_find()
        assert not (archive.storage / study).exists()


def test_admin_applies_a_pending_migration(tmp_path: Path) -> None:
    import sqlite3

    settings = Settings(data_dir=tmp_path, dimse_enabled=False, _env_file=None)  # type: ignore[call-arg]
    with running_archive(settings) as server:
        status = httpx.get(f"{server.base_url}/api/admin/migrations").json()
        latest = status["latest"]
        # As if the archive's code had been upgraded under a running database: the last step is not recorded.
        with sqlite3.connect(settings.sqlite_path) as db:
            db.execute("DELETE FROM schema_migrations WHERE version = ?", (latest,))
        pending = httpx.get(f"{server.base_url}/api/admin/migrations").json()
        assert pending["schema_version"] < latest and len(pending["pending"]) == 1
        applied = httpx.post(f"{server.base_url}/api/admin/migrations/apply").json()
        assert applied["schema_version"] == latest and applied["pending"] == []
