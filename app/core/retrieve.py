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
they are sent, and renders (a decoded frame, its float copy and the output each) take turns, at most
`RenderLimits.concurrency` at once. Pixel work (decoding, re-encoding, frame extraction, rendering) is
delegated to app.core.transcode and app.core.render.

This module is protocol-neutral: it imports neither FastAPI nor pynetdicom.
"""

from __future__ import annotations

import asyncio
import functools
import io
import logging
import re
import threading
import time
import zipfile
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, Final, TypeVar

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.tag import Tag
from pydicom.uid import UID

from app.config import Settings
from app.core import transcode as tc
from app.core.query import QueryModel
from app.core.records import StoredDataset, StoredInstance
from app.core.render import RenderError, RenderOptions, RenderRequestError, render, thumbnail
from app.core.transfer_syntax import (
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    MEDIA_TYPE_FOR_FRAMES,
    NOT_FOR_WEB_SERVICES,
    OCTET_STREAM,
    is_encapsulated,
    is_lossless,
)
from app.repository.base import Repository
from app.storage.base import Storage

log = logging.getLogger(__name__)

CHUNK_SIZE: Final = 1024 * 1024
"""Files are read and sent 1 MiB at a time: big enough that thread hops cost little, small enough to stream."""

OPEN_BATCH: Final = 64
OPEN_BATCH_BYTES: Final = 4 * 1024 * 1024
"""A many-instance answer reads ahead this many instances (or about this many bytes) per worker-thread hop."""

ANY: Final = "*"
"""`transfer-syntax=*` (PS3.18 §8.7.3.5): any syntax; the origin server sends the instance as stored."""

DEFAULT: Final = "default"
"""No transfer syntax named: PS3.18 §8.7.3.4 default, Explicit VR Little Endian, unless the archive holds the
pixel data only in lossy form (decoding it would not make it lossless) - then as stored."""

PIXEL_DATA_TAGS: Final = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
_BULK_PATH = re.compile(r"[0-9A-Fa-f]{8}(?:/[0-9]{1,6}/[0-9A-Fa-f]{8})*")
_SWAP_WIDTH: Final = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


# --- domain outcomes -------------------------------------------------------------------------------------------


class NotFound(LookupError):
    """No such study, series, instance, frame source or bulk data element (HTTP 404, DIMSE 0xA701-ish)."""


class NotAcceptable(Exception):
    """The instance cannot be given in any representation the client accepts (HTTP 406, PS3.18 §8.7.8)."""


class InvalidRequest(ValueError):
    """The request cannot apply to this instance: frame out of range, no pixel data, bad path (HTTP 400)."""


class RangeNotSatisfiable(InvalidRequest):
    """A byte range that starts beyond the end of the value (HTTP 416, RFC 9110 §15.5.17)."""


class RetrieveFailed(RuntimeError):
    """The archive holds the instance but cannot read it (file missing or unreadable): a server fault."""


class RendersBusy(Exception):
    """No render turn came free within `RenderLimits.wait_seconds` (HTTP 503 with Retry-After)."""


# --- what a client accepts -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AcceptedSyntaxes:
    """The transfer syntaxes a client can read, as preference tiers (best first).

    Each entry is a transfer syntax UID, `ANY` or `DEFAULT`. Within a tier the stored syntax wins when it is
    listed (no transcoding, nothing changes); otherwise the first producible entry of the tier. With `web`
    set, Implicit VR Little Endian and Explicit VR Big Endian are never produced (PS3.18 §8.7.3: they "shall
    not be used with Web Services"); `ANY` then turns an instance stored in them into Explicit VR LE.
    DIMSE callers pass the syntaxes of the accepted presentation contexts: `AcceptedSyntaxes.of([...])`.
    """

    tiers: tuple[tuple[str, ...], ...]
    web: bool = False

    @classmethod
    def of(cls, syntaxes: Iterable[str], *, web: bool = False) -> AcceptedSyntaxes:
        return cls((tuple(syntaxes),), web=web)

    def _candidates(self, entry: str, stored: str) -> list[str]:
        if entry == ANY:
            if self.web and stored in NOT_FOR_WEB_SERVICES:
                return [EXPLICIT_VR_LITTLE_ENDIAN]
            return [stored]
        if entry == DEFAULT:
            if _encapsulated(stored) and not is_lossless(stored):
                return [stored]  # PS3.18 §8.7.3.4: only the lossy form is available
            # Lossless compressed: Explicit VR LE, unless it cannot be produced here (no decoder), then as
            # stored, which is the other case §8.7.3.4 allows.
            return (
                [EXPLICIT_VR_LITTLE_ENDIAN]
                if stored == EXPLICIT_VR_LITTLE_ENDIAN
                else [
                    EXPLICIT_VR_LITTLE_ENDIAN,
                    stored,
                ]
            )
        if self.web and entry in NOT_FOR_WEB_SERVICES:
            return []
        return [entry]

    def choose(self, stored: str) -> str | None:
        """The syntax to send an instance stored in `stored` in, or None when none can be produced."""
        # Asked once per instance of a study retrieve, with a handful of distinct answers: remembered.
        return _choose(self, stored)

    def _choose_uncached(self, stored: str) -> str | None:
        for tier in self.tiers:
            expanded = [self._candidates(entry, stored) for entry in tier]
            if any(c and c[0] == stored for c in expanded):
                return stored
            for candidates in expanded:
                for candidate in candidates:
                    if can_transcode(stored, candidate):
                        return candidate
        return None


@functools.lru_cache(maxsize=1024)
def _choose(accepted: AcceptedSyntaxes, stored: str) -> str | None:
    return accepted._choose_uncached(stored)


@dataclass(frozen=True)
class FrameRange:
    """One acceptable frame or bulk data representation: a media type (`*/*`, `image/*` allowed) and the
    transfer-syntax parameter (`None` when absent, `ANY`, or a UID), PS3.18 §8.7.3.3."""

    media_type: str
    transfer_syntax: str | None = None


@dataclass(frozen=True)
class FrameEncoding:
    """How frames are sent: the part's media type and transfer syntax, and whether they are decoded."""

    media_type: str
    transfer_syntax: str
    decode: bool


@dataclass(frozen=True)
class AcceptedFrames:
    """Acceptable representations of pixel data frames (PS3.18 §8.7.3.3), as preference tiers.

    Rules (stored syntax S, its frame media type M from PS3.18 Tables 8.7.3-4 and 8.7.3-5):
    - `*/*`: as stored - native S as application/octet-stream (little-endian octets, Explicit VR LE), an
      encapsulated S as M.
    - `application/octet-stream` without transfer-syntax or with Explicit VR LE (Table 8.7.3-4): native
      octets, decoding compressed frames.
    - `application/octet-stream; transfer-syntax=*` (what OHIF sends): as stored, the part labelled with S so
      the viewer knows how to decode it.
    - `image/*` or M itself, with no transfer-syntax, `*` or S: the compressed frame as stored. Frames are
      never re-compressed into another syntax (406).
    Within a tier, a representation that needs no decoding wins.
    """

    tiers: tuple[tuple[FrameRange, ...], ...]

    @classmethod
    def of(cls, ranges: Iterable[FrameRange]) -> AcceptedFrames:
        return cls((tuple(ranges),))

    @staticmethod
    def _candidate(accepted: FrameRange, stored: str) -> FrameEncoding | None:
        native = not _encapsulated(stored)
        stored_media = OCTET_STREAM if native else MEDIA_TYPE_FOR_FRAMES.get(stored, OCTET_STREAM)
        as_stored = FrameEncoding(stored_media, EXPLICIT_VR_LITTLE_ENDIAN if native else stored, False)
        media_type, syntax = accepted.media_type, accepted.transfer_syntax
        if media_type == "*/*":
            return as_stored if syntax in (None, ANY, as_stored.transfer_syntax) else None
        if media_type in (OCTET_STREAM, "application/*"):
            if native:
                return as_stored if syntax in (None, ANY, EXPLICIT_VR_LITTLE_ENDIAN) else None
            if syntax in (ANY, stored):
                return FrameEncoding(OCTET_STREAM, stored, False)
            if syntax in (None, EXPLICIT_VR_LITTLE_ENDIAN) and _decodable(stored):
                return FrameEncoding(OCTET_STREAM, EXPLICIT_VR_LITTLE_ENDIAN, True)
            return None
        if native:
            return None
        if (media_type == "image/*" and stored_media.startswith("image/")) or media_type == stored_media:
            return as_stored if syntax in (None, ANY, stored) else None
        return None

    def choose(self, stored: str) -> FrameEncoding | None:
        for tier in self.tiers:
            found = [c for entry in tier if (c := self._candidate(entry, stored)) is not None]
            if found:
                return next((c for c in found if not c.decode), found[0])
        return None


@dataclass(frozen=True)
class Frame:
    """One part of a frames or bulk data answer."""

    media_type: str
    transfer_syntax: str | None
    data: bytes
    total_size: int | None = None  # for a byte range of a value: the size of the whole value...
    offset: int = 0  # ...and where in it `data` starts


# --- transfer syntax facts ------------------------------------------------------------------------------------


def _encapsulated(uid: str) -> bool:
    try:
        return is_encapsulated(uid)
    except ValueError:
        return True  # an unknown syntax: never sliced or re-labelled as if it were native


def _decodable(uid: str) -> bool:
    """True when pixel data stored in `uid` can be decoded on this installation."""
    if not _encapsulated(uid):
        return True
    try:
        return bool(get_decoder(UID(uid)).is_available)
    except (NotImplementedError, ValueError):
        return False


def can_transcode(source: str, target: str) -> bool:
    """True when an instance stored in `source` can be sent in `target` (PS3.18 §8.7.3.4 transcoding)."""
    return source == target or (tc.can_encode(target) and _decodable(source))


# --- streaming an instance ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncodedInstance:
    """An instance's data set in one transfer syntax, without File Meta: what a DIMSE C-STORE carries."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    data: memoryview



@dataclass
class InstanceStream:
    """An instance ready to send: its transfer syntax and its Part 10 bytes, yielded in chunks.

    Iterate it once; `aclose()` releases the file when the consumer stops early (a client hanging up).
    """

    ref: StoredInstance
    transfer_syntax: str
    transcoded: bool
    size: int | None
    _head: bytes
    _file: BinaryIO | None = None
    _closed: bool = field(default=False, repr=False)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            if self._head:
                yield self._head
            while self._file is not None:
                chunk = await asyncio.to_thread(self._file.read, CHUNK_SIZE)
                if not chunk:
                    break
                yield chunk
        finally:
            await self.aclose()

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self])

    @property
    def whole(self) -> bytes | None:
        """All of the instance's bytes when they are already in memory (a small file, a transcoded instance)."""
        return self._head if self._file is None else None

    def close_now(self) -> None:
        """Release the file from a synchronous context (cleanup after a cancelled read-ahead)."""
        if self._file is not None and not self._closed:
            self._closed = True
            self._file.close()

    async def aclose(self) -> None:
        if self._file is not None and not self._closed:
            self._closed = True
            try:
                await asyncio.to_thread(self._file.close)
            except asyncio.CancelledError:
                self._file.close()  # the client went away mid-answer: close here rather than leak it
                raise


# --- a small cache of parsed instances ------------------------------------------------------------------------


class _ZipSink(io.RawIOBase):
    """An unseekable writable buffer: zipfile then writes data descriptors and never seeks back, which is
    what lets a zip be streamed as it is made."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.buffer += data
        return len(data)

    def take(self) -> bytes:
        data = bytes(self.buffer)
        self.buffer.clear()
        return data


class _DatasetCache:
    """Parsed instances kept for a short while, bounded in bytes.

    Viewers ask for the frames of one multi-frame instance one request at a time; parsing the file once
    instead of once per frame is what makes that fast. Entries expire after `ttl` seconds; deletes and replaces
    clear the cache (ArchiveContext wires `invalidate` to both), since a replace may keep the key and the size.
    """

    def __init__(self, budget: int = 256 * 1024 * 1024, ttl: float = 30.0) -> None:
        self.budget = budget
        self.ttl = ttl
        self._entries: OrderedDict[tuple[str, int], tuple[float, Dataset]] = OrderedDict()
        self._used = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int]) -> Dataset | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if time.monotonic() - entry[0] > self.ttl:
                self._drop(key)
                return None
            self._entries.move_to_end(key)
            return entry[1]

    def put(self, key: tuple[str, int], ds: Dataset) -> None:
        size = key[1]
        if size > self.budget // 4:
            return  # one huge instance must not evict everything else
        with self._lock:
            if key in self._entries:
                self._drop(key)
            self._entries[key] = (time.monotonic(), ds)
            self._used += size
            while self._used > self.budget and self._entries:
                self._drop(next(iter(self._entries)))

    def _drop(self, key: tuple[str, int]) -> None:
        self._entries.pop(key)
        self._used -= key[1]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._used = 0


# --- bounds on rendering ---------------------------------------------------------------------------------------

_T = TypeVar("_T")


@dataclass(frozen=True)
class RenderLimits:
    """How large a rendered image may be and how many are made at once (the MAX_RENDER_SIDE,
    RENDER_CONCURRENCY and RENDER_WAIT_SECONDS settings)."""

    max_side: int
    concurrency: int
    wait_seconds: float

    @classmethod
    def of(cls, settings: Settings) -> RenderLimits:
        return cls(settings.max_render_side, settings.render_concurrency, settings.render_wait_seconds)


class _RenderTurns:
    """At most `concurrency` renders run at once; the others wait for a turn, each at most `wait_seconds`.

    A render holds the decoded frame, its float copy and the output image: without turns, a few large renders
    arriving together add up to gigabytes. Waiting costs a request next to nothing, so a burst of thumbnails
    (a viewer opening a study) queues rather than failing.
    """

    def __init__(self, limits: RenderLimits) -> None:
        self._free = asyncio.Semaphore(limits.concurrency)
        self._limits = limits

    async def run(self, work: Callable[[], _T]) -> _T:
        """`work()` in a worker thread once a turn is free; RendersBusy when none comes free in time."""
        try:
            async with asyncio.timeout(self._limits.wait_seconds):
                await self._free.acquire()
        except TimeoutError as exc:
            raise RendersBusy(
                f"all {self._limits.concurrency} rendering turns stayed busy for "
                f"{self._limits.wait_seconds:g} s; try again later"
            ) from exc
        task = asyncio.ensure_future(asyncio.to_thread(work))
        # The turn ends when the thread does, not when the request does: a client that hangs up mid-render
        # must not free a turn whose thread still holds the memory.
        task.add_done_callback(self._finished)
        return await asyncio.shield(task)

    def _finished(self, task: asyncio.Future[_T]) -> None:
        self._free.release()
        if not task.cancelled():
            task.exception()  # retrieved here when the request that awaited it has gone


# --- the service ----------------------------------------------------------------------------------------------


class RetrieveService:
    """Resolve instances and read them in the representation a client can use."""

    def __init__(
        self,
        repository: Repository,
        storage: Storage,
        *,
        render_limits: RenderLimits | None = None,
        cache_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        self.repository = repository
        self.storage = storage
        # None: the settings' defaults (model_construct reads no environment), for callers that do not render.
        self.render_limits = render_limits or RenderLimits.of(Settings.model_construct())
        self._render_turns = _RenderTurns(self.render_limits)
        self._datasets = _DatasetCache(cache_bytes)

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
        return _accepted(accepted).choose(ref.transfer_syntax_uid)

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
            head, handle = await asyncio.to_thread(self._open_stored, ref)
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
        choice = _accepted(accepted)
        pending: list[InstanceStream | NotAcceptable | RetrieveFailed] = []
        upcoming: asyncio.Future[list[InstanceStream | NotAcceptable | RetrieveFailed]] | None = None
        batches = iter(_batches(refs))
        try:
            upcoming = asyncio.ensure_future(self._open_batch(next(batches, []), choice))
            while upcoming is not None:
                pending = await upcoming
                following = next(batches, None)
                upcoming = None if following is None else asyncio.ensure_future(self._open_batch(following, choice))
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
                    head, handle = self._open_stored(ref)
                except RetrieveFailed as exc:
                    opened.append(exc)
                    continue
                opened.append(InstanceStream(ref, ref.transfer_syntax_uid, False, ref.size or None, head, handle))
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
                offset = _stored_data_set(stored, target)
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
        ds = await asyncio.to_thread(self._read_checked, ref, numbers)
        for number in numbers:
            [data] = await asyncio.to_thread(self._frame_data, ds, ref, [number], encoding)
            yield Frame(encoding.media_type, encoding.transfer_syntax, data)

    async def check_frames(self, ref: StoredInstance, numbers: Sequence[int]) -> None:
        """InvalidRequest unless the instance has pixel data and each of `numbers` is one of its frames: for a
        caller that makes the frames one by one and must refuse before it sends the first."""
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
        steps = _bulk_path(path)
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
            ds = self._read(ref, cache=True)
            if "PixelData" not in ds:
                raise NotFound(f"instance {ref.sop_instance_uid} has no Pixel Data")
            stored = ref.transfer_syntax_uid
            native = not _encapsulated(stored)
            if encoding.media_type == OCTET_STREAM and native and stored != EXPLICIT_VR_BIG_ENDIAN:
                # Uncompressed bulk data is one part (PS3.18 §8.7.3.3.1). Little-endian native data goes as
                # stored, so 1-bit frames that share bytes keep their packing.
                return [Frame(OCTET_STREAM, encoding.transfer_syntax, bytes(ds.PixelData))]
            data = self._frame_data(ds, ref, range(1, tc.frame_count(ds) + 1), encoding)
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
            ds = self._read(ref, cache=True) if full else self._read_header(ref)
            value = _walk_path(ds, steps, ref)
            return [Frame(OCTET_STREAM, EXPLICIT_VR_LITTLE_ENDIAN, value)]

        return await asyncio.to_thread(work)

    async def rendered(self, ref: StoredInstance, options: RenderOptions) -> bytes:
        """One frame rendered as `options.media_type` (PS3.18 §8.3.5, §10.4.1.1.3), in a rendering turn.

        InvalidRequest when the viewport asks for more than `render_limits.max_side` allows, RendersBusy when no
        turn comes free in time.
        """
        max_side = self.render_limits.max_side
        return await self._render_turns.run(
            lambda: self._render(ref, options.frame, lambda ds: render(ds, options, max_side=max_side))
        )

    async def thumbnail(self, ref: StoredInstance, size: int = 128, media_type: str = "image/jpeg") -> bytes:
        """A small rendering of the first frame with the instance's own window (PS3.18 §10.4.1.1.4), in a
        rendering turn (RendersBusy when none comes free in time)."""
        return await self._render_turns.run(
            lambda: self._render(ref, 1, lambda ds: thumbnail(ds, size, media_type))
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
        """The instances as stored, in a zip (PS3.18 Table 8.7.3-2 application/zip), made while it is sent.

        A plain (blocking) generator: the HTTP door runs each step in a worker thread, so reads never block the loop.
        Entries are stored, not deflated (DICOM pixel data is often compressed already, and speed matters more).
        """
        sink = _ZipSink()
        stamp = time.localtime()[:6]
        with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            for ref in refs:
                info = zipfile.ZipInfo(
                    f"{ref.study_instance_uid}/{ref.series_instance_uid}/{ref.sop_instance_uid}.dcm", stamp
                )
                info.file_size = ref.size  # decides whether the entry needs Zip64 sizes
                try:
                    handle = self.storage.open(ref.storage_key)
                except (OSError, ValueError) as exc:
                    log.warning("instance %s left out of a zip: %s", ref.sop_instance_uid, exc)
                    continue
                with handle, archive.open(info, "w") as entry:
                    while chunk := handle.read(CHUNK_SIZE):
                        entry.write(chunk)
                        if len(sink.buffer) >= CHUNK_SIZE:
                            yield sink.take()
                if len(sink.buffer) >= CHUNK_SIZE:
                    yield sink.take()
        yield sink.take()

    def invalidate(self) -> None:
        """Forget cached parsed instances (after a delete or a replace, or in tests)."""
        self._datasets.clear()

    # -- blocking helpers, run in worker threads -------------------------------------------------------------

    def _open_stored(self, ref: StoredInstance) -> tuple[bytes, BinaryIO | None]:
        """Open the file; a small one is read whole in the same thread hop (most instances are small)."""
        try:
            handle = self.storage.open(ref.storage_key)
        except (OSError, ValueError) as exc:
            raise RetrieveFailed(f"cannot open the file of {ref.sop_instance_uid}: {exc}") from exc
        try:
            head = handle.read(CHUNK_SIZE)
            if len(head) < CHUNK_SIZE:
                handle.close()
                return head, None
        except BaseException:
            handle.close()
            raise
        return head, handle

    def _read(self, ref: StoredInstance, *, cache: bool) -> Dataset:
        key = (ref.storage_key, ref.size)
        if cache:
            found = self._datasets.get(key)
            if found is not None:
                return found
        try:
            with self.storage.open(ref.storage_key) as handle:
                ds = pydicom.dcmread(handle)  # every value read now (no defer_size), so the file can close
        except (OSError, ValueError) as exc:
            raise RetrieveFailed(f"cannot read the file of {ref.sop_instance_uid}: {exc}") from exc
        except Exception as exc:  # pydicom raises many kinds on damaged files
            raise RetrieveFailed(f"cannot parse the file of {ref.sop_instance_uid}: {exc}") from exc
        if cache:
            self._datasets.put(key, ds)
        return ds

    def _read_header(self, ref: StoredInstance) -> Dataset:
        try:
            with self.storage.open(ref.storage_key) as handle:
                return pydicom.dcmread(handle, stop_before_pixels=True)
        except (OSError, ValueError) as exc:
            raise RetrieveFailed(f"cannot read the file of {ref.sop_instance_uid}: {exc}") from exc
        except Exception as exc:
            raise RetrieveFailed(f"cannot parse the file of {ref.sop_instance_uid}: {exc}") from exc

    def _transcode(self, ds: Dataset, ref: StoredInstance, target: str) -> Dataset:
        try:
            return tc.transcode(ds, target)
        except tc.TranscodeError as exc:
            raise NotAcceptable(
                f"instance {ref.sop_instance_uid} cannot be transcoded to {_name(target)}: {exc}"
            ) from exc

    def _transcoded_bytes(self, ref: StoredInstance, target: str) -> bytes:
        ds = self._transcode(self._read(ref, cache=False), ref, target)
        try:
            return tc.encode_part10(ds)
        except tc.TranscodeError as exc:
            raise NotAcceptable(
                f"instance {ref.sop_instance_uid} cannot be encoded as {_name(target)}: {exc}"
            ) from exc

    def _read_checked(self, ref: StoredInstance, numbers: Sequence[int]) -> Dataset:
        """The parsed instance (cached), once every one of `numbers` is known to be one of its frames."""
        if not numbers:
            raise InvalidRequest("no frame numbers were requested")
        ds = self._read(ref, cache=True)
        for number in (min(numbers), max(numbers)):
            self._check_frame(ds, ref, number)
        return ds

    def _render(self, ref: StoredInstance, frame: int, make: Callable[[Dataset], bytes]) -> bytes:
        ds = self._read(ref, cache=True)
        self._check_frame(ds, ref, frame)
        try:
            return make(ds)
        except RenderRequestError as exc:
            raise InvalidRequest(f"instance {ref.sop_instance_uid} cannot be rendered as asked: {exc}") from exc
        except RenderError as exc:
            raise NotAcceptable(f"instance {ref.sop_instance_uid} cannot be rendered: {exc}") from exc

    @staticmethod
    def _check_frame(ds: Dataset, ref: StoredInstance, number: int) -> int:
        if not any(t in ds for t in PIXEL_DATA_TAGS):
            raise InvalidRequest(f"instance {ref.sop_instance_uid} has no pixel data")
        try:
            count = tc.frame_count(ds)
        except tc.TranscodeError as exc:
            raise RetrieveFailed(str(exc)) from exc
        if not 1 <= number <= count:
            raise InvalidRequest(f"frame {number} is outside 1..{count} (PS3.18 10.4.1.1.4)")
        return count

    def _frame_data(
        self, ds: Dataset, ref: StoredInstance, numbers: Sequence[int], encoding: FrameEncoding
    ) -> list[bytes]:
        if "PixelData" not in ds:
            raise InvalidRequest(
                f"instance {ref.sop_instance_uid} has no (7FE0,0010) Pixel Data to cut frames from"
            )
        try:
            if encoding.decode:
                return tc.decoded_frame_bytes(ds, numbers)
            return tc.frame_bytes(ds, numbers)
        except tc.FrameNumberError as exc:
            raise InvalidRequest(f"{exc} (PS3.18 10.4.1.1.4)") from exc
        except tc.TranscodeError as exc:
            raise NotAcceptable(f"frames of {ref.sop_instance_uid}: {exc}") from exc


# --- helpers --------------------------------------------------------------------------------------------------


def _stored_data_set(part10: bytes, transfer_syntax: str) -> int | None:
    """Where the stored file's data set starts, when it can be sent as it is in `transfer_syntax`; None when
    its File Meta or its first element says otherwise (a writer's mistake that pydicom reads through)."""
    try:
        offset = tc.data_set_offset(part10)
    except tc.TranscodeError:
        return None
    return offset if tc.encoded_as_declared(part10, offset, transfer_syntax) else None


def _batches(refs: Sequence[StoredInstance]) -> Iterator[list[StoredInstance]]:
    """`refs` cut into read-ahead batches of at most OPEN_BATCH instances and about OPEN_BATCH_BYTES."""
    batch: list[StoredInstance] = []
    size = 0
    for ref in refs:
        batch.append(ref)
        size += min(ref.size or CHUNK_SIZE, CHUNK_SIZE)  # a bigger file is only opened and its first chunk read
        if len(batch) >= OPEN_BATCH or size >= OPEN_BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _accepted(accepted: AcceptedSyntaxes | Iterable[str]) -> AcceptedSyntaxes:
    return accepted if isinstance(accepted, AcceptedSyntaxes) else AcceptedSyntaxes.of(accepted)


def _describe(study: str, series: str | None, instance: str | None) -> str:
    if instance is not None:
        return f"no instance {instance} in series {series} of study {study}"
    if series is not None:
        return f"no series {series} in study {study}"
    return f"no study {study}"


def _name(uid: str) -> str:
    name = UID(uid).name
    return f"{name} ({uid})" if name and name != uid else uid


def _is_image_class(sop_class_uid: str) -> bool:
    name = UID(sop_class_uid).name
    return "Image" in name and "Presentation" not in name


def _bulk_path(path: str) -> list[int]:
    """`00540016/0/00181072` -> [tag, item index, tag]: a stored relative BulkDataURI (app/core/header.py)."""
    if _BULK_PATH.fullmatch(path) is None:
        raise InvalidRequest(f"{path[:100]!r} is not a bulk data path (tag, then item/tag pairs)")
    return [int(step, 16) if i % 2 == 0 else int(step) for i, step in enumerate(path.split("/"))]


def _walk_path(ds: Dataset, steps: list[int], ref: StoredInstance) -> bytes:
    current: Dataset = ds
    for position in range(0, len(steps) - 1, 2):
        elem = current.get(Tag(steps[position]))
        index = steps[position + 1]
        if elem is None or elem.VR != "SQ" or elem.value is None or index >= len(elem.value):
            raise NotFound(f"instance {ref.sop_instance_uid} has no bulk data at the given path")
        current = elem.value[index]
    elem = current.get(Tag(steps[-1]))
    if elem is None or elem.value is None or not isinstance(elem.value, bytes | bytearray):
        raise NotFound(f"instance {ref.sop_instance_uid} has no bulk data at the given path")
    value = bytes(elem.value)
    width = _SWAP_WIDTH.get(str(elem.VR))
    if width and not ds.original_encoding[1] and len(value) % width == 0:
        # Read from a Big Endian file (PS3.5 §A.3): bulk data goes out little-endian (PS3.18 §8.7.3.3.1).
        value = np.frombuffer(value, dtype=f">u{width}").astype(f"<u{width}").tobytes()
    return value
