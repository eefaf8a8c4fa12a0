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
import threading
from collections.abc import Iterable
from typing import Any, Final

from pynetdicom import acse
from pynetdicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor

CACHE_SIZE: Final = 32  # distinct proposals remembered: the peers of a site propose a few each

Roles = dict[Any, tuple[bool | None, bool | None]]
Answer = tuple[list[PresentationContext], list[SCP_SCU_RoleSelectionNegotiation]]


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
        self._answers: dict[Any, Answer] = {}
        self._lock = threading.Lock()  # the loop and pynetdicom's association threads both negotiate

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
        with self._lock:
            found = self._answers.get(proposal)
        if found is None:
            found = negotiate_as_acceptor(rq_contexts, self, roles)
            with self._lock:
                found = self._answers.setdefault(proposal, found)  # one answer per proposal, whoever came first
                while len(self._answers) > CACHE_SIZE:
                    del self._answers[next(iter(self._answers))]  # the oldest
        return found


def supported_syntaxes(contexts: list[PresentationContext]) -> frozenset[str]:
    """The abstract syntaxes of an acceptor's supported contexts: remembered on the server's list."""
    if isinstance(contexts, SharedContexts):
        return (contexts.origin or contexts).abstract_syntaxes
    return frozenset(str(context.abstract_syntax) for context in contexts)


def negotiate(
    rq_contexts: list[PresentationContext], ac_contexts: list[PresentationContext], roles: Roles | None = None
) -> Answer:
    """pynetdicom's `negotiate_as_acceptor`, answered once per distinct proposal for the server's own list."""
    if not isinstance(ac_contexts, SharedContexts):
        return negotiate_as_acceptor(rq_contexts, ac_contexts, roles)
    proposal = (
        tuple(
            (context.context_id, str(context.abstract_syntax), tuple(str(uid) for uid in context.transfer_syntax))
            for context in rq_contexts
        ),
        tuple(sorted((str(uid), scu, scp) for uid, (scu, scp) in (roles or {}).items())),
    )
    return (ac_contexts.origin or ac_contexts).answer(proposal, rq_contexts, roles)


def install() -> None:
    """Have pynetdicom's ACSE negotiate with `negotiate`, once per process (it looks the function up by name)."""
    acse.negotiate_as_acceptor = negotiate  # type: ignore[attr-defined]
