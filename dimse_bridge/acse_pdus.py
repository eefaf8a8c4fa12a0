"""A-ASSOCIATE PDUs at the acceptor: a request decoded once per distinct PDU, an accept encoded directly.

A peer proposes the same association every time it connects: DCMTK's getscu sends the same 17 KB A-ASSOCIATE-RQ
(121 presentation contexts, 120 SCP/SCU role selection items, PS3.8 9.3.2) for every study it retrieves, and a
viewer or a modality the same few. pynetdicom decodes it into ~600 item objects each time, 1.6 ms of the
acceptor's CPU per association (2 cores, pynetdicom 3.0): as much as a C-GET of three instances. The decoded PDU
is only read afterwards (the DUL state machine asks it for its protocol version and builds a new primitive from
it, AE-6), so one decoded object serves every association that sends the same bytes, and so does the primitive
built from it for the associations the loop accepts (`request_primitive`, loop_accept.py). The caches are small,
keyed by the whole PDU, and hold only requests of up to CACHED_BYTES: any peer may send one before its AE title
is checked, and a 1 MB request of role selection items decodes into ~100,000 objects.

The answer, an A-ASSOCIATE-AC (PS3.8 9.3.3), is written straight from the primitive, without pynetdicom's one
object per item (1.2 ms for getscu's, 0.1 ms here); its presentation context and role selection items, which
negotiation gives alike to every association that proposed alike (negotiation.py), are encoded once each.
The bytes are pynetdicom's own (tests/dimse/test_acse_pdus.py compares them); a primitive with an item this
encoder does not write (user identity, extended negotiation) goes through pynetdicom, and so does every accept
when someone listens to EVT_PDU_SENT (pynetdicom's DEBUG log), which is handed pynetdicom's PDU object.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable
from typing import Any, Final, cast

from pynetdicom import evt, fsm
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    AsynchronousOperationsWindowNegotiation,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)

from dimse_bridge.remembered import Remembered

A_ASSOCIATE_RQ_TYPE: Final = 0x01  # PS3.8 9.3.1, the PDU-type field
CACHE_SIZE: Final = 32
CACHED_BYTES: Final = 64 * 1024  # getscu's, the largest seen, is 17 KB

_PDU_HEADER: Final = struct.Struct(">BxIHH16s16s32x")  # type, length, protocol version, reserved, AE titles
_ITEM_HEADER: Final = struct.Struct(">BxH")
_CONTEXT_AC: Final = struct.Struct(">BxHBxBx")  # item type 21H, length, context ID, result (PS3.8 9.3.3.2)
_ENCODED: Final = "_dicomweb_ac_item"  # where an answer object keeps its encoded item

_primitives: Remembered[bytes, A_ASSOCIATE | None] = Remembered(CACHE_SIZE)  # request_primitive's


def association_request(pdu: bytes) -> A_ASSOCIATE_RQ:
    """The decoded A-ASSOCIATE-RQ (pynetdicom's own decoder, run once per distinct PDU up to CACHED_BYTES); the
    same object for the same bytes, so callers must not change it."""
    return _remembered(pdu) if len(pdu) <= CACHED_BYTES else _decoded(pdu)


def request_primitive(pdu: bytes) -> A_ASSOCIATE | None:
    """The A-ASSOCIATE (request) primitive of an A-ASSOCIATE-RQ of up to CACHED_BYTES, built once per distinct PDU
    (pynetdicom builds one per association, 0.5 ms for getscu's; it is only read afterwards); None for one that
    does not decode or names another protocol version, which pynetdicom's reactor refuses (PS3.8 9.2, AE-6)."""
    known, primitive = known_primitive(pdu)
    if known:
        return primitive
    try:
        request = association_request(pdu)
        primitive = request.to_primitive() if request.protocol_version == 0x0001 else None
    except Exception:  # pynetdicom's decoder raises whatever the bytes make it raise
        primitive = None
    return _primitives.keep(pdu, primitive)


def known_primitive(pdu: bytes) -> tuple[bool, A_ASSOCIATE | None]:
    """(True, what `request_primitive` gave for these bytes) if it has seen them, else (False, None): a look-up,
    never a decode, so that the loop decodes a request it has not seen in a thread (a crafted 60 KB request of
    role selection items takes ~70 ms)."""
    return _primitives.find(pdu)


def _decoded(pdu: bytes) -> A_ASSOCIATE_RQ:
    decoded = A_ASSOCIATE_RQ()
    decoded.decode(pdu)
    return decoded


_remembered = functools.lru_cache(maxsize=CACHE_SIZE)(_decoded)


def _item(item_type: int, value: bytes) -> bytes:
    return _ITEM_HEADER.pack(item_type, len(value)) + value


def _user_item(primitive: Any) -> bytes | None:
    """One User Information sub-item of an A-ASSOCIATE-AC (PS3.7 D.3.3, PS3.8 D.1), None for kinds not written here."""
    kind = type(primitive)
    if kind is MaximumLengthNotification:
        return _item(0x51, struct.pack(">I", primitive.maximum_length_received))
    if kind is ImplementationClassUIDNotification:
        return _item(0x52, str(primitive.implementation_class_uid).encode("ascii"))
    if kind is AsynchronousOperationsWindowNegotiation:
        invoked, performed = primitive.maximum_number_operations_invoked, primitive.maximum_number_operations_performed
        return _item(0x53, struct.pack(">HH", invoked, performed))
    if kind is SCP_SCU_RoleSelectionNegotiation:
        return _remembered_item(primitive, _role_item)
    if kind is ImplementationVersionNameNotification:
        return _item(0x55, str(primitive.implementation_version_name).encode("ascii"))
    return None


def _remembered_item(answer: Any, encode: Callable[[Any], bytes]) -> bytes:
    """The item of an accept that negotiation answered with `answer`, encoded once: negotiation gives the same
    answer objects to every association that proposed alike (negotiation.py), and nothing changes them."""
    item: bytes | None = answer.__dict__.get(_ENCODED)
    if item is None:
        item = encode(answer)
        setattr(answer, _ENCODED, item)
    return item


def _context_item(context: Any) -> bytes:
    """A Presentation Context item of an A-ASSOCIATE-AC (PS3.8 9.3.3.2): the result and the transfer syntax."""
    syntax = _item(0x40, str(context.transfer_syntax[0]).encode("ascii"))
    return _CONTEXT_AC.pack(0x21, 4 + len(syntax), context.context_id, context.result) + syntax


def _role_item(role: Any) -> bytes:
    """An SCP/SCU Role Selection sub-item (PS3.7 D.3.3.4)."""
    uid = str(role.sop_class_uid).encode("ascii")
    roles = bytes((int(bool(role.scu_role)), int(bool(role.scp_role))))
    return _item(0x54, struct.pack(">H", len(uid)) + uid + roles)


def encode_accept(primitive: A_ASSOCIATE) -> bytes | None:
    """The A-ASSOCIATE-AC PDU for `primitive`, byte for byte as pynetdicom writes it; None when it holds a User
    Information item written only by pynetdicom."""
    users = [_user_item(item) for item in primitive.user_information]
    if None in users:
        return None
    items = [_item(0x10, str(primitive.application_context_name).encode("ascii"))]
    items.extend(
        _remembered_item(context, _context_item)
        for context in primitive.presentation_context_definition_results_list
    )
    items.append(_item(0x50, b"".join(cast(list[bytes], users))))
    body = b"".join(items)
    called = str(primitive.called_ae_title).ljust(16).encode("ascii")
    calling = str(primitive.calling_ae_title).ljust(16).encode("ascii")
    return _PDU_HEADER.pack(0x02, 68 + len(body), 0x0001, 0, called, calling) + body


def send_accept(dul: Any) -> str:
    """The DUL state machine's action AE-7 (PS3.8 9.2, Table 9-7): send the A-ASSOCIATE-AC; next state Sta6."""
    primitive = cast(A_ASSOCIATE, dul.to_provider_queue.get(False))
    data = None if dul.assoc.get_handlers(evt.EVT_PDU_SENT) else encode_accept(primitive)
    if data is None:
        dul._send(A_ASSOCIATE_AC(primitive))
    elif dul.socket is not None:
        dul.socket.send(data)
    return "Sta6"


def install() -> None:
    """Make AE-7 `send_accept`, once per process (pynetdicom's state machine looks its actions up by name)."""
    description, action, next_state = fsm.ACTIONS["AE-7"]
    if action is not send_accept:
        fsm.ACTIONS["AE-7"] = (description, send_accept, next_state)
