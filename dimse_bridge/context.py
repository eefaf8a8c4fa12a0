"""What every DIMSE handler receives: the archive, the bridge to its loop, and the parsed policies.

pynetdicom passes extra arguments to a handler when it is bound as `(event, handler, [args])`; the server binds
every handler with one `DimseContext`, so a handler needs no globals and a test can build one by hand. New
handlers (C-FIND, C-GET, C-MOVE, N-ACTION) take the same object: `def handle_find(event, dimse: DimseContext)`.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.config import Settings
from app.context import ArchiveContext
from dimse_bridge.access import AccessPolicy
from dimse_bridge.bridge import LoopBridge
from dimse_bridge.policy import PresentationPolicy


@dataclass(frozen=True)
class DimseContext:
    archive: ArchiveContext
    bridge: LoopBridge
    policy: PresentationPolicy
    access: AccessPolicy

    @property
    def settings(self) -> Settings:
        return self.archive.settings

    @property
    def ae_title(self) -> str:
        return self.archive.settings.ae_title
