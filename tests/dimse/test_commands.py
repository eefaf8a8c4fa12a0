"""The byte-level command-set codec (dimse_bridge/commands.py) writes and reads what pynetdicom's own does."""

from __future__ import annotations

from io import BytesIO
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.tag import Tag
from pynetdicom.dimse import _RQ_TO_MESSAGE, _RSP_TO_MESSAGE
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dimse_primitives import C_ECHO, C_FIND, C_GET, C_MOVE, C_STORE, N_ACTION, N_EVENT_REPORT
from pynetdicom.dsutils import encode

from dimse_bridge.commands import (
    CommandError,
    _pieces,
    _primitive,
    _primitives,
    decode_command,
    encode_command,
)

uids = st.from_regex(r"[1-9][0-9]{0,5}(\.[1-9][0-9]{0,5}){1,8}", fullmatch=True)
ids = st.integers(0, 0xFFFF)
titles = st.from_regex(r"[A-Z][A-Z0-9_]{0,15}", fullmatch=True)
comments = st.from_regex(r"[A-Za-z0-9 ,.:'()_-]{1,60}", fullmatch=True).map(str.strip).filter(bool)
counts = st.integers(0, 0xFFFF)


@st.composite
def primitives(draw: st.DrawFn) -> Any:
    kind = draw(st.sampled_from([C_ECHO, C_STORE, C_FIND, C_GET, C_MOVE, N_ACTION, N_EVENT_REPORT]))
    primitive = kind()
    response = draw(st.booleans())
    if response:
        primitive.MessageIDBeingRespondedTo = draw(ids)
        primitive.Status = draw(st.sampled_from([0x0000, 0xFF00, 0xA700, 0xB000, 0xC000, 0x0122]))
        if draw(st.booleans()) and hasattr(primitive, "ErrorComment"):
            primitive.ErrorComment = draw(comments)
        if draw(st.booleans()) and hasattr(primitive, "OffendingElement"):
            primitive.OffendingElement = [Tag(0x0010, 0x0010), Tag(0x0020, 0x000D)][: draw(st.integers(1, 2))]
    else:
        primitive.MessageID = draw(ids)
    if kind in (N_ACTION, N_EVENT_REPORT):
        if response:
            primitive.AffectedSOPClassUID = draw(uids)
            primitive.AffectedSOPInstanceUID = draw(uids)
        elif kind is N_ACTION:
            primitive.RequestedSOPClassUID = draw(uids)
            primitive.RequestedSOPInstanceUID = draw(uids)
            primitive.ActionTypeID = draw(st.integers(1, 2))
        else:
            primitive.AffectedSOPClassUID = draw(uids)
            primitive.AffectedSOPInstanceUID = draw(uids)
            primitive.EventTypeID = draw(st.integers(1, 2))
    else:
        primitive.AffectedSOPClassUID = draw(uids)
    if kind is C_STORE:
        primitive.AffectedSOPInstanceUID = draw(uids)
        if not response:
            primitive.Priority = draw(st.sampled_from([0, 1, 2]))
            if draw(st.booleans()):
                primitive.MoveOriginatorApplicationEntityTitle = draw(titles)
                primitive.MoveOriginatorMessageID = draw(ids)
    if kind in (C_FIND, C_GET, C_MOVE) and not response:
        primitive.Priority = draw(st.sampled_from([0, 1, 2]))
    if kind is C_MOVE and not response:
        primitive.MoveDestination = draw(titles)
    if kind in (C_GET, C_MOVE) and response and draw(st.booleans()):
        primitive.NumberOfRemainingSuboperations = draw(counts)
        primitive.NumberOfCompletedSuboperations = draw(counts)
        primitive.NumberOfFailedSuboperations = draw(counts)
        primitive.NumberOfWarningSuboperations = draw(counts)
    return primitive


def message_class(primitive: Any) -> type[DIMSEMessage]:
    table = _RQ_TO_MESSAGE if primitive.MessageIDBeingRespondedTo is None else _RSP_TO_MESSAGE
    return table[type(primitive)]  # type: ignore[return-value]


def pynetdicoms_command(primitive: Any) -> bytes:
    message = message_class(primitive)()
    message.primitive_to_message(primitive)
    return bytes(encode(message.command_set, True, True))


def with_data_set(primitive: Any, data: bytes | None) -> Any:
    for keyword in (
        "DataSet",
        "Identifier",
        "ActionInformation",
        "ActionReply",
        "EventInformation",
        "EventReply",
    ):
        if hasattr(primitive, keyword):
            setattr(primitive, keyword, None if data is None else BytesIO(data))
    return primitive


@settings(max_examples=300, deadline=None)
@given(primitives(), st.booleans())
def test_a_command_set_is_encoded_byte_for_byte_as_pynetdicom_encodes_it(primitive: Any, data: bool) -> None:
    primitive = with_data_set(primitive, b"\x08\x00\x18\x00\x00\x00\x00\x00" if data else None)
    name = message_class(primitive).__name__
    has_data_set = data and name in {
        "C_STORE_RQ", "C_FIND_RQ", "C_GET_RQ", "C_MOVE_RQ", "C_FIND_RSP", "C_GET_RSP", "C_MOVE_RSP",
        "N_ACTION_RQ", "N_ACTION_RSP", "N_EVENT_REPORT_RQ", "N_EVENT_REPORT_RSP",
    }  # fmt: skip
    assert encode_command(name.replace("_", "-"), primitive, has_data_set) == pynetdicoms_command(primitive)


