"""The DIMSE door (C-ECHO, C-STORE, access control, TLS) against real DCMTK peers.

Each archive under test is the real CLI, `python -m app serve`, in a subprocess with its own data directory and
free ports on 127.0.0.1: the same process serves HTTP and DIMSE over one archive context, as in production.
Peers are DCMTK's echoscu, storescu and dcmsend (TCP_NODELAY=1, or each C-STORE waits on Nagle's algorithm).
What a store did is checked where it lands: the file in the storage tree (its data set byte for byte as sent)
and the instance row in the SQLite index, read as soon as the SCU has its answer.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pydicom.filereader
import pytest
from pydicom.uid import generate_uid

from app.core.dicom.transfer_syntax import (
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
)
from tests import dicom_files
from tests.servers import free_port
from tests.tools import DCMTK, listening, make_pki, require


@pytest.fixture(autouse=True)
def _dcmtk() -> None:
    require(*DCMTK)

TOOL_TIMEOUT = 120
START_TIMEOUT = 60
AE_TITLE = "DICOMWEB"
CALLING = "STORESCU"
COMPRESSED = (
    "JPEG2000.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_RLE.dcm",
)
# Every kind the archive must hold (tests/dicom_files.py); it covers those the issue names.
EVERY_KIND = dicom_files.KINDS
NAMED_IN_ISSUE = {
    "CT_small.dcm", "MR_small.dcm", "examples_ybr_color.dcm", "SC_rgb_jpeg_dcmtk.dcm", "JPEG-LL.dcm",
    "MR_small_jpeg_ls_lossless.dcm", "JPEG2000.dcm", "MR_small_RLE.dcm", "test-SR.dcm", "liver.dcm", "rtplan.dcm",
}  # fmt: skip


# -- the archive under test ---------------------------------------------------------------------------------



@dataclass
class DimseArchive:
    data_dir: Path
    http_port: int
    dimse_port: int
    log_path: Path

    @property
    def storage(self) -> Path:
        return self.data_dir / "storage"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stored_file(self, ds: pydicom.Dataset) -> Path:
        return self.storage / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"

    def indexed(self, sop_instance_uid: str) -> tuple[str, str] | None:
        """(transfer syntax, storage key) of the instance as the index holds it, or None."""
        db = sqlite3.connect(f"file:{self.data_dir / 'index.sqlite3'}?mode=ro", uri=True, timeout=10)
        try:
            row = db.execute(
                "SELECT transfer_syntax_uid, storage_key FROM instances WHERE sop_instance_uid = ?",
                (sop_instance_uid,),
            ).fetchone()
        finally:
            db.close()
        return None if row is None else (str(row[0]), str(row[1]))

    def wait_for_log(self, text: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log()
            if text in log:
                return log
            time.sleep(0.05)
        raise AssertionError(f"{text!r} never appeared in the server log:\n{self.log()[-3000:]}")


def _server_env(extra: Mapping[str, str]) -> dict[str, str]:
    # Nothing from the developer's environment decides how the archive under test behaves.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DIMSE_", "MONGO_", "DATA_", "STORAGE_", "HTTP_", "AE_", "DUPLICATE_"))
    }
    env.update({"DIMSE_ENABLED": "true", "AE_TITLE": AE_TITLE, "LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


@contextmanager
def running_archive(root: Path, **settings: str) -> Iterator[DimseArchive]:
    """`python -m app serve` with a fresh data directory; yields once both ports accept connections."""
    archive = DimseArchive(
        data_dir=root / "data", http_port=free_port(), dimse_port=free_port(), log_path=root / "server.log"
    )
    command = [
        sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(archive.http_port),
        "--dimse-port", str(archive.dimse_port), "--data-dir", str(archive.data_dir),
    ]  # fmt: skip
    env = _server_env({"DIMSE_HOST": "127.0.0.1", **settings})
    with archive.log_path.open("wb") as log:
        # cwd is the test's own folder, so a developer's .env is not read.
        process = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not (listening(archive.http_port) and listening(archive.dimse_port)):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the archive did not start:\n{archive.log()[-5000:]}")
            time.sleep(0.1)
        yield archive
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def dcmtk(*args: str | Path, timeout: float = TOOL_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run a DCMTK tool with Nagle off (INTEROP.md), bounded by a timeout, output captured."""
    env = {**os.environ, "TCP_NODELAY": "1"}
    return subprocess.run(
        [str(a) for a in args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def storescu(
    archive: DimseArchive, *files: Path, calling: str = CALLING, options: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    return dcmtk(
        "storescu", "-aet", calling, "-aec", AE_TITLE, *options, "127.0.0.1", archive.dimse_port, *files
    )


def dcmsend(archive: DimseArchive, *files: Path, calling: str = CALLING) -> subprocess.CompletedProcess[str]:
    # -dn: send compressed files as they are (without it dcmsend decompresses JPEG-LS and RLE).
    return dcmtk("dcmsend", "-dn", "-aet", calling, "-aec", AE_TITLE, "127.0.0.1", archive.dimse_port, *files)



NATIVE = (IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN)


def assert_same_data_set(stored: pydicom.Dataset, sent: pydicom.Dataset, name: str) -> None:
    """Element by element, values (and VRs) equal, pixel data byte for byte (so nothing was transcoded).

    DCMTK re-serialises what it sends, so the file's bytes are not the wire's: it drops Data Set Trailing
    Padding (FFFC,FFFC), which PS3.10 7.2 lets any application remove, gives sequences explicit lengths, and
    sends encapsulated Pixel Data as OB where a file says OW (PS3.5 A.4 requires OB). It also converts between
    native syntaxes when the archive accepts Explicit VR LE for an Implicit VR file (policy.py prefers it);
    private elements of an implicit file then have no VR to compare. Those differences are allowed here and
    nothing else; `test_the_data_set_bytes_are_stored_exactly_as_received` checks bytes.
    """
    was_implicit = sent.file_meta.TransferSyntaxUID.is_implicit_VR
    expected = {e.tag: e for e in sent if e.tag != 0xFFFCFFFC}
    held_tags = set(stored.keys()) - {0xFFFCFFFC}
    assert held_tags == set(expected), f"{name}: elements differ"
    for tag, element in expected.items():
        held = stored[tag]
        if was_implicit and (tag.is_private or element.VR == "UN"):
            continue
        assert held.value == element.value, f"{name}: {element.keyword or tag} differs"
        if tag != 0x7FE00010 and not was_implicit:
            assert held.VR == element.VR, f"{name}: VR of {element.keyword or tag} differs"


def assert_stored_as_sent(archive: DimseArchive, sent: Path) -> pydicom.Dataset:
    """The instance is indexed and on disk, in the transfer syntax it was sent in, with the data set sent."""
    ds = pydicom.dcmread(sent)
    stored_path = archive.stored_file(ds)
    assert stored_path.is_file(), f"{sent.name} not in the storage tree"
    stored = pydicom.dcmread(stored_path)
    sent_syntax, held_syntax = ds.file_meta.TransferSyntaxUID, stored.file_meta.TransferSyntaxUID
    if sent_syntax in NATIVE:
        assert held_syntax in (sent_syntax, EXPLICIT_VR_LITTLE_ENDIAN), f"{sent.name}: {held_syntax}"
    else:
        assert held_syntax == sent_syntax, f"{sent.name}: transcoded to {held_syntax}"
    assert stored.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert stored.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
    assert_same_data_set(stored, ds, sent.name)
    indexed = archive.indexed(ds.SOPInstanceUID)
    assert indexed is not None, f"{sent.name} is not in the index"
    assert indexed[0] == held_syntax
    return stored


def renewed_file(folder: Path, name: str, **attributes: object) -> Path:
    """A copy of a pydicom test file with fresh Study/Series/SOP Instance UIDs, written as a Part 10 file."""
    path = folder / f"{generate_uid()}-{name}"
    path.write_bytes(dicom_files.part10(dicom_files.renewed(name, **attributes)))
    return path


# -- fixtures ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DimseArchive]:
    """Default policy: every storage SOP class, every transfer syntax, any calling AE, no users."""
    with running_archive(tmp_path_factory.mktemp("open")) as server:
        yield server


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DimseArchive]:
    """An allow-list of calling AEs, users, the called AE checked, and a SOP class policy without CT."""
    with running_archive(
        tmp_path_factory.mktemp("guarded"),
        DIMSE_ALLOWED_CALLING_AETS="MODALITY1, STORESCU",
        DIMSE_USERS="alice:s3cret:with:colons,bob:hunter2",
        DIMSE_REQUIRE_CALLED_AET="true",
        DIMSE_SOP_CLASS_POLICY="MRImageStorage, 1.2.840.10008.5.1.4.1.1.7",
    ) as server:
        yield server


@pytest.fixture(scope="module")
def unrestricted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DimseArchive]:
    """SOP class policy All (private SOP classes too), transfer syntaxes uncompressed only."""
    with running_archive(
        tmp_path_factory.mktemp("unrestricted"),
        DIMSE_SOP_CLASS_POLICY="All",
        DIMSE_TRANSFER_SYNTAX_POLICY="UncompressedOnly",
    ) as server:
        yield server


# -- C-ECHO and C-STORE -------------------------------------------------------------------------------------


def test_echoscu_is_answered(archive: DimseArchive) -> None:
    result = dcmtk("echoscu", "-aet", CALLING, "-aec", AE_TITLE, "127.0.0.1", archive.dimse_port)
    assert result.returncode == 0, result.stderr


def test_the_http_door_runs_in_the_same_process(archive: DimseArchive) -> None:
    assert listening(archive.http_port)
    assert "DIMSE server DICOMWEB listening on 127.0.0.1:" in archive.log()


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_storescu_stores_the_data_set_as_sent(archive: DimseArchive, name: str) -> None:
    sent = dicom_files.path(name)
    result = storescu(archive, sent)
    assert result.returncode == 0, result.stderr
    # Queryable the moment the SCU has its C-STORE-RSP: the index row is checked straight away.
    assert_stored_as_sent(archive, sent)


@pytest.mark.parametrize("name", COMPRESSED)
def test_dcmsend_stores_compressed_files_unchanged(archive: DimseArchive, name: str) -> None:
    # These share their SOP Instance UID with MR_small.dcm: the duplicate policy (replace) keeps the latest.
    sent = dicom_files.path(name)
    result = dcmsend(archive, sent)
    assert result.returncode == 0, result.stderr + result.stdout
    stored = assert_stored_as_sent(archive, sent)
    assert stored.file_meta.TransferSyntaxUID.is_compressed


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # a UID in one of pydicom's own files
def test_dcmsend_stores_every_kind_of_test_file(archive: DimseArchive, tmp_path: Path) -> None:
    assert set(EVERY_KIND) >= NAMED_IN_ISSUE
    files = [renewed_file(tmp_path, name) for name in EVERY_KIND]
    result = dcmsend(archive, *files)
    assert result.returncode == 0, result.stderr + result.stdout
    for sent in files:
        assert_stored_as_sent(archive, sent)


def test_storescu_sends_many_files_on_one_association(archive: DimseArchive, tmp_path: Path) -> None:
    files = [renewed_file(tmp_path, "CT_small.dcm") for _ in range(25)]
    result = storescu(archive, *files)
    assert result.returncode == 0, result.stderr
    for sent in files:
        assert_stored_as_sent(archive, sent)


def test_the_file_meta_names_sender_and_receiver(archive: DimseArchive, tmp_path: Path) -> None:
    sent = renewed_file(tmp_path, "CT_small.dcm")
    result = storescu(archive, sent, calling="MODALITY7")
    assert result.returncode == 0, result.stderr
    stored = pydicom.dcmread(archive.stored_file(pydicom.dcmread(sent)), stop_before_pixels=True)
    assert stored.file_meta.SendingApplicationEntityTitle == "MODALITY7"
    assert stored.file_meta.ReceivingApplicationEntityTitle == AE_TITLE


@contextmanager
def pynetdicom_sender(archive: DimseArchive, files: Sequence[Path]) -> Iterator[Any]:
    """An association from pynetdicom in chunked mode, which sends each file's data set bytes untouched and
    builds the C-STORE request from its File Meta (unlike DCMTK, which re-encodes what it sends)."""
    from pynetdicom import AE, _config

    ae = AE(ae_title="PYNETDICOM")
    for path in files:
        meta = pydicom.filereader.read_file_meta_info(path)
        ae.add_requested_context(meta.MediaStorageSOPClassUID, [str(meta.TransferSyntaxUID)])
    chunked = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        assoc = ae.associate("127.0.0.1", archive.dimse_port, ae_title=AE_TITLE)
        assert assoc.is_established
        try:
            yield assoc
        finally:
            assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked


def test_the_data_set_bytes_are_stored_exactly_as_received(archive: DimseArchive, tmp_path: Path) -> None:
    files = [
        renewed_file(tmp_path, name)
        for name in (
            "CT_small.dcm",
            "MR_small_RLE.dcm",
            "JPEG2000.dcm",
            "MR_small_jpeg_ls_lossless.dcm",
            "examples_ybr_color.dcm",
        )
    ]
    with pynetdicom_sender(archive, files) as assoc:
        statuses = [assoc.send_c_store(path).Status for path in files]
    assert statuses == [0x0000] * len(files)
    for sent in files:
        stored_path = archive.stored_file(pydicom.dcmread(sent, stop_before_pixels=True))
        assert dicom_files.data_set_bytes(stored_path.read_bytes()) == dicom_files.data_set_bytes(sent.read_bytes()), sent.name
        assert_stored_as_sent(archive, sent)


def test_a_data_set_at_odds_with_its_request_is_refused_with_a900(
    archive: DimseArchive, tmp_path: Path
) -> None:
    """PS3.4 B.2.3: the request names one SOP instance, the data set is another -> 0xA900, nothing stored."""
    ds = dicom_files.renewed("CT_small.dcm")
    claimed = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = claimed  # the request is built from the File Meta
    path = tmp_path / "odd.dcm"
    pydicom.dcmwrite(path, ds, enforce_file_format=False)  # True would reset the File Meta UIDs
    with pynetdicom_sender(archive, [path]) as assoc:
        response = assoc.send_c_store(path)
    assert response.Status == 0xA900
    assert response.ErrorComment.startswith("SOPInstanceUID differs from the request")
    assert archive.indexed(claimed) is None
    assert archive.indexed(ds.SOPInstanceUID) is None


# -- access control -----------------------------------------------------------------------------------------


def test_an_unknown_calling_ae_is_rejected_with_a_reason(guarded: DimseArchive) -> None:
    result = dcmtk("echoscu", "-aet", "INTRUDER", "-aec", AE_TITLE, "127.0.0.1", guarded.dimse_port)
    assert result.returncode != 0
    assert "Calling AE Title Not Recognized" in result.stderr
    guarded.wait_for_log("calling AE title 'INTRUDER' is not in DIMSE_ALLOWED_CALLING_AETS")


def test_a_wrong_called_ae_is_rejected(guarded: DimseArchive) -> None:
    result = dcmtk("echoscu", "-aet", CALLING, "-aec", "SOMEONE_ELSE", "127.0.0.1", guarded.dimse_port)
    assert result.returncode != 0
    assert "Called AE Title Not Recognized" in result.stderr
    guarded.wait_for_log("called AE title 'SOMEONE_ELSE' is not ours")


def test_good_credentials_store(guarded: DimseArchive, tmp_path: Path) -> None:
    sent = renewed_file(tmp_path, "MR_small.dcm")
    result = storescu(guarded, sent, options=["--user", "alice", "--password", "s3cret:with:colons"])
    assert result.returncode == 0, result.stderr
    assert_stored_as_sent(guarded, sent)


@pytest.mark.parametrize(
    ("options", "why"),
    [
        (["--user", "alice", "--password", "wrong"], "wrong password for user 'alice'"),
        (["--user", "mallory", "--password", "s3cret:with:colons"], "unknown user 'mallory'"),
        ([], "no user identity offered"),
    ],
    ids=["wrong-password", "unknown-user", "no-identity"],
)
def test_bad_credentials_are_rejected(
    guarded: DimseArchive, tmp_path: Path, options: list[str], why: str
) -> None:
    sent = renewed_file(tmp_path, "MR_small.dcm")
    result = storescu(guarded, sent, options=options)
    assert result.returncode != 0
    assert "Association Rejected" in result.stderr
    guarded.wait_for_log(why)
    assert guarded.indexed(pydicom.dcmread(sent).SOPInstanceUID) is None


def test_a_sop_class_outside_the_policy_is_not_accepted(guarded: DimseArchive, tmp_path: Path) -> None:
    sent = renewed_file(tmp_path, "CT_small.dcm")
    result = storescu(guarded, sent, options=["--user", "bob", "--password", "hunter2"])
    assert result.returncode != 0
    assert "No presentation context" in result.stderr
    assert guarded.indexed(pydicom.dcmread(sent).SOPInstanceUID) is None
    guarded.wait_for_log("refused by the policy: ")


def test_a_listed_sop_class_keyword_or_uid_is_accepted(guarded: DimseArchive, tmp_path: Path) -> None:
    # 1.2.840.10008.5.1.4.1.1.7 (Secondary Capture) is listed by UID; SC_rgb_jpeg_dcmtk.dcm is one, JPEG
    # baseline, which storescu sends only when told to propose it (-xy).
    sent = renewed_file(tmp_path, "SC_rgb_jpeg_dcmtk.dcm")
    result = dcmtk(
        "storescu", "-xy", "-aet", CALLING, "-aec", AE_TITLE, "--user", "bob", "--password", "hunter2",
        "127.0.0.1", guarded.dimse_port, sent,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert_stored_as_sent(guarded, sent)


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DimseArchive]:
    """One association at a time. The readiness probe's connection, which never sends an A-ASSOCIATE-RQ, holds
    no slot (it did, until the ACSE timeout closed it, when pynetdicom counted the slots)."""
    with running_archive(tmp_path_factory.mktemp("limited"), DIMSE_MAX_ASSOCIATIONS="1") as server:
        yield server


def test_one_association_too_many_is_rejected(limited: DimseArchive) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title="HOLDER")
    ae.add_requested_context(Verification)
    holder = ae.associate("127.0.0.1", limited.dimse_port, ae_title=AE_TITLE)
    assert holder.is_established
    try:
        result = dcmtk("echoscu", "-aet", CALLING, "-aec", AE_TITLE, "127.0.0.1", limited.dimse_port)
    finally:
        holder.release()
    assert result.returncode != 0
    assert "Local Limit Exceeded" in result.stderr
    limited.wait_for_log("all 1 association slots are taken (DIMSE_MAX_ASSOCIATIONS)")
    # ...and the slot is free again once the first association is released.
    deadline = time.monotonic() + 10
    while dcmtk("echoscu", "-aet", CALLING, "-aec", AE_TITLE, "127.0.0.1", limited.dimse_port).returncode:
        assert time.monotonic() < deadline, "the association slot was never freed"
        time.sleep(0.2)


