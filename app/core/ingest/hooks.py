"""The ingest hook: a Python entry point for what ingest rules cannot express (INGEST_HOOK).

INGEST_HOOK names an async callable by dotted path, `package.module:function` (or `package.module.function`):

```python
async def hook(dataset: pydicom.Dataset, context: HookContext) -> None | str | HookReject | Mapping[str, Any]:
```

It is awaited on the event loop for every instance, after the reject rules and before anything is written,
with the instance's header (pixel data excluded; treat it as read-only) and where it came from. It answers:
* None: store the instance (with whatever coercions the rules make);
* a string or `HookReject(reason, status)`: refuse it (default status 0xA900, as for a rule on the content);
* a mapping of attributes (keyword or `ggggeeee`) to new values, None removing one: coerce them (the instance is
  re-encoded and answered with warning 0xB000, as a rule's coercion).
A hook that raises refuses the instance with 0x0110 (Processing failure) and the error in the log: an instance
is never stored unchecked because its checker broke. Keep it fast; it is on the ingest path of every door.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from app.core.ingest.outcomes import FailureReason
from app.core.ingest.rules import RulesError


@dataclass(frozen=True)
class HookContext:
    calling_ae_title: str | None  # the DIMSE peer; None for STOW-RS and import
    origin: str  # the door's description of the sender, as in the log


@dataclass(frozen=True)
class HookReject:
    reason: str
    status: FailureReason = FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS


HookAnswer = None | str | HookReject | Mapping[str, Any]
IngestHook = Callable[[Dataset, HookContext], Awaitable[HookAnswer]]


def load_hook(path: str) -> IngestHook:
    """Import the hook named by `path`; RulesError with the reason when it cannot be used."""
    module_name, sep, attribute = path.partition(":")
    if not sep:
        module_name, _, attribute = path.rpartition(".")
    if not module_name or not attribute:
        raise RulesError(f"INGEST_HOOK {path!r}: expected package.module:function")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise RulesError(f"INGEST_HOOK {path!r}: cannot import {module_name}: {exc}") from exc
    hook = getattr(module, attribute, None)
    if hook is None:
        raise RulesError(f"INGEST_HOOK {path!r}: {module_name} has no {attribute}")
    call = hook if inspect.isfunction(hook) or inspect.ismethod(hook) else type(hook).__call__
    if not callable(hook) or not inspect.iscoroutinefunction(call):
        raise RulesError(f"INGEST_HOOK {path!r}: {attribute} is not an async callable")
    loaded: IngestHook = hook
    return loaded
