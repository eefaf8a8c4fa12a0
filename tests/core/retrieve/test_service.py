"""The retrieve service on its own (app/core/retrieve/): the negotiation rules every door shares, and the
calls the DIMSE C-GET/C-MOVE handlers make (`choose_transfer_syntax`, `load`, `open_instance`), and the
read-ahead that many-instance WADO-RS answers use (`open_instances`)."""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.uid import generate_uid
from pynetdicom.dsutils import encode

from app.bootstrap import open_archive
from app.config import Settings
from app.context import ArchiveContext
from app.core.records import StoredInstance
from app.core.retrieve.files import StoredFiles
from app.core.retrieve.negotiation import ANY, DEFAULT, AcceptedFrames, AcceptedSyntaxes, FrameRange
from app.core.retrieve.outcomes import InvalidRequest, NotAcceptable, NotFound, RetrieveFailed
from app.core.retrieve.render import RenderOptions
from app.core.retrieve.service import RetrieveService
from app.core.retrieve.streaming import CHUNK_SIZE, OPEN_BATCH, InstanceStream
from app.core.retrieve.transcode import data_set_offset
from tests import dicom_files

EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
BIG = "1.2.840.10008.1.2.2"
RLE = "1.2.840.10008.1.2.5"
JLS = "1.2.840.10008.1.2.4.80"
BASELINE = "1.2.840.10008.1.2.4.50"
J2K_LOSSY = "1.2.840.10008.1.2.4.91"
T = TypeVar("T")


@pytest.mark.parametrize(
    ("stored", "accepted", "expected"),
    [
        (EXPLICIT, AcceptedSyntaxes.of([ANY], web=True), EXPLICIT),
        (IMPLICIT, AcceptedSyntaxes.of([ANY], web=True), EXPLICIT),  # PS3.18 §8.7.3: never implicit on the web
        (BIG, AcceptedSyntaxes.of([ANY], web=True), EXPLICIT),
        (IMPLICIT, AcceptedSyntaxes.of([ANY]), IMPLICIT),  # DIMSE may use it
        (RLE, AcceptedSyntaxes.of([DEFAULT], web=True), EXPLICIT),  # §8.7.3.4 default
        (BASELINE, AcceptedSyntaxes.of([DEFAULT], web=True), BASELINE),  # only lossy held: as stored
        (J2K_LOSSY, AcceptedSyntaxes.of([DEFAULT], web=True), J2K_LOSSY),
        (EXPLICIT, AcceptedSyntaxes.of([IMPLICIT], web=True), None),
        (EXPLICIT, AcceptedSyntaxes.of([BASELINE]), None),  # no lossy encoding, ever
        (JLS, AcceptedSyntaxes.of([EXPLICIT, JLS]), JLS),  # one tier: the stored syntax wins
        (JLS, AcceptedSyntaxes(((EXPLICIT,), (JLS,))), EXPLICIT),  # tiers: the preferred one wins
        (EXPLICIT, AcceptedSyntaxes.of([IMPLICIT, RLE]), IMPLICIT),  # first producible in the tier
    ],
)
def test_transfer_syntax_choice(stored: str, accepted: AcceptedSyntaxes, expected: str | None) -> None:
    assert accepted.choose(stored) == expected


@pytest.mark.parametrize(
    ("stored", "ranges", "expected"),
    [
        (EXPLICIT, [FrameRange("*/*")], ("application/octet-stream", EXPLICIT, False)),
        (IMPLICIT, [FrameRange("application/octet-stream")], ("application/octet-stream", EXPLICIT, False)),
        (JLS, [FrameRange("*/*")], ("image/jls", JLS, False)),
        (JLS, [FrameRange("application/octet-stream")], ("application/octet-stream", EXPLICIT, True)),
        (JLS, [FrameRange("application/octet-stream", ANY)], ("application/octet-stream", JLS, False)),
        (RLE, [FrameRange("image/*")], ("image/dicom-rle", RLE, False)),
        (BASELINE, [FrameRange("application/octet-stream"), FrameRange("image/jpeg")], ("image/jpeg", BASELINE, False)),
        (EXPLICIT, [FrameRange("image/jpeg")], None),
        (JLS, [FrameRange("image/jls", RLE)], None),
    ],
)
def test_frame_encoding_choice(
    stored: str, ranges: list[FrameRange], expected: tuple[str, str, bool] | None
) -> None:
    chosen = AcceptedFrames.of(ranges).choose(stored)
    assert (None if chosen is None else (chosen.media_type, chosen.transfer_syntax, chosen.decode)) == expected