# -- policy All / UncompressedOnly --------------------------------------------------------------------------


def test_policy_all_accepts_a_private_sop_class(
    unrestricted: DimseArchive, archive: DimseArchive, tmp_path: Path
) -> None:
    private_class = "1.3.6.1.4.1.9590.100.1.2.999"  # outside the DICOM root: a vendor's own SOP class
    sent = renewed_file(tmp_path, "CT_small.dcm", SOPClassUID=private_class)
    ds = pydicom.dcmread(sent)
    ds.file_meta.MediaStorageSOPClassUID = private_class
    pydicom.dcmwrite(sent, ds, enforce_file_format=True)
    result = dcmsend(unrestricted, sent)
    assert result.returncode == 0, result.stderr + result.stdout
    assert_stored_as_sent(unrestricted, sent)
    # ...which the default policy (every *known* storage SOP class) does not accept.
    refused = dcmsend(archive, sent)
    assert archive.indexed(ds.SOPInstanceUID) is None, refused.stdout


def test_uncompressed_only_refuses_a_compressed_file_sent_as_is(
    unrestricted: DimseArchive, tmp_path: Path
) -> None:
    sent = renewed_file(tmp_path, "JPEG2000.dcm")
    dcmsend(unrestricted, sent)
    assert unrestricted.indexed(pydicom.dcmread(sent).SOPInstanceUID) is None
    plain = renewed_file(tmp_path, "CT_small.dcm")
    result = storescu(unrestricted, plain)
    assert result.returncode == 0, result.stderr
    assert_stored_as_sent(unrestricted, plain)