def pynetdicoms_primitive(command: bytes, data: bytes | None) -> Any:
    message = DIMSEMessage()
    pdatas = [*_primitives(1, _pieces((b"\x01", b"\x03"), command, 0))]
    if data is not None:
        pdatas += _primitives(1, _pieces((b"\x00", b"\x02"), data, 0))
    for pdata in pdatas:
        message.decode_msg(pdata)
    return message.message_to_primitive()


FIELDS = (
    "MessageID", "MessageIDBeingRespondedTo", "AffectedSOPClassUID", "AffectedSOPInstanceUID",
    "RequestedSOPClassUID", "RequestedSOPInstanceUID", "Priority", "Status", "ErrorComment", "OffendingElement",
    "MoveDestination", "MoveOriginatorApplicationEntityTitle", "MoveOriginatorMessageID", "ActionTypeID",
    "EventTypeID", "NumberOfRemainingSuboperations", "NumberOfCompletedSuboperations",
    "NumberOfFailedSuboperations", "NumberOfWarningSuboperations",
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(primitives())
def test_a_command_set_is_read_into_the_primitive_pynetdicom_reads(primitive: Any) -> None:
    command = pynetdicoms_command(with_data_set(primitive, None))
    theirs = pynetdicoms_primitive(command, None)
    name = type(theirs).__name__ + ("_RSP" if theirs.MessageIDBeingRespondedTo is not None else "_RQ")
    ours = _primitive(name, decode_command(command), None, 1)
    assert type(ours) is type(theirs)
    for field in FIELDS:
        if hasattr(theirs, field):
            assert getattr(ours, field) == getattr(theirs, field), field


def test_a_command_set_cut_short_is_refused_with_the_reason() -> None:
    echo = C_ECHO()
    echo.MessageID = 1
    echo.AffectedSOPClassUID = "1.2.840.10008.1.1"
    command = pynetdicoms_command(echo)
    with pytest.raises(CommandError, match="past the command set's end"):
        decode_command(command[:-1])
    with pytest.raises(CommandError, match="cut off"):
        decode_command(command + b"\x00\x00")


@pytest.mark.parametrize("max_pdu", [0, 7, 16, 1000])
def test_fragments_stay_within_the_peers_maximum_pdu_length(max_pdu: int) -> None:
    data = bytes(range(256)) * 4
    pdatas = list(_primitives(3, _pieces((b"\x00", b"\x02"), data, max_pdu)))
    pdvs = [pdata.presentation_data_value_list[0] for pdata in pdatas]
    assert b"".join(pdv[1][1:] for pdv in pdvs) == data
    assert [pdv[1][0] for pdv in pdvs] == [0] * (len(pdvs) - 1) + [2]
    assert all(pdv[0] == 3 for pdv in pdvs)
    if max_pdu:
        assert all(len(pdv[1]) + 5 <= max_pdu for pdv in pdvs)


def test_remembered_uid_checks_still_refuse_an_invalid_uid_every_time() -> None:
    from pynetdicom import pdu_items, utils

    from dimse_bridge import uids

    uids.remember()
    uids.remember()  # once per process: no wrapper around the wrapper
    assert pdu_items.set_uid is utils.set_uid and getattr(utils.set_uid, "remembered", False)
    assert utils.set_uid(b"1.2.840.10008.1.1", "x") == "1.2.840.10008.1.1"
    for _ in range(2):
        with pytest.raises(ValueError, match="Invalid 'x' value"):
            utils.set_uid("1" * 70, "x")


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 255), st.binary(min_size=1, max_size=3000), st.sampled_from([0, 16384, 1024]))
def test_pdus_written_directly_are_the_ones_pynetdicom_writes_for_the_same_fragments(
    context_id: int, data: bytes, max_pdu: int
) -> None:
    from pynetdicom.pdu import P_DATA_TF

    from dimse_bridge.commands import _DATA_LAST, _DATA_MORE, _chunks

    written = b"".join(_chunks(context_id, _pieces((_DATA_MORE, _DATA_LAST), data, max_pdu)))
    expected = b"".join(P_DATA_TF(p).encode() for p in _primitives(context_id, _pieces((_DATA_MORE, _DATA_LAST), data, max_pdu)))
    assert written == expected


def test_the_provider_queue_counts_a_primitive_as_unsent_until_the_action_that_took_it_has_ended() -> None:
    from dimse_bridge.reactor import ProviderQueue

    primitives = ProviderQueue()
    primitives.put("release")
    primitives.put("abort")
    assert primitives.get(False) == "release" and primitives.unfinished_tasks == 2
    primitives.sent()
    assert primitives.unfinished_tasks == 1
    primitives.sent()  # an action that took nothing
    assert primitives.unfinished_tasks == 1


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 255), st.binary(min_size=1, max_size=600)), min_size=1, max_size=4))
def test_a_received_p_data_tf_reads_as_pynetdicom_reads_it(items: list[tuple[int, bytes]]) -> None:
    from pynetdicom.pdu import P_DATA_TF
    from pynetdicom.pdu_primitives import P_DATA

    from dimse_bridge.commands import ReceivedPData

    primitive = P_DATA()
    primitive.presentation_data_value_list = [[context_id, value] for context_id, value in items]
    pdu = P_DATA_TF(primitive).encode()
    theirs = P_DATA_TF()
    theirs.decode(pdu)
    expected = [tuple(v) for v in theirs.to_primitive().presentation_data_value_list]
    assert ReceivedPData(pdu).to_primitive().presentation_data_value_list == expected
    with pytest.raises(ValueError, match="does not fit"):
        ReceivedPData(pdu[:-1])
