"""Health, readiness, Prometheus metrics, request ids, JSON logs, the audit trail, CORS and trusted proxies,
through the real HTTP door."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydicom.uid import generate_uid

from app.config import Settings
from app.core.audit import atna_message
from tests import dicom_files
from tests.conftest import _secantusd, _wait_until_listening
from tests.servers import ArchiveServer, free_port, running_archive

MULTIPART = 'multipart/related; type="application/dicom"; boundary=dicom-boundary'


def settings_for(tmp_path: Path, **overrides: object) -> Settings:
    return Settings(data_dir=tmp_path, dimse_enabled=False, _env_file=None, **overrides)  # type: ignore[call-arg, arg-type]


def stow(server: ArchiveServer, *names: str, **headers: str) -> list[str]:
    datasets = [dicom_files.renewed(name) for name in names]
    response = httpx.post(
        f"{server.dicomweb}/studies",
        content=dicom_files.multipart([dicom_files.part10(ds) for ds in datasets]),
        headers={"Content-Type": MULTIPART, **headers},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return [str(ds.StudyInstanceUID) for ds in datasets]


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in the Prometheus text format, or None when absent."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        sample, _, value = line.rpartition(" ")
        base, _, label_text = sample.partition("{")
        if base != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', label_text))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(value)
    return None


# --------------------------------------------------------------------------- probes


def test_health_answers_without_touching_anything(archive_server: ArchiveServer) -> None:
    response = httpx.get(f"{archive_server.base_url}/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_ready_checks_the_repository_and_the_storage(backend_archive_server: ArchiveServer) -> None:
    response = httpx.get(f"{backend_archive_server.base_url}/ready", timeout=30)
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "repository": "ok", "storage": "ok"}


def test_ready_is_503_when_the_metadata_store_goes_away(tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "secantusd.log"
    with log_path.open("wb") as log:
        mongo = subprocess.Popen(
            [_secantusd(), "--host", "127.0.0.1", "--port", str(port), "--storage-path", ":memory:"],
            stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        _wait_until_listening(mongo, port, log_path)
        settings = settings_for(tmp_path, mongo_url=f"mongodb://127.0.0.1:{port}/?serverSelectionTimeoutMS=1000")
        with running_archive(settings) as server:
            assert httpx.get(f"{server.base_url}/ready", timeout=30).status_code == 200
            mongo.terminate()
            mongo.wait(timeout=10)
            response = httpx.get(f"{server.base_url}/ready", timeout=30)
            assert response.status_code == 503
            body = response.json()
            assert body["status"] == "not ready"
            assert body["repository"].startswith("unavailable")
            assert body["storage"] == "ok"
            assert httpx.get(f"{server.base_url}/health").status_code == 200
    finally:
        if mongo.poll() is None:
            mongo.kill()
            mongo.wait(timeout=10)


# --------------------------------------------------------------------------- metrics


def test_metrics_count_requests_by_route_template_and_instances_stored(tmp_path: Path) -> None:
    with running_archive(settings_for(tmp_path)) as server:
        (study,) = stow(server, "CT_small.dcm")
        assert httpx.get(f"{server.dicomweb}/studies/{study}/series").status_code == 200
        assert httpx.get(f"{server.dicomweb}/studies/{study}/series").status_code == 200
        assert httpx.get(f"{server.dicomweb}/studies/1.2.3.4/series").status_code == 200
        assert httpx.delete(f"{server.dicomweb}/studies/{study}").status_code == 204
        text = httpx.get(f"{server.base_url}/metrics").text

    assert metric(text, "dicomweb_http_requests_total", method="POST", route="/dicom-web/studies",
                  status="200") == 1
    # Concrete UIDs never become labels: three requests, one series.
    assert metric(text, "dicomweb_http_requests_total", method="GET", route="/dicom-web/studies/{study}/series",
                  status="200") == 3
    assert study not in text
    assert metric(text, "dicomweb_http_request_duration_seconds_count", method="GET",
                  route="/dicom-web/studies/{study}/series") == 3
    size = len(dicom_files.part10(dicom_files.renewed("CT_small.dcm")))
    received = metric(text, "dicomweb_http_received_bytes_total", route="/dicom-web/studies")
    assert received is not None and received > size
    assert metric(text, "dicomweb_instances_events_total", event="stored") == 1
    assert metric(text, "dicomweb_instances_events_total", event="deleted") == 1
    assert metric(text, "dicomweb_instances_held") == 0


def test_unmatched_paths_share_one_metrics_label(archive_server: ArchiveServer) -> None:
    for n in range(3):
        httpx.get(f"{archive_server.base_url}/no/such/{n}")
    text = httpx.get(f"{archive_server.base_url}/metrics").text
    assert (metric(text, "dicomweb_http_requests_total", route="unmatched", status="404") or 0) >= 3
    assert "/no/such" not in text


# --------------------------------------------------------------------------- request ids and logs


def test_every_answer_carries_a_request_id_and_a_client_one_is_kept(archive_server: ArchiveServer) -> None:
    first = httpx.get(f"{archive_server.base_url}/health").headers["x-request-id"]
    second = httpx.get(f"{archive_server.base_url}/health").headers["x-request-id"]
    assert first != second and re.fullmatch(r"[0-9a-f]{32}", first)
    kept = httpx.get(f"{archive_server.dicomweb}/studies", headers={"X-Request-ID": "trace-42"})
    assert kept.headers["x-request-id"] == "trace-42"
    forged = httpx.get(f"{archive_server.base_url}/health", headers={"X-Request-ID": "a b\" c"})
    assert forged.headers["x-request-id"] != "a b\" c"


@pytest.fixture
def served_by_cli(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`python -m app serve` with JSON logs and an audit file, as an operator starts it."""
    port = free_port()
    stderr_path = tmp_path / "stderr.log"
    audit_path = tmp_path / "audit.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("MONGO_", "STORAGE_"))}
    env.update({"LOG_FORMAT": "json", "LOG_LEVEL": "INFO", "DIMSE_ENABLED": "false",
                "AUDIT_LOG": str(audit_path), "DATA_DIR": str(tmp_path / "data")})
    with stderr_path.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=err,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("server did not start:\n" + stderr_path.read_text())
            time.sleep(0.1)
        yield base, tmp_path
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_json_logs_carry_the_request_id_of_the_request_they_describe(served_by_cli: tuple[str, Path]) -> None:
    base, folder = served_by_cli
    response = httpx.get(f"{base}/dicom-web/studies/1.2.3.999/metadata", headers={"X-Request-ID": "find-me-7"})
    assert response.status_code == 404
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [json.loads(line) for line in (folder / "stderr.log").read_text().splitlines() if line.strip()]
        mine = [line for line in lines if line.get("request_id") == "find-me-7"]
        if mine:
            break
        time.sleep(0.1)
    assert mine, lines
    assert any("404" in line["message"] for line in mine)
    assert {"time", "level", "logger", "message"} <= set(mine[0])


