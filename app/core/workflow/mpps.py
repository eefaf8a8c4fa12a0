"""Modality Performed Procedure Step (PS3.4 Annex F): what a modality reports it performed.

N-CREATE opens a step IN PROGRESS; N-SET changes it, and once it is COMPLETED or DISCONTINUED it is final
(PS3.4 F.7.2.2.2: "may no longer be updated"). A final step does two things for the rest of the archive:
the scheduled steps it names leave the Modality Worklist, and each study it names is complete at once (the
study-completed event, and the FHIR sync fed by it, fires now instead of after STUDY_QUIET_SECONDS).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import replace
from typing import Final, Protocol

from app.core.ports import PerformedStepStore
from app.core.records import JSONDict
from app.core.workflow import attributes as a
from app.core.workflow.outcomes import FailureReason, WorkflowFailure, check_instance_uid
from app.core.workflow.records import PerformedProcedureStep, PerformedStepStatus
from app.core.workflow.worklist import WorklistService

log = logging.getLogger(__name__)

# Type 1 on N-CREATE (PS3.4 Table F.7.2-1).
_REQUIRED_ON_CREATE: Final = (
    "PerformedProcedureStepID",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "Modality",
)
# Type 1 once the step is final (PS3.4 Table F.7.2-1, "Final State" column; F.7.2.2.2).
_REQUIRED_WHEN_FINAL: Final = ("PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime")
# "Not allowed" in N-SET (PS3.4 Table F.7.2-1): who and what was scheduled, and when and where it began.
_NOT_SET: Final = frozenset(
    a.key(k)
    for k in (
        "SOPInstanceUID",
        "SOPClassUID",
        "ScheduledStepAttributesSequence",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "ReferencedPatientSequence",
        "PerformedProcedureStepID",
        "PerformedStationAETitle",
        "PerformedStationName",
        "PerformedLocation",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
        "Modality",
        "StudyID",
    )
)


class StudyCompleter(Protocol):
    """Ends a study's quiet-time wait now (app/core/lifecycle/completion.py)."""

    async def complete_now(self, study_instance_uid: str) -> bool: ...


