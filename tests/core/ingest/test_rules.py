"""Ingest rules, the ingest hook and de-identification, through the one ingest path and both doors."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from app.bootstrap import open_archive
from app.config import Settings
from app.context import ArchiveContext
from app.core.ingest.deidentify import BASIC_PROFILE_TAGS, UID_TAGS, UIDMapper
from app.core.ingest.outcomes import FailureReason, StoreStatus, WarningReason
from app.core.ingest.rules import IngestRules, RulesError
from tests import dicom_files
from tests.servers import free_port, running_archive
from tests.tools import require

MULTIPART = 'multipart/related; type="application/dicom"; boundary=dicom-boundary'
CT = "1.2.840.10008.5.1.4.1.1.2"

RULES = """
rules:
  - name: no secondary captures
    when: {sop_class: [SecondaryCaptureImageStorage]}
    reject: secondary captures are not archived
  - when: {modality: [OT, XC]}
    reject: {reason: "modality not accepted", status: 0xA900}
  - name: blocked modality AE
    when: {calling_ae: [BLOCKED]}
    reject: this AE may not store
  - when: {missing: [AccessionNumber]}
    reject: an accession number is required
  - name: site B
    when: {calling_ae: [SITE_B]}
    prefix: {PatientID: "SITEB-"}
  - when: {modality: MR}
    prefix: {PatientID: "HOSP-"}
    set: {IssuerOfPatientID: HOSP, InstitutionName: "Example Hospital"}
    copy: [{from: PatientID, to: OtherPatientIDs}]
    remove: [PatientComments]
  - when: {modality: [PT, SR]}
    deidentify: true