# -- TLS ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throw-away CA, a server certificate for 127.0.0.1 and a client certificate, PEM files."""
    return make_pki(tmp_path_factory.mktemp("pki"), ("server", "client"))


@pytest.fixture(scope="module")
def tls_archive(tmp_path_factory: pytest.TempPathFactory, pki: Path) -> Iterator[DimseArchive]:
    with running_archive(
        tmp_path_factory.mktemp("tls"),
        DIMSE_TLS_CERT=str(pki / "server.crt"),
        DIMSE_TLS_KEY=str(pki / "server.key"),
        DIMSE_TLS_CA=str(pki / "ca.crt"),
    ) as server:
        yield server


def test_tls_with_a_client_certificate_stores(tls_archive: DimseArchive, pki: Path, tmp_path: Path) -> None:
    sent = renewed_file(tmp_path, "CT_small.dcm")
    tls = ["+tls", str(pki / "client.key"), str(pki / "client.crt"), "+cf", str(pki / "ca.crt")]
    result = storescu(tls_archive, sent, options=tls)
    assert result.returncode == 0, result.stderr
    assert_stored_as_sent(tls_archive, sent)


def test_tls_without_a_client_certificate_is_refused(tls_archive: DimseArchive, pki: Path) -> None:
    anonymous = ["+tla", "+cf", str(pki / "ca.crt")]
    result = dcmtk(
        "echoscu", "-aet", CALLING, "-aec", AE_TITLE, *anonymous, "127.0.0.1", tls_archive.dimse_port
    )
    assert result.returncode != 0
    plain = dcmtk("echoscu", "-aet", CALLING, "-aec", AE_TITLE, "127.0.0.1", tls_archive.dimse_port)
    assert plain.returncode != 0


