"""Three archive processes over one MongoDB (SecantusDB) and one S3 bucket (moto's server), all on 127.0.0.1: the
replica set-up of README "Scaling out", with no load balancer (each test picks the replica it talks to, as a
balancer would).

Checked: overlapping STOW-RS and C-STORE of the same instances through different replicas keep one copy each,
with the metadata naming it and the aggregates right; QIDO-RS and C-FIND answer the same on every replica at
once; each study completes once (one `study.completed` webhook, one FHIR ImagingStudy) and every change is
POSTed once, however many replicas run; an AE registered and a workitem created through one replica are known
to the others (C-MOVE through another replica reaches the AE); kill -9 of a replica mid-load loses no
acknowledged instance, and the webhook deliveries it held are taken over once its lease ends. The single-process
kill -9 test (tests/system/test_faults.py) is the model of the last one; the two-minute load test is not
repeated here (its point, memory over time, is per process). SQLite refuses a second server on one database.
"""

from __future__ import annotations

import collections
import copy
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from tests import dicom_files
from tests.archive_process import AE_TITLE, ArchiveProcess, Sender, digest, new_instance, retrieve_data_set
from tests.core.lifecycle.test_webhooks import Receiver, serving
from tests.fhir_server import FhirTestServer, running_fhir_server
from tests.servers import free_port
from tests.storage.test_contract import S3Endpoint, s3_endpoint  # noqa: F401 - the moto server fixture

REPLICAS = 3
QUIET_SECONDS = 3.0  # STUDY_QUIET_SECONDS: far above the gaps between the stores of one burst
LEASE_SECONDS = 3.0
WAIT_SECONDS = 60.0
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"


@dataclass
class ReplicaSet:
    replicas: list[ArchiveProcess]
    endpoint: S3Endpoint
    bucket: str
    receiver: Receiver
    fhir: FhirTestServer

    def objects(self) -> list[str]:
        """The instance files in the bucket (kept-aside copies of replaces excluded)."""
        pages = self.endpoint.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        return [o["Key"] for page in pages for o in page.get("Contents", ()) if o["Key"].endswith(".dcm")]


@pytest.fixture(scope="module")
def replica_set(
    tmp_path_factory: pytest.TempPathFactory, mongo_url: str, s3_endpoint: S3Endpoint  # noqa: F811
) -> Iterator[ReplicaSet]:
    root = tmp_path_factory.mktemp("replicas")
    bucket = s3_endpoint.new_bucket()
    receiver = Receiver()
    with serving(receiver), running_fhir_server() as fhir:
        settings = {
            "MONGO_URL": mongo_url, "MONGO_DATABASE": f"test_{uuid.uuid4().hex[:16]}",
            "STORAGE_BACKEND": "s3", "S3_BUCKET": bucket, "S3_ENDPOINT_URL": s3_endpoint.url,
            "S3_ACCESS_KEY_ID": s3_endpoint.access_key, "S3_SECRET_ACCESS_KEY": s3_endpoint.secret_key,
            "S3_REGION": s3_endpoint.region, "WEBHOOK_URLS": receiver.url, "FHIR_ENABLED": "true",
            "FHIR_BASE_URL": fhir.base_url, "STUDY_QUIET_SECONDS": str(QUIET_SECONDS),
            "LEASE_SECONDS": str(LEASE_SECONDS), "OUTBOX_RETRY_SECONDS": "0.5", "INGEST_WORKERS": "0",
        }  # fmt: skip
        replicas = [ArchiveProcess(root / f"replica-{n}", dict(settings)) for n in range(REPLICAS)]
        for replica in replicas:
            replica.root.mkdir()
        try:
            for replica in replicas:
                replica.start()
            yield ReplicaSet(replicas, s3_endpoint, bucket, receiver, fhir)
        finally:
            for replica in replicas:
                replica.stop()
            s3_endpoint.drop_bucket(bucket)


