"""Presentation-context negotiation remembered per proposal (dimse_bridge/negotiation.py): the same answer as
pynetdicom's `negotiate_as_acceptor` gives, whatever the proposal (PS3.8 9.3.2.2, 9.3.3.2, PS3.7 D.3.3.4)."""

from __future__ import annotations

import uuid
from copy import deepcopy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import PresentationContext, build_context, negotiate_as_acceptor

from dimse_bridge import acse_pdus, negotiation
from dimse_bridge.negotiation import ByRequest, SharedContexts, negotiate
from dimse_bridge.policy import build_policy
from dimse_bridge.server import SERVICE_SOP_CLASSES

SUPPORTED = SharedContexts(build_policy(["AllStorage"], ["All"]).supported_contexts(extra=SERVICE_SOP_CLASSES))
UNSUPPORTED = "1.2.826.0.1.3680043.10.1077.1"  # a SOP class nobody supports
ABSTRACT = [*sorted({str(context.abstract_syntax) for context in SUPPORTED})[:30], UNSUPPORTED]
SYNTAXES = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.90", "1.2.9.9"]

Roles = dict[str, tuple[bool, bool]]


@st.composite
def proposals(draw: st.DrawFn) -> tuple[list[PresentationContext], Roles]:
    contexts = []
    for number in range(draw(st.integers(1, 8))):
        syntaxes = draw(st.lists(st.sampled_from(SYNTAXES), min_size=1, max_size=3, unique=True))
        context = build_context(draw(st.sampled_from(ABSTRACT)), syntaxes)
        context.context_id = 2 * number + 1
        contexts.append(context)
    proposed = sorted({str(context.abstract_syntax) for context in contexts})
    roles = draw(st.dictionaries(st.sampled_from(proposed), st.tuples(st.booleans(), st.booleans()), max_size=3))
    return contexts, roles


def facts(answer: tuple[list[PresentationContext], list[Any]]) -> tuple[list[Any], list[Any]]:
    results, roles = answer
    return (
        [
            (cx.context_id, str(cx.abstract_syntax), cx.result, [str(s) for s in cx.transfer_syntax], cx.as_scu, cx.as_scp)
            for cx in results
        ],
        [(str(role.sop_class_uid), role.scu_role, role.scp_role) for role in roles],
    )


@given(proposals())
def test_a_remembered_answer_is_the_answer_pynetdicom_gives_the_same_proposal(
    proposal: tuple[list[PresentationContext], Roles],
) -> None:
    contexts, roles = proposal
    fresh = negotiate_as_acceptor(contexts, list(SUPPORTED), roles)
    first = negotiate(contexts, deepcopy(SUPPORTED), roles)  # each association holds its own copy of the list
    again = negotiate(deepcopy(contexts), deepcopy(SUPPORTED), dict(roles))
    assert facts(first) == facts(fresh) == facts(again)
    assert again[0] is first[0]  # the second association got the answer the first one did


def test_a_list_extended_for_one_association_is_negotiated_afresh() -> None:
    """Policy `All` adds the storage-like classes a request proposes to that association's list (admission.py)."""
    context = build_context(UNSUPPORTED, SYNTAXES[:2])
    context.context_id = 1
    refused, _ = negotiate([context], deepcopy(SUPPORTED))
    accepted, _ = negotiate([context], [*deepcopy(SUPPORTED), build_context(UNSUPPORTED, SYNTAXES[:2])])
    assert [cx.result for cx in refused] == [0x03] and [cx.result for cx in accepted] == [0x00]


def test_a_fact_of_a_decoded_request_is_drawn_once_and_never_for_another_request() -> None:
    by_request: ByRequest[int] = ByRequest()
    drawn: list[int] = []

    def draw(proposal: list[PresentationContext]) -> int:
        drawn.append(len(proposal))
        return len(drawn)

    request = [build_context("1.2.840.10008.1.1")]
    assert by_request.get(request, lambda: draw(request)) == 1
    assert by_request.get(request, lambda: draw(request)) == 1  # the same decoded request: looked up
    equal = deepcopy(request)
    assert by_request.get(equal, lambda: draw(equal)) == 2  # another request, even an equal one: drawn
    assert drawn == [1, 1]


def test_identical_requests_share_one_decoded_proposal_whose_key_is_drawn_once(monkeypatch: pytest.MonkeyPatch) -> None:
    request = A_ASSOCIATE()
    request.application_context_name = "1.2.840.10008.3.1.1.1"
    request.calling_ae_title, request.called_ae_title = f"P{uuid.uuid4().hex[:12]}", "ARCHIVE"  # never seen before
    request.presentation_context_definition_list = [
        build_context(uid, ["1.2.840.10008.1.2.1"]) for uid in ABSTRACT[:3]
    ]
    for number, context in enumerate(request.presentation_context_definition_list):
        context.context_id = 2 * number + 1
    length = MaximumLengthNotification()
    length.maximum_length_received = 16384
    request.user_information = [length]
    pdu = A_ASSOCIATE_RQ(request).encode()
    drawn: list[object] = []
    draw = negotiation._proposal
    monkeypatch.setattr(negotiation, "_proposal", lambda *args: drawn.append(args) or draw(*args))

    answers = []
    for data in (pdu, bytes(pdu)):  # two associations sending the same request
        primitive = acse_pdus.request_primitive(data)
        assert primitive is not None
        answers.append(negotiate(primitive.presentation_context_definition_list, deepcopy(SUPPORTED), {}))

    assert len(drawn) == 1
    assert answers[1][0] is answers[0][0]
    assert facts(answers[0]) == facts(
        negotiate_as_acceptor(request.presentation_context_definition_list, list(SUPPORTED), {})
    )
