"""Unified Procedure Step SCP over DIMSE (PS3.4 Annex CC): the UPS Push, Pull, Watch and Query SOP classes.

The same state machine serves UPS-RS (app/core/workflow/ups.py), so a workitem created by N-CREATE is seen
by a UPS-RS client, a claim made over HTTP is refused to a DIMSE performer, and a subscriber hears of changes
made through either door. Each handler turns one message into one UpsService call through the bridge:

| Message                           | SOP classes (PS3.4 CC.3.1) | UpsService           | PS3.4    |
|-----------------------------------|----------------------------|----------------------|----------|
| N-CREATE                          | Push                       | create               | CC.2.5   |
| N-SET (Transaction UID inside)    | Pull                       | update               | CC.2.6   |
| N-GET                             | Push, Pull, Watch          | get                  | CC.2.7   |
| N-ACTION 1 Change UPS State       | Pull                       | change_state         | CC.2.1   |
| N-ACTION 2 Request UPS Cancel     | Push, Watch                | request_cancellation | CC.2.2   |
| N-ACTION 3/4/5 (Un)Subscribe,     | Watch                      | subscribe,           | CC.2.3   |
|   Suspend Global Subscription     |                            | unsubscribe, ...     |          |
| C-FIND                            | Pull, Watch, Query         | search               | CC.2.8   |

Event reports go the other way, N-EVENT-REPORT of the UPS Event SOP class on an association we open
(ups_events.py), so a subscriber must be reachable: a subscription for a Receiving AE that the AE registry
does not know is refused with C308 (PS3.4 CC.2.3.2), since nothing could ever be delivered to it. The
Receiving AE is the one the Action Information names, else the calling AE.

Statuses are workflow_status.py's (PS3.4 CC.2); an action type the SOP class does not define is 0123 No such
action, a data set that cannot be decoded 0106, and each refusal is logged once with its reason and sent as
Error Comment. Writes are not cancelled when the bridge times out (a claim stopped half-way would leave its
performer unsure whether it holds the workitem).
"""

from __future__ import annotations

import logging
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from typing import Any, Final

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import N_ACTION, N_CREATE, N_GET, N_SET
from pynetdicom.events import Event

from app.context import ArchiveContext
from app.core.query.evaluate import identifier_keys
from app.core.query.model import Match
from app.core.records import JSONDict
from app.core.workflow.attributes import key, project, text
from app.core.workflow.outcomes import FailureReason, WorkflowFailure, WorkflowWarning
from app.core.workflow.records import (
    FILTERED_GLOBAL_SUBSCRIPTION,
    GLOBAL_SUBSCRIPTION,
    UPS_PULL,
    UPS_PUSH,
    UPS_WATCH,
)
from dimse_bridge import datasets, status, workflow_find
from dimse_bridge import workflow_status as ws
from dimse_bridge.access import peer
from dimse_bridge.context import DimseContext

log = logging.getLogger(__name__)

Reply = tuple[int | Dataset, Dataset | None]

# N-ACTION Action Type IDs (PS3.4 Table CC.2-1 / CC.2.1-1 ... CC.2.3-1).
CHANGE_STATE: Final = 1
REQUEST_CANCEL: Final = 2
SUBSCRIBE: Final = 3
UNSUBSCRIBE: Final = 4
SUSPEND_GLOBAL: Final = 5
# Which action each SOP class carries (PS3.4 Table CC.3.1-1).
ACTIONS: Final[Mapping[str, frozenset[int]]] = {
    UPS_PUSH: frozenset({REQUEST_CANCEL}),
    UPS_PULL: frozenset({CHANGE_STATE}),
    UPS_WATCH: frozenset({REQUEST_CANCEL, SUBSCRIBE, UNSUBSCRIBE, SUSPEND_GLOBAL}),
}
_GLOBAL_INSTANCES: Final = frozenset({GLOBAL_SUBSCRIPTION, FILTERED_GLOBAL_SUBSCRIPTION})
# Subscription parameters in the Action Information; what else a filtered subscription carries are its keys.
_SUBSCRIPTION_PARAMETERS: Final = frozenset({key("ReceivingAE"), key("DeletionLock"), "00080005"})
_TRANSACTION_UID: Final = key("TransactionUID")


