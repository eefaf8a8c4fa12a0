"""DIMSE command sets read and written as bytes, without a pydicom Dataset in between.

A command set (PS3.7 6.3.1, Annex E) is a handful of group 0000 elements, always Implicit VR Little Endian, and
every DIMSE message carries one. pynetdicom builds each as a pydicom Dataset from the primitive, validating every
value on the way, encodes it twice (once to learn its Command Group Length) and, for each message received,
decodes one back through pydicom's reader: ~0.33 ms to send a C-STORE-RQ, ~0.38 ms for a pending C-GET-RSP and
~0.14 ms to take a C-STORE-RSP, here, which is most of what an instance of a C-GET cost on top of its file read.
The same bytes come from a table of the command elements (tag and VR from pydicom's dictionary, the message
layouts from pynetdicom's `_COMMAND_SET_KEYWORDS`) in a few microseconds.

`FastDIMSE` is pynetdicom's DIMSE service provider with both directions replaced; the message layouts, the
presentation-data fragmenting (PS3.8 E.2) and the primitives handed to the service classes are pynetdicom's.
Anyone listening to EVT_DIMSE_SENT / EVT_DIMSE_RECV (the audit trail, Storage Commitment, pynetdicom's DEBUG
logging) still gets pynetdicom's message object, built from the same bytes only when someone listens.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from io import BytesIO
from typing import Any, Final, cast

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.tag import Tag
from pynetdicom import evt
from pynetdicom.dimse import _RQ_TO_MESSAGE, _RSP_TO_MESSAGE, DIMSEServiceProvider
from pynetdicom.dimse_messages import (
    _COMMAND_SET_KEYWORDS,
    _DATASET_KEYWORDS,
    _MESSAGE_TYPES,
    _MSG_TO_PRIMITVE,
    DIMSEMessage,
)
from pynetdicom.dimse_primitives import C_CANCEL, N_EVENT_REPORT
from pynetdicom.dsutils import decode
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.utils import make_target

log = logging.getLogger("pynetdicom.dimse")

COMMAND_GROUP_LENGTH: Final = 0x00000000
COMMAND_FIELD: Final = 0x00000100
COMMAND_DATA_SET_TYPE: Final = 0x00000800
# PS3.7 E.1: 0x0101 means no data set follows; any other value, that one does.
NO_DATA_SET: Final = 0x0101
DATA_SET_PRESENT: Final = 0x0001
# PS3.8 E.2 Message Control Header: bit 0 command (1) or data set (0), bit 1 last fragment.
_COMMAND_LAST: Final = b"\x03"
_COMMAND_MORE: Final = b"\x01"
_DATA_LAST: Final = b"\x02"
_DATA_MORE: Final = b"\x00"
# A PDV item's header inside a P-DATA-TF: its length (4 bytes), context ID and control header (1 byte each).
_PDV_OVERHEAD: Final = 6
# PDU type 04H, reserved, PDU length; PDV item length, presentation context ID (PS3.8 9.3.5, 9.3.5.1).
_P_DATA_TF: Final = struct.Struct(">BxIIB")
_ITEM_LENGTH: Final = struct.Struct(">I")
P_DATA_TF_TYPE: Final = 0x04  # PS3.8 9.3.1, the PDU-type field
# Direct writes are made in pieces of about this size (one system call each).
_WRITE_CHUNK: Final = 1024 * 1024

_ELEMENT_HEADER = struct.Struct("<HHI")


def _table() -> dict[str, tuple[int, str]]:
    keywords = {keyword for layout in _COMMAND_SET_KEYWORDS.values() for keyword in layout}
    return {
        keyword: (tag, dictionary_VR(tag))
        for keyword in keywords
        if (tag := tag_for_keyword(keyword)) is not None
    }


_ELEMENTS: Final = _table()
_KEYWORDS: Final = {tag: keyword for keyword, (tag, _) in _ELEMENTS.items()}
_VRS: Final = {tag: vr for tag, vr in _ELEMENTS.values()}
_COMMAND_FIELDS: Final = {name: field for field, (name, _) in _MESSAGE_TYPES.items()}
# Per message name: its elements other than the three this module computes, in tag order.
_LAYOUTS: Final = {
    name: sorted(
        (_ELEMENTS[keyword][0], keyword)
        for keyword in layout
        if _ELEMENTS[keyword][0] not in (COMMAND_GROUP_LENGTH, COMMAND_FIELD, COMMAND_DATA_SET_TYPE)
    )
    for name, layout in _COMMAND_SET_KEYWORDS.items()
}


class CommandError(ValueError):
    """A command set that cannot be read: too short, an element running past its end, no known Command Field."""


def _value_bytes(vr: str, value: Any) -> bytes:
    if vr == "US":
        return struct.pack("<H", value)
    if vr == "UL":
        return struct.pack("<I", value)
    if vr == "AT":
        tags = [value] if isinstance(value, int) else list(value)  # one tag, or a list (a MultiValue too)
        return b"".join(struct.pack("<HH", (int(t) >> 16), int(t) & 0xFFFF) for t in tags)
    text = "\\".join(value) if isinstance(value, (list, tuple)) else str(value)
    # The command set has no Specific Character Set: the default repertoire (PS3.5 6.1.2.1), as pydicom writes it.
    raw = text.encode("latin-1", errors="replace")
    if len(raw) % 2:
        raw += b"\0" if vr == "UI" else b" "
    return raw


def encode_command(name: str, primitive: Any, has_data_set: bool) -> bytes:
    """The command set of message `name` ("C-STORE-RQ") for `primitive`, Implicit VR Little Endian (PS3.7 E.1).

    As pynetdicom: an element of the layout is left out when the primitive holds None for it, and is sent empty
    when the primitive has no such attribute at all.
    """
    parts: list[bytes] = []
    layout = _LAYOUTS[name]
    fields = [
        (COMMAND_FIELD, _COMMAND_FIELDS[name]),
        (COMMAND_DATA_SET_TYPE, DATA_SET_PRESENT if has_data_set else NO_DATA_SET),
    ]
    entries: list[tuple[int, Any]] = [*fields]
    for tag, keyword in layout:
        if not hasattr(primitive, keyword):
            entries.append((tag, None))
            continue
        value = getattr(primitive, keyword)
        if value is not None:
            entries.append((tag, value))
    entries.sort(key=lambda entry: entry[0])
    for tag, value in entries:
        raw = b"" if value is None else _value_bytes(_VRS[tag], value)
        parts.append(_ELEMENT_HEADER.pack(tag >> 16, tag & 0xFFFF, len(raw)))
        parts.append(raw)
    body = b"".join(parts)
    return _ELEMENT_HEADER.pack(0, 0, 4) + struct.pack("<I", len(body)) + body


def _value(vr: str, raw: bytes) -> Any:
    if vr == "US":
        return struct.unpack_from("<H", raw)[0] if len(raw) >= 2 else None
    if vr == "UL":
        return struct.unpack_from("<I", raw)[0] if len(raw) >= 4 else None
    if vr == "AT":
        tags = [Tag(group, element) for group, element in struct.iter_unpack("<HH", raw[: len(raw) // 4 * 4])]
        return tags[0] if len(tags) == 1 else (tags or None)  # as pydicom: one value alone, several as a list
    text = raw.decode("latin-1").rstrip("\0 ")
    if vr == "AE":  # leading spaces are not significant in an AE title (PS3.5 6.2)
        text = text.lstrip(" ")
    return text or None


def decode_command(raw: bytes) -> dict[int, Any]:
    """Tag -> value of every element of an encoded command set; CommandError when it cannot be read.

    Values as pynetdicom's primitives take them: int for US/UL (the first value, as pynetdicom takes it), a Tag
    or a list of Tags for AT (only OffendingElement and AttributeIdentifierList, both multi-valued), str
    otherwise; an empty element is None. Elements that are not command elements are skipped.
    """
    values: dict[int, Any] = {}
    offset, end = 0, len(raw)
    while offset < end:
        if end - offset < 8:
            raise CommandError(f"a command set element header is cut off at byte {offset}")
        group, element, length = _ELEMENT_HEADER.unpack_from(raw, offset)
        offset += 8
        if length > end - offset:
            raise CommandError(
                f"element ({group:04X},{element:04X}) claims {length} bytes past the command set's end"
            )
        tag = group << 16 | element
        vr = _VRS.get(tag)
        if vr is not None:
            values[tag] = _value(vr, raw[offset : offset + length])
        offset += length
    return values


def _pieces(
    control: tuple[bytes, bytes], data: bytes | memoryview, max_pdu: int
) -> Iterator[tuple[bytes, memoryview]]:
    """Each fragment of `data` with its message control header, each PDV within the peer's maximum PDU length
    (PS3.8 E.2); the fragments are views of `data`, not copies."""
    more, last = control
    size = len(data) if max_pdu == 0 else max(max_pdu - _PDV_OVERHEAD, 1)
    view = memoryview(data)
    starts = range(0, len(data), size) if data else range(1)
    final = starts[-1]
    for start in starts:
        yield (last if start == final else more), view[start : start + size]


def _primitives(context_id: int, pieces: Iterable[tuple[bytes, memoryview]]) -> Iterator[P_DATA]:
    """One P-DATA primitive per fragment, for the DUL's own path (`PromptDUL.write_direct` declined)."""
    for header, piece in pieces:
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, header + piece))
        yield pdata


