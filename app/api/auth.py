"""Authentication and authorisation for every HTTP route: OAuth2 bearer tokens (RFC 6750).

Off by default (`AUTH_ENABLED=false`: a local archive on 127.0.0.1 needs none). On, every route but `/health`
and `/ready` needs `Authorization: Bearer <token>`, where the token is either
* a JWT signed by the OIDC provider: checked against the provider's JWKS (`OIDC_JWKS_URL`, or discovered from
  `OIDC_ISSUER/.well-known/openid-configuration`), with its signature, `exp`/`nbf`, `iss` (when OIDC_ISSUER is
  set) and `aud` (when OIDC_AUDIENCE is set); its scopes come from the `scope` claim (space-separated, RFC 8693)
  or `scp` (a list, as Azure AD and Okta send); the user is `sub`; or
* a static API key from `AUTH_API_KEYS` (`name:secret:read+write,...`), compared in constant time; the user is
  the key's name.

Scopes: `read` (GET: QIDO-RS, WADO-RS, WADO-URI, change feed; the UPS-RS event channel, a WebSocket), `write`
(POST, PUT: STOW-RS, UPS-RS), `delete` (DELETE under /dicom-web) and `admin` (the operations APIs under /api:
admin, AE registry, FHIR and webhook status; and /metrics). Each is separate: a token carries the ones it
needs. Answers per RFC 6750 3.1: no token 401 with `WWW-Authenticate: Bearer realm="dicomweb-archive"`; a bad
one 401 with `error="invalid_token"`; a good one without the scope 403 with `error="insufficient_scope"` and
the scope needed. JWKS fetches are cached (5 minutes, refetched at once for an unknown `kid`) and run in a
worker thread, never on the event loop.

PyJWT over authlib: it is smaller, already the common choice for resource servers, and has the JWKS client
with key caching built in.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import jwt
from fastapi import Request
from starlette.requests import HTTPConnection

from app.api.errors import DicomWebError
from app.config import Settings

log = logging.getLogger(__name__)

REALM = "dicomweb-archive"
SCOPES = ("read", "write", "delete", "admin")
METHOD_SCOPES = {"GET": "read", "HEAD": "read", "POST": "write", "PUT": "write", "DELETE": "delete"}
ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
LEEWAY_SECONDS = 30
FETCH_TIMEOUT = 10


@dataclass(frozen=True)
class Principal:
    name: str
    scopes: frozenset[str]


class Unavailable(RuntimeError):
    """The identity provider cannot be reached: the archive answers 503, the token is not at fault."""


def parse_api_keys(text: str) -> dict[str, Principal]:
    """`name:secret:read+write,name2:secret2:admin` -> {secret: Principal}."""
    keys: dict[str, Principal] = {}
    for entry in filter(None, (item.strip() for item in text.split(","))):
        parts = entry.split(":")
        if len(parts) != 3 or not parts[0] or not parts[1]:
            raise ValueError("AUTH_API_KEYS takes name:secret:scope+scope entries separated by commas")
        name, secret, scope_text = parts
        scopes = frozenset(filter(None, scope_text.split("+")))
        unknown = scopes - set(SCOPES)
        if unknown:
            raise ValueError(f"AUTH_API_KEYS: unknown scope(s) {sorted(unknown)} for {name}; known: {SCOPES}")
        keys[secret] = Principal(name, scopes)
    return keys


def _fetch_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT) as answer:
        return json.loads(answer.read())


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        self.api_keys = parse_api_keys(settings.auth_api_keys.get_secret_value())
        self.issuer = settings.oidc_issuer or None
        self.audience = settings.oidc_audience or None
        self._jwks_url = settings.oidc_jwks_url or None
        self._jwks: jwt.PyJWKClient | None = None
        self._oidc = bool(self.issuer or self._jwks_url)
        if self._jwks_url and not self.issuer:
            log.warning(
                "OIDC_JWKS_URL is set without OIDC_ISSUER: a token from any issuer signed by those keys is "
                "accepted; set OIDC_ISSUER to check the `iss` claim"
            )

    async def authenticate(self, token: str) -> Principal:
        for secret, principal in self.api_keys.items():
            if hmac.compare_digest(secret.encode(), token.encode()):
                return principal
        if not self._oidc or token.count(".") != 2:
            raise jwt.InvalidTokenError("not a known API key or a JWT")
        return await asyncio.to_thread(self._verify_jwt, token)

    def _jwks_client(self) -> jwt.PyJWKClient:
        if self._jwks is None:
            url = self._jwks_url
            if url is None:
                assert self.issuer is not None
                try:
                    discovery = _fetch_json(self.issuer.rstrip("/") + "/.well-known/openid-configuration")
                    url = str(discovery["jwks_uri"])
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    raise Unavailable(f"cannot read the OIDC discovery document: {exc!r}") from exc
            self._jwks = jwt.PyJWKClient(url, cache_keys=True, lifespan=300, timeout=FETCH_TIMEOUT)
        return self._jwks

    def _verify_jwt(self, token: str) -> Principal:
        """Blocking (JWKS fetch on a cache miss): run in a worker thread."""
        try:
            key = self._jwks_client().get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError as exc:
            raise Unavailable(f"cannot fetch the JWKS: {exc}") from exc
        except jwt.PyJWKClientError as exc:
            raise jwt.InvalidTokenError(str(exc)) from exc
        claims = jwt.decode(
            token,
            key.key,
            algorithms=ALGORITHMS,
            audience=self.audience,
            issuer=self.issuer,
            leeway=LEEWAY_SECONDS,
            options={"require": ["exp", "sub"], "verify_aud": self.audience is not None},
        )
        return Principal(str(claims["sub"]), _scopes(claims))


def _scopes(claims: dict[str, Any]) -> frozenset[str]:
    found: set[str] = set()
    for claim in ("scope", "scp"):
        value = claims.get(claim)
        if isinstance(value, str):
            found.update(value.split())
        elif isinstance(value, list):
            found.update(str(item) for item in value)
    return frozenset(found)


def _challenge(
    error: str | None = None, description: str | None = None, scope: str | None = None
) -> dict[str, str]:
    parts = [f'realm="{REALM}"']
    if error:
        parts.append(f'error="{error}"')
    if description:
        safe = description.replace('"', "'").replace("\\", "/")[:200]
        parts.append(f'error_description="{safe}"')
    if scope:
        parts.append(f'scope="{scope}"')
    return {"WWW-Authenticate": "Bearer " + ", ".join(parts)}


def bearer_token(request: HTTPConnection) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def authorize(scope: str | None = None) -> Callable[[Request], Awaitable[None]]:
    """A route dependency requiring `scope` (by default: from the HTTP method) when authentication is on."""

    async def dependency(request: Request) -> None:
        await check_access(request, scope or METHOD_SCOPES.get(request.method, "admin"))

    return dependency


async def check_access(connection: HTTPConnection, needed: str) -> None:
    """`authorize`'s check for any connection, a WebSocket too (the UPS-RS event channel, app/api/ups_events.py,
    which has no HTTP method to take the scope from): DicomWebError 401/403/503 as above when it fails."""
    authenticator: Authenticator | None = getattr(connection.app.state, "authenticator", None)
    if authenticator is None:
        return
    token = bearer_token(connection)
    if token is None:
        raise DicomWebError(401, "authentication required: send Authorization: Bearer <token>", _challenge())
    try:
        principal = await authenticator.authenticate(token)
    except Unavailable as exc:
        log.warning("identity provider unavailable: %s", exc)
        raise DicomWebError(503, "the identity provider cannot be reached; retry later") from exc
    except jwt.InvalidTokenError as exc:
        raise DicomWebError(401, f"invalid token: {exc}", _challenge("invalid_token", str(exc))) from exc
    connection.state.principal = principal.name
    if needed not in principal.scopes:
        raise DicomWebError(
            403, f"the token lacks the {needed!r} scope", _challenge("insufficient_scope", None, needed)
        )
