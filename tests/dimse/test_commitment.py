"""Storage Commitment Push Model SCP (dimse_bridge/commitment.py) against in-test pynetdicom peers.

The archive runs in-process with its DIMSE door on 127.0.0.1 (tests/servers.py). A requester sends the
N-ACTION-RQ as the peer of a modality would, and runs an SCP of its own for the N-EVENT-REPORT the archive sends
back on a new association (SCP/SCU role selection: the archive proposes the SCP role). A requester the registry
does not know gets its report on the requesting association, while that is still open.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel, StorageCommitmentPushModelInstance  # type: ignore

from app.config import Settings
from tests import dicom_files
from tests.servers import ArchiveServer, free_port, running_archive

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
REPORT_TIMEOUT = 30
Report = tuple[int, Dataset, str]  # (Event Type ID, Event Information, AE title the report was addressed to)


@pytest.fixture(scope="module")
def report_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory, report_port: int) -> Iterator[ArchiveServer]:
    settings = Settings(  # type: ignore[call-arg]
        data_dir=tmp_path_factory.mktemp("commitment"),
        dimse_enabled=True,
        dimse_host="127.0.0.1",
        dimse_port=free_port(),
        dimse_remote_aes=f"MODALITY@127.0.0.1:{report_port}",
        dimse_scu_timeout=10,
        _env_file=None,
    )
    with running_archive(settings) as server:
        yield server


@pytest.fixture(scope="module")
def stored(archive: ArchiveServer) -> list[Dataset]:
    datasets = [dicom_files.renewed("CT_small.dcm"), dicom_files.renewed("MR_small.dcm")]
    dicom_files.stow(archive.dicomweb, datasets)
    return datasets


@pytest.fixture(scope="module")
def reports(report_port: int) -> Iterator[queue.Queue[Report]]:
    """The requester's SCP for N-EVENT-REPORT, on the port the archive's registry gives for MODALITY."""
    received: queue.Queue[Report] = queue.Queue()
    ae = AE(ae_title="MODALITY")
    # Accept the SCP role the archive proposes for the report association (PS3.4 J.3.3).
    ae.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)

    def on_report(event: Any) -> tuple[int, None]:
        called = str(event.assoc.acceptor.ae_title).strip()
        received.put((int(event.event_type), event.event_information, called))
        return 0x0000, None  # (status, Event Reply)

    server = ae.start_server(
        ("127.0.0.1", report_port), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)]
    )
    try:
        yield received
    finally:
        server.shutdown()


def request_information(transaction_uid: str, references: list[tuple[str, str]]) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    items = []
    for sop_class, sop_instance in references:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        items.append(item)
    ds.ReferencedSOPSequence = DicomSequence(items)
    return ds


@contextmanager
def requesting(archive: ArchiveServer, title: str, handlers: list[Any] | None = None) -> Iterator[Any]:
    ae = AE(ae_title=title)
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate(
        "127.0.0.1", archive.settings.dimse_port, ae_title=archive.settings.ae_title, evt_handlers=handlers or []
    )
    assert assoc.is_established
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def n_action(
    assoc: Any, information: Dataset | None, *, action_type: int = 1, instance: str = StorageCommitmentPushModelInstance
) -> int:
    status, _reply = assoc.send_n_action(information, action_type, StorageCommitmentPushModel, instance)
    return int(status.Status)


def uids(sequence: Any) -> list[tuple[str, str]]:
    return [(str(item.ReferencedSOPClassUID), str(item.ReferencedSOPInstanceUID)) for item in sequence]


def test_all_held_instances_are_reported_committed_on_a_new_association(
    archive: ArchiveServer, stored: list[Dataset], reports: queue.Queue[Report]
) -> None:
    transaction = generate_uid()
    references = [(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in stored]
    with requesting(archive, "MODALITY") as assoc:
        assert n_action(assoc, request_information(transaction, references)) == 0x0000
    event_type, information, called = reports.get(timeout=REPORT_TIMEOUT)
    assert event_type == 1
    assert called == "MODALITY"
    assert information.TransactionUID == transaction
    assert information.RetrieveAETitle == archive.settings.ae_title
    assert uids(information.ReferencedSOPSequence) == references
    assert "FailedSOPSequence" not in information
    with pytest.raises(queue.Empty):  # one report per transaction
        reports.get(timeout=0.5)


def test_missing_and_mismatched_instances_are_reported_failed_with_their_reason(
    archive: ArchiveServer, stored: list[Dataset], reports: queue.Queue[Report]
) -> None:
    ct, mr = stored
    missing = generate_uid()
    transaction = generate_uid()
    references = [
        (str(ct.SOPClassUID), str(ct.SOPInstanceUID)),
        (CT_IMAGE, missing),
        (CT_IMAGE, str(mr.SOPInstanceUID)),  # held, but as an MR image
    ]
    with requesting(archive, "MODALITY") as assoc:
        assert n_action(assoc, request_information(transaction, references)) == 0x0000
    event_type, information, _ = reports.get(timeout=REPORT_TIMEOUT)
    assert event_type == 2
    assert information.TransactionUID == transaction
    assert uids(information.ReferencedSOPSequence) == references[:1]
    failed = {str(item.ReferencedSOPInstanceUID): int(item.FailureReason) for item in information.FailedSOPSequence}
    assert failed == {missing: 0x0112, str(mr.SOPInstanceUID): 0x0119}


def test_nothing_held_gives_only_failures(archive: ArchiveServer, reports: queue.Queue[Report]) -> None:
    transaction = generate_uid()
    references = [(MR_IMAGE, generate_uid()), (MR_IMAGE, generate_uid())]
    with requesting(archive, "MODALITY") as assoc:
        assert n_action(assoc, request_information(transaction, references)) == 0x0000
    event_type, information, _ = reports.get(timeout=REPORT_TIMEOUT)
    assert event_type == 2
    assert "ReferencedSOPSequence" not in information
    assert uids(information.FailedSOPSequence) == references
    assert {int(item.FailureReason) for item in information.FailedSOPSequence} == {0x0112}


def test_an_unregistered_requester_gets_its_report_on_its_own_association(
    archive: ArchiveServer, stored: list[Dataset]
) -> None:
    received: queue.Queue[Report] = queue.Queue()

    def on_report(event: Any) -> tuple[int, None]:
        received.put((int(event.event_type), event.event_information, ""))
        return 0x0000, None

    transaction = generate_uid()
    references = [(str(stored[0].SOPClassUID), str(stored[0].SOPInstanceUID))]
    with requesting(archive, "STRANGER", [(evt.EVT_N_EVENT_REPORT, on_report)]) as assoc:
        assert n_action(assoc, request_information(transaction, references)) == 0x0000
        event_type, information, _ = received.get(timeout=REPORT_TIMEOUT)
    assert event_type == 1
    assert information.TransactionUID == transaction
    assert uids(information.ReferencedSOPSequence) == references


def test_a_requester_not_listening_yet_gets_the_report_on_a_later_attempt(
    archive: ArchiveServer, stored: list[Dataset]
) -> None:
    port = free_port()
    registered = httpx.put(
        f"{archive.base_url}/api/aes/LATECOMER", json={"host": "127.0.0.1", "port": port}, timeout=30
    )
    assert registered.status_code == 201
    received: queue.Queue[Report] = queue.Queue()

    def on_report(event: Any) -> tuple[int, None]:
        received.put((int(event.event_type), event.event_information, ""))
        return 0x0000, None

    transaction = generate_uid()
    references = [(str(stored[1].SOPClassUID), str(stored[1].SOPInstanceUID))]
    with requesting(archive, "LATECOMER") as assoc:
        assert n_action(assoc, request_information(transaction, references)) == 0x0000
    time.sleep(0.5)  # the first attempt finds nobody listening
    ae = AE(ae_title="LATECOMER")
    ae.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    try:
        event_type, information, _ = received.get(timeout=REPORT_TIMEOUT)
    finally:
        server.shutdown()
    assert event_type == 1
    assert information.TransactionUID == transaction


@pytest.mark.parametrize(
    ("information", "action_type", "instance", "status"),
    [
        (None, 2, StorageCommitmentPushModelInstance, 0x0123),  # no such action
        (None, 1, "1.2.3.4", 0x0117),  # not the well-known instance
        ("no-transaction", 1, StorageCommitmentPushModelInstance, 0x0120),  # missing Transaction UID
        ("no-references", 1, StorageCommitmentPushModelInstance, 0x0120),  # missing Referenced SOP Sequence
    ],
)
def test_a_malformed_request_is_refused(
    archive: ArchiveServer, information: str | None, action_type: int, instance: str, status: int
) -> None:
    ds = request_information(generate_uid(), [(CT_IMAGE, generate_uid())])
    if information == "no-transaction":
        del ds.TransactionUID
    elif information == "no-references":
        del ds.ReferencedSOPSequence
    with requesting(archive, "MODALITY") as assoc:
        assert n_action(assoc, ds, action_type=action_type, instance=instance) == status


def test_the_archive_offers_storage_commitment_beside_storage(archive: ArchiveServer) -> None:
    ae = AE(ae_title="PROBE")
    ae.add_requested_context(StorageCommitmentPushModel)
    ae.add_requested_context(CT_IMAGE)
    assoc = ae.associate("127.0.0.1", archive.settings.dimse_port, ae_title=archive.settings.ae_title)
    try:
        assert {str(cx.abstract_syntax) for cx in assoc.accepted_contexts} == {StorageCommitmentPushModel, CT_IMAGE}
    finally:
        assoc.release()