def test_a_silent_connection_does_not_keep_tls_peers_out(tls_archive: DimseArchive, pki: Path) -> None:
    """The TLS handshake belongs to the association-request phase, not to the accept loop, where a connection
    that sent nothing made every other peer wait for as long as it stayed open."""
    tls = ["+tls", str(pki / "client.key"), str(pki / "client.crt"), "+cf", str(pki / "ca.crt")]
    with socket.create_connection(("127.0.0.1", tls_archive.dimse_port)):
        result = dcmtk(
            "echoscu", "-aet", CALLING, "-aec", AE_TITLE, *tls, "127.0.0.1", tls_archive.dimse_port, timeout=20
        )
    assert result.returncode == 0, result.stderr


# -- part10.py against pydicom (no server) ------------------------------------------------------------------


def test_the_file_meta_encoding_is_pydicoms() -> None:
    from pydicom.dataset import FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    from dimse_bridge import part10

    fields = {
        "MediaStorageSOPClassUID": "1.2.840.10008.5.1.4.1.1.2",
        "MediaStorageSOPInstanceUID": "1.2.3.45",  # odd length: NUL padding
        "TransferSyntaxUID": "1.2.840.10008.1.2.4.90",
        "ImplementationClassUID": "1.2.826.0.1.3680043.9.3811.3.0.4",
        "ImplementationVersionName": "PYNETDICOM_304",
        "SendingApplicationEntityTitle": "MODALITY",
        "ReceivingApplicationEntityTitle": "ARC",  # odd length: space padding
    }
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    for keyword, value in fields.items():
        setattr(meta, keyword, value)
    expected = DicomBytesIO()
    expected.is_little_endian, expected.is_implicit_VR = True, False
    write_file_meta_info(expected, meta, enforce_standard=True)
    ours = part10.encode_file_meta(
        sop_class_uid=fields["MediaStorageSOPClassUID"],
        sop_instance_uid=fields["MediaStorageSOPInstanceUID"],
        transfer_syntax_uid=fields["TransferSyntaxUID"],
        implementation_class_uid=fields["ImplementationClassUID"],
        implementation_version_name=fields["ImplementationVersionName"],
        sending_ae_title=fields["SendingApplicationEntityTitle"],
        receiving_ae_title=fields["ReceivingApplicationEntityTitle"],
    )
    assert ours == part10.PREAMBLE + expected.getvalue()


