"""What a client accepts (transfer syntaxes, frame media types) and what the archive can produce from what it
stores (PS3.18 §8.7.3): the rules every door shares, as data a door builds from its Accept header, WADO-URI query
or presentation contexts."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID

from app.core.dicom.transfer_syntax import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    MEDIA_TYPE_FOR_FRAMES,
    NOT_FOR_WEB_SERVICES,
    OCTET_STREAM,
    is_encapsulated,
    is_lossless,
)
from app.core.retrieve import transcode as tc

ANY: Final = "*"
"""`transfer-syntax=*` (PS3.18 §8.7.3.5): any syntax; the origin server sends the instance as stored."""

DEFAULT: Final = "default"
"""No transfer syntax named: PS3.18 §8.7.3.4 default, Explicit VR Little Endian, unless the archive holds the
pixel data only in lossy form (decoding it would not make it lossless) - then as stored."""


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
            if encapsulated(stored) and not is_lossless(stored):
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
        native = not encapsulated(stored)
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
            if syntax in (None, EXPLICIT_VR_LITTLE_ENDIAN) and decodable(stored):
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


def encapsulated(uid: str) -> bool:
    try:
        return is_encapsulated(uid)
    except ValueError:
        return True  # an unknown syntax: never sliced or re-labelled as if it were native


def decodable(uid: str) -> bool:
    """True when pixel data stored in `uid` can be decoded on this installation."""
    if not encapsulated(uid):
        return True
    try:
        return bool(get_decoder(UID(uid)).is_available)
    except (NotImplementedError, ValueError):
        return False


def can_transcode(source: str, target: str) -> bool:
    """True when an instance stored in `source` can be sent in `target` (PS3.18 §8.7.3.4 transcoding)."""
    return source == target or (tc.can_encode(target) and decodable(source))


def as_accepted(accepted: AcceptedSyntaxes | Iterable[str]) -> AcceptedSyntaxes:
    return accepted if isinstance(accepted, AcceptedSyntaxes) else AcceptedSyntaxes.of(accepted)
