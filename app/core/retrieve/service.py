"""The one retrieve service: WADO-RS, WADO-URI, C-GET and C-MOVE all find and read instances through it.

Why one service: what an instance is, which transfer syntax a client may have, when a file is sent as stored
and when it is transcoded, how frames and bulk data are cut out, are DICOM rules, not HTTP or DIMSE rules
(PS3.18 §8.7.3, PS3.4 C.4.3). Writing them once keeps every door giving the same answer. Doors translate
what a client says (an Accept header, a WADO-URI query, presentation contexts) into the neutral requests
below (`AcceptedSyntaxes`, `AcceptedFrames`, `RenderOptions`) and turn the domain outcomes (`NotFound`,
`NotAcceptable`, `InvalidRequest`, `RetrieveFailed`) into their own status codes.

Memory and the event loop: a study may be gigabytes, so an instance sent as stored is streamed from storage
in `CHUNK_SIZE` pieces read in worker threads, and never held whole. Only a transcoded instance, a frame or a
rendered image is built in memory, one at a time, in a worker thread: frames are cut one per thread hop as
they are sent (from the parsed instance, or for one too large to keep parsed from its file), and renders (a
decoded frame, its float copy and the output each) take turns, at most
`RenderLimits.concurrency` at once. Opening and parsing the files (and the cache of parsed ones) is
app.core.retrieve.files'; pixel work (decoding, re-encoding, frame extraction, rendering) is
app.core.retrieve.transcode's and app.core.retrieve.render's.

This module is protocol-neutral: it imports neither FastAPI nor pynetdicom.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from typing import Protocol

from pydicom.dataset import Dataset
from pydicom.uid import UID

from app.core.dicom.transfer_syntax import (
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    OCTET_STREAM,
)
from app.core.ports import InstanceIndex, Search
from app.core.query.model import QueryModel
from app.core.records import StoredDataset, StoredInstance
from app.core.retrieve import transcode as tc
from app.core.retrieve.bulk import bulk_path, check_frame, frame_data, walk_path
from app.core.retrieve.files import StoredFiles, StoredPixels
from app.core.retrieve.negotiation import (
    AcceptedFrames,
    AcceptedSyntaxes,
    Frame,
    as_accepted,
    encapsulated,
)
from app.core.retrieve.outcomes import (
    InvalidRequest,
    NotAcceptable,
    NotFound,
    RangeNotSatisfiable,
    RetrieveFailed,
)
from app.core.retrieve.render import RenderError, RenderOptions, RenderRequestError, render, thumbnail
from app.core.retrieve.streaming import (
    EncodedInstance,
    InstanceStream,
    in_batches,
    stored_data_set,
    zip_stored,
)
from app.core.retrieve.turns import RenderLimits, RenderTurns
from app.storage.base import Storage

log = logging.getLogger(__name__)


class RetrieveStore(InstanceIndex, Search, Protocol):
    """The roles of the metadata store a retrieve reads: the instances held, and the search C-GET / C-MOVE match with."""


class RetrieveService:
    """Resolve instances and read them in the representation a client can use."""

    def __init__(
        self,
        repository: RetrieveStore,
        storage: Storage,
        *,
        render_limits: RenderLimits | None = None,
        cache_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        self.repository = repository
        self.storage = storage
        # None: the settings' defaults (model_construct reads no environment), for callers that do not render.
        self.render_limits = render_limits or RenderLimits()
        self._render_turns = RenderTurns(self.render_limits)
        self._files = StoredFiles(storage, cache_bytes)

    # -- finding ---------------------------------------------------------------------------------------------

    async def resolve(
        self, study: str, series: str | None = None, instance: str | None = None
    ) -> list[StoredInstance]:
        """The instances of a study, a series or one instance (series then instance-number order)."""
        found = await self.repository.find_instances(study, series, instance)
        if not found:
            raise NotFound(_describe(study, series, instance))
        return found

    async def held(self, sop_instance_uids: Sequence[str]) -> dict[str, StoredInstance]:
        """Those of these instances the archive holds, metadata and file both (Storage Commitment, PS3.4 J)."""
        found = await self.repository.get_instances(sop_instance_uids)

        def present() -> list[StoredInstance]:
            return [ref for ref in found.values() if self.storage.exists(ref.storage_key)]

        return {ref.sop_instance_uid: ref for ref in await asyncio.to_thread(present)}

    async def resolve_matching(self, model: QueryModel) -> list[StoredInstance]:
        """The stored instances behind a query's matches (C-GET, C-MOVE), in series then instance-number order,
        one repository read per matching series rather than one per instance."""
        result = await self.repository.search(model)
        series: dict[tuple[str, str], set[str]] = {}
        for row in result.rows:
            study, serie, sop = (
                row.get(k, {}).get("Value", [""])[0] for k in ("0020000D", "0020000E", "00080018")
            )
            series.setdefault((study, serie), set()).add(sop)
        refs: list[StoredInstance] = []
        for (study, serie), sops in series.items():
            try:
                found = await self.resolve(study, serie)
            except NotFound:
                continue  # deleted since the search
            refs.extend(ref for ref in found if ref.sop_instance_uid in sops)
        return refs

    async def metadata(
        self, study: str, series: str | None = None, instance: str | None = None
    ) -> list[StoredDataset]:
        """The stored DICOM JSON of each instance, BulkDataURIs relative to the instance (PS3.18 F.2.6)."""
        found = await self.repository.instance_datasets(study, series, instance)
        if not found:
            raise NotFound(_describe(study, series, instance))
        return found

    # -- whole instances -------------------------------------------------------------------------------------

    @staticmethod
    def choose_transfer_syntax(ref: StoredInstance, accepted: AcceptedSyntaxes | Iterable[str]) -> str | None:
        """The syntax `open_instance` would use, without opening anything (to refuse with 406 up front)."""
        return as_accepted(accepted).choose(ref.transfer_syntax_uid)

    def _target(self, ref: StoredInstance, accepted: AcceptedSyntaxes | Iterable[str]) -> str:
        target = self.choose_transfer_syntax(ref, accepted)
        if target is None:
            raise NotAcceptable(
                f"instance {ref.sop_instance_uid} is stored as {_name(ref.transfer_syntax_uid)} and cannot be "
                "given in any accepted transfer syntax"
            )
        return target

    async def open_instance(
        self, ref: StoredInstance, accepted: AcceptedSyntaxes | Iterable[str]
    ) -> InstanceStream:
        """The instance as a Part 10 byte stream in an acceptable transfer syntax.

        As stored when acceptable: the file's bytes unchanged, read lazily. Otherwise transcoded in a worker
        thread (whole instance in memory). Raises NotAcceptable when no acceptable syntax can be produced,
        RetrieveFailed when the file cannot be read.
        """
        target = self._target(ref, accepted)
        if target == ref.transfer_syntax_uid:
            head, handle = await asyncio.to_thread(self._files.open_stored, ref)
            return InstanceStream(ref, target, False, ref.size or None, head, handle)
        data = await asyncio.to_thread(self._transcoded_bytes, ref, target)
        return InstanceStream(ref, target, True, len(data), data)

    async def open_instances(
        self, refs: Sequence[StoredInstance], accepted: AcceptedSyntaxes | Iterable[str]
    ) -> AsyncGenerator[InstanceStream | NotAcceptable | RetrieveFailed, None]:
        """`open_instance` for each of `refs`, in order, for a many-instance answer (a study, a series).

        An instance that cannot be given comes as its exception rather than ending the stream: the door
        decides whether that fails the answer or leaves the instance out. Instances sent as stored are opened
        (and read, when small) `OPEN_BATCH` at a time in one worker-thread hop, the next batch while the
        consumer sends this one: a study of small files then costs a few thread hops, not one per instance.
        Streams not taken when the consumer stops early are closed.
        """
        choice = as_accepted(accepted)
        pending: list[InstanceStream | NotAcceptable | RetrieveFailed] = []
        upcoming: asyncio.Future[list[InstanceStream | NotAcceptable | RetrieveFailed]] | None = None
        batches = iter(in_batches(refs))
        try:
            upcoming = asyncio.ensure_future(self._open_batch(next(batches, []), choice))
            while upcoming is not None:
                pending = await upcoming
                following = next(batches, None)
                upcoming = (
                    None if following is None else asyncio.ensure_future(self._open_batch(following, choice))
                )
                while pending:
                    yield pending.pop(0)
        finally:
            if upcoming is not None:
                upcoming.cancel()
                outcome = (await asyncio.gather(upcoming, return_exceptions=True))[0]
                if isinstance(outcome, list):
                    pending.extend(outcome)
            for stream in pending:
                if isinstance(stream, InstanceStream):
                    await stream.aclose()

    async def _open_batch(
        self, refs: Sequence[StoredInstance], accepted: AcceptedSyntaxes
    ) -> list[InstanceStream | NotAcceptable | RetrieveFailed]:
        def open_stored() -> list[InstanceStream | RetrieveFailed | None]:
            opened: list[InstanceStream | RetrieveFailed | None] = []
            for ref in refs:
                if accepted.choose(ref.transfer_syntax_uid) != ref.transfer_syntax_uid:
                    opened.append(None)  # to transcode, or not acceptable: one at a time, below
                    continue
                try:
                    head, handle = self._files.open_stored(ref)
                except RetrieveFailed as exc:
                    opened.append(exc)
                    continue
                opened.append(
                    InstanceStream(ref, ref.transfer_syntax_uid, False, ref.size or None, head, handle)
                )
            return opened

        hop = asyncio.ensure_future(asyncio.to_thread(open_stored))
        try:
            found = await asyncio.shield(hop)
        except asyncio.CancelledError:
            # A worker thread cannot be stopped: it goes on opening files after the consumer has gone. Wait for it
            # and close them, so that a consumer that stops early leaves no file open behind it.
            for late in await hop:
                if isinstance(late, InstanceStream):
                    late.close_now()
            raise
        out: list[InstanceStream | NotAcceptable | RetrieveFailed] = []
        try:
            for ref, item in zip(refs, found, strict=True):
                if item is not None:
                    out.append(item)
                    continue
                try:
                    out.append(await self.open_instance(ref, accepted))
                except (NotAcceptable, RetrieveFailed) as exc:
                    out.append(exc)
        except BaseException:
            for opened in (*out, *found):
                if isinstance(opened, InstanceStream):
                    opened.close_now()
            raise
        return out

    def encoded(self, ref: StoredInstance, accepted: AcceptedSyntaxes | Iterable[str]) -> EncodedInstance:
        """The instance's data set encoded in an acceptable syntax, for a DIMSE C-STORE (C-GET and C-MOVE
        sub-operations, the SCU). Blocking: DIMSE threads call it directly, code on the loop in a worker thread.

        When the stored syntax is acceptable the stored bytes go as they are: the file is read, its File Meta
        is skipped, nothing is parsed or re-encoded (PS3.4 C.4.2.3.1 lets the SCP send in any syntax the
        destination accepted). Otherwise the instance is transcoded losslessly. NotAcceptable when no accepted
        syntax can be produced, RetrieveFailed when the file cannot be read.
        """
        target = self._target(ref, accepted)
        try:
            if target == ref.transfer_syntax_uid:
                with self.storage.open(ref.storage_key) as handle:
                    stored = handle.read()
                offset = stored_data_set(stored, target)
                if offset is not None:
                    return EncodedInstance(
                        ref.sop_class_uid, ref.sop_instance_uid, target, memoryview(stored)[offset:]
                    )
            # Another syntax, or a file that does not hold what its File Meta says: encoded anew by pydicom.
            part10 = self._transcoded_bytes(ref, target)
            offset = tc.data_set_offset(part10)
        except (OSError, ValueError) as exc:  # TranscodeError is a ValueError
            raise RetrieveFailed(f"cannot read the file of {ref.sop_instance_uid}: {exc}") from exc
        return EncodedInstance(ref.sop_class_uid, ref.sop_instance_uid, target, memoryview(part10)[offset:])

    # -- frames, bulk data, rendering ------------------------------------------------------------------------

    async def frames(
        self, ref: StoredInstance, numbers: Sequence[int], accepted: AcceptedFrames
    ) -> AsyncGenerator[Frame, None]:
        """Frames `numbers` (1-based, PS3.18 §10.4.1.1.4), as stored or decoded per `accepted`, one at a time.

        The first step reads the instance, checks every number and cuts the first frame, so a request that
        cannot be answered fails (NotAcceptable, InvalidRequest) before a caller sends anything. Each further
        frame is cut (or decoded) in its own worker-thread hop when the consumer asks for it: an answer of many
        frames holds one frame at a time, never all of them.
        """
        encoding = accepted.choose(ref.transfer_syntax_uid)
        if encoding is None:
            raise NotAcceptable(
                f"frames of instance {ref.sop_instance_uid} are stored as {_name(ref.transfer_syntax_uid)}; "
                "no accepted media type can carry them"
            )
        pixels = await asyncio.to_thread(self._checked_pixels, ref, numbers)
        cut: Callable[[StoredInstance, Sequence[int], bool], list[bytes]]
        try:
            if pixels is None:
                cut = functools.partial(frame_data, await asyncio.to_thread(self._read_checked, ref, numbers))
            else:
                cut = pixels.frames
            for number in numbers:
                [data] = await asyncio.to_thread(cut, ref, [number], encoding.decode)
                yield Frame(encoding.media_type, encoding.transfer_syntax, data)
        finally:
            if pixels is not None:
                pixels.close()

    async def check_frames(self, ref: StoredInstance, numbers: Sequence[int]) -> None:
        """InvalidRequest unless the instance has pixel data and each of `numbers` is one of its frames: for a
        caller that makes the frames one by one and must refuse before it sends the first."""
        pixels = await asyncio.to_thread(self._checked_pixels, ref, numbers)
        if pixels is not None:
            pixels.close()
        else:
            await asyncio.to_thread(self._read_checked, ref, numbers)

    async def bulk(
        self,
        ref: StoredInstance,
        path: str,
        accepted: AcceptedFrames,
        byte_range: tuple[int, int | None] | None = None,
    ) -> list[Frame]:
        """Resolve a stored relative BulkDataURI path (`7FE00010`, `00540016/0/00181072`) to its bytes.

        Pixel data (PS3.18 §8.7.3.3): native, one application/octet-stream part with every frame; compressed,
        one part per frame in its own media type, or decoded into one octet-stream part. Any other value: one
        application/octet-stream part, little-endian (PS3.18 §8.7.3.3.1). `byte_range` (first, last-or-None,
        inclusive) cuts a single-part answer, for HTTP Range requests.
        """
        steps = bulk_path(path)
        if steps == [0x7FE00010]:
            frames = await self._bulk_pixels(ref, accepted)
        else:
            frames = await self._bulk_value(ref, steps, accepted)
        if byte_range is not None and len(frames) == 1:
            whole = frames[0]
            first, last = byte_range
            total = len(whole.data)
            if first >= total:
                raise RangeNotSatisfiable(f"byte range starts at {first}, the value holds {total} bytes")
            end = total if last is None else min(total, last + 1)
            frames = [Frame(whole.media_type, whole.transfer_syntax, whole.data[first:end], total, first)]
        return frames

    async def _bulk_pixels(self, ref: StoredInstance, accepted: AcceptedFrames) -> list[Frame]:
        encoding = accepted.choose(ref.transfer_syntax_uid)
        if encoding is None:
            raise NotAcceptable(
                f"pixel data of {ref.sop_instance_uid} is stored as {_name(ref.transfer_syntax_uid)}; "
                "no accepted media type can carry it"
            )

        def work() -> list[Frame]:
            ds = self._files.read(ref, cache=True)
            if "PixelData" not in ds:
                raise NotFound(f"instance {ref.sop_instance_uid} has no Pixel Data")
            stored = ref.transfer_syntax_uid
            native = not encapsulated(stored)
            if encoding.media_type == OCTET_STREAM and native and stored != EXPLICIT_VR_BIG_ENDIAN:
                # Uncompressed bulk data is one part (PS3.18 §8.7.3.3.1). Little-endian native data goes as
                # stored, so 1-bit frames that share bytes keep their packing.
                return [Frame(OCTET_STREAM, encoding.transfer_syntax, bytes(ds.PixelData))]
            data = frame_data(ds, ref, range(1, tc.frame_count(ds) + 1), encoding.decode)
            if encoding.media_type == OCTET_STREAM and (encoding.decode or native):
                return [Frame(OCTET_STREAM, encoding.transfer_syntax, b"".join(data))]
            # Compressed bulk data: one frame per part (PS3.18 §8.7.3.3.2).
            return [Frame(encoding.media_type, encoding.transfer_syntax, d) for d in data]

        return await asyncio.to_thread(work)

    async def _bulk_value(
        self, ref: StoredInstance, steps: list[int], accepted: AcceptedFrames
    ) -> list[Frame]:
        if not any(
            r.media_type in ("*/*", OCTET_STREAM, "application/*") for tier in accepted.tiers for r in tier
        ):
            raise NotAcceptable("bulk data other than pixel data is only given as application/octet-stream")

        def work() -> list[Frame]:
            full = steps[0] >= 0x7FE00008
            ds = self._files.read(ref, cache=True) if full else self._files.read_header(ref)
            value = walk_path(ds, steps, ref)
            return [Frame(OCTET_STREAM, EXPLICIT_VR_LITTLE_ENDIAN, value)]

        return await asyncio.to_thread(work)

    async def rendered(self, ref: StoredInstance, options: RenderOptions) -> bytes:
        """One frame rendered as `options.media_type` (PS3.18 §8.3.5, §10.4.1.1.3), in a rendering turn.

        InvalidRequest when the viewport asks for more than `render_limits.max_side` allows, RendersBusy when no
        turn comes free in time.
        """
        max_side = self.render_limits.max_side
        return await self._render_turns.run(
            lambda: self._render(
                ref,
                options.frame,
                lambda ds, frame: render(ds, replace(options, frame=frame), max_side=max_side),
            )
        )

    async def thumbnail(self, ref: StoredInstance, size: int = 128, media_type: str = "image/jpeg") -> bytes:
        """A small rendering of the first frame with the instance's own window (PS3.18 §10.4.1.1.4), in a
        rendering turn (RendersBusy when none comes free in time)."""
        return await self._render_turns.run(
            lambda: self._render(ref, 1, lambda ds, _: thumbnail(ds, size, media_type))
        )

    async def representative(self, study: str, series: str | None = None) -> StoredInstance:
        """The instance that stands for a study or series in a thumbnail: the middle image of the first series
        holding images (a middle slice shows more anatomy than the first)."""
        refs = await self.resolve(study, series)
        by_series: dict[str, list[StoredInstance]] = {}
        for ref in refs:
            by_series.setdefault(ref.series_instance_uid, []).append(ref)
        for members in by_series.values():
            images = [r for r in members if _is_image_class(r.sop_class_uid)]
            if images:
                return images[len(images) // 2]
        return refs[len(refs) // 2]

    def zip_stored(self, refs: Sequence[StoredInstance]) -> Iterator[bytes]:
        """The instances as stored, in a zip made while it is sent (streaming.zip_stored)."""
        return zip_stored(self.storage, refs)

    def invalidate(self) -> None:
        """Forget cached parsed instances (after a delete or a replace, or in tests)."""
        self._files.clear()

    # -- blocking helpers, run in worker threads -------------------------------------------------------------

    def _transcode(self, ds: Dataset, ref: StoredInstance, target: str) -> Dataset:
        try:
            return tc.transcode(ds, target)
        except tc.TranscodeError as exc:
            raise NotAcceptable(
                f"instance {ref.sop_instance_uid} cannot be transcoded to {_name(target)}: {exc}"
            ) from exc

    def _transcoded_bytes(self, ref: StoredInstance, target: str) -> bytes:
        ds = self._transcode(self._files.read(ref, cache=False), ref, target)
        try:
            return tc.encode_part10(ds)
        except tc.TranscodeError as exc:
            raise NotAcceptable(
                f"instance {ref.sop_instance_uid} cannot be encoded as {_name(target)}: {exc}"
            ) from exc

    def _read_checked(self, ref: StoredInstance, numbers: Sequence[int]) -> Dataset:
        """The parsed instance (cached), once every one of `numbers` is known to be one of its frames."""
        _check_numbers(numbers)
        ds = self._files.read(ref, cache=True)
        for number in (min(numbers), max(numbers)):
            check_frame(ds, ref, number)
        return ds

    def _checked_pixels(self, ref: StoredInstance, numbers: Sequence[int]) -> StoredPixels | None:
        """For an instance too large to keep parsed, its header and its pixel data in the file, once every one
        of `numbers` is known to be one of its frames; None when the instance is to be parsed whole."""
        _check_numbers(numbers)
        if self._files.parsed_whole(ref):
            return None
        pixels = self._files.open_pixels(ref)
        if pixels is not None:
            try:
                for number in (min(numbers), max(numbers)):
                    check_frame(pixels.dataset, ref, number, pixels_apart=True)
            except BaseException:
                pixels.close()
                raise
        return pixels

    def _render(self, ref: StoredInstance, frame: int, make: Callable[[Dataset, int], bytes]) -> bytes:
        """`make(instance, frame)`: of the instance parsed whole, or, for one too large to keep parsed, of the
        frame alone (StoredPixels.frame_alone), as its frame 1."""
        pixels = self._checked_pixels(ref, [frame])
        try:
            if pixels is None:
                ds = self._files.read(ref, cache=True)
                check_frame(ds, ref, frame)
            else:
                ds, frame = pixels.frame_alone(ref, frame), 1
            return make(ds, frame)
        except RenderRequestError as exc:
            raise InvalidRequest(
                f"instance {ref.sop_instance_uid} cannot be rendered as asked: {exc}"
            ) from exc
        except RenderError as exc:
            raise NotAcceptable(f"instance {ref.sop_instance_uid} cannot be rendered: {exc}") from exc
        finally:
            if pixels is not None:
                pixels.close()


def _describe(study: str, series: str | None, instance: str | None) -> str:
    if instance is not None:
        return f"no instance {instance} in series {series} of study {study}"
    if series is not None:
        return f"no series {series} in study {study}"
    return f"no study {study}"


def _check_numbers(numbers: Sequence[int]) -> None:
    if not numbers:
        raise InvalidRequest("no frame numbers were requested")


def _name(uid: str) -> str:
    name = UID(uid).name
    return f"{name} ({uid})" if name and name != uid else uid


def _is_image_class(sop_class_uid: str) -> bool:
    name = UID(sop_class_uid).name
    return "Image" in name and "Presentation" not in name
