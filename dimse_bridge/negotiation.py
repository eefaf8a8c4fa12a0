"""The acceptor's supported presentation contexts, and their negotiation (PS3.8 9.3.2.2, 9.3.3.2) remembered per
distinct proposal.

A peer proposes the same contexts every time it connects (DCMTK's getscu: 121 presentation contexts and 120
SCP/SCU role selection items for every study it retrieves), and the server supports the same list until it is
restarted. pynetdicom's `negotiate_as_acceptor` builds the answer object by object for every association (about a
third of the server's CPU for a getscu association served on the loop, yappi), yet the answer depends only on the
proposal and the supported list, and nothing changes it afterwards (an association only reads its accepted
contexts and role items). So the server's list remembers the answers it gave, per distinct proposal, and every
association that proposes the same gets the same objects. A list admission extended for one association (policy
`All`, admission.py) is negotiated afresh.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any, Final, Generic, TypeVar

from pynetdicom import acse
from pynetdicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor

from dimse_bridge.remembered import Remembered

CACHE_SIZE: Final = 32  # distinct proposals remembered: the peers of a site propose a few each

Roles = dict[Any, tuple[bool | None, bool | None]]
Answer = tuple[list[PresentationContext], list[SCP_SCU_RoleSelectionNegotiation]]
T = TypeVar("T")


class ByRequest(Generic[T]):
    """Values derived from one decoded A-ASSOCIATE-RQ, remembered by the identity of its presentation context list.

    acse_pdus.py gives every identical request the loop reads the same primitive object, read only (pynetdicom's
    threads decode their own), so a fact drawn from its proposal (the negotiation's key, the SOP classes it names)
    is drawn once, and found again at the cost of a dictionary look-up instead of a walk over getscu's 121
    contexts (that walk, in the key and in data_phase.qualifies, was ~0.8 ms of the 5.1 ms a getscu association
    cost the server, bench/README.md). The list is held with its value, so that its identity cannot pass to
    another list.
    """

    def __init__(self) -> None:
        self._values: Remembered[int, tuple[list[PresentationContext], T]] = Remembered(CACHE_SIZE)

    def get(self, proposal: list[PresentationContext], derive: Callable[[], T]) -> T:
        _, held = self._values.find(id(proposal))
        if held is None:
            held = self._values.keep(id(proposal), (proposal, derive()))
        return held[1]


class SharedContexts(list[PresentationContext]):
    """The supported presentation contexts, shared by every association instead of copied into each.

    pynetdicom deep-copies the server's contexts for each new association (transport.py
    `_create_association`): 171 contexts x 46 transfer syntaxes under policy AllStorage/All took ~60 ms of CPU
    per association, holding the GIL. Negotiation only reads them (presentation.negotiate_as_acceptor builds new
    result objects) and admission.handle_requested replaces the list rather than appending, so a shallow copy is
    enough; it keeps `origin`, the server's own list, whose answers `negotiate` remembers.
    """

    origin: SharedContexts | None = None

    def __init__(self, contexts: Iterable[PresentationContext] = ()) -> None:
        super().__init__(contexts)
        self._answers: Remembered[Any, Answer] = Remembered(CACHE_SIZE)

    def __deepcopy__(self, memo: dict[int, Any]) -> SharedContexts:
        copy = SharedContexts(self)
        copy.origin = self.origin or self
        return copy

    @functools.cached_property
    def abstract_syntaxes(self) -> frozenset[str]:
        """The SOP classes supported, read once (data_phase.qualifies asks for every association)."""
        return frozenset(str(context.abstract_syntax) for context in self)

    def answer(self, proposal: Any, rq_contexts: list[PresentationContext], roles: Roles | None) -> Answer:
        """The negotiation's answer to `proposal` (which says what `rq_contexts` and `roles` say), remembered."""
        _, found = self._answers.find(proposal)
        if found is None:
            # One answer per proposal, whoever came first.
            found = self._answers.keep(proposal, negotiate_as_acceptor(rq_contexts, self, roles))
        return found


def supported_syntaxes(contexts: list[PresentationContext]) -> frozenset[str]:
    """The abstract syntaxes of an acceptor's supported contexts: remembered on the server's list."""
    if isinstance(contexts, SharedContexts):
        return (contexts.origin or contexts).abstract_syntaxes
    return frozenset(str(context.abstract_syntax) for context in contexts)


def negotiate(
    rq_contexts: list[PresentationContext], ac_contexts: list[PresentationContext], roles: Roles | None = None
) -> Answer:
    """pynetdicom's `negotiate_as_acceptor`, answered once per distinct proposal for the server's own list.

    `roles` must be the role selection of the request whose context list `rq_contexts` is, as pynetdicom's ACSE
    passes them: the list's identity stands for both."""
    if not isinstance(ac_contexts, SharedContexts):
        return negotiate_as_acceptor(rq_contexts, ac_contexts, roles)
    proposal = _PROPOSALS.get(rq_contexts, lambda: _proposal(rq_contexts, roles))
    return (ac_contexts.origin or ac_contexts).answer(proposal, rq_contexts, roles)


def _proposal(rq_contexts: list[PresentationContext], roles: Roles | None) -> Any:
    """What a proposal says, as a key: its contexts and its role selection."""
    return (
        tuple(
            (context.context_id, str(context.abstract_syntax), tuple(str(uid) for uid in context.transfer_syntax))
            for context in rq_contexts
        ),
        tuple(sorted((str(uid), scu, scp) for uid, (scu, scp) in (roles or {}).items())),
    )


_PROPOSALS: Final[ByRequest[Any]] = ByRequest()


def install() -> None:
    """Have pynetdicom's ACSE negotiate with `negotiate`, once per process (it looks the function up by name)."""
    acse.negotiate_as_acceptor = negotiate  # type: ignore[attr-defined]
