"""Which presentation contexts the archive accepts (PS3.8 9.3.2.2, PS3.7 D.3.3.2), built from the settings.

An association requestor proposes presentation contexts, each one abstract syntax (SOP class) with a list of
transfer syntaxes; the acceptor accepts each with one transfer syntax or rejects it (result 3, abstract syntax
not supported, or 4, transfer syntaxes not supported). What we accept is operator policy:

* SOP classes: `AllStorage` (every storage SOP class pynetdicom knows), `All` (that, plus storage-like SOP
  classes we cannot know in advance: private ones and standard ones newer than pynetdicom), or an explicit list.
  A SOP class outside the policy is rejected at negotiation, so the SCU learns before sending anything.
* Transfer syntaxes: `All`, `UncompressedOnly` or an explicit list.

pynetdicom chooses, for each proposed context, the first transfer syntax *in the acceptor's list* that the
requestor also proposed (presentation.negotiate_as_acceptor), so the order below is a decision: native
little-endian first, then lossless compressed, then the rest, lossy last. A sender that offers several syntaxes
in one context (DCMTK's `storescu --propose-jpeg8` does) can compress on the fly; choosing a lossy syntax
there would make it throw pixel information away, which an archive must never ask for. A sender offering only
its file's own syntax (`dcmsend -dn`) gets exactly that, and the bytes are stored as sent.

Verification (C-ECHO, PS3.4 A) is always accepted. Services added later (Q/R, Storage Commitment) pass their
SOP classes to `supported_contexts(extra=...)`.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import pynetdicom
from pydicom.uid import UID
from pynetdicom import sop_class
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.service_class import ServiceClass, StorageServiceClass

from app.core.dicom.transfer_syntax import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    TRANSFER_SYNTAXES,
    is_lossless,
)

ALL_STORAGE: Final = "AllStorage"
ALL: Final = "All"
UNCOMPRESSED_ONLY: Final = "UncompressedOnly"

VERIFICATION: Final = "1.2.840.10008.1.1"  # PS3.4 A.4, Verification SOP Class
DICOM_ROOT: Final = "1.2.840.10008."  # PS3.5 9.1 / Annex B: UIDs under this root are the standard's own

# Non-storage services (echo, queries, N-ACTION) carry small command data sets: the native syntaxes suffice,
# Implicit VR LE being the one every implementation must support (PS3.5 10.1).
SERVICE_TRANSFER_SYNTAXES: Final = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)

# PS3.5 A.1-A.3: the native syntaxes. Deflate is a compression of the whole data set, so it is not "uncompressed".
UNCOMPRESSED: Final = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN)

# PS3.5 9.1: a UID is dot-separated numeric components.
_UID_PATTERN: Final = re.compile(r"[0-9]+(\.[0-9]+)+")

# How many storage-like SOP classes unknown to pynetdicom policy `All` will register at run time. pynetdicom's
# registry is process-wide, so peers must not be able to grow it without bound.
MAX_RUNTIME_SOP_CLASSES: Final = 1000


def _rank(uid: str) -> int:
    if uid == EXPLICIT_VR_LITTLE_ENDIAN:
        return 0
    if uid == IMPLICIT_VR_LITTLE_ENDIAN:
        return 1
    if is_lossless(uid) and uid not in (DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN):
        return 2  # lossless compressed (and encapsulated uncompressed)
    if uid in (DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN):
        return 3  # lossless, but only worth it when the sender offers nothing better
    return 4  # lossy, or of unknown fidelity (video, JPIP references)


def _all_transfer_syntaxes() -> tuple[str, ...]:
    known = dict.fromkeys([*map(str, pynetdicom.ALL_TRANSFER_SYNTAXES), *TRANSFER_SYNTAXES])
    return tuple(sorted(known, key=_rank))  # stable: table order within a rank


ALL_TRANSFER_SYNTAXES: Final = _all_transfer_syntaxes()
_TRANSFER_SYNTAX_KEYWORDS: Final = {
    UID(uid).keyword: uid for uid in ALL_TRANSFER_SYNTAXES if UID(uid).keyword
}

# Every storage SOP class pynetdicom 3 knows (PS3.4 Annex B, Table B.5-1, plus non-patient storage, PS3.4 GG).
ALL_STORAGE_SOP_CLASSES: Final = tuple(
    str(cx.abstract_syntax) for cx in pynetdicom.AllStoragePresentationContexts
)
_STORAGE_SET: Final = frozenset(ALL_STORAGE_SOP_CLASSES)


def is_uid(text: str) -> bool:
    return len(text) <= 64 and _UID_PATTERN.fullmatch(text) is not None


def resolve_sop_class(name: str) -> str:
    """A SOP Class UID from a UID or a pynetdicom keyword (`CTImageStorage`); ValueError otherwise."""
    if is_uid(name):
        return name
    found = getattr(sop_class, name, None)
    if isinstance(found, UID):
        return str(found)
    raise ValueError(f"unknown SOP class {name!r}: give a UID or a keyword such as CTImageStorage")


def resolve_transfer_syntax(name: str) -> str:
    """A Transfer Syntax UID from a UID or a pydicom keyword (`JPEG2000Lossless`); ValueError otherwise."""
    if is_uid(name):
        return name
    if name in _TRANSFER_SYNTAX_KEYWORDS:
        return _TRANSFER_SYNTAX_KEYWORDS[name]
    raise ValueError(
        f"unknown transfer syntax {name!r}: give a UID or a keyword such as ExplicitVRLittleEndian"
    )


def is_storage_like(uid: str) -> bool:
    """Would policy `All` treat `uid` as a storage SOP class? The same test pynetdicom's unrestricted storage
    mode uses: a known storage class, a private UID (outside the DICOM root), or a standard UID pynetdicom does
    not know at all (a storage class newer than the library; non-storage services are all known to it)."""
    if uid in _STORAGE_SET:
        return True
    if not is_uid(uid):
        return False
    if not uid.startswith(DICOM_ROOT):
        return True
    if sop_class.uid_to_service_class(uid) is not ServiceClass:
        return False  # a service pynetdicom implements, and not storage (those are in _STORAGE_SET)
    known = UID(uid)
    if known.name == uid:
        return True  # unknown to pydicom too: newer than both libraries
    return known.type == "SOP Class" and "Storage" in known.name


_registered: set[str] = set()
_registry_lock = threading.Lock()


def ensure_storage_service(uid: str) -> bool:
    """Make pynetdicom dispatch C-STORE requests for `uid` to its Storage service class.

    pynetdicom picks the service class of an incoming request from the SOP class UID; one it does not know gets
    the base class, which refuses. Registration is process-wide and idempotent; False when the cap is reached.
    """
    if sop_class.uid_to_service_class(uid) is StorageServiceClass:
        return True
    with _registry_lock:
        if uid in _registered:
            return True
        if len(_registered) >= MAX_RUNTIME_SOP_CLASSES:
            return False
        sop_class.register_uid(uid, "RuntimeStorage_" + uid.replace(".", "_"), StorageServiceClass)
        _registered.add(uid)
        return True


def storage_context(uid: str, transfer_syntaxes: Sequence[str]) -> PresentationContext:
    """A supported storage context. Both roles are accepted (PS3.7 D.3.3.4) so that a C-GET requestor, which
    proposes the storage SCP role for itself, can have its instances sent back on the same association."""
    context = build_context(uid, list(transfer_syntaxes))
    context.scu_role = True
    context.scp_role = True
    return context


@dataclass(frozen=True)
class PresentationPolicy:
    """The parsed policy. `any_storage` is policy `All`: storage-like SOP classes outside `sop_classes` are
    accepted too, per association, when a requestor proposes them."""

    sop_classes: tuple[str, ...]
    transfer_syntaxes: tuple[str, ...]
    any_storage: bool = False

    def supported_contexts(self, extra: Iterable[str] = ()) -> list[PresentationContext]:
        """Verification, the storage SOP classes of the policy, and `extra` services with native syntaxes."""
        contexts = [build_context(VERIFICATION, list(SERVICE_TRANSFER_SYNTAXES))]
        seen = {VERIFICATION}
        for uid in extra:
            if uid not in seen:
                contexts.append(build_context(uid, list(SERVICE_TRANSFER_SYNTAXES)))
                seen.add(uid)
        for uid in self.sop_classes:
            if uid not in seen:
                contexts.append(storage_context(uid, self.transfer_syntaxes))
                seen.add(uid)
        return contexts

    def runtime_contexts(
        self, requested: Iterable[str], supported: Iterable[str]
    ) -> list[PresentationContext]:
        """For policy `All`: contexts for requested storage-like SOP classes not already supported.

        Called once per association, before negotiation, with the requested abstract syntaxes.
        """
        if not self.any_storage:
            return []
        have = set(supported)
        added: list[PresentationContext] = []
        for uid in dict.fromkeys(map(str, requested)):
            if uid in have or not is_storage_like(uid) or not ensure_storage_service(uid):
                continue
            added.append(storage_context(uid, self.transfer_syntaxes))
            have.add(uid)
        return added


def build_policy(
    sop_class_policy: Sequence[str], transfer_syntax_policy: Sequence[str]
) -> PresentationPolicy:
    """Parse the two settings; ValueError (raised at start-up, naming the bad entry) on anything unknown."""
    names = [name.strip() for name in sop_class_policy if name.strip()] or [ALL_STORAGE]
    any_storage = False
    if len(names) == 1 and names[0].lower() == ALL_STORAGE.lower():
        sop_classes = ALL_STORAGE_SOP_CLASSES
    elif len(names) == 1 and names[0].lower() == ALL.lower():
        sop_classes, any_storage = ALL_STORAGE_SOP_CLASSES, True
    else:
        sop_classes = tuple(dict.fromkeys(resolve_sop_class(name) for name in names))
        for uid in sop_classes:
            if uid not in _STORAGE_SET and not ensure_storage_service(uid):
                raise ValueError(f"cannot register SOP class {uid}")

    ts_names = [name.strip() for name in transfer_syntax_policy if name.strip()] or [ALL]
    if len(ts_names) == 1 and ts_names[0].lower() == ALL.lower():
        transfer_syntaxes = ALL_TRANSFER_SYNTAXES
    elif len(ts_names) == 1 and ts_names[0].lower() == UNCOMPRESSED_ONLY.lower():
        transfer_syntaxes = UNCOMPRESSED
    else:
        listed = {resolve_transfer_syntax(name) for name in ts_names}
        # The operator chooses which syntaxes; the preference among them stays ours (see the module docstring).
        transfer_syntaxes = tuple(sorted(listed, key=lambda uid: (_rank(uid), _order(uid))))
    return PresentationPolicy(
        sop_classes=sop_classes, transfer_syntaxes=transfer_syntaxes, any_storage=any_storage
    )


def _order(uid: str) -> int:
    try:
        return ALL_TRANSFER_SYNTAXES.index(uid)
    except ValueError:
        return len(ALL_TRANSFER_SYNTAXES)