def test_the_audit_trail_has_one_record_per_store_query_retrieve_and_delete(
    served_by_cli: tuple[str, Path],
) -> None:
    base, folder = served_by_cli
    ds = dicom_files.renewed("CT_small.dcm")
    study = ds.StudyInstanceUID
    assert httpx.post(f"{base}/dicom-web/studies", content=dicom_files.multipart([dicom_files.part10(ds)]),
                      headers={"Content-Type": MULTIPART}).status_code == 200
    assert httpx.get(f"{base}/dicom-web/studies", params={"StudyInstanceUID": study}).status_code == 200
    assert httpx.get(f"{base}/dicom-web/studies/{study}",
                     headers={"Accept": 'multipart/related; type="application/dicom"'}).status_code == 200
    assert httpx.delete(f"{base}/dicom-web/studies/{study}").status_code == 204
    httpx.get(f"{base}/health")  # not an audited action

    deadline = time.monotonic() + 10
    records: list[dict[str, object]] = []
    while time.monotonic() < deadline and len(records) < 4:
        text = (folder / "audit.jsonl").read_text() if (folder / "audit.jsonl").exists() else ""
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
        time.sleep(0.1)
    assert [r["action"] for r in records] == ["store", "query", "retrieve", "delete"]
    assert [r["outcome"] for r in records] == [200, 200, 200, 204]
    assert all(r["user"] == "anonymous" and r["client"] == "127.0.0.1" for r in records)
    assert records[1]["query"] == f"StudyInstanceUID={study}"
    assert records[2]["study"] == records[3]["study"] == study
    assert all(r["time"] and r["request_id"] for r in records)