@pytest.fixture
async def context(tmp_path: Path) -> AsyncIterator[ArchiveContext]:
    opened = await open_archive(Settings(data_dir=tmp_path, dimse_enabled=False, _env_file=None))  # type: ignore[call-arg]
    try:
        yield opened
    finally:
        await opened.close()


async def test_the_calls_a_dimse_handler_makes(context: ArchiveContext) -> None:
    ds = dicom_files.renewed("MR_small_jpeg_ls_lossless.dcm")
    sent = dicom_files.part10(ds)
    assert (await context.ingest.store(sent)).ok
    service = context.retrieve
    [ref] = await service.resolve(ds.StudyInstanceUID, ds.SeriesInstanceUID)
    # A C-GET whose presentation context for the class accepts only the uncompressed syntaxes: transcoded.
    assert service.choose_transfer_syntax(ref, [IMPLICIT, EXPLICIT]) == IMPLICIT
    loaded = await asyncio.to_thread(service.encoded, ref, [IMPLICIT, EXPLICIT])
    assert (loaded.sop_instance_uid, loaded.transfer_syntax_uid) == (ds.SOPInstanceUID, IMPLICIT)
    decoded = read_dataset(io.BytesIO(bytes(loaded.data)), is_implicit_VR=True, is_little_endian=True)
    decoded.file_meta = FileMetaDataset()
    decoded.file_meta.TransferSyntaxUID = IMPLICIT
    assert np.array_equal(decoded.pixel_array, ds.pixel_array)
    # Accepted as stored: the stored data set, byte for byte, nothing parsed.
    as_stored = await asyncio.to_thread(service.encoded, ref, [JLS])
    assert bytes(as_stored.data) == dicom_files.data_set_bytes(sent)
    stream = await service.open_instance(ref, [JLS])
    assert not stream.transcoded and pydicom.dcmread(io.BytesIO(await stream.read())).PixelData == ds.PixelData
    with pytest.raises(NotAcceptable):
        await service.open_instance(ref, [BASELINE])
    with pytest.raises(NotFound):
        await service.resolve("1.2.3")
    with pytest.raises(InvalidRequest):
        await anext(service.frames(ref, [2], AcceptedFrames.of([FrameRange("*/*")])))


# Native (explicit and implicit VR, 1-bit packed across frames, 32-bit, colour) and encapsulated (RLE, JPEG-LS,
# JPEG 2000, JPEG baseline with many frames), single- and multi-frame; big endian is read whole (decoded).
FRAME_SOURCES = [
    "emri_small.dcm",
    "rtdose.dcm",
    "liver.dcm",
    "SC_rgb_2frame.dcm",
    "SC_rgb_small_odd.dcm",
    "CT_small.dcm",
    "MR_small_implicit.dcm",
    "emri_small_RLE.dcm",
    "SC_rgb_rle_32bit_2frame.dcm",
    "emri_small_jpeg_2k_lossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "color3d_jpeg_baseline.dcm",
    "examples_ybr_color.dcm",
    "JPEG2000.dcm",
    "emri_small_big_endian.dcm",
]


async def _apart(
    context: ArchiveContext, name: str, monkeypatch: pytest.MonkeyPatch, **changes: object
) -> tuple[Dataset, StoredInstance, RetrieveService, list[str]]:
    """`name` stored, a service that keeps no instance parsed (as for one too large to keep), and the instances
    that service parses whole."""
    ds = dicom_files.renewed(name, **changes)
    assert (await context.ingest.store(dicom_files.part10(ds))).ok
    [ref] = await context.retrieve.resolve(ds.StudyInstanceUID)
    apart = RetrieveService(context.repository, context.storage, cache_bytes=0)
    whole_reads: list[str] = []
    read = apart._files.read
    monkeypatch.setattr(apart._files, "read", lambda ref, **kw: whole_reads.append(ref.sop_instance_uid) or read(ref, **kw))
    return ds, ref, apart, whole_reads


async def _outcome(call: Awaitable[T]) -> T | type[Exception]:
    """What a call answers, or the kind of refusal it raises."""
    try:
        return await call
    except (InvalidRequest, NotAcceptable) as exc:
        return type(exc)