class Refused(ValueError):
    """A request this door refuses before asking the archive; `code` is its status."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


# -- UPS Push ---------------------------------------------------------------------------------------------------


def handle_n_create(event: Event, dimse: DimseContext) -> Reply:
    """N-CREATE (Create a UPS, PS3.4 CC.2.5): the workitem, SCHEDULED; B300 when the SCP filled something in."""
    request = event.request
    assert isinstance(request, N_CREATE)  # bound through dispatch.handle_n_create for N-CREATE only
    given = str(request.AffectedSOPInstanceUID or "").strip() or None
    who = f"UPS N-CREATE {given or '(no SOP Instance UID)'} from {peer(event.assoc)}"
    try:
        attributes = _read(lambda: event.attribute_list, "attribute list")
        workitem, modified = dimse.bridge.call(
            dimse.archive.ups.create(attributes, given), cancel_on_timeout=False
        )
    except Exception as exc:
        return _refused(who, exc), None
    code = ws.ups_warning(WorkflowWarning.CREATED_WITH_MODIFICATIONS if modified else None)
    if given is not None:
        return code, None
    reply = Dataset()
    reply.AffectedSOPInstanceUID = workitem.sop_instance_uid  # pynetdicom moves it into the N-CREATE-RSP
    return code, reply


# -- UPS Pull ---------------------------------------------------------------------------------------------------


def handle_n_set(event: Event, dimse: DimseContext) -> Reply:
    """N-SET (Set UPS Information, PS3.4 CC.2.6): an IN PROGRESS workitem only with its Transaction UID, which
    comes in the Modification List."""
    request = event.request
    assert isinstance(request, N_SET)  # bound through dispatch.handle_n_set for N-SET only
    uid = str(request.RequestedSOPInstanceUID or "").strip()
    who = f"UPS N-SET {uid} from {peer(event.assoc)}"
    try:
        changes = _read(lambda: event.modification_list, "modification list")
        transaction = text(changes, "TransactionUID") or None
        dimse.bridge.call(dimse.archive.ups.update(uid, changes, transaction), cancel_on_timeout=False)
    except Exception as exc:
        return _refused(who, exc), None
    return status.SUCCESS, None


def handle_n_get(event: Event, dimse: DimseContext) -> Reply:
    """N-GET (Get UPS Information, PS3.4 CC.2.7): the attributes asked for (all when none are named); one the
    workitem lacks is returned zero length. The Transaction UID is never returned (PS3.4 CC.2.7.3)."""
    request = event.request
    assert isinstance(request, N_GET)  # bound through dispatch.handle_n_get for N-GET only
    uid = str(request.RequestedSOPInstanceUID or "").strip()
    who = f"UPS N-GET {uid} from {peer(event.assoc)}"
    try:
        workitem = dimse.bridge.call(dimse.archive.ups.get(uid))
        answer = datasets.from_json(_requested(workitem.dataset, request.AttributeIdentifierList))
    except Exception as exc:
        return _refused(who, exc), None
    return status.SUCCESS, answer


def _requested(dataset: JSONDict, identifiers: Any) -> JSONDict:
    """The workitem reduced to the Attribute Identifier List (pynetdicom gives a tag, a list or None)."""
    tags = identifiers if isinstance(identifiers, list) else [] if identifiers is None else [identifiers]
    if not tags:
        return {k: v for k, v in dataset.items() if k != _TRANSACTION_UID}
    template: JSONDict = {}
    for tag in tags:
        name = f"{int(tag):08X}"
        if name == _TRANSACTION_UID:
            continue
        try:
            vr = str(dictionary_VR(int(name, 16)))
        except KeyError:
            vr = "UN"
        template[name] = {"vr": vr.split(" or ")[0]}
    return project(dataset, template)


# -- N-ACTION ---------------------------------------------------------------------------------------------------


def handle_n_action(event: Event, dimse: DimseContext) -> Reply:
    """N-ACTION on a UPS SOP class: change state (1), request cancel (2), subscribe (3), unsubscribe (4),
    suspend a global subscription (5), each where its SOP class defines it."""
    request = event.request
    assert isinstance(request, N_ACTION)  # bound through dispatch.handle_n_action for UPS N-ACTION only
    sop_class = str(request.RequestedSOPClassUID or "")
    uid = str(request.RequestedSOPInstanceUID or "").strip()
    action = int(request.ActionTypeID or 0)
    calling = str(event.assoc.requestor.ae_title or "").strip()
    who = f"UPS N-ACTION {action} on {uid} from {peer(event.assoc)}"
    if action not in ACTIONS.get(sop_class, frozenset()):
        log.info("%s refused: no such action for SOP class %s", who, sop_class)
        return ws.response(ws.NO_SUCH_ACTION, f"action type {action} is not defined for {sop_class}"), None
    try:
        information = _read(lambda: event.action_information, "action information")
        if action == CHANGE_STATE:
            return _change_state(dimse, uid, information)
        if action == REQUEST_CANCEL:
            warning = dimse.bridge.call(
                dimse.archive.ups.request_cancellation(uid, information, calling or None),
                cancel_on_timeout=False,
            )
            return ws.ups_warning(warning), None
        receiving = text(information, "ReceivingAE") or calling
        coro: Coroutine[Any, Any, object]
        if action == SUBSCRIBE:
            lock = _deletion_lock(information)
            filter_keys = _filter_keys(information) if uid == FILTERED_GLOBAL_SUBSCRIPTION else None
            coro = _subscribe(dimse.archive, receiving, uid, lock, filter_keys)
        elif action == UNSUBSCRIBE:
            coro = dimse.archive.ups.unsubscribe(receiving, uid)
        else:
            if uid not in _GLOBAL_INSTANCES:
                raise Refused(ws.UPS_ACTION_NOT_APPROPRIATE, "only a global subscription can be suspended")
            coro = dimse.archive.ups.suspend_global(receiving)
        dimse.bridge.call(coro, cancel_on_timeout=False)
    except Exception as exc:
        return _refused(who, exc), None
    return status.SUCCESS, None


def _change_state(dimse: DimseContext, uid: str, information: JSONDict) -> Reply:
    """Change UPS State (PS3.4 CC.2.1): the reply names the state reached and the Transaction UID."""
    state = text(information, "ProcedureStepState")
    if not state:
        raise Refused(ws.MISSING_ATTRIBUTE, "no Procedure Step State (0074,1000) in the action information")
    transaction = text(information, "TransactionUID") or None
    warning = dimse.bridge.call(
        dimse.archive.ups.change_state(uid, state, transaction), cancel_on_timeout=False
    )
    reply = Dataset()
    reply.ProcedureStepState = state
    if transaction:
        reply.TransactionUID = transaction
    return ws.ups_warning(warning), reply


def _deletion_lock(information: JSONDict) -> bool:
    """Deletion Lock (0074,1230), Type 1 in a subscription (PS3.4 Table CC.2.3-1): YES or NO."""
    value = text(information, "DeletionLock").upper()
    if not value:
        raise Refused(ws.MISSING_ATTRIBUTE, "no Deletion Lock (0074,1230) in the action information")
    if value not in ("YES", "NO"):
        raise Refused(ws.INVALID_ATTRIBUTE_VALUE, f"Deletion Lock {value!r} is neither YES nor NO")
    return value == "YES"


def _filter_keys(information: JSONDict) -> dict[str, str]:
    """The matching keys of a Filtered Global Subscription: what the Action Information holds besides the
    subscription's own parameters (PS3.4 CC.2.3.2.1)."""
    return identifier_keys({k: v for k, v in information.items() if k not in _SUBSCRIPTION_PARAMETERS})