class EncodedView(BytesIO):
    """A data set already encoded (a stored file's bytes), given to a primitive as its Data Set without a copy:
    a BytesIO of those bytes would copy them whole on the loop (0.3-0.7 s for 512 MiB). `message_parts` takes
    `getbuffer()`, a view of the same bytes; anyone who asks for `getvalue()` gets them copied."""

    def __init__(self, data: memoryview) -> None:
        super().__init__()
        self._data = data

    def getbuffer(self) -> memoryview:
        return memoryview(self._data)

    def getvalue(self) -> bytes:
        return bytes(self._data)


class ReceivedPData:
    """A received P-DATA-TF PDU's PDV items (PS3.8 9.3.5.1), read without pynetdicom's object per item; what the
    DUL state machine asks of a PDU it received (`to_primitive`, actions DT-2 and AR-6) is all it offers."""

    __slots__ = ("values",)

    def __init__(self, pdu: bytes, start: int = 6) -> None:
        """`pdu` from its header on, or (`start` 0) its items only."""
        values: list[tuple[int, bytes]] = []
        offset, end = start, len(pdu)
        while offset < end:
            if end - offset < 5:
                raise ValueError("a PDV item header is cut off")
            (length,) = _ITEM_LENGTH.unpack_from(pdu, offset)
            # PS3.8 9.3.5.1: the item holds its context ID and a value that begins with its Message Control
            # Header (E.2), and fits its PDU.
            if length < 2 or offset + 4 + length > end:
                raise ValueError(f"a PDV item of {length} bytes does not fit its P-DATA-TF")
            values.append((pdu[offset + 4], pdu[offset + 5 : offset + 4 + length]))
            offset += 4 + length
        self.values = values

    def to_primitive(self) -> P_DATA:
        primitive = P_DATA()
        primitive.presentation_data_value_list.extend(self.values)  # (ID, value) tuples, as pynetdicom's own
        return primitive


