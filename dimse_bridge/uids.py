"""pynetdicom's UID handling, remembered: the same few hundred UIDs are checked again in every association.

pynetdicom turns each UID of an A-ASSOCIATE-RQ, of each presentation context it builds from it and of each
DIMSE primitive into a pydicom UID with `pynetdicom.utils.set_uid`, which validates the value with pydicom's
regular expressions three times (pydicom's UID constructor, `_config.VALIDATORS["UI"]`, `UID.is_valid`). A getscu
association proposes ~120 storage contexts with role selection and names the same UIDs each time: py-spy over a
C-GET run put a fifth of the server's CPU in those checks. The answers depend on nothing but the value, so they
are remembered (LRU, 8192 values): `VALIDATORS["UI"]` is a documented setting; `set_uid` is replaced in the
pynetdicom modules that imported it (pinned to pynetdicom 3.0.x in pyproject.toml). A value that fails raises
every time, as before (exceptions are not cached); a non-conformant one is logged the first time only.

`PresentationContext.add_transfer_syntax` does not go through `set_uid`: it builds a pydicom UID and asks it
`is_valid`, `is_private` and `is_transfer_syntax`, five regular-expression matches per transfer syntax of every
context proposed and every context accepted. For getscu's A-ASSOCIATE-RQ (121 contexts) that was 2 of the 3.7 ms
the acceptor spent turning it into a primitive and negotiating it; the same checks, remembered, take 0.1 ms.
"""

from __future__ import annotations

import functools
import logging
from types import ModuleType
from typing import Any, Final

from pydicom.uid import UID
from pynetdicom import _config, ae, dimse_primitives, pdu_items, pdu_primitives, presentation, utils
from pynetdicom.presentation import PresentationContext

log = logging.getLogger(presentation.__name__)  # pynetdicom's messages, under pynetdicom's logger

CACHE_SIZE: Final = 8192
_USERS: Final[tuple[ModuleType, ...]] = (utils, ae, dimse_primitives, pdu_items, pdu_primitives, presentation)


def remember() -> None:
    """Install the caches, once per process."""
    check = _config.VALIDATORS["UI"]
    if not hasattr(check, "cache_info"):
        _config.VALIDATORS["UI"] = functools.lru_cache(maxsize=CACHE_SIZE)(check)
    original = utils.set_uid
    if getattr(original, "remembered", False):
        return
    cached = functools.lru_cache(maxsize=CACHE_SIZE)(original)

    def set_uid(
        value: Any, name: str, allow_empty: bool = True, allow_none: bool = True, validate: bool = True
    ) -> Any:
        # A UID that carries a private transfer syntax's encoding is its own object; anything else is its text.
        if isinstance(value, (str, bytes)) and not hasattr(value, "_PRIVATE_TS_ENCODING"):
            return cached(
                value if type(value) in (str, bytes) else str(value), name, allow_empty, allow_none, validate
            )
        return original(value, name, allow_empty, allow_none, validate)

    set_uid.remembered = True  # type: ignore[attr-defined]
    for module in _USERS:
        if getattr(module, "set_uid", None) is original:
            module.set_uid = set_uid  # type: ignore[attr-defined]

    if not getattr(PresentationContext.add_transfer_syntax, "remembered", False):
        PresentationContext.add_transfer_syntax = _add_transfer_syntax(  # type: ignore[method-assign]
            PresentationContext.add_transfer_syntax
        )


@functools.lru_cache(maxsize=CACHE_SIZE)
def _transfer_syntax(value: str) -> UID:
    """pynetdicom's checks of one transfer syntax (presentation.py, `add_transfer_syntax`), made once per value."""
    syntax = UID(value)
    if not utils.validate_uid(syntax):
        log.error("'transfer_syntax' contains an invalid UID")
        raise ValueError("'transfer_syntax' contains an invalid UID")
    if syntax and not syntax.is_valid:
        log.warning(f"The Transfer Syntax Name '{syntax}' is non-conformant")
    if syntax and not syntax.is_private and not syntax.is_transfer_syntax:
        log.warning(f"A UID has been added to 'transfer_syntax' that is not a transfer syntax: '{syntax}'")
    return syntax


def _add_transfer_syntax(original: Any) -> Any:
    def add_transfer_syntax(self: PresentationContext, syntax: Any) -> None:
        # A UID carrying a private transfer syntax's encoding is its own object: pynetdicom's path keeps it.
        if not isinstance(syntax, (str, bytes)) or hasattr(syntax, "_PRIVATE_TS_ENCODING"):
            original(self, syntax)
            return
        uid = _transfer_syntax(syntax.decode("ascii") if isinstance(syntax, bytes) else str(syntax))
        if uid != "" and uid not in self._transfer_syntax:
            self._transfer_syntax.append(uid)

    add_transfer_syntax.remembered = True  # type: ignore[attr-defined]
    return add_transfer_syntax
