"""C-STORE requests that carry a data set already encoded: stored bytes go out as they are.

pynetdicom's `Association.send_c_store` takes a pydicom Dataset and encodes it again, element by element, with
pydicom's writer, even when the data set was read from a file in the very transfer syntax the peer accepted;
given a file path it parses the file first. On the retrieve path (C-GET and C-MOVE sub-operations, the REST
"send to AE") that writer was most of the cost of an instance. Here the handler yields an `EncodedDataSet`: a
Dataset that holds only its SOP Class and SOP Instance UIDs (so pynetdicom's generator protocol, its counts and
its Failed SOP Instance UID List work unchanged) and the encoded bytes, and `send_encoded` puts those bytes in
the C-STORE request as its Data Set (PS3.7 9.1.1.1). pynetdicom's DIMSE message codec still fragments it into
P-DATA PDUs, and its presentation-context rules still pick the context.

`install(assoc)` makes an association send EncodedDataSets this way; pynetdicom's service classes call
`assoc.send_c_store`, so the override is set on the association object itself and every other Dataset still
goes through pynetdicom's own method.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, cast

from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE

from app.core.retrieve.streaming import EncodedInstance
from dimse_bridge.commands import EncodedView

# PS3.7 9.1.1.1.9 Priority: MEDIUM.
MEDIUM: int = 0
SOP_CLASS_UID = 0x00080016
SOP_INSTANCE_UID = 0x00080018


class EncodedDataSet(Dataset):
    """What a C-GET or C-MOVE handler yields for an instance to send as encoded."""

    def __init__(self, instance: EncodedInstance) -> None:
        super().__init__()
        # Checked when the instance was stored: not validated again (pydicom's regular expressions, per instance).
        for tag, uid in (
            (SOP_CLASS_UID, instance.sop_class_uid),
            (SOP_INSTANCE_UID, instance.sop_instance_uid),
        ):
            self[tag] = DataElement(tag, "UI", uid, validation_mode=config.IGNORE)
        self.encoded = instance


def send_encoded(
    assoc: Association,
    dataset: EncodedDataSet,
    msg_id: int = 1,
    priority: int = MEDIUM,
    originator_aet: str | None = None,
    originator_id: int | None = None,
) -> Dataset:
    """`Association.send_c_store` for bytes already encoded in a transfer syntax the peer accepted.

    Returns the response's status data set (empty when the peer did not answer within the DIMSE timeout, as
    pynetdicom's own method does after aborting). ValueError when no accepted context matches the SOP class and
    the instance's transfer syntax: nothing is sent, and the caller counts a failed sub-operation. RuntimeError
    once the association is gone, or an earlier request on it had no answer: pynetdicom's reactor notices an
    A-ABORT in its own time, and a request sent meanwhile waited out the whole DIMSE timeout for an answer that
    could not come.
    """
    if not assoc.is_established or getattr(assoc, "unanswered", False):
        raise RuntimeError("the association must be established before a C-STORE request")
    instance = dataset.encoded
    # No conversion: the bytes are in exactly this syntax (pynetdicom would otherwise allow an implicit/explicit
    # swap, which only re-encoding can honour).
    context = assoc._get_valid_context(
        instance.sop_class_uid, instance.transfer_syntax_uid, "scu", allow_conversion=False
    )
    request = C_STORE()
    request.MessageID = msg_id
    request.Priority = priority
    request.AffectedSOPClassUID = instance.sop_class_uid
    request.AffectedSOPInstanceUID = instance.sop_instance_uid
    if originator_aet is not None:
        request.MoveOriginatorApplicationEntityTitle = originator_aet
    if originator_id is not None:
        request.MoveOriginatorMessageID = originator_id
    request.DataSet = EncodedView(instance.data)  # the bytes as they are, no copy
    # As pynetdicom's own send_c_store: pause the association's reactor so the response is read here.
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        assoc.dimse.send_msg(request, cast(int, context.context_id))
        _, response = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    if response is None:
        assoc.unanswered = True  # type: ignore[attr-defined]
        assoc._handle_no_response()
        return Dataset()
    status: Dataset = assoc._check_received_status(response)
    return status


def install(assoc: Association, originator_aet: str | None = None) -> None:
    """Make `assoc.send_c_store` send EncodedDataSets as encoded, and anything else as pynetdicom does. Once per
    association: a viewer may send thousands of C-GETs on one, and wrappers must not pile up.

    `originator_aet`, for a C-MOVE's sub-association, is the AE title of the C-MOVE's requestor, which PS3.7
    9.1.1.1.11 puts in Move Originator Application Entity Title; pynetdicom's Move SCP puts its own AE title
    there."""
    if "send_c_store" in vars(assoc):
        return
    original: Callable[..., Dataset] = assoc.send_c_store

    def send_c_store(dataset: Any, *args: Any, **kwargs: Any) -> Dataset:
        if originator_aet is not None and "originator_aet" in kwargs:
            kwargs["originator_aet"] = originator_aet
        if isinstance(dataset, EncodedDataSet):
            return send_encoded(assoc, dataset, *args, **kwargs)
        return original(dataset, *args, **kwargs)

    assoc.send_c_store = send_c_store  # type: ignore[method-assign]
