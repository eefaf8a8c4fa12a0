"""UID validation: a UID becomes a file path and a database key, so it is checked before any I/O.

PS3.5 §9.1: a UID is at most 64 characters, made of numeric components separated by dots, each component
without a leading zero (except the component "0" itself). Two strengths of check follow from that:

* `check_uid` (any UID the archive is asked about: a URL, a query key) refuses what could be unsafe as a path
  or a key - `../`, NUL, letters, spaces, overlong values - but lets a leading zero through, so an instance
  archived before ingest enforced PS3.5 stays retrievable by the UID it was stored under.
* `check_uid(..., conformant=True)` (the identifying UIDs of an instance offered for storage) also refuses a
  leading zero (`1.02.3`): such an instance does not match its IOD and is refused with 0xA900 rather than
  stored under a UID no conformant peer may use.
"""

from __future__ import annotations

import re

MAX_UID_LENGTH = 64  # PS3.5 §9.1

# Digits and dots alone can never form a path outside the storage root.
_SAFE_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
# PS3.5 §9.1: "each component ... shall not have leading zeros" (the component 0 itself is allowed).
_LEADING_ZERO = re.compile(r"(?:^|\.)0[0-9]")


class InvalidUIDError(ValueError):
    """A value that should be a UID is not one; the message names it and says why."""


def is_valid_uid(value: str) -> bool:
    return 0 < len(value) <= MAX_UID_LENGTH and _SAFE_UID.fullmatch(value) is not None


def check_uid(value: object, name: str = "UID", *, conformant: bool = False) -> str:
    """Return `value` when it is a valid UID, else raise InvalidUIDError saying why; `conformant` also
    refuses a component with a leading zero (PS3.5 9.1)."""
    if not isinstance(value, str) or not value:
        raise InvalidUIDError(f"{name} is missing")
    if len(value) > MAX_UID_LENGTH:
        raise InvalidUIDError(f"{name} is longer than {MAX_UID_LENGTH} characters (PS3.5 9.1)")
    if _SAFE_UID.fullmatch(value) is None:
        shown = value if value.isprintable() else repr(value)
        raise InvalidUIDError(f"{name} {shown[:80]!s} is not a valid UID (PS3.5 9.1: digits and dots)")
    if conformant and _LEADING_ZERO.search(value) is not None:
        raise InvalidUIDError(f"{name} {value} has a component with a leading zero (PS3.5 9.1)")
    return value