def _chunks(context_id: int, pieces: Iterable[tuple[bytes, memoryview]]) -> Iterator[bytes]:
    """The P-DATA-TF PDUs of `pieces`, one PDV item each (PS3.8 9.3.5, as pynetdicom writes a P-DATA primitive of
    one value), joined into pieces of about _WRITE_CHUNK bytes: each byte of a data set is copied once, into its
    chunk, and a large data set is never held twice whole."""
    pending: list[bytes | memoryview] = []
    size = 0
    for header, piece in pieces:
        pending += (_P_DATA_TF.pack(0x04, len(piece) + 6, len(piece) + 2, context_id), header, piece)
        size += len(piece) + 12
        if size >= _WRITE_CHUNK:
            yield b"".join(pending)
            pending, size = [], 0
    if pending:
        yield b"".join(pending)


def _message_pieces(
    parts: list[tuple[bytes, bytes, Any]], max_pdu: int
) -> Iterator[tuple[bytes, memoryview]]:
    """The fragments of a message's command set and data set; as pynetdicom, an empty data set sends none."""
    for more, last, data in parts:
        if len(data) or last == _COMMAND_LAST:
            yield from _pieces((more, last), data, max_pdu)


@dataclass(frozen=True)
class ReceivedMessage:
    """A whole DIMSE message as it arrived: its command set's bytes and values, and its data set's bytes."""

    context_id: int
    command: bytes
    header: dict[int, Any]
    data_set: BytesIO | None


