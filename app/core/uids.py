"""UID validation: a UID becomes a file path and a database key, so it is checked before any I/O.

PS3.5 §9.1: a UID is at most 64 characters, made of numeric components separated by dots, each component
without a leading zero (except the component "0" itself). Anything else (`../`, NUL, letters, spaces) is
refused here, which is what keeps a hostile UID from ever naming a path outside the storage root.
"""

from __future__ import annotations

import re

MAX_UID_LENGTH = 64  # PS3.5 §9.1

# PS3.5 forbids leading zeros in a component, but real modalities emit them; refusing such an instance would
# lose data for no safety gain, since digits and dots alone can never form a path outside the storage root.
_UID_PATTERN = re.compile(r"[0-9]+(\.[0-9]+)*")


class InvalidUIDError(ValueError):
    """A value that should be a UID is not one; the message names it and says why."""


def is_valid_uid(value: str) -> bool:
    return 0 < len(value) <= MAX_UID_LENGTH and _UID_PATTERN.fullmatch(value) is not None


def check_uid(value: object, name: str = "UID") -> str:
    """Return `value` when it is a valid UID, else raise InvalidUIDError saying why."""
    if not isinstance(value, str) or not value:
        raise InvalidUIDError(f"{name} is missing")
    if len(value) > MAX_UID_LENGTH:
        raise InvalidUIDError(f"{name} is longer than {MAX_UID_LENGTH} characters (PS3.5 9.1)")
    if _UID_PATTERN.fullmatch(value) is None:
        shown = value if value.isprintable() else repr(value)
        raise InvalidUIDError(f"{name} {shown[:80]!s} is not a valid UID (PS3.5 9.1: digits and dots)")
    return value