# -- policies as pure functions (no server) -----------------------------------------------------------------


def test_access_policy_decisions() -> None:
    from dimse_bridge.access import AccessPolicy

    policy = AccessPolicy(
        ae_title="ARC", allowed_calling_aets=frozenset({"CT1"}), require_called_aet=True, users={"u": b"p"}
    )
    good = (2, b"u", b"p")
    assert policy.check("CT1", "ARC", good) is None
    assert policy.check("CT1 ", "ARC ", good) is None  # AE titles are space-padded on the wire
    refused = {
        "calling": policy.check("CT2", "ARC", good),
        "called": policy.check("CT1", "OTHER", good),
        "no identity": policy.check("CT1", "ARC", None),
        "password": policy.check("CT1", "ARC", (2, b"u", b"x")),
        "user": policy.check("CT1", "ARC", (2, b"x", b"p")),
        "kerberos": policy.check("CT1", "ARC", (3, b"ticket", b"")),
    }
    assert refused["calling"] is not None and refused["calling"].diagnostic == 0x03
    assert refused["called"] is not None and refused["called"].diagnostic == 0x07
    for why, rejection in refused.items():
        assert rejection is not None, why
        assert rejection.result == 0x01 and rejection.source == 0x01
    assert AccessPolicy(ae_title="ARC").check("ANY", "WHATEVER", None) is None


