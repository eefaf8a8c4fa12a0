"""WADO-RS negotiation (PS3.18 §8.7): what a WADO-RS client's Accept (header or `accept` query parameter) asks for.

Kept apart from the routes because every WADO-RS resource category negotiates here: instances (packaging and
transfer syntaxes), frames and bulk data (media types, bare or multipart), rendered images (the media type).
The routes turn the outcome into the service's neutral requests (`AcceptedSyntaxes`, `AcceptedFrames`); what
cannot be carried is a 406 here, before anything is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import Final

from app.api.accept import MediaRange, parse_accept, tiers
from app.api.errors import DicomWebError
from app.core.records import StoredInstance
from app.core.retrieve.negotiation import DEFAULT, AcceptedFrames, AcceptedSyntaxes, FrameRange
from app.core.retrieve.render import RENDER_MEDIA_TYPES

DICOM: Final = "application/dicom"
ZIP: Final = "application/zip"
# dicomweb-client and older viewers still send the pre-registration names of these media types.
_MEDIA_ALIASES: Final = {"image/x-jls": "image/jls", "image/x-dicom-rle": "image/dicom-rle"}


class Packaging(Enum):
    MULTIPART = "multipart"  # multipart/related; type="application/dicom" (PS3.18 §10.4.1.1.1)
    SINGLE = "single"  # application/dicom, one instance
    ZIP = "zip"  # application/zip (PS3.18 §8.7.3.1, Table 8.7.3-2)


def _instance_packaging(r: MediaRange, single_allowed: bool) -> Packaging | None:
    if r.media_type == "multipart/related":
        return Packaging.MULTIPART if r.part_type in (None, DICOM, "*/*", "application/*") else None
    if r.media_type in ("multipart/*", "*/*", "application/*"):
        # PS3.18 §8.7.8.1: a wildcard selects the default media type of the resource category.
        return Packaging.MULTIPART
    if r.media_type == DICOM:
        return Packaging.SINGLE if single_allowed else Packaging.MULTIPART
    if r.media_type == ZIP:
        return Packaging.ZIP
    return None


def negotiate_instances(accept: str | None, *, single_allowed: bool) -> tuple[Packaging, AcceptedSyntaxes]:
    """How to package instances, and in which transfer syntaxes (PS3.18 §8.7.3, §8.7.8).

    The packaging is that of the best acceptable range; the syntaxes come from every range of that packaging,
    in q order. A range without transfer-syntax means the §8.7.3.4 default (Explicit VR Little Endian).
    """
    ranges = parse_accept(accept)
    if not ranges:
        return Packaging.MULTIPART, AcceptedSyntaxes(((DEFAULT,),), web=True)
    usable = [(r, p) for r in ranges if (p := _instance_packaging(r, single_allowed)) is not None]
    if not usable:
        raise DicomWebError(406, f"none of the accepted media types ({accept}) can carry DICOM instances")
    packaging = usable[0][1]
    chosen = [r for r, p in usable if p is packaging]
    syntax_tiers = tuple(tuple(r.transfer_syntax or DEFAULT for r in tier) for tier in tiers(chosen))
    return packaging, AcceptedSyntaxes(syntax_tiers, web=True)


def instance_plan(
    accept: str | None, refs: Sequence[StoredInstance], *, single_allowed: bool
) -> tuple[Packaging, AcceptedSyntaxes, list[tuple[StoredInstance, str]]]:
    """The packaging, the accepted syntaxes, and the instances that can be given with the syntax of each;
    406 when none can (so that `negotiate` can turn to the Accept header, PS3.18 §8.7.8.1)."""
    packaging, accepted = negotiate_instances(accept, single_allowed=single_allowed)
    if packaging is Packaging.ZIP:
        return packaging, accepted, [(ref, ref.transfer_syntax_uid) for ref in refs]  # the files as stored
    plan = [(ref, syntax) for ref in refs if (syntax := accepted.choose(ref.transfer_syntax_uid))]
    if not plan:
        stored = sorted({ref.transfer_syntax_uid for ref in refs})
        raise DicomWebError(
            406, f"no accepted transfer syntax can be produced from the stored ones ({', '.join(stored)})"
        )
    return packaging, accepted, plan


def negotiate_frames(accept: str | None) -> tuple[AcceptedFrames, bool]:
    """Acceptable frame/bulk data representations, and whether a bare (non-multipart) answer is wanted.

    No Accept, `*/*` and `multipart/related; type="*/*"` take frames as stored (PS3.18 §8.7.8.1 leaves the
    default to the resource; the stored form needs no work and the part says what it is).
    """
    ranges = parse_accept(accept)
    if not ranges:
        return AcceptedFrames.of([FrameRange("*/*")]), False
    bare = True
    result: list[list[FrameRange]] = []
    for tier in tiers(ranges):
        entries = []
        for r in tier:
            if r.media_type == "multipart/related":
                bare = False
                media_type = r.part_type or "*/*"
            elif r.media_type in ("multipart/*", "*/*"):
                bare = False
                media_type = "*/*"
            else:
                media_type = r.media_type
            entries.append(FrameRange(_MEDIA_ALIASES.get(media_type, media_type), r.transfer_syntax))
        result.append(entries)
    return AcceptedFrames(tuple(tuple(t) for t in result)), bare


def frames_choice(accept: str | None, stored: str) -> tuple[AcceptedFrames, bool]:
    """`negotiate_frames`, and 406 when no accepted representation can carry frames stored in `stored`."""
    accepted, bare = negotiate_frames(accept)
    if accepted.choose(stored) is None:
        raise DicomWebError(406, f"no accepted media type ({accept}) can carry frames stored as {stored}")
    return accepted, bare


def negotiate_rendered(accept: str | None) -> str:
    """The rendered media type (PS3.18 §8.7.4): JPEG unless the client prefers PNG or GIF; 406 otherwise."""
    ranges = parse_accept(accept)
    if not ranges:
        return "image/jpeg"
    for r in ranges:
        media_type = r.part_type or "*/*" if r.media_type == "multipart/related" else r.media_type
        if media_type in RENDER_MEDIA_TYPES:
            return media_type
        if media_type in ("*/*", "image/*"):
            return "image/jpeg"  # PS3.18 §8.7.8.1: the category's default
    raise DicomWebError(406, f"none of the accepted media types ({accept}) is a rendered image type")
