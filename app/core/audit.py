"""The audit trail: one JSON line per store, retrieve, query, delete, admin action and DIMSE association.

Each record says who (the authenticated user or API key name, else "anonymous"; for DIMSE the calling AE
title), what (action, the request and the study/series/instance it named, the outcome), when (UTC) and from
where (client address, after trusted-proxy resolution). The fields follow the questions of an IHE ATNA audit
message (DICOM PS3.15 A.5 / RFC 3881: EventIdentification, ActiveParticipant, NetworkAccessPoint,
ParticipantObjectIdentification) in a flat form log shippers index directly.

Records go through a queue to a writer thread (logging's QueueHandler/QueueListener), so the request path
never waits for the disk. `AUDIT_LOG=-` writes to stdout; a path appends to that file (reopened when rotated
away, WatchedFileHandler); empty turns the trail off.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import queue
import sys
from datetime import UTC, datetime
from typing import Any

from app.core.logs import REQUEST_ID

ACTIONS = frozenset({"store", "retrieve", "query", "delete", "admin", "association"})


class AuditLog:
    def __init__(self, target: str | None) -> None:
        self.enabled = bool(target)
        self._listener: logging.handlers.QueueListener | None = None
        self._handler: logging.StreamHandler[Any] | None = None
        self._logger = logging.getLogger(f"dicomweb_archive.audit.{id(self)}")
        self._logger.propagate = False
        self._logger.setLevel(logging.INFO)
        if not target:
            return
        handler: logging.StreamHandler[Any] = (
            logging.StreamHandler(sys.stdout) if target == "-" else logging.handlers.WatchedFileHandler(target)
        )
        self._handler = handler
        handler.setFormatter(logging.Formatter("%(message)s"))
        records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        self._logger.addHandler(logging.handlers.QueueHandler(records))
        self._listener = logging.handlers.QueueListener(records, handler)
        self._listener.start()

    def record(
        self,
        action: str,
        *,
        outcome: int | str,
        user: str | None,
        client: str | None,
        **details: Any,
    ) -> None:
        """Write one record; `details` (method, path, study, series, instance, ae titles...) are added as is."""
        if not self.enabled:
            return
        entry: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "action": action,
            "outcome": outcome,
            "user": user or "anonymous",
            "client": client,
            "request_id": REQUEST_ID.get(),
        }
        entry.update({key: value for key, value in details.items() if value is not None})
        self._logger.info(json.dumps(entry, ensure_ascii=False))

    def close(self) -> None:
        """Write what is queued and stop the writer thread."""
        if self._listener is not None:
            self._listener.stop()
            self._listener = None
        if self._handler is not None and self._handler.stream is not sys.stdout:
            self._handler.close()
        self._handler = None