@pytest.mark.parametrize("accept", ["*/*", "application/octet-stream"], ids=["as stored", "decoded"])
@pytest.mark.parametrize("name", FRAME_SOURCES)
async def test_frames_of_an_instance_too_large_to_keep_parsed_are_read_from_where_they_lie_in_its_file(
    context: ArchiveContext, name: str, accept: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A viewer pages through a multi-frame instance one frame request at a time. One too large for the parsed
    instances kept (here: every one, with no room kept) has each frame read from its file, never the instance
    parsed whole: the same bytes as cut (or decoded) from the parsed instance, and the same refusals."""
    ds, ref, apart, whole_reads = await _apart(context, name, monkeypatch)
    count = int(ds.get("NumberOfFrames") or 1)
    numbers = sorted({count, 1, (count + 1) // 2})
    accepted = AcceptedFrames.of([FrameRange(accept)])

    expected = [(f.media_type, f.transfer_syntax, f.data) async for f in context.retrieve.frames(ref, numbers, accepted)]
    found = [(f.media_type, f.transfer_syntax, f.data) async for f in apart.frames(ref, numbers, accepted)]

    assert found == expected
    assert whole_reads == ([ref.sop_instance_uid] if "big_endian" in name else [])
    with pytest.raises(InvalidRequest):
        await anext(apart.frames(ref, [count + 1], accepted))
    await apart.check_frames(ref, numbers)
    with pytest.raises(InvalidRequest):
        await apart.check_frames(ref, [count + 1])


@pytest.mark.parametrize("name", FRAME_SOURCES)
async def test_renders_of_an_instance_too_large_to_keep_parsed_are_made_from_the_frame_alone(
    context: ArchiveContext, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rendered frame or a thumbnail (the console's study page shows one per series) of a large multi-frame
    instance reads that frame from its file: the same image as rendered from the parsed instance, or the same
    refusal."""
    ds, ref, apart, whole_reads = await _apart(context, name, monkeypatch)
    count = int(ds.get("NumberOfFrames") or 1)
    numbers = sorted({count, 1, (count + 1) // 2})
    for number in numbers:
        options = RenderOptions(media_type="image/png", frame=number)
        assert await _outcome(apart.rendered(ref, options)) == await _outcome(context.retrieve.rendered(ref, options))
    assert await _outcome(apart.thumbnail(ref)) == await _outcome(context.retrieve.thumbnail(ref))
    assert whole_reads == ([ref.sop_instance_uid] * (len(numbers) + 1) if "big_endian" in name else [])
    with pytest.raises(InvalidRequest):
        await apart.rendered(ref, RenderOptions(media_type="image/png", frame=count + 1))


async def test_a_frame_rendered_alone_keeps_its_own_window(
    context: ArchiveContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An enhanced multi-frame instance windows each frame by its own Per-Frame Functional Groups item (PS3.3
    C.7.6.16.2.10): a frame rendered alone takes its item, not the first."""
    source = pydicom.dcmread(dicom_files.path("emri_small.dcm"))
    frames, low, high = int(source.NumberOfFrames), int(source.pixel_array.min()), int(source.pixel_array.max())
    per_frame = []
    for index in range(frames):  # windows across the values, each frame's its own
        voi = Dataset()
        voi.WindowCenter, voi.WindowWidth = low + (high - low) * (index + 1) // (frames + 1), (high - low) // 4
        group = Dataset()
        group.FrameVOILUTSequence = [voi]
        per_frame.append(group)
    _, ref, apart, whole_reads = await _apart(
        context, "emri_small.dcm", monkeypatch, PerFrameFunctionalGroupsSequence=per_frame
    )
    renders = []
    for number in range(1, frames + 1):
        options = RenderOptions(media_type="image/png", frame=number)
        renders.append(await apart.rendered(ref, options))
        assert renders[-1] == await context.retrieve.rendered(ref, options)
    assert len(set(renders)) == frames and whole_reads == []


async def test_a_large_instance_cut_short_after_ingest_refuses_the_frame_it_lost(context: ArchiveContext) -> None:
    """A file damaged after it was stored (or indexed again as it was found) must not answer a short frame."""
    ds = dicom_files.renewed("color3d_jpeg_baseline.dcm")
    assert (await context.ingest.store(dicom_files.part10(ds))).ok
    [ref] = await context.retrieve.resolve(ds.StudyInstanceUID)
    stored = context.settings.storage_path / ref.storage_key
    stored.write_bytes(stored.read_bytes()[:-3000])
    apart = RetrieveService(context.repository, context.storage, cache_bytes=0)

    with pytest.raises(NotAcceptable, match="cannot locate frame 120"):
        await anext(apart.frames(ref, [120], AcceptedFrames.of([FrameRange("*/*")])))


async def test_a_frame_still_being_cut_when_its_caller_goes_does_not_fail_the_close(context: ArchiveContext) -> None:
    """The caller's close comes while a worker thread still holds a view of the map: the map goes after it."""
    ds = dicom_files.renewed("emri_small.dcm")
    assert (await context.ingest.store(dicom_files.part10(ds))).ok
    [ref] = await context.retrieve.resolve(ds.StudyInstanceUID)
    pixels = StoredFiles(context.storage, cache_bytes=0).open_pixels(ref)
    assert pixels is not None
    held = memoryview(pixels._map)

    pixels.close()

    held.release()


async def test_an_instance_too_large_to_keep_parsed_without_pixel_data_has_no_frames(context: ArchiveContext) -> None:
    ds = dicom_files.renewed("test-SR.dcm")
    assert (await context.ingest.store(dicom_files.part10(ds))).ok
    [ref] = await context.retrieve.resolve(ds.StudyInstanceUID)
    apart = RetrieveService(context.repository, context.storage, cache_bytes=0)
    with pytest.raises(InvalidRequest):
        await anext(apart.frames(ref, [1], AcceptedFrames.of([FrameRange("*/*")])))


async def _store_study(context: ArchiveContext, names: list[str]) -> str:
    study_uid = generate_uid()
    for number, name in enumerate(names, start=1):
        ds = dicom_files.renewed(name, StudyInstanceUID=study_uid, InstanceNumber=number)
        assert (await context.ingest.store(dicom_files.part10(ds))).ok
    return study_uid


async def test_a_study_is_opened_in_order_with_a_lost_file_in_its_place(context: ArchiveContext) -> None:
    # More instances than one read-ahead batch, some sent as stored and some transcoded (JPEG-LS to explicit).
    names = ["CT_small.dcm", "MR_small_jpeg_ls_lossless.dcm"] * (OPEN_BATCH // 2 + 3)
    study_uid = await _store_study(context, names)
    service = context.retrieve
    refs = await service.resolve(study_uid)
    lost = refs[OPEN_BATCH + 1]
    context.storage.delete(lost.storage_key)
    opened = [item async for item in service.open_instances(refs, AcceptedSyntaxes.of([EXPLICIT], web=True))]
    assert len(opened) == len(refs)
    for ref, item in zip(refs, opened, strict=True):
        if ref is lost:
            assert isinstance(item, RetrieveFailed)
            continue
        assert isinstance(item, InstanceStream) and item.ref is ref and item.transfer_syntax == EXPLICIT
        assert item.transcoded == (ref.transfer_syntax_uid == JLS)
        assert pydicom.dcmread(io.BytesIO(await item.read())).SOPInstanceUID == ref.sop_instance_uid


async def test_a_consumer_that_stops_early_leaves_no_file_open(context: ArchiveContext) -> None:
    # Instances above CHUNK_SIZE are streamed from an open file rather than read whole.
    big = dicom_files.renewed("CT_small.dcm")
    big.add_new(0x00091010, "OB", b"\0" * (CHUNK_SIZE + 1))  # a private blob makes the file big
    study_uid = generate_uid()
    for _ in range(5):
        big.StudyInstanceUID, big.SOPInstanceUID = study_uid, generate_uid()
        big.file_meta.MediaStorageSOPInstanceUID = big.SOPInstanceUID
        assert (await context.ingest.store(dicom_files.part10(big))).ok
    refs = await context.retrieve.resolve(study_uid)
    files = {str(context.settings.storage_path.resolve() / ref.storage_key) for ref in refs}
    opened = context.retrieve.open_instances(refs, AcceptedSyntaxes.of([ANY], web=True))
    first = await anext(opened)
    assert isinstance(first, InstanceStream) and first.whole is None  # streamed, not read whole
    assert open_descriptors(files) > 0  # the read-ahead holds files open: the count sees them
    await first.aclose()
    await opened.aclose()
    assert open_descriptors(files) == 0


def open_descriptors(paths: set[str]) -> int:
    """Descriptors of this process open on `paths`: only the files the test checks, so descriptors that
    other threads (SQLite readers, the server's sockets) open or close meanwhile do not count."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}") in paths
        except FileNotFoundError:  # closed between the listing and the look
            continue
    return count


async def test_a_file_whose_data_set_is_not_in_its_declared_syntax_is_sent_encoded_as_declared(
    context: ArchiveContext,
) -> None:
    """Some writers declare Explicit VR Little Endian and write the data set in Implicit VR; pydicom reads it by
    what it finds, and a C-STORE in the declared syntax must carry explicit VRs: encoded anew, not as stored."""
    ds = dicom_files.renewed("CT_small.dcm")
    explicit = dicom_files.part10(ds)
    offset = data_set_offset(explicit)
    mislabelled = explicit[:offset] + encode(ds, True, True)
    assert (await context.ingest.store(mislabelled)).ok
    [ref] = await context.retrieve.resolve(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert ref.transfer_syntax_uid == EXPLICIT
    sent = await asyncio.to_thread(context.retrieve.encoded, ref, [EXPLICIT])
    assert sent.transfer_syntax_uid == EXPLICIT
    assert bytes(sent.data) == explicit[offset:]  # what an honest writer would have stored