async def _subscribe(
    archive: ArchiveContext, receiving: str, target: str, lock: bool, filter_keys: Mapping[str, str] | None
) -> None:
    """Subscribe, once the Receiving AE is known to be reachable: in the AE registry (PS3.4 CC.2.3.2, C308)."""
    if await archive.aes.get(receiving) is None:
        raise WorkflowFailure(
            FailureReason.UNKNOWN_RECEIVING_AE,
            f"Receiving AE {receiving!r} is not in the AE registry, so no event could reach it",
        )
    await archive.ups.subscribe(receiving, target, deletion_lock=lock, filter_keys=filter_keys)


# -- C-FIND -----------------------------------------------------------------------------------------------------


def handle_find(event: Event, dimse: DimseContext) -> Iterator[workflow_find.Response]:
    """C-FIND (Search for UPS, PS3.4 CC.2.8) of UPS Pull, Watch or Query: matching workitems, whole state
    included; the rules are the worklist's (workflow_find.py)."""

    def search(keys: Sequence[Match]) -> list[JSONDict]:
        return [w.dataset for w in dimse.bridge.call(dimse.archive.ups.search(keys))]

    return workflow_find.serve(event, f"UPS C-FIND from {peer(event.assoc)}", search)


# -- inside -----------------------------------------------------------------------------------------------------


def _read(read: datasets.Reader, what: str) -> JSONDict:
    try:
        return datasets.to_json(datasets.decoded(read, what))
    except datasets.UnreadableDataSet as exc:
        raise Refused(ws.INVALID_ATTRIBUTE_VALUE, str(exc)) from exc


def _refused(who: str, exc: Exception) -> Dataset:
    """The response to a refused request, logged once with its reason."""
    answer = ws.response(exc.code, str(exc)) if isinstance(exc, Refused) else ws.ups_refusal(exc)
    expected = isinstance(exc, Refused | WorkflowFailure)
    log.log(
        logging.INFO if expected else logging.WARNING, "%s refused (0x%04X): %s", who, int(answer.Status), exc
    )
    return answer
