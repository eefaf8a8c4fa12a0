"""What the console relies on over plain HTTP: its page (no outside origin allowed), `/ui/whoami`, a study's
history and the feed's tail from the change feed, and a C-STORE to a remote AE counted as it goes (NDJSON)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pynetdicom import AE, AllStoragePresentationContexts, evt

from tests import dicom_files
from tests.servers import ArchiveServer, free_port


def test_the_archive_root_leads_to_the_console_whose_page_allows_no_outside_origin(
    archive_server: ArchiveServer,
) -> None:
    root = httpx.get(archive_server.base_url + "/")
    assert root.status_code == 307 and root.headers["location"] == "/ui/"
    page = httpx.get(archive_server.base_url + "/ui/")
    assert page.status_code == 200
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "connect-src 'self';" in policy
    assert '"authentication":false' in page.text
    assert httpx.get(archive_server.base_url + "/ui/static/js/app.js").headers["content-type"].startswith(
        "text/javascript"
    )


def test_whoami_answers_every_scope_when_authentication_is_off(archive_server: ArchiveServer) -> None:
    answer = httpx.get(archive_server.base_url + "/ui/whoami")
    assert answer.status_code == 200
    assert answer.json()["scopes"] == ["read", "write", "delete", "admin"]
    assert answer.json()["name"] is None


def test_the_change_feed_gives_one_studys_history_and_its_own_tail(backend_archive_server: ArchiveServer) -> None:
    """On both metadata stores (the study filter is each store's own query)."""
    archive = backend_archive_server
    first, second = dicom_files.renewed("CT_small.dcm"), dicom_files.renewed("MR_small.dcm")
    dicom_files.stow(archive.dicomweb, [first, second])
    dicom_files.stow(archive.dicomweb, [first])  # replaced: instance.updated
    feed = f"{archive.base_url}/api/changes"
    history = httpx.get(feed, params={"study": first.StudyInstanceUID}).json()
    assert [c["type"] for c in history["changes"]] == ["instance.created", "instance.updated"]
    assert {c["StudyInstanceUID"] for c in history["changes"]} == {first.StudyInstanceUID}
    assert history["done"] is True
    tail = httpx.get(feed, params={"tail": 2}).json()["changes"]
    everything = httpx.get(feed, params={"limit": 10000}).json()["changes"]
    assert tail == everything[-2:]
    assert httpx.get(feed, params={"study": "1.2.x"}).status_code == 400


@pytest.fixture
def receiver() -> Iterator[tuple[int, list[str]]]:
    ae = AE(ae_title="COUNTED")
    ae.supported_contexts = AllStoragePresentationContexts
    port, received = free_port(), []

    def on_store(event: Any) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0

    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        yield port, received
    finally:
        server.shutdown()


def test_a_store_to_an_ae_asked_for_ndjson_counts_each_sub_operation(
    archive_server: ArchiveServer, receiver: tuple[int, list[str]]
) -> None:
    port, received = receiver
    study = dicom_files.renewed("CT_small.dcm")
    more = [dicom_files.renewed("CT_small.dcm", StudyInstanceUID=study.StudyInstanceUID) for _ in range(3)]
    dicom_files.stow(archive_server.dicomweb, [study, *more])
    aes = f"{archive_server.base_url}/api/aes"
    assert httpx.put(f"{aes}/COUNTED", json={"host": "127.0.0.1", "port": port}).status_code in (200, 201)
    with httpx.stream("POST", f"{aes}/COUNTED/store", json={"StudyInstanceUID": study.StudyInstanceUID},
                      headers={"Accept": "application/x-ndjson"}, timeout=60) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in answer.iter_lines() if line]
    assert [line["remaining"] for line in lines] == [4, 3, 2, 1, 0, 0]
    assert [line["completed"] for line in lines] == [0, 1, 2, 3, 4, 4]
    assert [line["done"] for line in lines] == [False] * 5 + [True]
    assert lines[-1]["failedSOPInstanceUIDs"] == [] and lines[-1]["failed"] == 0
    assert len(received) == 4
    # Without asking for NDJSON, one answer at the end, as before.
    plain = httpx.post(f"{aes}/COUNTED/store", json={"StudyInstanceUID": study.StudyInstanceUID}, timeout=60)
    assert plain.json() == {"completed": 4, "failed": 0, "warning": 0, "failedSOPInstanceUIDs": []}


def test_a_store_to_an_ae_that_does_not_answer_ends_its_ndjson_with_the_error(
    archive_server: ArchiveServer,
) -> None:
    study = dicom_files.renewed("CT_small.dcm")
    dicom_files.stow(archive_server.dicomweb, [study])
    aes = f"{archive_server.base_url}/api/aes"
    assert httpx.put(f"{aes}/SILENT", json={"host": "127.0.0.1", "port": free_port()}).status_code in (200, 201)
    answer = httpx.post(f"{aes}/SILENT/store", json={"StudyInstanceUID": study.StudyInstanceUID},
                        headers={"Accept": "application/x-ndjson"}, timeout=60)
    lines = [json.loads(line) for line in answer.text.splitlines()]
    assert lines[-1]["done"] is True and lines[-1]["error"]
    assert len(lines) == 2
