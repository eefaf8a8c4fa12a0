"""Who may associate with the archive: one decision per A-ASSOCIATE-RQ, made before anything is negotiated.

Checked in this order, the first failure answering A-ASSOCIATE-RJ (PS3.8 9.3.4, Table 9-21) with a log line
that says who was refused and why (the SCU only learns a reason code):

1. calling AE title in the allow-list, when one is configured: rejected-permanent, service-user, reason 3
   "calling-AE-title-not-recognized";
2. called AE title equal to ours, when required: rejected-permanent, service-user, reason 7;
3. user identity (PS3.7 D.3.3.7), when users are configured: an association without a User Identity item,
   with a type other than username (1) or username-and-passcode (2), or with an unknown user or a wrong
   password is rejected-permanent, service-user, reason 1 "no-reason-given" (PS3.7 D.3.3.7 leaves the reason
   to the acceptor; naming it would tell a guesser which half was wrong);
4. a free association slot: at most DIMSE_MAX_ASSOCIATIONS in all and DIMSE_MAX_ASSOCIATIONS_PER_PEER from one
   IP address, else rejected-transient, service-provider (presentation related), reason 2
   "local-limit-exceeded". An association holds a slot from its A-ASSOCIATE-RQ to its end; a connection that
   has not sent a complete one holds none (it is closed after DIMSE_ACSE_TIMEOUT, acceptor.py), so half-sent
   PDUs cannot lock legitimate peers out, and one host cannot take every slot.

The decision is made here, as pure functions of the request; admission.py applies it to the association.
pynetdicom also enforces the calling and called AE titles itself (`AE.require_calling_aet`,
`AE.require_called_aet`), which the server configures too: if this handler ever failed, the association would
still not get through unchecked (`handle_requested` also rejects on any exception of its own).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from app.config import Settings

# A-ASSOCIATE-RJ fields, PS3.8 Table 9-21.
RESULT_REJECTED_PERMANENT: Final = 0x01
RESULT_REJECTED_TRANSIENT: Final = 0x02
SOURCE_SERVICE_USER: Final = 0x01
SOURCE_SERVICE_PROVIDER_PRESENTATION: Final = 0x03
REASON_NO_REASON_GIVEN: Final = 0x01
REASON_CALLING_AE_NOT_RECOGNIZED: Final = 0x03
REASON_CALLED_AE_NOT_RECOGNIZED: Final = 0x07
REASON_LOCAL_LIMIT_EXCEEDED: Final = 0x02  # with SOURCE_SERVICE_PROVIDER_PRESENTATION

# User Identity Type (PS3.7 Table D.3-14).
USER_IDENTITY_USERNAME: Final = 1
USER_IDENTITY_USERNAME_AND_PASSCODE: Final = 2


@dataclass(frozen=True)
class Rejection:
    result: int
    source: int
    diagnostic: int
    why: str


@dataclass(frozen=True)
class AccessPolicy:
    ae_title: str
    allowed_calling_aets: frozenset[str] = frozenset()
    require_called_aet: bool = False
    users: Mapping[str, bytes] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> AccessPolicy:
        return cls(
            ae_title=settings.ae_title.strip(),
            allowed_calling_aets=frozenset(t.strip() for t in settings.dimse_allowed_calling_aets),
            require_called_aet=settings.dimse_require_called_aet,
            users={name: secret.get_secret_value().encode() for name, secret in settings.dimse_users.items()},
        )

    def check(self, calling: str, called: str, identity: tuple[int, bytes, bytes] | None) -> Rejection | None:
        """None to go on with negotiation, or the rejection to send. `identity` is (type, primary, secondary)."""
        calling, called = calling.strip(), called.strip()
        if self.allowed_calling_aets and calling not in self.allowed_calling_aets:
            return Rejection(
                RESULT_REJECTED_PERMANENT,
                SOURCE_SERVICE_USER,
                REASON_CALLING_AE_NOT_RECOGNIZED,
                f"calling AE title {calling!r} is not in DIMSE_ALLOWED_CALLING_AETS",
            )
        if self.require_called_aet and called != self.ae_title:
            return Rejection(
                RESULT_REJECTED_PERMANENT,
                SOURCE_SERVICE_USER,
                REASON_CALLED_AE_NOT_RECOGNIZED,
                f"called AE title {called!r} is not ours ({self.ae_title!r})",
            )
        if self.users:
            why = self._identity_problem(identity)
            if why:
                return Rejection(RESULT_REJECTED_PERMANENT, SOURCE_SERVICE_USER, REASON_NO_REASON_GIVEN, why)
        return None

    def verify_user(self, kind: int, primary: bytes, secondary: bytes) -> bool:
        return not self.users or self._identity_problem((kind, primary, secondary)) is None

    def _identity_problem(self, identity: tuple[int, bytes, bytes] | None) -> str | None:
        if identity is None:
            return "no user identity offered, and DIMSE_USERS requires one"
        kind, primary, secondary = identity
        user = primary.decode("utf-8", "replace")
        if kind not in (USER_IDENTITY_USERNAME, USER_IDENTITY_USERNAME_AND_PASSCODE):
            return f"user identity type {kind} is not supported (only username and passcode)"
        expected = self.users.get(user)
        if expected is None:
            return f"unknown user {user!r}"
        offered = secondary if kind == USER_IDENTITY_USERNAME_AND_PASSCODE else b""
        if not hmac.compare_digest(offered, expected):
            return f"wrong password for user {user!r}"
        return None


def check_slots(address: str, holders: Sequence[str], total: int, per_peer: int) -> Rejection | None:
    """None if a peer at `address` may have one more association, given the addresses of those held."""
    if len(holders) >= total:
        why = f"all {total} association slots are taken (DIMSE_MAX_ASSOCIATIONS)"
    elif (mine := holders.count(address)) >= per_peer:
        why = f"{mine} associations are open from {address} already (DIMSE_MAX_ASSOCIATIONS_PER_PEER)"
    else:
        return None
    return Rejection(
        RESULT_REJECTED_TRANSIENT, SOURCE_SERVICE_PROVIDER_PRESENTATION, REASON_LOCAL_LIMIT_EXCEEDED, why
    )


def slot_holders(assoc: Any) -> list[str]:
    """Peer addresses of the server's other associations that hold a slot: past their A-ASSOCIATE-RQ, not ended."""
    return [
        str(other.requestor.address)
        for other in assoc.ae.active_associations
        if other is not assoc
        and other.is_acceptor
        and other.requestor.primitive is not None
        and not (other.is_rejected or other.is_aborted or other.is_released)
    ]


def peer(assoc: Any) -> str:
    """`AE@host:port` of the requestor, for log lines and the ingest origin."""
    requestor = assoc.requestor
    primitive = requestor.primitive
    title = str(getattr(primitive, "calling_ae_title", "") or requestor.ae_title or "").strip()
    return f"{title or '?'}@{requestor.address}:{requestor.port}"