"""


def write_rules(directory: Path, text: str = RULES, name: str = "rules.yaml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


@pytest.fixture
async def context(tmp_path: Path) -> AsyncIterator[ArchiveContext]:
    settings = Settings(data_dir=tmp_path, ingest_rules_file=write_rules(tmp_path), _env_file=None)  # type: ignore[call-arg]
    ctx = await open_archive(settings)
    yield ctx
    await ctx.close()


def stored(ctx: ArchiveContext, outcome: Any) -> Dataset:
    path = (ctx.settings.storage_path / outcome.study_instance_uid / outcome.series_instance_uid
            / f"{outcome.sop_instance_uid}.dcm")
    return pydicom.dcmread(path)


def ct(**attributes: Any) -> Dataset:
    return dicom_files.renewed("CT_small.dcm", **{"AccessionNumber": "A1", **attributes})


# --------------------------------------------------------------------------- the rules file


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rules: [{when: {modality: [CT]}}]", "needs an action"),
        ("rules: [{reject: x, set: {PatientID: y}}]", "either rejects or coerces"),
        ("rules: [{set: {NotAKeyword: y}}]", "NotAKeyword"),
        ("rules: [{when: {sop_class: [NoSuchStorage]}, reject: x}]", "NoSuchStorage"),
        ("rules: [{when: {colour: [red]}, reject: x}]", "colour"),
        ("rules: [{reject: {reason: x, status: 0x9999}}]", "status"),
        ("rules: [{set: {ReferencedSeriesSequence: x}}]", "sequence"),
        ("rules: [{when: {modality: [CT]}, reject: x}", "not valid"),
        ("unknown_top_level: 1", "unknown_top_level"),
    ],
)
def test_a_bad_rules_file_is_refused_with_its_reason(tmp_path: Path, text: str, message: str) -> None:
    path = write_rules(tmp_path, text)
    with pytest.raises(RulesError, match=message) as caught:
        IngestRules.load(path)
    assert str(path) in str(caught.value)


async def test_a_bad_rules_file_stops_start_up(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, ingest_rules_file=write_rules(tmp_path, "rules: [{}]"), _env_file=None)  # type: ignore[call-arg]
    with pytest.raises(RulesError, match="INGEST_RULES_FILE"):
        await open_archive(settings)
    missing = Settings(data_dir=tmp_path, ingest_rules_file=tmp_path / "nope.yaml", _env_file=None)  # type: ignore[call-arg]
    with pytest.raises(RulesError, match="cannot read"):
        await open_archive(missing)
    with pytest.raises(RulesError, match="INGEST_HOOK"):
        await open_archive(Settings(data_dir=tmp_path, ingest_hook="tests.ingest_hooks:not_async", _env_file=None))  # type: ignore[call-arg]
    with pytest.raises(RulesError, match="cannot import"):
        await open_archive(Settings(data_dir=tmp_path, ingest_hook="no.such.module:hook", _env_file=None))  # type: ignore[call-arg]


def test_a_json_rules_file_is_read_too(tmp_path: Path) -> None:
    path = write_rules(tmp_path, json.dumps({"rules": [{"when": {"modality": "CT"}, "reject": "no CT"}]}), "r.json")
    verdict = IngestRules.load(path).evaluate(ct(), None)
    assert verdict.reject == (FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS, "ingest rule: no CT")


# --------------------------------------------------------------------------- rejection


@pytest.mark.parametrize(
    ("changes", "calling_ae", "failure"),
    [
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7"}, None, FailureReason.SOP_CLASS_NOT_SUPPORTED),
        ({"Modality": "OT"}, None, FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS),
        ({}, "BLOCKED", FailureReason.NOT_AUTHORIZED),
        ({"AccessionNumber": ""}, None, FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS),
    ],
)
async def test_reject_rules_refuse_with_their_reason_and_store_nothing(
    context: ArchiveContext, changes: dict[str, str], calling_ae: str | None, failure: FailureReason
) -> None:
    ds = ct(**changes)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    outcome = await context.ingest.store(dicom_files.part10(ds), calling_ae_title=calling_ae)
    assert outcome.status is StoreStatus.FAILED and outcome.failure is failure
    assert outcome.sop_instance_uid == ds.SOPInstanceUID
    assert await context.repository.count_instances() == 0
    assert not list(context.settings.storage_path.rglob("*.dcm"))


async def test_with_rules_headers_are_parsed_in_threads_and_no_parser_process_is_started(
    context: ArchiveContext,
) -> None:
    # Rules read the pydicom Dataset, which cannot leave the process: worker processes would idle.
    before = set(multiprocessing.active_children())
    await context.start_background()
    try:
        assert context.ingest.parser.workers == 0
        assert set(multiprocessing.active_children()) - before == set()
    finally:
        await context.stop_background()


async def test_a_calling_ae_rule_never_matches_without_an_ae(context: ArchiveContext) -> None:
    original = dicom_files.part10(ct())
    outcome = await context.ingest.store(original)  # as STOW-RS and import call it
    assert outcome.status is StoreStatus.STORED and outcome.warnings == []
    # Nothing changed: the bytes are stored exactly as received.
    path = (context.settings.storage_path / outcome.study_instance_uid / outcome.series_instance_uid
            / f"{outcome.sop_instance_uid}.dcm")
    assert path.read_bytes() == original


# --------------------------------------------------------------------------- coercion


async def test_coercions_are_applied_once_and_answered_with_warning_b000(context: ArchiveContext) -> None:
    ds = dicom_files.renewed("MR_small.dcm", AccessionNumber="A1", PatientID="123", PatientComments="secret")
    outcome = await context.ingest.store(dicom_files.part10(ds))
    assert outcome.ok and outcome.warnings == [WarningReason.COERCION_OF_DATA_ELEMENTS]
    assert "prefixed PatientID" in outcome.reason
    held = stored(context, outcome)
    assert held.PatientID == "HOSP-123" and held.IssuerOfPatientID == "HOSP"
    assert held.InstitutionName == "Example Hospital" and "PatientComments" not in held
    assert held.OtherPatientIDs == "123"  # copied before the prefix: rules see the received header
    assert held.PixelData == ds.PixelData  # the image is untouched
    (instance,) = await context.repository.find_instances(ds.StudyInstanceUID)
    assert instance.sop_instance_uid == ds.SOPInstanceUID
    # Sending the coerced copy again changes nothing more: the prefix is not doubled.
    again = await context.ingest.store(dicom_files.part10(held))
    assert again.ok and stored(context, again).PatientID == "HOSP-123"


async def test_a_calling_ae_coercion_applies_only_to_that_ae(context: ArchiveContext) -> None:
    ds = ct(PatientID="77")
    outcome = await context.ingest.store(dicom_files.part10(ds), calling_ae_title="SITE_B")
    assert stored(context, outcome).PatientID == "SITEB-77"


# --------------------------------------------------------------------------- the hook


async def test_the_hook_rejects_coerces_and_fails_safe(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, ingest_hook="tests.ingest_hooks:hook", _env_file=None)  # type: ignore[call-arg]
    ctx = await open_archive(settings)
    try:
        refused = await ctx.ingest.store(dicom_files.part10(ct(PatientID="BLOCK-ME")))
        assert refused.failure is FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS and "BLOCK-ME" in refused.reason
        denied = await ctx.ingest.store(dicom_files.part10(ct(PatientID="NOT-YOU")))
        assert denied.failure is FailureReason.NOT_AUTHORIZED
        broken = await ctx.ingest.store(dicom_files.part10(ct(PatientID="BROKEN")))
        assert broken.failure is FailureReason.PROCESSING_FAILURE
        tagged = await ctx.ingest.store(dicom_files.part10(ct(PatientID="TAG-ME", PatientComments="x")), origin="test")
        assert tagged.warnings == [WarningReason.COERCION_OF_DATA_ELEMENTS]
        held = stored(ctx, tagged)
        assert held.InstitutionName == "via test" and "PatientComments" not in held
        assert (await ctx.ingest.store(dicom_files.part10(ct(PatientID="OK")))).warnings == []
        assert await ctx.repository.count_instances() == 2
    finally:
        await ctx.close()


# --------------------------------------------------------------------------- de-identification


def identified(name: str = "CT_small.dcm", **more: Any) -> Dataset:
    """A test file given values for many Basic Profile attributes, a private element and nested PHI."""
    ds = dicom_files.renewed(name, Modality="PT", AccessionNumber="ACC-SECRET", **more)
    for keyword, value in {
        "PatientName": "DOE^JOHN", "PatientID": "PID-SECRET", "PatientBirthDate": "19600101", "PatientSex": "M",
        "PatientAddress": "1 Main St", "OtherPatientIDs": "OTHER-SECRET", "InstitutionName": "General Hospital",
        "ReferringPhysicianName": "WHO^DR", "OperatorsName": "OPERATOR^X", "StudyDescription": "secret study",
        "SeriesDescription": "secret series", "DeviceSerialNumber": "SN-123", "StationName": "STATION1",
        "StudyID": "S-42", "PatientAge": "064Y", "PatientWeight": "80", "ImageComments": "call me",
    }.items():
        setattr(ds, keyword, value)
    ds.FrameOfReferenceUID = more.get("FrameOfReferenceUID") or generate_uid()
    ds.add_new(0x00091010, "LO", "private secret")
    ref = Dataset()
    ref.ReferencedSOPClassUID = CT
    ref.ReferencedSOPInstanceUID = generate_uid()
    ref.PatientName = "NESTED^NAME"
    ds.ReferencedImageSequence = Sequence([ref])
    return ds


def _values(ds: Dataset) -> dict[Any, str]:
    found: dict[Any, str] = {}
    for element in ds.iterall():
        if element.VR != "SQ" and element.value not in (None, "", b""):
            found[element.tag] = str(element.value)
    return found


async def test_de_identified_copies_hold_none_of_the_basic_profile_values(context: ArchiveContext) -> None:
    first = identified()
    second = identified(StudyInstanceUID=first.StudyInstanceUID, FrameOfReferenceUID=first.FrameOfReferenceUID)
    outcomes = [await context.ingest.store(dicom_files.part10(ds)) for ds in (first, second)]
    assert all(o.ok and o.warnings == [WarningReason.COERCION_OF_DATA_ELEMENTS] for o in outcomes)
    copies = [stored(context, o) for o in outcomes]
    for original, copy in zip((first, second), copies, strict=True):
        before, after = _values(original), _values(copy)
        for tag, value in before.items():
            if tag in BASIC_PROFILE_TAGS:
                assert after.get(tag) != value, f"{tag} kept its value {value!r}"
        assert not [e for e in copy.iterall() if e.tag.is_private]
        assert "PID-SECRET" not in str(copy) and "NESTED^NAME" not in str(copy) and "DOE^JOHN" not in str(copy)
        assert copy.PatientIdentityRemoved == "YES"
        assert copy.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
        assert copy.file_meta.MediaStorageSOPInstanceUID == copy.SOPInstanceUID
        assert copy.SOPClassUID == original.SOPClassUID  # class UIDs are kept
        assert copy.ReferencedImageSequence[0].ReferencedSOPClassUID == CT
        assert copy.PixelData == original.PixelData
    # UIDs are remapped consistently within the study: one new study, one frame of reference, and the same
    # original UID always gives the same new one.
    assert copies[0].StudyInstanceUID == copies[1].StudyInstanceUID != first.StudyInstanceUID
    assert copies[0].FrameOfReferenceUID == copies[1].FrameOfReferenceUID != first.FrameOfReferenceUID
    assert copies[0].SOPInstanceUID != copies[1].SOPInstanceUID
    assert copies[0].StudyInstanceUID == UIDMapper()(first.StudyInstanceUID)
    assert outcomes[0].study_instance_uid == copies[0].StudyInstanceUID  # the answer names what is held
    assert await context.repository.find_instances(first.StudyInstanceUID) == []
    assert len(await context.repository.find_instances(copies[0].StudyInstanceUID)) == 2


def test_mapped_uids_are_valid_and_stay_under_the_root() -> None:
    for root in ("2.25", "1.2.826.0.1.3680043.10.1234", "1." + "2" * 50):
        mapper = UIDMapper(root, salt="s")
        new = mapper("1.2.3.4")
        assert new.startswith(root + ".") and len(new) <= 64
        assert re.fullmatch(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*", new)
        assert mapper("1.2.3.4") == new != mapper("1.2.3.5") and UIDMapper(root, salt="t")("1.2.3.4") != new
    assert len(UID_TAGS) > 20


# --------------------------------------------------------------------------- over both doors


def test_rules_over_stow_rs_answer_failure_reasons_and_coercion_warnings(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, dimse_enabled=False, ingest_rules_file=write_rules(tmp_path), _env_file=None)  # type: ignore[call-arg]
    with running_archive(settings) as server:
        refused = ct(Modality="OT")
        coerced = dicom_files.renewed("MR_small.dcm", AccessionNumber="A1", PatientID="9")
        plain = ct()
        body = dicom_files.multipart([dicom_files.part10(d) for d in (refused, coerced, plain)])
        response = httpx.post(f"{server.dicomweb}/studies", content=body,
                              headers={"Content-Type": MULTIPART, "Accept": "application/dicom+json"}, timeout=60)
        assert response.status_code == 202, response.text
        answer = response.json()
        (failed,) = answer["00081198"]["Value"]
        assert failed["00081155"]["Value"] == [refused.SOPInstanceUID] and failed["00081197"]["Value"] == [0xA900]
        warnings = {item["00081155"]["Value"][0]: item.get("00081196", {}).get("Value") for item in answer["00081199"]["Value"]}
        assert warnings == {coerced.SOPInstanceUID: [0xB000], plain.SOPInstanceUID: None}
        found = httpx.get(f"{server.dicomweb}/studies", params={"PatientID": "HOSP-9"}, timeout=30).json()
        assert [s["0020000D"]["Value"][0] for s in found] == [coerced.StudyInstanceUID]
        sc = ct(SOPClassUID="1.2.840.10008.5.1.4.1.1.7")
        sc.file_meta.MediaStorageSOPClassUID = sc.SOPClassUID
        only_refused = httpx.post(f"{server.dicomweb}/studies", content=dicom_files.multipart([dicom_files.part10(sc)]),
                                  headers={"Content-Type": MULTIPART}, timeout=60)
        assert only_refused.status_code == 409
        assert only_refused.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0x0122]


@pytest.mark.parametrize(("calling", "changes", "status"), [
    ("BLOCKED", {}, 0x0124),
    ("MODALITY", {"Modality": "OT"}, 0xA900),
    ("MODALITY", {"AccessionNumber": ""}, 0xA900),
])
def test_rules_over_c_store_answer_the_same_reasons(
    tmp_path: Path, calling: str, changes: dict[str, str], status: int
) -> None:
    require("storescu")
    port = free_port()
    settings = Settings(data_dir=tmp_path / "a", dimse_port=port, ingest_rules_file=write_rules(tmp_path), _env_file=None)  # type: ignore[call-arg]
    refused, accepted = ct(**changes), ct(PatientID="5")
    paths = []
    for i, ds in enumerate((refused, accepted)):
        paths.append(tmp_path / f"{i}.dcm")
        paths[-1].write_bytes(dicom_files.part10(ds))
    with running_archive(settings) as server:
        run = subprocess.run(
            ["storescu", "-v", "-aec", "DICOMWEB", "-aet", calling, "127.0.0.1", str(port), str(paths[0])],
            timeout=120, env={**os.environ, "TCP_NODELAY": "1"}, capture_output=True, text=True,
        )
        # storescu prints a status it has a name for by name, others as hex ("Unknown Status: 0x124").
        names = {0xA900: "error: datasetdoesnotmatchsopclass"}
        printed = (run.stdout + run.stderr).lower()
        assert re.search(rf"0x0*{status:x}\b", printed) or names.get(status, "?") in printed, printed
        site_b = subprocess.run(
            ["storescu", "-aec", "DICOMWEB", "-aet", "SITE_B", "127.0.0.1", str(port), str(paths[1])],
            timeout=120, env={**os.environ, "TCP_NODELAY": "1"}, capture_output=True, text=True,
        )
        assert site_b.returncode == 0, site_b.stderr
        held = httpx.get(f"{server.dicomweb}/instances", timeout=30).json()
        assert [i["00080018"]["Value"][0] for i in held] == [accepted.SOPInstanceUID]
        meta = httpx.get(f"{server.dicomweb}/studies/{accepted.StudyInstanceUID}/metadata", timeout=30).json()
        assert meta[0]["00100020"]["Value"] == ["SITEB-5"]  # the calling-AE coercion, over DIMSE