class MppsService:
    def __init__(
        self,
        store: PerformedStepStore,
        worklist: WorklistService,
        completion: StudyCompleter | None = None,
    ) -> None:
        self.store = store
        self.worklist = worklist
        self.completion = completion

    async def create(self, sop_instance_uid: str, dataset: JSONDict) -> PerformedProcedureStep:
        """N-CREATE (PS3.4 F.7.2.1): a new step, IN PROGRESS."""
        check_instance_uid(sop_instance_uid)
        status = a.text(dataset, "PerformedProcedureStepStatus")
        if status != PerformedStepStatus.IN_PROGRESS:
            raise WorkflowFailure(
                FailureReason.INVALID_ATTRIBUTE_VALUE,
                f"Performed Procedure Step Status is {status!r}; a step is created IN PROGRESS (PS3.4 F.7.2.1.2)",
            )
        for keyword in _REQUIRED_ON_CREATE:
            if not a.text(dataset, keyword):
                raise WorkflowFailure(FailureReason.MISSING_ATTRIBUTE, f"no {keyword}")
        scheduled = a.items(dataset, "ScheduledStepAttributesSequence")
        if not scheduled or any(not a.text(item, "StudyInstanceUID") for item in scheduled):
            raise WorkflowFailure(
                FailureReason.MISSING_ATTRIBUTE,
                "no Scheduled Step Attributes Sequence (0040,0270) item with a Study Instance UID",
            )
        body = dict(dataset)
        a.put(body, "SOPInstanceUID", sop_instance_uid)
        now = time.time()
        step = PerformedProcedureStep(
            sop_instance_uid,
            PerformedStepStatus.IN_PROGRESS,
            body,
            study_instance_uids=_studies(scheduled),
            created_at=now,
            updated_at=now,
        )
        if not await self.store.create_performed_step(step):
            raise WorkflowFailure(FailureReason.DUPLICATE, f"performed procedure step {sop_instance_uid} exists")
        step.version = 1
        log.info("MPPS %s IN PROGRESS (%s)", sop_instance_uid, a.text(body, "Modality"))
        return step

    async def get(self, sop_instance_uid: str) -> PerformedProcedureStep:
        step = await self.store.get_performed_step(sop_instance_uid)
        if step is None:
            raise WorkflowFailure(FailureReason.NO_SUCH_INSTANCE, f"no performed procedure step {sop_instance_uid}")
        return step

    async def update(self, sop_instance_uid: str, changes: JSONDict) -> PerformedProcedureStep:
        """N-SET (PS3.4 F.7.2.2): only while IN PROGRESS; COMPLETED and DISCONTINUED are final."""
        refused = sorted(_NOT_SET & changes.keys())
        if refused:
            raise WorkflowFailure(
                FailureReason.INVALID_ATTRIBUTE_VALUE,
                f"({refused[0][:4]},{refused[0][4:]}) may not be set by N-SET (PS3.4 Table F.7.2-1)",
            )
        while True:
            step = await self.get(sop_instance_uid)
            if step.status.final:
                raise WorkflowFailure(
                    FailureReason.MAY_NO_LONGER_BE_UPDATED,
                    f"performed procedure step {sop_instance_uid} is {step.status} and may no longer be updated",
                )
            body = {**step.dataset, **changes}
            text = a.text(body, "PerformedProcedureStepStatus")
            try:
                status = PerformedStepStatus(text)
            except ValueError:
                raise WorkflowFailure(
                    FailureReason.INVALID_ATTRIBUTE_VALUE, f"{text!r} is not a Performed Procedure Step Status"
                ) from None
            if status.final:
                for keyword in _REQUIRED_WHEN_FINAL:
                    if not a.text(body, keyword):
                        raise WorkflowFailure(
                            FailureReason.MISSING_ATTRIBUTE, f"a {status.value} step needs {keyword}"
                        )
            changed = replace(step, status=status, dataset=body, updated_at=time.time())
            if await self.store.replace_performed_step(changed, step.version):
                changed.version = step.version + 1
                break
        if status.final:
            log.info("MPPS %s %s", sop_instance_uid, status.value)
            await self._performed(changed)
        return changed

    async def list(
        self, *, study_instance_uid: str | None = None, offset: int = 0, limit: int = 100
    ) -> list[PerformedProcedureStep]:
        return await self.store.list_performed_steps(
            study_instance_uid=study_instance_uid, offset=offset, limit=limit
        )

    async def _performed(self, step: PerformedProcedureStep) -> None:
        """The scheduled steps it names leave the worklist; the studies it names are complete."""
        scheduled = a.items(step.dataset, "ScheduledStepAttributesSequence")
        candidates = await self.worklist.scheduled_for(a.text(step.dataset, "PatientID"))
        for workitem, item in candidates:
            if any(_names(reference, item) for reference in scheduled):
                await self.worklist.ups.mark_performed(workitem)
                log.info("UPS %s off the worklist: performed (MPPS %s)", workitem.sop_instance_uid,
                         step.sop_instance_uid)  # fmt: skip
        if self.completion is not None:
            for study in step.study_instance_uids:
                await self.completion.complete_now(study)


def _names(reference: JSONDict, item: JSONDict) -> bool:
    """Whether a Scheduled Step Attributes item names this worklist item: by its Scheduled Procedure Step ID
    when given, else by Study Instance UID with the Requested Procedure ID or Accession Number (PS3.4 F.7.2.1)."""
    step = a.items(item, "ScheduledProcedureStepSequence")[0]
    sps_id = a.text(reference, "ScheduledProcedureStepID")
    if sps_id:
        return sps_id == a.text(step, "ScheduledProcedureStepID")
    if a.text(reference, "StudyInstanceUID") != a.text(item, "StudyInstanceUID"):
        return False
    for keyword in ("RequestedProcedureID", "AccessionNumber"):
        given = a.text(reference, keyword)
        if given:
            return given == a.text(item, keyword)
    return True


def _studies(scheduled: Iterable[JSONDict]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(a.text(item, "StudyInstanceUID") for item in scheduled))