def wait_for(condition: Callable[[], bool], what: str, seconds: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def send_through(replicas: list[ArchiveProcess], kinds: list[str], instances: list[Dataset]) -> list[Sender]:
    """One sender per replica, each sending its own copy of every instance, all at once."""
    senders = [
        Sender(kind, replica, [copy.deepcopy(ds) for ds in instances])
        for replica, kind in zip(replicas, kinds, strict=True)
    ]
    for sender in senders:
        sender.start()
    return senders


def qido(replica: ArchiveProcess, path: str, **params: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{replica.base_url}/dicom-web{path}", params=params, timeout=30)
    assert response.status_code == 200, response.text
    answer: list[dict[str, Any]] = response.json()
    return answer


def c_find_studies(replica: ArchiveProcess, **keys: str) -> list[tuple[str, int]]:
    """(StudyInstanceUID, NumberOfStudyRelatedInstances) of the studies C-FIND answers, sorted."""
    ae = AE(ae_title="REPLICASCU")
    ae.add_requested_context(STUDY_ROOT_FIND)
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.NumberOfStudyRelatedInstances = ""
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    assoc = ae.associate("127.0.0.1", replica.dimse_port, ae_title=AE_TITLE)
    assert assoc.is_established
    try:
        found = [
            (str(ds.StudyInstanceUID), int(ds.NumberOfStudyRelatedInstances))
            for status, ds in assoc.send_c_find(identifier, STUDY_ROOT_FIND)
            if status and ds is not None and status.Status in (0xFF00, 0xFF01)
        ]
    finally:
        assoc.release()
    return sorted(found)


def a_study(instances: int) -> list[Dataset]:
    study = new_instance()
    rest = [new_instance(study=study.StudyInstanceUID) for _ in range(instances - 1)]
    for ds in rest:
        ds.SeriesInstanceUID = study.SeriesInstanceUID
    return [study, *rest]


def test_overlapping_stores_through_every_replica_keep_one_copy_that_every_replica_answers_alike(
    replica_set: ReplicaSet,
) -> None:
    studies = [a_study(4) for _ in range(2)]
    instances = [ds for study in studies for ds in study]
    senders = send_through(replica_set.replicas, ["stow", "cstore", "stow"], instances)
    for sender in senders:
        sender.join(timeout=120)
        assert not sender.errors, sender.errors
        assert all(entry.acknowledged for entry in sender.sent.values())
    uids = sorted(study[0].StudyInstanceUID for study in studies)
    # One copy each: one object per instance in the bucket, at the key its metadata names.
    keys = {f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm" for ds in instances}
    assert keys <= set(replica_set.objects())
    assert len([key for key in replica_set.objects() if key.split("/")[0] in uids]) == len(instances)
    # Every replica answers the same at once, through both doors, counts included.
    expected = [(uid, 4) for uid in uids]
    for replica in replica_set.replicas:
        answers = qido(replica, "/studies", StudyInstanceUID=",".join(uids), includefield="00201208")
        assert sorted((a["0020000D"]["Value"][0], a["00201208"]["Value"][0]) for a in answers) == expected
        assert len(qido(replica, "/instances", StudyInstanceUID=",".join(uids))) == len(instances)
        assert c_find_studies(replica, StudyInstanceUID="\\".join(uids)) == expected
    # The bytes held are the bytes sent, read through a replica that did not store them.
    with httpx.Client(base_url=replica_set.replicas[2].base_url, timeout=60) as client:
        for entry in senders[1].sent.values():
            held = retrieve_data_set(client, entry)
            assert held is not None and digest(held) == entry.data_set_sha


def test_each_study_completes_once_and_each_change_is_posted_once_whatever_the_replicas(
    replica_set: ReplicaSet,
) -> None:
    studies = [a_study(3) for _ in range(3)]
    uids = {study[0].StudyInstanceUID for study in studies}
    # Each study's instances through every replica, with duplicates, as an overlapping C-STORE and STOW-RS burst.
    senders = send_through(replica_set.replicas, ["cstore", "stow", "stow"], [ds for s in studies for ds in s])
    for sender in senders:
        sender.join(timeout=120)
        assert not sender.errors, sender.errors

    def completions() -> collections.Counter[str]:
        return collections.Counter(
            body["StudyInstanceUID"] for body in list(replica_set.receiver.received)
            if body["type"] == "study.completed" and body["StudyInstanceUID"] in uids
        )  # fmt: skip

    def imaging_study_puts() -> collections.Counter[str]:
        return collections.Counter(
            unquote(path).split("|")[-1].removeprefix("urn:oid:")
            for method, path in list(replica_set.fhir.requests)
            if method == "PUT" and path.startswith("ImagingStudy?")
        )

    wait_for(lambda: set(completions()) == uids, "every study completed")
    wait_for(lambda: uids <= set(imaging_study_puts()), "an ImagingStudy per study")
    time.sleep(QUIET_SECONDS + LEASE_SECONDS)  # room for a second completion or sync, were one to come
    assert completions() == {uid: 1 for uid in uids}
    assert {uid: n for uid, n in imaging_study_puts().items() if uid in uids} == {uid: 1 for uid in uids}
    # Every change of the feed was POSTed exactly once, in order, whichever replica delivered it.
    seqs = [body["seq"] for body in list(replica_set.receiver.received)]
    assert seqs == sorted(set(seqs))
    changes = httpx.get(f"{replica_set.replicas[1].base_url}/api/changes", params={"since": seqs[0] - 1,
                        "limit": 10000}, timeout=30).json()  # fmt: skip
    assert [c["seq"] for c in changes["changes"]][: len(seqs)] == seqs


def test_a_destination_and_a_workitem_made_through_one_replica_are_known_to_every_other(
    replica_set: ReplicaSet,
) -> None:
    first, second, third = replica_set.replicas
    study = a_study(2)
    dicom_files.stow(f"{first.base_url}/dicom-web", study)
    received: list[str] = []
    scp = AE(ae_title="MOVEDEST")
    scp.add_supported_context(CTImageStorage)

    def on_store(event: evt.Event) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    port = free_port()
    server = scp.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert server is not None
    try:
        registered = httpx.put(f"{first.base_url}/api/aes/MOVEDEST", json={"host": "127.0.0.1", "port": port},
                               timeout=30)  # fmt: skip
        assert registered.status_code in (200, 201), registered.text
        scu = AE(ae_title="REPLICASCU")
        scu.add_requested_context(STUDY_ROOT_MOVE)
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = study[0].StudyInstanceUID
        assoc = scu.associate("127.0.0.1", third.dimse_port, ae_title=AE_TITLE)
        assert assoc.is_established
        try:
            statuses = [status.Status for status, _ in assoc.send_c_move(identifier, "MOVEDEST", STUDY_ROOT_MOVE)]
        finally:
            assoc.release()
    finally:
        server.shutdown()
    assert statuses[-1] == 0x0000
    assert sorted(received) == sorted(ds.SOPInstanceUID for ds in study)

    workitem = f"2.25.{uuid.uuid4().int}"
    created = httpx.post(
        f"{second.base_url}/dicom-web/workitems", params={"workitem": workitem},
        headers={"Content-Type": "application/dicom+json"}, timeout=30,
        json={"00741000": {"vr": "CS", "Value": ["SCHEDULED"]}, "00741200": {"vr": "CS", "Value": ["MEDIUM"]},
              "00741204": {"vr": "LO", "Value": ["CT chest"]}, "00404005": {"vr": "DT", "Value": ["20300105090000"]},
              "00404041": {"vr": "CS", "Value": ["READY"]}, "00100020": {"vr": "LO", "Value": ["P-1"]}},
    )  # fmt: skip
    assert created.status_code == 201, created.text
    for replica in (first, third):
        assert httpx.get(f"{replica.base_url}/dicom-web/workitems/{workitem}", timeout=30).status_code == 200


@pytest.mark.faults
def test_kill_9_of_a_replica_mid_load_loses_no_acknowledged_instance_and_its_lease_passes_on(
    replica_set: ReplicaSet,
) -> None:
    replicas = replica_set.replicas
    # The webhook lease is held by the replica that delivered last; kill that one.
    delivered = len(replica_set.receiver.received)
    assert delivered, "the earlier tests delivered webhooks"
    senders = [Sender(kind, replica, [new_instance() for _ in range(30)])
               for replica in replicas for kind in ("stow", "cstore")]  # fmt: skip
    for sender in senders:
        sender.start()
    wait_for(lambda: sum(e.acknowledged for s in senders[:2] for e in s.sent.values()) >= 10, "stores acknowledged")
    holder = _webhook_holder(replica_set)
    victim = replicas[holder]
    victim.kill()
    for sender in senders:
        sender.join(timeout=120)
        assert not sender.is_alive()
    survivors = [r for r in replicas if r is not victim]
    for sender in senders:
        if sender.archive is not victim:
            assert not sender.errors, sender.errors
    acknowledged = [entry for sender in senders for entry in sender.sent.values() if entry.acknowledged]
    # Every acknowledged instance is held, byte for byte, and the killed replica's in-flight ones can be re-sent
    # through a survivor.
    with httpx.Client(base_url=survivors[0].base_url, timeout=60) as client:
        for entry in acknowledged:
            held = retrieve_data_set(client, entry)
            assert held is not None, f"acknowledged {entry.sop} lost"
            assert digest(held) == entry.data_set_sha
    cut_off = [s for s in senders if s.archive is victim]
    again = [Sender("stow", survivors[0], s.pending()) for s in cut_off]
    for sender in again:
        sender.start()
    for sender in again:
        sender.join(timeout=120)
        assert not sender.errors, sender.errors
    # The webhook deliveries the victim held resume from another replica once its lease has ended: every change
    # up to the last one is POSTed, once.
    last = httpx.get(f"{survivors[0].base_url}/api/changes", params={"tail": 1}, timeout=30).json()
    last_seq = last["changes"][-1]["seq"] if last["changes"] else 0
    wait_for(lambda: replica_set.receiver.received[-1]["seq"] >= last_seq, "webhooks resumed by a survivor")
    seqs = [body["seq"] for body in replica_set.receiver.received]
    assert seqs == sorted(seqs) and len(set(seqs)) >= len(seqs) - 1  # at most the change in flight twice
    victim.start()  # it rejoins on the same data
    assert qido(victim, "/instances", SOPInstanceUID=acknowledged[0].sop)


def _webhook_holder(replica_set: ReplicaSet) -> int:
    """Which replica holds the webhook lease (its holder id names its pid)."""
    from pymongo import MongoClient

    settings = replica_set.replicas[0].settings
    client: MongoClient[dict[str, Any]]
    with MongoClient(settings["MONGO_URL"], serverSelectionTimeoutMS=5000) as client:
        lease = client[settings["MONGO_DATABASE"]]["leases"].find_one({"_id": {"$regex": "^webhook:"}})
    assert lease is not None, "no replica holds the webhook lease"
    pid = int(lease["holder"].split(":")[1])
    pids = [r.process.pid if r.process else None for r in replica_set.replicas]
    return pids.index(pid)


def test_a_second_server_on_one_sqlite_database_refuses_to_start(tmp_path: Path) -> None:
    first = ArchiveProcess(tmp_path)
    first.start()
    try:
        second = ArchiveProcess(tmp_path / "second")
        second.root.mkdir()
        second.data_dir = first.data_dir
        with pytest.raises(RuntimeError, match="the archive did not start"):
            second.start()
        refusal = second.log().strip().splitlines()
        assert len(refusal) == 1 and "SQLite is single-process" in refusal[0], refusal
        assert f"pid {first.process.pid if first.process else '?'}" in refusal[0]
    finally:
        first.stop()
