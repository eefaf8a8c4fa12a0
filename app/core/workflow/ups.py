"""The Unified Procedure Step state machine (PS3.4 CC.1.1), behind UPS-RS and the UPS DIMSE services alike.

    SCHEDULED --claim (Transaction UID)--> IN PROGRESS --(same Transaction UID)--> COMPLETED | CANCELED
        \\--request cancellation (nobody performing it yet)--> CANCELED

Every operation is one of the standard's (create, update, change state, request cancellation, search,
subscribe, unsubscribe, suspend global subscription: PS3.4 CC.2, PS3.18 11) with its refusals as
`WorkflowFailure` reasons that each door maps to its own codes. A workitem is written only over the version
its change was decided on (`replace_workitem`), so two doors, or two replicas, racing to claim the same
workitem cannot both win: the loser re-reads and gets the standard's answer ("already IN PROGRESS").

Subscribers hear of changes as `UpsEvent`s (PS3.4 CC.2.4) through the channels the doors attach: the UPS-RS
WebSocket channel for an AE that has one open, DIMSE N-EVENT-REPORT for an AE in the registry.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Final, Protocol

from app.core.ports import SubscriptionStore, WorkitemStore
from app.core.query.evaluate import matches_all, parse_matches
from app.core.query.model import Match, MatchKind, QueryError
from app.core.records import JSONDict
from app.core.workflow import attributes as a
from app.core.workflow.outcomes import FailureReason, WorkflowFailure, WorkflowWarning, check_instance_uid
from app.core.workflow.records import (
    FILTERED_GLOBAL_SUBSCRIPTION,
    GLOBAL_SUBSCRIPTION,
    UPS_PUSH,
    EventType,
    ProcedureStepState,
    Subscription,
    UpsEvent,
    Workitem,
)

log = logging.getLogger(__name__)

# Attributes the SCP owns: never taken from a create or an update (PS3.4 Table CC.2.5-3).
TRANSACTION_UID: Final = a.key("TransactionUID")
_SCP_OWNED: Final = frozenset(
    a.key(k) for k in ("TransactionUID", "ProcedureStepState", "SOPClassUID", "SOPInstanceUID")
)
# Type 1 on N-CREATE (PS3.4 Table CC.2.5-3); Worklist Label is filled in by the SCP when absent.
_REQUIRED_ON_CREATE: Final = (
    "ScheduledProcedureStepPriority",
    "ProcedureStepLabel",
    "ScheduledProcedureStepStartDateTime",
    "InputReadinessState",
)
_ENUMERATED: Final = {
    "ScheduledProcedureStepPriority": ("HIGH", "MEDIUM", "LOW"),
    "InputReadinessState": ("INCOMPLETE", "UNAVAILABLE", "READY"),
}
DEFAULT_WORKLIST_LABEL: Final = "DEFAULT"
# Cancellation details an N-ACTION Request Cancellation may carry, forwarded in the event (PS3.4 CC.2.4.3).
_CANCEL_INFORMATION: Final = (
    "ReasonForCancellation",
    "ProcedureStepDiscontinuationReasonCodeSequence",
    "ContactURI",
    "ContactDisplayName",
)
_PAGE: Final = 500
# What a global subscription takes in when made: the workitems that may still change (PS3.4 CC.2.3.2.1).
_OPEN_STATES: Final = (ProcedureStepState.SCHEDULED.value, ProcedureStepState.IN_PROGRESS.value)


class EventChannel(Protocol):
    """A way to reach subscribers (a door attaches one): takes the event for `ae_title` if it can reach it."""

    async def offer(self, ae_title: str, event: UpsEvent) -> bool: ...


class WorkflowStore(WorkitemStore, SubscriptionStore, Protocol):
    """The roles the UPS service uses."""


def now_datetime() -> str:
    """DT of now in UTC with its offset (PS3.5 Table 6.2-1)."""
    return dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S.%f+0000")


def new_uid() -> str:
    """A UID from a UUID (PS3.5 B.2), for workitems created without one."""
    return f"2.25.{uuid.uuid4().int}"


class UpsService:
    def __init__(self, store: WorkflowStore, clock: Callable[[], str] = now_datetime) -> None:
        self.store = store
        self.clock = clock
        self.channels: list[EventChannel] = []

    # -- create, read, update -------------------------------------------------------------------------------

    async def create(self, dataset: JSONDict, sop_instance_uid: str | None = None) -> tuple[Workitem, bool]:
        """Create Workitem (PS3.4 CC.2.5, PS3.18 11.4): (the workitem, whether the SCP changed what was sent)."""
        uid = sop_instance_uid or a.text(dataset, "SOPInstanceUID") or new_uid()
        check_instance_uid(uid)
        state = a.text(dataset, "ProcedureStepState")
        if not state:
            raise WorkflowFailure(FailureReason.MISSING_ATTRIBUTE, "no Procedure Step State (0074,1000)")
        if state != ProcedureStepState.SCHEDULED:
            raise WorkflowFailure(
                FailureReason.NOT_SCHEDULED_ON_CREATE,
                f"Procedure Step State is {state!r}; a workitem is created SCHEDULED (PS3.4 CC.2.5.1.3.1)",
            )
        if a.present(dataset, "TransactionUID"):
            raise WorkflowFailure(
                FailureReason.INVALID_ATTRIBUTE_VALUE, "a new workitem carries no Transaction UID (0008,1195)"
            )
        for keyword in _REQUIRED_ON_CREATE:
            if not a.text(dataset, keyword):
                raise WorkflowFailure(FailureReason.MISSING_ATTRIBUTE, f"no {keyword} ({_tag(keyword)})")
        _check_values(dataset)
        body = {k: v for k, v in dataset.items() if k not in _SCP_OWNED}
        modified = False
        if not a.text(body, "WorklistLabel"):
            a.put(body, "WorklistLabel", DEFAULT_WORKLIST_LABEL)
            modified = True
        a.put(body, "SOPClassUID", UPS_PUSH)
        a.put(body, "SOPInstanceUID", uid)
        a.put(body, "ProcedureStepState", ProcedureStepState.SCHEDULED.value)
        a.put(body, "ScheduledProcedureStepModificationDateTime", self.clock())
        workitem = _indexed(Workitem(uid, ProcedureStepState.SCHEDULED, body))
        if not await self.store.create_workitem(workitem):
            raise WorkflowFailure(FailureReason.DUPLICATE, f"workitem {uid} exists already")
        workitem.version = 1
        log.info("UPS %s created (%s)", uid, a.text(body, "ProcedureStepLabel"))
        await self._after_write(self._on_created(workitem), uid)
        return workitem, modified

    async def get(self, sop_instance_uid: str) -> Workitem:
        """Retrieve Workitem (PS3.18 11.5, N-GET): NO_SUCH_WORKITEM when not held."""
        workitem = await self.store.get_workitem(sop_instance_uid)
        if workitem is None:
            raise WorkflowFailure(FailureReason.NO_SUCH_WORKITEM, f"no workitem {sop_instance_uid}")
        return workitem

    async def update(self, sop_instance_uid: str, changes: JSONDict, transaction_uid: str | None) -> Workitem:
        """Update Workitem (PS3.4 CC.2.6, PS3.18 11.6): a SCHEDULED workitem by anyone, an IN PROGRESS one
        only with its Transaction UID, a COMPLETED or CANCELED one never."""
        for key in _SCP_OWNED & changes.keys():
            if key != TRANSACTION_UID:
                raise WorkflowFailure(
                    FailureReason.INVALID_ATTRIBUTE_VALUE,
                    f"({key[:4]},{key[4:]}) is not changed by an update (PS3.4 Table CC.2.5-3)",
                )
        _check_values(changes)
        while True:
            workitem = await self.get(sop_instance_uid)
            if workitem.state.final:
                raise WorkflowFailure(
                    FailureReason.MAY_NO_LONGER_BE_UPDATED, f"workitem {sop_instance_uid} is {workitem.state}"
                )
            if workitem.state is ProcedureStepState.IN_PROGRESS:
                _check_transaction(workitem, transaction_uid)
            body = dict(workitem.dataset)
            body.update({k: v for k, v in changes.items() if k != TRANSACTION_UID})
            a.put(body, "ScheduledProcedureStepModificationDateTime", self.clock())
            updated = _indexed(replace(workitem, dataset=body))
            if await self._write(updated, workitem.version):
                break
        progress = a.key("ProcedureStepProgressInformationSequence")
        if progress in changes:
            info = {progress: changes[progress]}
            await self._after_write(self._notify(updated, EventType.PROGRESS_REPORT, info), sop_instance_uid)
        return updated

    # -- state ----------------------------------------------------------------------------------------------

    async def change_state(
        self, sop_instance_uid: str, state: str, transaction_uid: str | None
    ) -> WorkflowWarning | None:
        """Change Workitem State (PS3.4 CC.2.1.3 N-ACTION Type 1, PS3.18 11.7)."""
        try:
            wanted = ProcedureStepState(state)
        except ValueError:
            raise WorkflowFailure(
                FailureReason.INVALID_ATTRIBUTE_VALUE, f"{state!r} is not a Procedure Step State"
            ) from None
        if wanted is ProcedureStepState.SCHEDULED:
            raise WorkflowFailure(
                FailureReason.MAY_ONLY_BECOME_SCHEDULED_VIA_CREATE, "a workitem only becomes SCHEDULED on create"
            )
        if not transaction_uid:
            raise WorkflowFailure(FailureReason.WRONG_TRANSACTION_UID, "no Transaction UID (0008,1195)")
        check_instance_uid(transaction_uid)
        while True:
            workitem = await self.get(sop_instance_uid)
            current = workitem.state
            if wanted is ProcedureStepState.IN_PROGRESS:
                if current is ProcedureStepState.IN_PROGRESS:
                    raise WorkflowFailure(
                        FailureReason.ALREADY_IN_PROGRESS, f"workitem {sop_instance_uid} is already IN PROGRESS"
                    )
                if current.final:
                    raise WorkflowFailure(
                        FailureReason.MAY_NO_LONGER_BE_UPDATED, f"workitem {sop_instance_uid} is {current}"
                    )
                changed = replace(workitem, state=wanted, transaction_uid=transaction_uid)
            else:
                if current is wanted:
                    if workitem.transaction_uid is not None:  # none when it was cancelled while SCHEDULED
                        _check_transaction(workitem, transaction_uid)
                    return (
                        WorkflowWarning.ALREADY_CANCELED
                        if wanted is ProcedureStepState.CANCELED
                        else WorkflowWarning.ALREADY_COMPLETED
                    )
                if current.final:
                    raise WorkflowFailure(
                        FailureReason.MAY_NO_LONGER_BE_UPDATED, f"workitem {sop_instance_uid} is {current}"
                    )
                if current is ProcedureStepState.SCHEDULED:
                    raise WorkflowFailure(
                        FailureReason.NOT_IN_PROGRESS, f"workitem {sop_instance_uid} is not yet IN PROGRESS"
                    )
                _check_transaction(workitem, transaction_uid)
                if wanted is ProcedureStepState.COMPLETED:
                    _check_final_state(workitem.dataset)
                changed = replace(workitem, state=wanted)
            body = dict(changed.dataset)
            a.put(body, "ProcedureStepState", wanted.value)
            if wanted is ProcedureStepState.CANCELED:
                a.put(body, "ProcedureStepCancellationDateTime", self.clock())
            changed.dataset = body
            if await self._write(changed, workitem.version):
                break
        log.info("UPS %s: %s -> %s", sop_instance_uid, current, wanted)
        await self._after_write(self._notify_state(changed), sop_instance_uid)
        return None

    async def request_cancellation(
        self, sop_instance_uid: str, information: JSONDict, requesting_ae: str | None = None
    ) -> WorkflowWarning | None:
        """Request Cancellation (PS3.4 CC.2.2 N-ACTION Type 2, PS3.18 11.8). Nobody performs a SCHEDULED
        workitem yet, so it is cancelled here; the performer of an IN PROGRESS one is asked, through the
        subscribers' UPS Cancel Requested event, and decides (PS3.4 CC.2.4.3)."""
        while True:
            workitem = await self.get(sop_instance_uid)
            if workitem.state is ProcedureStepState.CANCELED:
                return WorkflowWarning.ALREADY_CANCELED
            if workitem.state is ProcedureStepState.COMPLETED:
                raise WorkflowFailure(
                    FailureReason.ALREADY_COMPLETED, f"workitem {sop_instance_uid} is already COMPLETED"
                )
            if workitem.state is ProcedureStepState.IN_PROGRESS:
                info = {a.key(k): information[a.key(k)] for k in _CANCEL_INFORMATION if a.key(k) in information}
                if requesting_ae:
                    a.put(info, "RequestingAE", requesting_ae)
                if not await self._notify(workitem, EventType.CANCEL_REQUESTED, info):
                    raise WorkflowFailure(
                        FailureReason.PERFORMER_UNREACHABLE,
                        f"workitem {sop_instance_uid} is IN PROGRESS and no subscriber could be told of the request",
                    )
                return None
            body = dict(workitem.dataset)
            a.put(body, "ProcedureStepState", ProcedureStepState.CANCELED.value)
            a.put(body, "ProcedureStepCancellationDateTime", self.clock())
            for keyword in _CANCEL_INFORMATION:
                if a.key(keyword) in information:
                    body[a.key(keyword)] = information[a.key(keyword)]
            changed = replace(workitem, state=ProcedureStepState.CANCELED, dataset=body)
            if await self._write(changed, workitem.version):
                log.info("UPS %s cancelled before it started", sop_instance_uid)
                await self._after_write(self._notify_state(changed), sop_instance_uid)
                return None

    async def mark_performed(self, workitem: Workitem) -> None:
        """Take the workitem off the worklist: an MPPS reported its procedure performed (PS3.4 F.7.2). Written
        over the version read, again after any change made meanwhile."""
        while not workitem.performed:
            if await self._write(replace(workitem, performed=True), workitem.version):
                return
            workitem = await self.get(workitem.sop_instance_uid)

    # -- search ---------------------------------------------------------------------------------------------

    async def search(
        self, keys: Sequence[Match], *, offset: int = 0, limit: int | None = None, on_worklist: bool | None = None
    ) -> list[Workitem]:
        """Search for Workitems (PS3.18 11.9, C-FIND of UPS Pull/Watch/Query): the query model's matching
        (app/core/query/evaluate.py) over the workitems the store narrows by state, scheduled start and patient;
        reading stops once `offset + limit` have matched."""
        found: list[Workitem] = []
        skipped = 0
        async for workitem in self.scan(on_worklist=on_worklist, **_narrowing(keys)):
            if not matches_all(workitem.dataset, keys):
                continue
            if skipped < offset:
                skipped += 1
                continue
            found.append(workitem)
            if limit is not None and len(found) >= limit:
                break
        return found

    async def scan(self, **narrow: Any) -> AsyncIterator[Workitem]:
        """Every workitem the store's narrowing finds (`find_workitems`' keywords), a page at a time."""
        after: str | None = None
        while True:
            page = await self.store.find_workitems(after=after, limit=_PAGE, **narrow)
            for workitem in page:
                yield workitem
            if len(page) < _PAGE:
                return
            after = page[-1].sop_instance_uid

    # -- subscriptions --------------------------------------------------------------------------------------

    async def subscribe(
        self,
        ae_title: str,
        target: str,
        *,
        deletion_lock: bool = False,
        filter_keys: Mapping[str, str] | None = None,
    ) -> None:
        """Subscribe to Receive UPS Event Reports (PS3.4 CC.2.3.2, PS3.18 11.10): to one workitem, to all
        (the Global Subscription instance) or to those matching `filter_keys` (the Filtered Global one). Each
        subscribed workitem's current state is reported at once (PS3.4 CC.2.3.2.1)."""
        ae_title = ae_title.strip()
        if target in (GLOBAL_SUBSCRIPTION, FILTERED_GLOBAL_SUBSCRIPTION):
            keys = _filter(filter_keys) if target == FILTERED_GLOBAL_SUBSCRIPTION else ()
            raw = dict(filter_keys or {}) if keys else None
            await self.store.put_subscription(Subscription(ae_title, None, deletion_lock, raw))
            added = 0
            async for workitem in self.scan(states=_OPEN_STATES):
                if matches_all(workitem.dataset, keys):
                    await self.store.put_subscription(
                        Subscription(ae_title, workitem.sop_instance_uid, deletion_lock)
                    )
                    await self._send(ae_title, _state_event(workitem))
                    added += 1
            log.info("UPS: %s subscribed globally (%d workitems now)", ae_title, added)
            return
        workitem = await self.get(target)
        await self.store.put_subscription(Subscription(ae_title, target, deletion_lock))
        await self._send(ae_title, _state_event(workitem))

    async def unsubscribe(self, ae_title: str, target: str) -> bool:
        """Unsubscribe (PS3.4 CC.2.3.2.3): from one workitem, or from the global subscription and every
        workitem subscription it added. False when the AE held no such subscription."""
        ae_title = ae_title.strip()
        if target in (GLOBAL_SUBSCRIPTION, FILTERED_GLOBAL_SUBSCRIPTION):
            removed = False
            for subscription in await self.store.subscriptions(ae_title=ae_title):
                removed |= await self.store.delete_subscription(ae_title, subscription.workitem_uid)
            return removed
        await self.get(target)
        return await self.store.delete_subscription(ae_title, target)

    async def suspend_global(self, ae_title: str) -> None:
        """Suspend Global Subscription (PS3.4 CC.2.3.2.4): no new workitems are added; those added stay."""
        for subscription in await self.store.subscriptions(ae_title=ae_title.strip(), global_only=True):
            await self.store.put_subscription(replace(subscription, suspended=True))

    # -- inside ---------------------------------------------------------------------------------------------

    async def _write(self, workitem: Workitem, expected_version: int) -> bool:
        if await self.store.replace_workitem(workitem, expected_version):
            workitem.version = expected_version + 1
            return True
        log.debug("UPS %s changed meanwhile; deciding again", workitem.sop_instance_uid)
        return False

    @staticmethod
    async def _after_write(notifying: Awaitable[object], sop_instance_uid: str) -> None:
        """Tell the subscribers of a change already written; a failure to is logged, not the request's failure
        (the change stands, and a retry of it would be refused)."""
        try:
            await notifying
        except Exception:
            log.exception("UPS %s changed, but its subscribers could not all be told", sop_instance_uid)

    async def _on_created(self, workitem: Workitem) -> None:
        for subscription in await self.store.subscriptions(global_only=True):
            if subscription.suspended:
                continue
            keys = _filter(subscription.filter) if subscription.filter else ()
            if keys and not matches_all(workitem.dataset, keys):
                continue
            await self.store.put_subscription(
                Subscription(subscription.ae_title, workitem.sop_instance_uid, subscription.deletion_lock)
            )
            await self._send(subscription.ae_title, _state_event(workitem))

    async def _notify_state(self, workitem: Workitem) -> None:
        event = _state_event(workitem)
        for subscription in await self.store.subscriptions(workitem_uid=workitem.sop_instance_uid):
            await self._send(subscription.ae_title, event)

    async def _notify(self, workitem: Workitem, event_type: EventType, information: JSONDict) -> int:
        """Send the event to the workitem's subscribers; how many a channel took."""
        event = UpsEvent(workitem.sop_instance_uid, event_type, information)
        sent = 0
        for subscription in await self.store.subscriptions(workitem_uid=workitem.sop_instance_uid):
            sent += await self._send(subscription.ae_title, event)
        return sent

    async def _send(self, ae_title: str, event: UpsEvent) -> bool:
        for channel in self.channels:
            try:
                if await channel.offer(ae_title, event):
                    return True
            except Exception:
                log.exception("UPS event for %s: a channel failed", ae_title)
        log.info(
            "UPS event %s of %s for %s: no open channel and not a known AE; not delivered",
            event.event_type.name, event.workitem_uid, ae_title,
        )  # fmt: skip
        return False


