"""Records of the workflow store: workitems, performed procedure steps, subscriptions and the events sent to them.

Each holds its DICOM JSON (PS3.18 F.2) whole, plus the few values the repository indexes to narrow a search
(state, scheduled start, patient); matching itself is done on the JSON by the query model (app/core/query/
evaluate.py), so both repositories answer the same way without knowing DICOM.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Final

from app.core.records import JSONDict

# PS3.4 CC.3.1 / PS3.6 Annex A: the UPS SOP classes and the well-known instances of global subscriptions.
UPS_PUSH: Final = "1.2.840.10008.5.1.4.34.6.1"
UPS_WATCH: Final = "1.2.840.10008.5.1.4.34.6.2"
UPS_PULL: Final = "1.2.840.10008.5.1.4.34.6.3"
UPS_EVENT: Final = "1.2.840.10008.5.1.4.34.6.4"
UPS_QUERY: Final = "1.2.840.10008.5.1.4.34.6.5"
GLOBAL_SUBSCRIPTION: Final = "1.2.840.10008.5.1.4.34.5"  # UPS Global Subscription SOP Instance
FILTERED_GLOBAL_SUBSCRIPTION: Final = "1.2.840.10008.5.1.4.34.5.1"  # UPS Filtered Global Subscription
MPPS_SOP_CLASS: Final = "1.2.840.10008.3.1.2.3.3"  # Modality Performed Procedure Step (PS3.4 F.7.1)
MWL_FIND: Final = "1.2.840.10008.5.1.4.31"  # Modality Worklist Information Model - FIND (PS3.4 K.6)


class ProcedureStepState(StrEnum):
    """Procedure Step State (0074,1000), PS3.4 CC.1.1."""

    SCHEDULED = "SCHEDULED"
    IN_PROGRESS = "IN PROGRESS"
    CANCELED = "CANCELED"
    COMPLETED = "COMPLETED"

    @property
    def final(self) -> bool:
        return self in (ProcedureStepState.CANCELED, ProcedureStepState.COMPLETED)


class PerformedStepStatus(StrEnum):
    """Performed Procedure Step Status (0040,0252), PS3.3 C.4.14 / PS3.4 F.7.2."""

    IN_PROGRESS = "IN PROGRESS"
    DISCONTINUED = "DISCONTINUED"
    COMPLETED = "COMPLETED"

    @property
    def final(self) -> bool:
        return self is not PerformedStepStatus.IN_PROGRESS


class EventType(IntEnum):
    """Event Type ID of a UPS N-EVENT-REPORT, PS3.4 Table CC.2.4-1."""

    STATE_REPORT = 1
    CANCEL_REQUESTED = 2
    PROGRESS_REPORT = 3
    SCP_STATUS_CHANGE = 4
    ASSIGNED = 5


@dataclass
class Workitem:
    """One UPS. `dataset` never holds the Transaction UID (0008,1195): the SCP keeps it and must not return it
    (PS3.4 CC.2.6.3, "Transaction UID ... shall not be returned"). `version` grows with every write, so a change
    is written only over the version it was decided on (two doors, or two replicas, racing)."""

    sop_instance_uid: str
    state: ProcedureStepState
    dataset: JSONDict
    transaction_uid: str | None = None
    performed: bool = False  # an MPPS reported its procedure COMPLETED or DISCONTINUED: off the worklist
    version: int = 0
    scheduled_start: str = ""  # Scheduled Procedure Step Start DateTime, YYYYMMDDHHMMSS..., for ranges
    patient_id: str = ""
    station: str = ""  # Scheduled Station Name Code Sequence's Code Value: the worklist's station AE title

    @property
    def on_worklist(self) -> bool:
        """Offered to modalities by the Modality Worklist: scheduled, neither performed nor cancelled."""
        return self.state is ProcedureStepState.SCHEDULED and not self.performed


@dataclass
class PerformedProcedureStep:
    """One MPPS instance (PS3.4 F.7.2) with the studies it reports on, for the completion it triggers."""

    sop_instance_uid: str
    status: PerformedStepStatus
    dataset: JSONDict
    study_instance_uids: tuple[str, ...] = ()
    version: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass(frozen=True)
class Subscription:
    """A subscriber's interest (PS3.4 CC.2.3.2): in one workitem, or in all of them (`workitem_uid` None, a
    global subscription; `filter` its matching keys for a filtered one, PS3.4 CC.2.3.2.1). `suspended` global
    subscriptions add no new workitems but keep the ones they added (PS3.4 CC.2.3.2.4)."""

    ae_title: str
    workitem_uid: str | None
    deletion_lock: bool = False
    filter: JSONDict | None = None
    suspended: bool = False


@dataclass(frozen=True)
class UpsEvent:
    """An N-EVENT-REPORT's content (PS3.4 CC.2.4): sent by DIMSE or over a UPS-RS event channel alike."""

    workitem_uid: str
    event_type: EventType
    information: JSONDict = field(default_factory=dict)