def test_presentation_policy_parsing() -> None:
    from dimse_bridge import policy

    listed = policy.build_policy(
        ["CTImageStorage", "1.2.840.10008.5.1.4.1.1.4"], ["JPEG2000", "ExplicitVRLittleEndian"]
    )
    assert listed.sop_classes == ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4")
    # Our preference among the listed syntaxes: native first, lossy last (see policy.py).
    assert listed.transfer_syntaxes == ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.91")
    everything = policy.build_policy(["AllStorage"], ["All"])
    assert everything.transfer_syntaxes[:2] == ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
    lossless_end = max(i for i, uid in enumerate(everything.transfer_syntaxes) if policy._rank(uid) <= 3)
    assert all(policy._rank(uid) == 4 for uid in everything.transfer_syntaxes[lossless_end + 1 :])
    assert not everything.any_storage and policy.build_policy(["All"], ["UncompressedOnly"]).any_storage
    with pytest.raises(ValueError, match="unknown SOP class"):
        policy.build_policy(["NoSuchStorage"], ["All"])
    with pytest.raises(ValueError, match="unknown transfer syntax"):
        policy.build_policy(["AllStorage"], ["JPEG3000"])
    assert policy.is_storage_like("1.3.6.1.4.1.9590.100.1.2.999")  # private
    assert policy.is_storage_like("1.2.840.10008.5.1.4.1.1.999")  # standard, newer than the libraries
    assert not policy.is_storage_like("1.2.840.10008.5.1.4.1.2.2.1")  # Study Root Q/R FIND
    assert not policy.is_storage_like("1.2.840.10008.1.20.1")  # Storage Commitment Push Model