def _state_event(workitem: Workitem) -> UpsEvent:
    """UPS State Report (PS3.4 Table CC.2.4-2): the state and the input readiness."""
    info: JSONDict = {}
    a.put(info, "ProcedureStepState", workitem.state.value)
    a.put(info, "InputReadinessState", a.text(workitem.dataset, "InputReadinessState") or "READY")
    return UpsEvent(workitem.sop_instance_uid, EventType.STATE_REPORT, info)


def _indexed(workitem: Workitem) -> Workitem:
    """The workitem with the values the store narrows on taken from its data set."""
    workitem.scheduled_start = a.text(workitem.dataset, "ScheduledProcedureStepStartDateTime")
    workitem.patient_id = a.text(workitem.dataset, "PatientID")
    stations = a.items(workitem.dataset, "ScheduledStationNameCodeSequence")
    workitem.station = a.text(stations[0], "CodeValue") if stations else ""
    return workitem


def _check_transaction(workitem: Workitem, transaction_uid: str | None) -> None:
    if not transaction_uid or transaction_uid != workitem.transaction_uid:
        raise WorkflowFailure(
            FailureReason.WRONG_TRANSACTION_UID,
            f"workitem {workitem.sop_instance_uid} is {workitem.state} and the Transaction UID "
            + ("was not given" if not transaction_uid else "is not the one that claimed it"),
        )


