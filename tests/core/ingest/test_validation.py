"""Input validation at ingest, through the real doors (the "Hardening" issue): what the archive used to accept or
answer badly is now refused with its reason, and every valid file it accepted is still accepted.

Each HTTP test posts to the running app as a client does (tests/servers.py); one C-STORE goes through pynetdicom,
since C-STORE and STOW-RS share the ingest path (app/core/ingest/service.py). The parser-level tests cover what a request
would take too long to try: every bundled test file and hypothesis-generated instances.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import struct
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_charset_files, get_testdata_files
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

from app.config import Settings
from app.core.dicom.uids import InvalidUIDError, check_uid
from app.core.ingest.outcomes import FailureReason
from app.core.ingest.parsing import MAX_NOTES, HeaderParser, Parsed, ParseFailure, parse_instance
from tests import dicom_files
from tests.servers import ArchiveServer, free_port, running_archive

MULTIPART = 'multipart/related; type="application/dicom"; boundary=dicom-boundary'
DICOM_JSON_MULTIPART = 'multipart/related; type="application/dicom+json"; boundary=meta'
A900 = int(FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS)
C000 = int(FailureReason.CANNOT_UNDERSTAND)
# The same examples in every run (derandomize), so a red run can be replayed.
PROPERTY = settings(
    max_examples=150, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck)
)


def post(
    server: ArchiveServer, body: bytes, content_type: str = MULTIPART, path: str = "/studies", **headers: str
) -> httpx.Response:
    return httpx.post(
        server.dicomweb + path, content=body, headers={"Content-Type": content_type, **headers}, timeout=120
    )


def failure_codes(response: httpx.Response) -> list[int]:
    body = response.json()
    items = body.get("00081198", {}).get("Value", []) + body.get("0008119A", {}).get("Value", [])
    return [item["00081197"]["Value"][0] for item in items]


def with_raw_values(ds: Dataset, values: dict[int, tuple[str, bytes]]) -> bytes:
    """`ds` as Part 10 bytes (explicit VR little endian) with each `tag: (vr, value)` put raw: how a sender's bad
    values arrive, which pydicom would refuse to write."""
    for tag, (_, value) in values.items():
        ds.add(DataElement(tag, "LO", "\0" * len(value)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a placeholder may be longer than an LO may be
        raw = dicom_files.part10(ds)
    for tag, (vr, value) in values.items():
        head = (tag >> 16).to_bytes(2, "little") + (tag & 0xFFFF).to_bytes(2, "little")
        length = len(value).to_bytes(2, "little")
        placeholder = head + b"LO" + length + b"\0" * len(value)
        assert raw.count(placeholder) == 1
        raw = raw.replace(placeholder, head + vr.encode() + length + value)
    return raw


def pixel_data_offset(raw: bytes) -> int:
    offset = raw.rfind(b"\xe0\x7f\x10\x00")
    assert offset > 0
    return offset


# --------------------------------------------------------------------------- 1. parts per request


@pytest.fixture(scope="module")
def few_parts_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArchiveServer]:
    settings = Settings(  # type: ignore[call-arg]
        data_dir=tmp_path_factory.mktemp("few-parts"),
        dimse_enabled=False,
        max_request_parts=100,
        _env_file=None,
    )
    with running_archive(settings) as server:
        yield server


def test_a_body_of_more_parts_than_max_request_parts_is_refused_with_413_and_the_reason(
    few_parts_server: ArchiveServer,
) -> None:
    body = dicom_files.multipart([b"x"] * 101)
    response = post(few_parts_server, body)
    assert response.status_code == 413, response.text
    reason = response.json()["00000902"]["Value"][0]
    assert "more than 100 parts (MAX_REQUEST_PARTS)" in reason
    assert "MAX_REQUEST_PARTS" in response.headers["warning"]
    assert post(few_parts_server, dicom_files.multipart([b"x"] * 100)).status_code == 409  # at the limit


def test_dicom_json_metadata_describing_more_instances_than_max_request_parts_is_refused_with_413(
    few_parts_server: ArchiveServer,
) -> None:
    body = b"--meta\r\nContent-Type: application/dicom+json\r\n\r\n" + json.dumps([{}] * 101).encode()
    response = post(few_parts_server, body + b"\r\n--meta--\r\n", DICOM_JSON_MULTIPART)
    assert response.status_code == 413, response.text
    assert "more than 100 instances (MAX_REQUEST_PARTS)" in response.json()["00000902"]["Value"][0]


def test_the_refusals_of_a_body_of_many_bad_parts_are_one_log_line(
    archive_server: ArchiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    good = dicom_files.renewed("CT_small.dcm")
    parts = (
        [b"not DICOM"] * 400 + [bytes(128) + b"DICM but nothing after it"] * 99 + [dicom_files.part10(good)]
    )
    with caplog.at_level(logging.WARNING):
        started = time.monotonic()
        response = post(archive_server, dicom_files.multipart(parts))
        elapsed = time.monotonic() - started
    assert response.status_code == 202, response.text
    assert failure_codes(response) == [C000] * 499
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("app.")]
    assert len(lines) == 1, lines[:5]
    assert "499 of 500 instance(s) refused (0xC000 x499)" in lines[0]
    assert elapsed < 30  # was 50,000 parts in 27 s; these 500 take well under a second


# --------------------------------------------------------------------------- 2. deeply nested DICOM JSON


def _nested_sequences(levels: int) -> str:
    """A data set whose Referenced Series Sequence nests `levels` deep (three JSON levels each, PS3.18 F.2)."""
    inner = '{"00080018": {"vr": "UI", "Value": ["1.2.3"]}}'
    for _ in range(levels):
        inner = '{"00081115": {"vr": "SQ", "Value": [' + inner + "]}}"
    return "[" + inner + "]"


@pytest.mark.parametrize(
    "metadata",
    [_nested_sequences(1_000), "[" * 100_000 + "]" * 100_000],
    ids=["1000-sequences", "100000-arrays"],
)
def test_deeply_nested_dicom_json_fails_with_0xc000_and_the_reason_not_a_500(
    archive_server: ArchiveServer, metadata: str
) -> None:
    body = b"--meta\r\nContent-Type: application/dicom+json\r\n\r\n" + metadata.encode() + b"\r\n--meta--\r\n"
    response = post(archive_server, body, DICOM_JSON_MULTIPART)
    assert response.status_code == 409, response.text
    assert failure_codes(response) == [C000]
    assert "nested too deeply" in response.headers["warning"]


# --------------------------------------------------------------------------- 3. instances that must be refused


def _leading_zero_uid() -> bytes:
    return dicom_files.part10(dicom_files.renewed("CT_small.dcm", StudyInstanceUID="1.02.3"))


def _two_study_uids() -> bytes:
    ds = dicom_files.renewed("CT_small.dcm")
    del ds.StudyInstanceUID
    two = f"{generate_uid()}\\{generate_uid()}".encode()
    return with_raw_values(ds, {0x0020000D: ("UI", two + b"\0" * (len(two) % 2))})


def _header_value_past_the_end() -> bytes:
    raw = dicom_files.part10(dicom_files.renewed("MR_small_implicit.dcm"))  # implicit VR: pydicom's reader
    return raw[: pixel_data_offset(raw) - 3]  # the last header value loses its last bytes


def _pixel_data_past_the_end() -> bytes:
    raw = dicom_files.part10(dicom_files.renewed("CT_small.dcm"))  # explicit VR: the byte reader
    return raw[: pixel_data_offset(raw) + 1000]


def _trailing_element_past_the_end() -> bytes:
    # Data Set Trailing Padding (FFFC,FFFC) after the pixel data, claiming a megabyte the file does not hold.
    return (
        dicom_files.part10(dicom_files.renewed("CT_small.dcm"))
        + b"\xfc\xff\xfc\xffOB\0\0"
        + (2**20).to_bytes(4, "little")
    )


def _native_frames(frames: int) -> bytes:
    return dicom_files.part10(dicom_files.renewed("CT_small.dcm", NumberOfFrames=frames))


def _encapsulated_frames(frames: int) -> bytes:
    return dicom_files.part10(dicom_files.renewed("JPEG2000.dcm", NumberOfFrames=frames))


def _huge_image() -> bytes:
    return dicom_files.part10(dicom_files.renewed("CT_small.dcm", Rows=65535, Columns=65535))


REFUSED = {
    "leading-zero UID": (
        _leading_zero_uid,
        A900,
        "StudyInstanceUID 1.02.3 has a component with a leading zero",
    ),
    "two Study Instance UIDs": (_two_study_uids, A900, "StudyInstanceUID has 2 values where one is allowed"),
    "header value past the end": (_header_value_past_the_end, C000, "bytes but the file ends"),
    "pixel data past the end": (_pixel_data_past_the_end, C000, "past the end of the file"),
    "trailing element past the end": (_trailing_element_past_the_end, C000, "(FFFC,FFFC) at byte"),
    "2^31-1 native frames": (
        lambda: _native_frames(2**31 - 1),
        A900,
        "NumberOfFrames 2147483647 is more than",
    ),
    "2^31-1 encapsulated frames": (
        lambda: _encapsulated_frames(2**31 - 1),
        A900,
        "NumberOfFrames 2147483647",
    ),
    "65535 x 65535 pixels": (_huge_image, A900, "Rows 65535 x Columns 65535"),
}


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # pydicom's own writer dislikes 1.02.3 too
@pytest.mark.parametrize("case", REFUSED)
def test_an_instance_that_used_to_be_accepted_is_refused_with_its_reason(
    archive_server: ArchiveServer, case: str
) -> None:
    make, code, reason = REFUSED[case]
    response = post(archive_server, dicom_files.multipart([make()]))
    assert response.status_code == 409, response.text
    assert failure_codes(response) == [code]
    assert reason in response.headers["warning"]


def test_the_same_instances_with_what_their_header_claims_are_still_stored(
    archive_server: ArchiveServer,
) -> None:
    ds = dicom_files.renewed("CT_small.dcm", NumberOfFrames=1)
    rle = dicom_files.renewed("SC_rgb_rle_2frame.dcm")
    response = post(archive_server, dicom_files.multipart([dicom_files.part10(ds), dicom_files.part10(rle)]))
    assert response.status_code == 200, response.text


def _every_test_file() -> list[tuple[str, Path]]:
    files = {Path(p).name: Path(p) for p in [*get_testdata_files("*"), *get_charset_files("*")]}
    return sorted((name, path) for name, path in files.items() if path.is_file())


EVERY_TEST_FILE = _every_test_file()  # pydicom's bundled files and pydicom-data's (the lookup is slow: once)


# Refused before this change, and for the same reasons now: not Part 10 files, or no usable identifying UIDs.
REFUSED_AS_BEFORE = (
    "not a DICOM Part 10 instance",
    "no File Meta Information",
    "StudyInstanceUID is missing",
    "is not a valid UID",
)
# Accepted before, refused now, each for the defect the issue names: a value runs past the end of the file.
NOW_REFUSED = {
    "MR_truncated.dcm": "Pixel Data at byte 1500 claims 8192 bytes, past the end of the file",
    "rtplan_truncated.dcm": "(300A,00B0) claims 976 bytes but the file ends 711 bytes into its value",
}


@pytest.mark.filterwarnings("ignore::UserWarning")  # what pydicom says about the odder files' values
@pytest.mark.parametrize(("name", "path"), EVERY_TEST_FILE, ids=[name for name, _ in EVERY_TEST_FILE])
def test_every_valid_test_file_is_still_accepted_and_both_header_readers_agree(name: str, path: Path) -> None:
    data = path.read_bytes()
    fast = parse_instance(data)  # the byte reader where it can, else pydicom's
    slow = parse_instance(data, keep_dataset=True)  # always pydicom's reader
    if isinstance(fast, Parsed):
        assert isinstance(slow, Parsed), slow
        assert fast.record == slow.record
        return
    assert isinstance(slow, ParseFailure), name
    assert (fast.reason, fast.message) == (slow.reason, slow.message)
    if name in NOW_REFUSED:
        assert fast.reason == FailureReason.CANNOT_UNDERSTAND and NOW_REFUSED[name] in fast.message
    else:
        assert any(known in fast.message for known in REFUSED_AS_BEFORE), fast.message


# --------------------------------------------------------------------------- properties of the checks

_components = st.lists(st.integers(0, 10**12), min_size=1, max_size=12)


@PROPERTY
@given(components=_components, at=st.integers(0, 11))
def test_a_uid_is_conformant_exactly_when_no_component_has_a_leading_zero(
    components: list[int], at: int
) -> None:
    uid = ".".join(map(str, components))
    if len(uid) < 64:
        assert check_uid(uid, conformant=True) == uid
        index = at % len(components)
        zeroed = ".".join(f"0{c}" if i == index else str(c) for i, c in enumerate(components))
        with pytest.raises(InvalidUIDError, match="leading zero"):
            check_uid(zeroed, "StudyInstanceUID", conformant=True)
        assert check_uid(zeroed) == zeroed  # a lookup still finds what was stored before PS3.5 was enforced


def _native(rows: int, columns: int, samples: int, bits: int, frames: int, held: int) -> bytes:
    ds = dicom_files.secondary_capture()
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.BitsAllocated = rows, columns, samples, bits
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
    ds.PhotometricInterpretation = "RGB" if samples == 3 else "MONOCHROME2"
    ds.NumberOfFrames = frames
    ds.PixelData = bytes(held + held % 2)
    return dicom_files.part10(ds)


@PROPERTY
@given(
    rows=st.integers(1, 12),
    columns=st.integers(1, 12),
    samples=st.sampled_from([1, 3]),
    bits=st.sampled_from([1, 8, 16, 32]),
    frames=st.integers(1, 5),
    slack=st.integers(-600, 64),
)
def test_native_pixel_data_is_refused_exactly_when_it_holds_less_than_the_header_claims(
    rows: int, columns: int, samples: int, bits: int, frames: int, slack: int
) -> None:
    pixels = rows * columns * samples * frames
    needed = -(-pixels // 8) if bits == 1 else pixels * bits // 8
    held = max(0, needed + slack)
    held += held % 2  # DICOM values are of even length
    result = parse_instance(_native(rows, columns, samples, bits, frames, held))
    if held >= needed:
        assert isinstance(result, Parsed), result
    else:
        assert isinstance(result, ParseFailure)
        assert result.reason == FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS, result.message


RLE_TWO_FRAMES = dicom_files.part10(dicom_files.renewed("SC_rgb_rle_2frame.dcm"))
CT = dicom_files.part10(dicom_files.renewed("CT_small.dcm"))


def _ends(raw: bytes) -> set[int]:
    """Where each element and item from the pixel data on ends (explicit VR little endian, PS3.5 7.1, 7.5): a
    file cut there holds whole elements, so it is not one whose element runs past its end."""
    offset, ends = pixel_data_offset(raw), set()
    while offset < len(raw):
        (group,) = struct.unpack_from("<H", raw, offset)
        if group == 0xFFFE:
            offset += 8 + struct.unpack_from("<I", raw, offset + 4)[0]
        else:
            length = struct.unpack_from("<I", raw, offset + 8)[0]
            offset += 12 + (0 if length == 0xFFFFFFFF else length)  # undefined: its items follow
        ends.add(offset)
    return ends


@PROPERTY
@given(source=st.sampled_from([CT, RLE_TWO_FRAMES]), data=st.data())
def test_an_instance_cut_inside_its_pixel_data_or_a_later_element_is_refused_by_both_readers(
    source: bytes, data: st.DataObject
) -> None:
    # A cut within the first 8 bytes leaves a partial tag, which both readers (as pydicom) take as no element.
    cut = data.draw(
        st.integers(pixel_data_offset(source) + 8, len(source) - 1).filter(lambda c: c not in _ends(source))
    )
    for keep_dataset in (False, True):
        result = parse_instance(source[:cut], keep_dataset=keep_dataset)
        assert isinstance(result, ParseFailure), (cut, keep_dataset)
        assert result.reason == FailureReason.CANNOT_UNDERSTAND, result.message


@PROPERTY
@given(
    frames=st.integers(1, 2**31 - 1),
    fragment=st.binary(min_size=2, max_size=64).filter(lambda b: len(b) % 2 == 0),
)
def test_an_encapsulated_frame_count_is_refused_exactly_when_the_fragments_cannot_hold_it(
    frames: int, fragment: bytes
) -> None:
    ds = dicom_files.renewed("SC_rgb_rle_2frame.dcm", NumberOfFrames=frames)
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.PixelData = encapsulate([fragment, fragment])
    result = parse_instance(dicom_files.part10(ds))
    if frames <= 2 * len(fragment):
        assert isinstance(result, Parsed), result
    else:
        assert isinstance(result, ParseFailure)
        assert result.reason == FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS, result.message


@st.composite
def _damaged(draw: st.DrawFn) -> bytes:
    """CT_small or a two-frame RLE instance with a few bytes changed, inserted or cut, anywhere."""
    data = bytearray(draw(st.sampled_from([CT, RLE_TWO_FRAMES])))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        change = draw(st.integers(0, 2))
        if change == 0:
            data[at : at + 4] = draw(st.sampled_from([b"\xff\xff\xff\xff", b"\xfe\xff\x00\xe0", b"\x00\x00"]))
        elif change == 1:
            data[at:at] = draw(st.binary(min_size=1, max_size=12))
        else:
            del data[at:]
    return bytes(data)


@settings(PROPERTY, max_examples=400)
@given(data=_damaged())
def test_both_header_readers_accept_and_refuse_the_same_damaged_instances(data: bytes) -> None:
    fast = parse_instance(data)  # the byte reader where it takes the file
    slow = parse_instance(data, keep_dataset=True)  # pydicom's reader always
    if isinstance(fast, Parsed):
        assert isinstance(slow, Parsed) and fast.record == slow.record, slow
    else:
        assert isinstance(slow, ParseFailure), fast
        assert (fast.reason, fast.message) == (slow.reason, slow.message)


# --------------------------------------------------------------------------- 4. the wrong study URL


def test_an_instance_posted_to_another_studys_url_is_refused_naming_both_study_uids(
    archive_server: ArchiveServer,
) -> None:
    ds = dicom_files.renewed("CT_small.dcm")
    url_study = generate_uid()
    response = post(
        archive_server, dicom_files.multipart([dicom_files.part10(ds)]), path=f"/studies/{url_study}"
    )
    assert response.status_code == 409
    assert failure_codes(response) == [A900]
    warning = response.headers["warning"]
    assert f"StudyInstanceUID differs from the request: {ds.StudyInstanceUID} in the data set" in warning
    assert f"{url_study} in the request" in warning


# --------------------------------------------------------------------------- 5. pydicom's warnings


def _served(tmp_path: Path, **env: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    """`python -m app serve` with JSON logs on stderr, as an operator runs it."""
    port = free_port()
    stderr = tmp_path / "stderr.log"
    clean = {
        k: v for k, v in os.environ.items() if not k.upper().startswith(("MONGO_", "STORAGE_", "INGEST_"))
    }
    clean.update(
        {
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "INFO",
            "DIMSE_ENABLED": "false",
            "DATA_DIR": str(tmp_path / "data"),
            **env,
        }
    )
    with stderr.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path,
            env=clean,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base}/health").status_code == 200:
                return process, base, stderr
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("server did not start:\n" + stderr.read_text())
        time.sleep(0.1)


@pytest.mark.parametrize("workers", ["1", "0"], ids=["in-a-worker-process", "in-a-thread"])
def test_pydicoms_warnings_about_a_senders_values_are_logged_with_the_request_id_not_raw_to_stderr(
    tmp_path: Path, workers: str
) -> None:
    # InstanceNumber "1A" is not an IS (PS3.5 6.2): pydicom warns while reading it.
    instance = with_raw_values(dicom_files.renewed("CT_small.dcm"), {0x00200013: ("IS", b"1A")})
    process, base, stderr = _served(tmp_path, INGEST_WORKERS=workers)
    try:
        response = httpx.post(
            f"{base}/dicom-web/studies",
            content=dicom_files.multipart([instance]),
            headers={"Content-Type": MULTIPART, "X-Request-ID": "bad-values-5"},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        deadline = time.monotonic() + 10
        while "bad-values-5" not in stderr.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        process.terminate()
        process.wait(timeout=30)
    lines = stderr.read_text().splitlines()
    raw = [line for line in lines if line.strip() and not line.startswith("{")]
    assert not raw, raw[:5]  # nothing on stderr but the JSON log (no "UserWarning: ..." from any process)
    records = [json.loads(line) for line in lines if line.strip()]
    mine = [
        r for r in records if r["request_id"] == "bad-values-5" and "Invalid value for VR IS" in r["message"]
    ]
    assert len(mine) == 1, records
    assert "'1A'" in mine[0]["message"]


@pytest.mark.parametrize("workers", [1, 0], ids=["in-a-worker-process", "in-threads"])
async def test_each_instance_parsed_at_once_gets_its_own_pydicom_warnings_as_notes(workers: int) -> None:
    bad = {
        value: with_raw_values(dicom_files.renewed("CT_small.dcm"), {0x00200013: ("IS", value)})
        for value in (b"1A", b"2B", b"3C", b"4D")
    }
    # More distinct bad values than MAX_NOTES (a private block, so any tags will do).
    crowd = {0x00091010 + n: ("IS", f"{n:02d}X ".encode()) for n in range(MAX_NOTES + 5)}
    crowded_instance = with_raw_values(dicom_files.renewed("CT_small.dcm"), crowd)
    parser = HeaderParser(workers=workers)
    try:
        results = await asyncio.gather(*(parser.parse(data) for data in bad.values()))
        crowded = await parser.parse(crowded_instance)
    finally:
        parser.close()
    for value, result in zip(bad, results, strict=True):
        assert isinstance(result, Parsed)
        assert [note for note in result.notes if "VR IS" in note] == [
            note for note in result.notes if repr(value.decode()) in note
        ]
        assert any(repr(value.decode()) in note for note in result.notes), result.notes
    assert isinstance(crowded, Parsed) and len(crowded.notes) == MAX_NOTES  # a header of bad values: bounded


# --------------------------------------------------------------------------- the other door: C-STORE


def test_a_c_store_of_an_instance_claiming_more_frames_than_its_pixel_data_holds_gets_0xa900(
    tmp_path: Path,
) -> None:
    from pynetdicom import AE

    settings = Settings(  # type: ignore[call-arg]
        data_dir=tmp_path, dimse_enabled=True, dimse_host="127.0.0.1", dimse_port=free_port(), _env_file=None
    )
    ds = dicom_files.renewed("CT_small.dcm", NumberOfFrames=2**31 - 1)
    with running_archive(settings) as server:
        ae = AE(ae_title="STORESCU")
        ae.add_requested_context(ds.SOPClassUID, [ExplicitVRLittleEndian])
        assoc = ae.associate("127.0.0.1", settings.dimse_port, ae_title=settings.ae_title)
        assert assoc.is_established
        try:
            response = assoc.send_c_store(ds)
        finally:
            assoc.release()
        assert response.Status == A900
        assert response.ErrorComment.startswith("NumberOfFrames 2147483647 is more than")
        lookup = httpx.get(f"{server.dicomweb}/studies/{ds.StudyInstanceUID}/metadata")
        assert lookup.status_code == 404