class MessageAssembler:
    """Reassembles DIMSE messages from the PDVs of P-DATA-TF PDUs (PS3.8 E.2): a command set's fragments, then,
    unless its Command Data Set Type says none follows, the data set's."""

    def __init__(self) -> None:
        self._command: bytearray | None = None  # the command set's fragments so far
        self._header: dict[int, Any] | None = None  # the decoded command set, while its data set arrives
        self._data_set: BytesIO | None = None

    def feed(self, context_id: int, data: bytes) -> ReceivedMessage | None:
        """Take one PDV (control header and fragment); the message it completes, if it does. CommandError for a
        command set that cannot be read (the association is then aborted, PS3.8 9.2 Evt19)."""
        if not data:  # PS3.8 E.2: every PDV value begins with its Message Control Header
            raise CommandError("a PDV without its message control header")
        control = data[0]
        if control & 1:
            if self._header is not None:
                self._reset()  # a new command while a data set was due: as pynetdicom, the new one wins
            if self._command is None:
                self._command = bytearray()
            self._command.extend(data[1:])
            if not control & 2:
                return None
            try:
                header = decode_command(bytes(self._command))
                if header.get(COMMAND_FIELD) not in _MESSAGE_TYPES:
                    raise CommandError(f"unknown Command Field {header.get(COMMAND_FIELD)!r}")
            except CommandError:
                self._reset()
                raise
            self._header = header
            if header.get(COMMAND_DATA_SET_TYPE) == NO_DATA_SET:
                return self._complete(context_id)
            self._data_set = BytesIO()
        elif self._header is not None and self._data_set is not None:
            self._data_set.write(data[1:])
            if control & 2:
                return self._complete(context_id)
        return None

    def _reset(self) -> None:
        self._command = None
        self._data_set = None
        self._header = None

    def _complete(self, context_id: int) -> ReceivedMessage:
        message = ReceivedMessage(
            context_id, bytes(self._command or b""), cast(dict[int, Any], self._header), self._data_set
        )
        self._reset()
        return message


def received_primitive(assoc: Any, message: ReceivedMessage) -> Any:
    """pynetdicom's primitive for a received message (after EVT_DIMSE_RECV, for those who listen on `assoc`, if
    any); raises whatever pynetdicom's primitive raises for a value it refuses (the association is then
    aborted)."""
    message_class = _MESSAGE_TYPES[message.header[COMMAND_FIELD]][1]
    if assoc is not None and assoc.get_handlers(evt.EVT_DIMSE_RECV):
        evt.trigger(
            assoc,
            evt.EVT_DIMSE_RECV,
            {"message": _message(message.command, message.data_set, message.context_id)},
        )
    return _primitive(message_class.__name__, message.header, message.data_set, message.context_id)


def message_parts(assoc: Any, primitive: Any, context_id: int) -> list[tuple[bytes, bytes, Any]]:
    """The command set and data set of `primitive`'s message, each with its PDVs' control headers, for
    `message_chunks`; EVT_DIMSE_SENT goes to those who listen on `assoc`, if any (the audit trail). A data set
    is a view of the primitive's BytesIO: release it once sent."""
    message_class = (_RQ_TO_MESSAGE if primitive.MessageIDBeingRespondedTo is None else _RSP_TO_MESSAGE)[
        primitive.__class__
    ]
    class_name = message_class.__name__
    keyword = _DATASET_KEYWORDS.get(class_name)
    data_set = getattr(primitive, keyword) if keyword else None
    command = encode_command(class_name.replace("_", "-"), primitive, data_set is not None)
    if assoc is not None and assoc.get_handlers(evt.EVT_DIMSE_SENT):
        evt.trigger(assoc, evt.EVT_DIMSE_SENT, {"message": _message(command, data_set, context_id)})
    parts = [(_COMMAND_MORE, _COMMAND_LAST, command)]
    if data_set is not None:
        parts.append((_DATA_MORE, _DATA_LAST, data_set.getbuffer()))
    return parts


def message_chunks(parts: list[tuple[bytes, bytes, Any]], context_id: int, max_pdu: int) -> Iterator[bytes]:
    """The P-DATA-TF PDUs of a message's parts, in pieces ready to write (`_chunks`)."""
    return _chunks(context_id, _message_pieces(parts, max_pdu))


