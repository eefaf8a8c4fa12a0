"""The acceptor's A-ASSOCIATE codec (dimse_bridge/acse_pdus.py) writes what pynetdicom writes, and the remembered
transfer syntax checks (dimse_bridge/uids.py) accept and refuse what pynetdicom's do."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pynetdicom import fsm
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    AsynchronousOperationsWindowNegotiation,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
    UserIdentityNegotiation,
)
from pynetdicom.presentation import PresentationContext

from dimse_bridge import acse_pdus, uids

uid_values = st.from_regex(r"[1-9][0-9]{0,5}(\.[1-9][0-9]{0,5}){1,8}", fullmatch=True)
titles = st.from_regex(r"[A-Z][A-Z0-9_]{0,15}", fullmatch=True)


@st.composite
def accepts(draw: st.DrawFn) -> A_ASSOCIATE:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.called_ae_title = draw(titles)
    primitive.calling_ae_title = draw(titles)
    primitive.result = 0
    results = []
    for number in range(draw(st.integers(0, 6))):
        context = PresentationContext()
        context.context_id = 2 * number + 1
        context.abstract_syntax = draw(uid_values)
        context.transfer_syntax = [draw(st.sampled_from(["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"]))]
        context.result = draw(st.sampled_from([0, 1, 2, 3, 4]))
        results.append(context)
    primitive.presentation_context_definition_results_list = results
    length = MaximumLengthNotification()
    length.maximum_length_received = draw(st.integers(0, 2**32 - 1))
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = draw(uid_values)
    items: list[Any] = [length, implementation]
    if draw(st.booleans()):
        version = ImplementationVersionNameNotification()
        version.implementation_version_name = draw(titles)
        items.append(version)
    if draw(st.booleans()):
        window = AsynchronousOperationsWindowNegotiation()
        window.maximum_number_operations_invoked = draw(st.integers(0, 0xFFFF))
        window.maximum_number_operations_performed = draw(st.integers(0, 0xFFFF))
        items.append(window)
    for _ in range(draw(st.integers(0, 3))):
        role = SCP_SCU_RoleSelectionNegotiation()
        role.sop_class_uid = draw(uid_values)
        role.scu_role, role.scp_role = draw(st.sampled_from([(True, False), (False, True), (True, True)]))
        items.append(role)
    primitive.user_information = items
    return primitive


@settings(max_examples=150, deadline=None)
@given(accepts())
def test_an_accept_is_written_byte_for_byte_as_pynetdicom_writes_it(primitive: A_ASSOCIATE) -> None:
    assert acse_pdus.encode_accept(primitive) == A_ASSOCIATE_AC(primitive).encode()


def test_an_accept_with_a_user_identity_answer_is_left_to_pynetdicom() -> None:
    primitive = A_ASSOCIATE()
    identity = UserIdentityNegotiation()
    identity.server_response = b"token"
    primitive.user_information = [identity]
    assert acse_pdus.encode_accept(primitive) is None


def test_the_accept_action_of_the_state_machine_is_installed_once() -> None:
    acse_pdus.install()
    acse_pdus.install()
    description, action, next_state = fsm.ACTIONS["AE-7"]
    assert action is acse_pdus.send_accept and next_state == "Sta6" and "A-ASSOCIATE-AC" in description


def test_a_request_seen_before_is_decoded_once_and_reads_as_pynetdicom_decodes_it() -> None:
    request = A_ASSOCIATE()
    request.application_context_name = "1.2.840.10008.3.1.1.1"
    request.calling_ae_title, request.called_ae_title = "GETSCU", "ARCHIVE"
    context = PresentationContext()
    context.context_id = 1
    context.abstract_syntax = "1.2.840.10008.5.1.4.1.1.2"
    context.transfer_syntax = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
    request.presentation_context_definition_list = [context]
    length = MaximumLengthNotification()
    length.maximum_length_received = 16384
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = "1.2.3.4"
    request.user_information = [length, implementation]
    data = A_ASSOCIATE_RQ(request).encode()

    first, again = acse_pdus.association_request(data), acse_pdus.association_request(bytes(data))
    assert first is again
    decoded = first.to_primitive()
    assert decoded.calling_ae_title == "GETSCU"
    assert [(cx.context_id, cx.abstract_syntax, cx.transfer_syntax) for cx in decoded.presentation_context_definition_list] == [
        (1, "1.2.840.10008.5.1.4.1.1.2", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    ]

    # The loop asks whether a request was seen before (a look-up), and has one it has not decoded in a thread.
    request.calling_ae_title = "NEWCOMER"
    unseen = A_ASSOCIATE_RQ(request).encode()
    assert acse_pdus.known_primitive(unseen) == (False, None)
    primitive = acse_pdus.request_primitive(unseen)
    assert primitive is not None and primitive.calling_ae_title == "NEWCOMER"
    assert acse_pdus.known_primitive(unseen) == (True, primitive)
    assert acse_pdus.request_primitive(unseen) is primitive
    assert acse_pdus.request_primitive(b"\x01\x00\x00\x00\x00\x02\xff\xff") is None  # not a request pynetdicom reads


def test_remembered_transfer_syntax_checks_keep_pynetdicom_answers() -> None:
    uids.remember()
    context = PresentationContext()
    context.add_transfer_syntax(b"1.2.840.10008.1.2.1")
    context.add_transfer_syntax("1.2.840.10008.1.2.1")  # once only
    context.add_transfer_syntax("1.2.840.10008.1.2")
    assert context.transfer_syntax == ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
    for _ in range(2):  # refused every time: failures are not remembered
        with pytest.raises(ValueError, match="invalid UID"):
            context.add_transfer_syntax("1" * 70)
