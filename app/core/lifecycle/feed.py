"""Records the repositories keep for the study lifecycle: change feed entries, studies awaiting completion,
and outbox entries (work for an outside system, such as a FHIR server or a webhook, that must survive a
restart or the other side being down)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class NewChange:
    """A change to append to the feed; the repository gives it its sequence number."""

    kind: str  # app.core.events.ChangeKind value
    study_instance_uid: str
    series_instance_uid: str | None
    sop_instance_uid: str | None
    at: float


@dataclass(frozen=True)
class Change:
    """One entry of the change feed: `seq` increases strictly with every append and is never reused."""

    seq: int
    kind: str
    study_instance_uid: str
    series_instance_uid: str | None
    sop_instance_uid: str | None
    at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "type": self.kind,
            "at": self.at,
            "StudyInstanceUID": self.study_instance_uid,
            "SeriesInstanceUID": self.series_instance_uid,
            "SOPInstanceUID": self.sop_instance_uid,
        }


@dataclass(frozen=True)
class PendingStudy:
    """A study with instances stored since it was last reported complete; `activity_at` is the last store."""

    study_instance_uid: str
    activity_at: float


@dataclass(frozen=True)
class OutboxEntry:
    """Work for an outside system. `version` grows each time the same (target, key) is put again, so a
    worker finishing an older version leaves the newer one pending."""

    target: str
    key: str
    payload: str
    version: int
    attempts: int
    next_attempt_at: float
    last_error: str | None
    created_at: float


@dataclass(frozen=True)
class OutboxStatus:
    pending: int
    failing: int  # pending entries whose last attempt failed
    oldest_created_at: float | None
    last_error: str | None