def release_parts(parts: list[tuple[bytes, bytes, Any]]) -> None:
    for _, _, data in parts[1:]:
        cast(memoryview, data).release()


class FastDIMSE(DIMSEServiceProvider):
    """pynetdicom's DIMSE service provider, sending and receiving command sets as bytes (this module)."""

    # Set here, not in __init__: reactor.make_prompt turns an existing provider into this class.
    _assembler: MessageAssembler | None = None

    def send_msg(self, primitive: Any, context_id: int) -> None:
        if getattr(primitive, "_dataset_path", None) is not None:
            super().send_msg(primitive, context_id)  # a data set sent from its file: pynetdicom streams it
            return
        parts = message_parts(self.assoc, primitive, context_id)
        try:
            self._send_parts(parts, context_id, self.maximum_pdu_size)
        finally:
            release_parts(parts)

    def _send_parts(self, parts: list[tuple[bytes, bytes, Any]], context_id: int, max_pdu: int) -> None:
        """Write the message's PDUs from this thread when the DUL allows it (reactor.PromptDUL.write_direct),
        else queue them as P-DATA primitives for the DUL's thread, as pynetdicom does."""
        write = getattr(self.dul, "write_direct", None)
        if write is not None and write(message_chunks(parts, context_id, max_pdu)):
            return
        for pdata in _primitives(context_id, _message_pieces(parts, max_pdu)):
            self.dul.send_pdu(pdata)

    def receive_primitive(self, primitive: P_DATA) -> None:
        if self._assembler is None:
            self._assembler = MessageAssembler()
        for context_id, data in primitive.presentation_data_value_list:
            try:
                message = self._assembler.feed(context_id, data)
            except CommandError as exc:
                log.error("Received an invalid DIMSE message: %s", exc)
                self.dul.event_queue.put("Evt19")
                return
            if message is not None:
                self._deliver(message)

    def _deliver(self, message: ReceivedMessage) -> None:
        try:
            d_primitive = received_primitive(self.assoc, message)
        except Exception as exc:
            log.error("Received an invalid DIMSE message")
            log.exception(exc)
            self.dul.event_queue.put("Evt19")
            return
        context_id = message.context_id
        # As pynetdicom's receive_primitive: at most 10 C-CANCELs kept apart; an N-EVENT-REPORT request served
        # at once in a thread of its own (the association's reactor may be busy with the operation it reports on).
        if isinstance(d_primitive, C_CANCEL) and len(self.cancel_req) < 10:
            self.cancel_req[cast(int, d_primitive.MessageIDBeingRespondedTo)] = d_primitive
        elif isinstance(d_primitive, N_EVENT_REPORT) and d_primitive.is_valid_request:
            threading.Thread(
                target=make_target(self.assoc._serve_request), args=(d_primitive, context_id)
            ).start()
        else:
            self.msg_queue.put((context_id, d_primitive))


def _primitive(class_name: str, header: dict[int, Any], data_set: BytesIO | None, context_id: int) -> Any:
    """pynetdicom's `DIMSEMessage.message_to_primitive`, from decoded values instead of a Dataset."""
    primitive: Any = _MSG_TO_PRIMITVE[class_name[: class_name.rfind("_R")]]()
    for tag, value in header.items():
        keyword = _KEYWORDS[tag]  # decode_command keeps only the command elements it knows
        if hasattr(primitive, keyword):
            setattr(primitive, keyword, value)
    data_set_keyword = _DATASET_KEYWORDS.get(class_name)
    if data_set_keyword is not None:
        setattr(primitive, data_set_keyword, data_set if data_set is not None else BytesIO())
    primitive._context_id = context_id
    primitive._dataset_path = None
    primitive._dataset_file = None
    return primitive


def _message(command: bytes, data_set: BytesIO | None, context_id: int) -> DIMSEMessage:
    """pynetdicom's message object for the events, from the command set's bytes."""
    message = DIMSEMessage()
    message.command_set = decode(BytesIO(command), True, True)
    message.__class__ = _MESSAGE_TYPES[cast(int, message.command_set.CommandField)][1]
    message.data_set = data_set
    return message
