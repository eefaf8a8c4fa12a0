"""Which peers may speak for a client: X-Forwarded-* headers are honoured only from TRUSTED_PROXIES.

Behind a reverse proxy the TCP peer is the proxy; it states the client's address (X-Forwarded-For) and the
public scheme, host and prefix (X-Forwarded-Proto/-Host/-Prefix, used for RetrieveURL and BulkDataURI). From
anyone else those headers are a forgery: a client could make the archive hand out links to another host, or
write someone else's address into the audit trail. Entries are addresses or networks (`10.0.0.0/8`); `*`
trusts every peer (only when the archive is reachable solely through the proxy).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=32)
def _networks(trusted: tuple[str, ...]) -> tuple[bool, tuple[Network, ...]]:
    everyone = "*" in trusted
    networks = tuple(ipaddress.ip_network(entry, strict=False) for entry in trusted if entry != "*")
    return everyone, networks


def is_trusted(peer: str | None, trusted: Iterable[str]) -> bool:
    everyone, networks = _networks(tuple(trusted))
    if everyone:
        return True
    if not peer:
        return False
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(address in network for network in networks)


def peer_of(scope: Mapping[str, Any]) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None


def client_address(
    scope: Mapping[str, Any], headers: Mapping[str, str], trusted: Iterable[str]
) -> str | None:
    """The client's address: the peer, or, from a trusted proxy, the nearest untrusted X-Forwarded-For hop."""
    trusted = tuple(trusted)
    peer = peer_of(scope)
    forwarded = headers.get("x-forwarded-for")
    if not forwarded or not is_trusted(peer, trusted):
        return peer
    hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
    # Walk from the nearest hop back: each trusted proxy may speak for the one before it.
    for hop in reversed(hops):
        if not is_trusted(hop, trusted):
            return hop
    return hops[0] if hops else peer