def _check_final_state(dataset: JSONDict) -> None:
    """COMPLETED needs what was performed and when (PS3.4 Table CC.2.5-3, Final State Requirements)."""
    performed = a.items(dataset, "UnifiedProcedureStepPerformedProcedureSequence")
    if not performed:
        raise WorkflowFailure(
            FailureReason.FINAL_STATE_REQUIREMENTS,
            "no Unified Procedure Step Performed Procedure Sequence (0074,1216) to complete with",
        )
    for keyword in ("PerformedProcedureStepStartDateTime", "PerformedProcedureStepEndDateTime"):
        if not a.text(performed[0], keyword):
            raise WorkflowFailure(
                FailureReason.FINAL_STATE_REQUIREMENTS, f"the performed procedure has no {keyword}"
            )


def _check_values(dataset: JSONDict) -> None:
    for keyword, allowed in _ENUMERATED.items():
        value = a.text(dataset, keyword)
        if value and value not in allowed:
            raise WorkflowFailure(
                FailureReason.INVALID_ATTRIBUTE_VALUE, f"{keyword} {value!r} is not one of {', '.join(allowed)}"
            )


def _filter(raw: Mapping[str, str] | None) -> tuple[Match, ...]:
    try:
        return parse_matches(raw or {})
    except QueryError as exc:
        raise WorkflowFailure(FailureReason.INVALID_ATTRIBUTE_VALUE, str(exc)) from None


def _tag(keyword: str) -> str:
    k = a.key(keyword)
    return f"{k[:4]},{k[4:]}"


def _narrowing(keys: Sequence[Match]) -> dict[str, Any]:
    """What the store can narrow on (state, scheduled start, patient); the rest is matched on the JSON."""
    narrow: dict[str, Any] = {}
    for m in keys:
        keyword = m.attribute.keyword
        if keyword == "ProcedureStepState" and m.kind in (MatchKind.SINGLE, MatchKind.UID_LIST):
            narrow["states"] = list(m.values)
        elif keyword == "ScheduledProcedureStepStartDateTime" and m.kind is MatchKind.RANGE:
            narrow["scheduled_from"], narrow["scheduled_to"] = m.values
        elif keyword == "PatientID" and m.kind is MatchKind.SINGLE:
            narrow["patient_id"] = m.values[0]
        elif keyword == "ScheduledStationNameCodeSequence.CodeValue" and m.kind is MatchKind.SINGLE:
            narrow["station"] = m.values[0]
    return narrow