# --------------------------------------------------------------------------- CORS and proxies


def test_cors_lets_a_configured_viewer_origin_in_and_no_other(tmp_path: Path) -> None:
    with running_archive(settings_for(tmp_path, cors_origins=["https://viewer.example"])) as server:
        preflight = httpx.options(
            f"{server.dicomweb}/studies",
            headers={"Origin": "https://viewer.example", "Access-Control-Request-Method": "GET",
                     "Access-Control-Request-Headers": "authorization,accept"},
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://viewer.example"
        simple = httpx.get(f"{server.dicomweb}/studies", headers={"Origin": "https://viewer.example"})
        assert simple.headers["access-control-allow-origin"] == "https://viewer.example"
        assert "Warning" in simple.headers["access-control-expose-headers"]
        other = httpx.get(f"{server.dicomweb}/studies", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_without_cors_origins_no_cors_headers_are_sent(archive_server: ArchiveServer) -> None:
    response = httpx.get(f"{archive_server.dicomweb}/studies", headers={"Origin": "https://viewer.example"})
    assert "access-control-allow-origin" not in response.headers


def _retrieve_url(server: ArchiveServer, **headers: str) -> str:
    ds = dicom_files.renewed("CT_small.dcm")
    response = httpx.post(
        f"{server.dicomweb}/studies", content=dicom_files.multipart([dicom_files.part10(ds)]),
        headers={"Content-Type": MULTIPART, "Accept": "application/dicom+json", **headers},
    )
    url: str = response.json()["00081190"]["Value"][0]
    return url


def test_forwarded_headers_from_a_peer_not_trusted_are_ignored(tmp_path: Path) -> None:
    forwarded = {"X-Forwarded-Host": "pacs.example.org", "X-Forwarded-Proto": "https"}
    with running_archive(settings_for(tmp_path, trusted_proxies=["10.9.8.7"])) as server:
        url = _retrieve_url(server, **forwarded)
        assert url.startswith(f"{server.base_url}/dicom-web/studies/")
    with running_archive(settings_for(tmp_path / "b", trusted_proxies=["127.0.0.0/8"])) as server:
        assert _retrieve_url(server, **forwarded).startswith("https://pacs.example.org/dicom-web/studies/")


def test_the_audit_trail_names_the_client_a_trusted_proxy_forwards(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    study = generate_uid()
    settings = settings_for(tmp_path, audit_log=str(audit), trusted_proxies=["127.0.0.1"])
    with running_archive(settings) as server:
        httpx.get(f"{server.dicomweb}/studies/{study}/series", headers={"X-Forwarded-For": "203.0.113.9"})
    with running_archive(settings.model_copy(update={"trusted_proxies": ["10.0.0.1"]})) as server:
        httpx.get(f"{server.dicomweb}/studies/{study}/series", headers={"X-Forwarded-For": "203.0.113.9"})
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [r["client"] for r in records] == ["203.0.113.9", "127.0.0.1"]
    assert uuid.UUID(str(records[0]["request_id"]))


# --------------------------------------------------------------------------- the DIMSE door


def test_the_dimse_door_is_audited_counted_and_logged_with_an_association_id(tmp_path: Path) -> None:
    from tests.dimse.test_store import AE_TITLE, CALLING, dcmtk, storescu
    from tests.dimse.test_store import running_archive as dimse_archive

    audit = tmp_path / "audit.jsonl"
    ds = dicom_files.renewed("CT_small.dcm")
    sent = tmp_path / "ct.dcm"
    sent.write_bytes(dicom_files.part10(ds))
    # The same instance twice in one association, with duplicates rejected: the second store is refused, and
    # the refusal is logged by the ingest service on the app's event loop.
    with dimse_archive(tmp_path, AUDIT_LOG=str(audit), LOG_FORMAT="json", DUPLICATE_POLICY="reject") as archive:
        storescu(archive, sent, sent)
        found = dcmtk("findscu", "-S", "-aet", "FINDSCU", "-aec", AE_TITLE, "-k", "QueryRetrieveLevel=STUDY",
                      "-k", f"StudyInstanceUID={ds.StudyInstanceUID}", "127.0.0.1", archive.dimse_port)
        assert found.returncode == 0, found.stderr
        text = httpx.get(f"http://127.0.0.1:{archive.http_port}/metrics").text
        deadline = time.monotonic() + 10
        records: list[dict[str, object]] = []
        while time.monotonic() < deadline and len(records) < 5:
            records = [json.loads(line) for line in audit.read_text().splitlines()] if audit.exists() else []
            time.sleep(0.1)
        server_log = archive.log()

    store = [r for r in records if r["action"] == "store"]
    query = [r for r in records if r["action"] == "query"]
    ends = [r for r in records if r["action"] == "association"]
    assert len(store) == 2 and len(query) == 1 and len(ends) == 2, records
    assert [(r["instance"], r["outcome"]) for r in store] == [(ds.SOPInstanceUID, "0x0000"),
                                                              (ds.SOPInstanceUID, "0x0111")]
    assert store[0]["request_id"] == store[1]["request_id"]
    assert (store[0]["user"], store[0]["client"], store[0]["protocol"]) == (CALLING, "127.0.0.1", "DIMSE")
    assert query[0]["outcome"] == "0x0000" and query[0]["user"] == "FINDSCU"
    assert {r["outcome"] for r in ends} == {"released"}
    association_id = str(store[0]["request_id"])
    assert association_id.startswith("assoc-") and query[0]["request_id"] != association_id
    assert metric(text, "dicomweb_dimse_associations_total", outcome="accepted") == 2
    assert metric(text, "dicomweb_instances_events_total", event="stored") == 1
    # Log lines written while serving the association carry its id (JSON logs), even from the event loop.
    lines = [json.loads(line) for line in server_log.splitlines() if line.startswith("{")]
    refusal = [line for line in lines if "store refused" in line["message"]]
    assert refusal and refusal[0]["request_id"] == association_id, server_log[-3000:]


@pytest.mark.parametrize(
    ("options", "why"),
    [([], "is not in DIMSE_ALLOWED_CALLING_AETS"), (["--user", "alice", "--password", "wrong"], "wrong password")],
    # An association offering a User Identity is negotiated in pynetdicom's threads, any other on the event loop.
    ids=["on the loop", "in pynetdicom's thread"],
)
def test_a_rejected_association_is_audited_with_its_reason_and_counted(
    tmp_path: Path, options: list[str], why: str
) -> None:
    """An A-ASSOCIATE-RJ the access policy sends (an unknown calling AE title, a wrong password) is what an audit
    repository must hold above all (IHE ATNA); pynetdicom reports only the rejections it makes itself."""
    from tests.dimse.test_store import AE_TITLE, CALLING, dcmtk
    from tests.dimse.test_store import running_archive as dimse_archive

    audit = tmp_path / "audit.jsonl"
    calling = "INTRUDER" if not options else CALLING
    with dimse_archive(
        tmp_path, AUDIT_LOG=str(audit), DIMSE_ALLOWED_CALLING_AETS=CALLING, DIMSE_USERS="alice:s3cret"
    ) as archive:
        sent = [str(dicom_files.path("CT_small.dcm"))] if options else []
        tool = "storescu" if options else "echoscu"
        refused = dcmtk(tool, "-aet", calling, "-aec", AE_TITLE, *options, "127.0.0.1", archive.dimse_port, *sent)
        assert refused.returncode != 0 and "Rejected" in refused.stderr
        deadline = time.monotonic() + 10
        records: list[dict[str, object]] = []
        while time.monotonic() < deadline and not records:
            records = [json.loads(line) for line in audit.read_text().splitlines()] if audit.exists() else []
            time.sleep(0.1)
        text = httpx.get(f"http://127.0.0.1:{archive.http_port}/metrics").text
        server_log = archive.log()

    [record] = records
    assert (record["action"], record["outcome"], record["user"], record["client"]) == (
        "association", "rejected", calling, "127.0.0.1"
    )
    assert record["called"] == AE_TITLE and why in str(record["reason"])
    assert metric(text, "dicomweb_dimse_associations_total", outcome="rejected") == 1
    # Logged once, where the policy rejected it, with the association id its audit record carries.
    association_id = str(record["request_id"])
    assert association_id.startswith("assoc-")
    logged = [line for line in server_log.splitlines() if "association from" in line and "rejected" in line]
    assert len(logged) == 1 and association_id in logged[0] and why in logged[0], logged
    # As a DICOM Audit Message: the reason is the event's outcome description, the called AE title the archive's.
    message = ET.fromstring(atna_message(record))
    assert message.findtext("EventIdentification/EventOutcomeDescription") == record["reason"]
    archive_side = message.find("ActiveParticipant[@UserIsRequestor='false']")
    assert archive_side is not None and archive_side.get("AlternativeUserID") == f"AETITLES={AE_TITLE}"


# --------------------------------------------------------------------------- TLS


def _self_signed(folder: Path) -> tuple[Path, Path]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_serve_speaks_https_with_a_configured_certificate(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("MONGO_", "STORAGE_", "HTTP_"))}
    env.update({"DIMSE_ENABLED": "false", "DATA_DIR": str(tmp_path / "data"), "HTTP_TLS_CERT": str(cert),
                "HTTP_TLS_KEY": str(key)})
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    trust = ssl.create_default_context(cafile=str(cert))
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                response = httpx.get(f"https://127.0.0.1:{port}/dicom-web/studies", verify=trust)
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert response.status_code == 200
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/health")
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_ready_is_503_when_the_storage_volume_is_gone(tmp_path: Path) -> None:
    with running_archive(settings_for(tmp_path)) as server:
        assert httpx.get(f"{server.base_url}/ready").status_code == 200
        shutil.rmtree(server.settings.storage_path)  # as an unmounted volume
        response = httpx.get(f"{server.base_url}/ready")
        assert response.status_code == 503
        assert response.json()["storage"].startswith("unavailable")
        assert response.json()["repository"] == "ok"


def test_the_audit_trail_can_be_written_as_dicom_audit_messages(tmp_path: Path) -> None:
    audit = tmp_path / "audit.xml"
    with running_archive(settings_for(tmp_path, audit_log=str(audit), audit_format="atna")) as server:
        (study,) = stow(server, "CT_small.dcm")
        httpx.get(f"{server.dicomweb}/studies", params={"PatientID": "X*"})
        httpx.delete(f"{server.dicomweb}/studies/{study}/series/1.2.3")  # 404: a failed delete
    messages = [ET.fromstring(line) for line in audit.read_text().splitlines()]
    events = [(m.find("EventIdentification/EventID").get("csd-code"),  # type: ignore[union-attr]
               m.find("EventIdentification").get("EventActionCode"),  # type: ignore[union-attr]
               m.find("EventIdentification").get("EventOutcomeIndicator"))  # type: ignore[union-attr]
              for m in messages]
    assert events == [("110104", "C", "0"), ("110112", "E", "0"), ("110103", "D", "4")]
    requestor = messages[0].find("ActiveParticipant[@UserIsRequestor='true']")
    assert requestor is not None and requestor.get("NetworkAccessPointID") == "127.0.0.1"
    assert requestor.get("UserID") == "anonymous"
    query = messages[1].find("ParticipantObjectIdentification/ParticipantObjectQuery")
    assert query is not None and base64.b64decode(query.text or "") == b"PatientID=X%2A"
    studies = [p.get("ParticipantObjectID") for p in messages[2].iter("ParticipantObjectIdentification")
               if p.find("ParticipantObjectIDTypeCode[@csd-code='110180']") is not None]
    assert studies == [study]
