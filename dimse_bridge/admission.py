"""The association phase's handlers: apply access.py's decision to each A-ASSOCIATE-RQ, and say what came of it.

EVT_REQUESTED rejects (A-ASSOCIATE-RJ with the reason of access.py, and a log line saying why) or lets
pynetdicom negotiate, first adding the storage-like contexts that policy `All` learns from the request (a
rejection is announced as EVT_REJECTED too, with its reason, for the metrics and the audit trail);
EVT_USER_ID gives pynetdicom the same verdict on the User Identity; EVT_ACCEPTED names the SOP classes the
policy refused, since the SCU will report only a failure; EVT_REJECTED logs the rejections pynetdicom made itself.
"""

from __future__ import annotations

import logging
from typing import Final

from pydicom.uid import UID
from pynetdicom import evt
from pynetdicom.events import Event

from app.core.logs import name_association
from dimse_bridge.acceptor import AcceptorAssociation
from dimse_bridge.access import (
    REASON_NO_REASON_GIVEN,
    RESULT_REJECTED_TRANSIENT,
    SOURCE_SERVICE_USER,
    Rejection,
    check_slots,
    peer,
    slot_holders,
)
from dimse_bridge.context import DimseContext

log = logging.getLogger(__name__)

# How many refused SOP classes an EVT_ACCEPTED log line names before it counts the rest.
REFUSED_SHOWN: Final = 4


def handle_requested(event: Event, dimse: DimseContext) -> None:
    """EVT_REQUESTED: decide on the association before pynetdicom negotiates it (fail closed)."""
    name_association()  # a rejection's log line and audit record carry the association's id
    assoc = event.assoc
    rq = assoc.requestor.primitive
    assert rq is not None  # EVT_REQUESTED is triggered by the A-ASSOCIATE-RQ
    try:
        rejection = dimse.access.check(str(rq.calling_ae_title), str(rq.called_ae_title), _identity(event))
        if rejection is None:
            settings = dimse.settings
            rejection = check_slots(
                str(assoc.requestor.address),
                slot_holders(assoc),
                settings.dimse_max_associations,
                settings.dimse_max_associations_per_peer,
            )
    except Exception:
        log.exception("association from %s rejected: access check failed", peer(assoc))
        rejection = Rejection(
            RESULT_REJECTED_TRANSIENT, SOURCE_SERVICE_USER, REASON_NO_REASON_GIVEN, "access check failed"
        )
    if rejection is not None:
        log.warning("association from %s rejected: %s", peer(assoc), rejection.why)
        assoc.acse.send_reject(rejection.result, rejection.source, rejection.diagnostic)
        # pynetdicom reports only the rejections it makes itself: this one is announced as they are, so that the
        # observers count it and the audit trail holds it with its reason (observe.py).
        if isinstance(assoc, AcceptorAssociation):
            assoc.rejected_because = rejection.why
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()
        return
    # Policy `All`: storage-like SOP classes are learned from the request, per association.
    extra = dimse.policy.runtime_contexts(
        (str(cx.abstract_syntax) for cx in rq.presentation_context_definition_list if cx.abstract_syntax),
        (str(cx.abstract_syntax) for cx in assoc.acceptor.supported_contexts if cx.abstract_syntax),
    )
    if extra:
        assoc.acceptor.supported_contexts = [*assoc.acceptor.supported_contexts, *extra]


def handle_user_id(event: Event, dimse: DimseContext) -> tuple[bool, bytes | None]:
    """EVT_USER_ID: the same verdict as `handle_requested` (which has already rejected a bad identity)."""
    identity = _identity(event)
    return identity is not None and dimse.access.verify_user(*identity), None


def _identity(event: Event) -> tuple[int, bytes, bytes] | None:
    """(User Identity Type, primary field, secondary field) of the request's User Identity item (PS3.7 D.3.3.7)."""
    item = event.assoc.requestor.user_identity
    if item is None:
        return None
    return int(item.user_identity_type or 0), bytes(item.primary_field or b""), bytes(item.secondary_field or b"")


def handle_accepted(event: Event, dimse: DimseContext) -> None:
    """EVT_ACCEPTED: say which proposed SOP classes were refused, since the SCU will report only a failure."""
    assoc = event.assoc
    refused = sorted({str(cx.abstract_syntax) for cx in assoc.rejected_contexts})
    if refused:
        # SCUs such as storescu propose dozens of SOP classes up front: name a few, count the rest.
        shown = ", ".join(UID(uid).name for uid in refused[:REFUSED_SHOWN])
        more = f" and {len(refused) - REFUSED_SHOWN} more" if len(refused) > REFUSED_SHOWN else ""
        log.info(
            "association from %s accepted with %d presentation contexts; refused by the policy: %s%s",
            peer(assoc),
            len(assoc.accepted_contexts),
            shown,
            more,
        )
    else:
        log.debug("association from %s accepted", peer(assoc))


def handle_rejected(event: Event, dimse: DimseContext) -> None:
    """EVT_REJECTED: the rejections pynetdicom makes itself (our own are logged where they are made)."""
    if getattr(event.assoc, "rejected_because", None) is None:
        log.warning(
            "association from %s rejected by the DICOM stack (AE title or user identity check)", peer(event.assoc)
        )
