"""Authentication through every HTTP door: OIDC JWTs checked against a JWKS served on 127.0.0.1, static API
keys, per-route scopes, RFC 6750 answers; and nothing asked when authentication is off."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.routing import APIRoute

from app.config import Settings
from app.main import create_app
from tests import dicom_files
from tests.servers import ArchiveServer, running_archive

AUDIENCE = "dicomweb"
KID = "test-key-1"
API_KEYS = "viewer:viewer-secret:read,robot:robot-secret:read+write,ops:ops-secret:read+write+delete+admin"
UNKNOWN_UID = "1.2.826.0.1.3680043.99999.1"
# Probes: open to orchestrators by design. The documentation pages: shells that hold no data and read
# /openapi.json, which stays behind the read scope, with the browser's credential (test below).
OPEN_PATHS = frozenset({"/health", "/ready", "/docs", "/redoc"})
SCOPE_OF_METHOD = {"GET": "read", "POST": "write", "PUT": "write", "DELETE": "delete"}


# --------------------------------------------------------------------------- a tiny OIDC provider


@dataclass
class Provider:
    issuer: str
    key: rsa.RSAPrivateKey

    def token(self, scopes: str = "", *, key: rsa.RSAPrivateKey | None = None, **claims: Any) -> str:
        now = int(time.time())
        body: dict[str, Any] = {"iss": self.issuer, "aud": AUDIENCE, "sub": "alice", "iat": now,
                                "exp": now + 300, "scope": scopes}
        body.update(claims)
        return jwt.encode(body, key or self.key, algorithm="RS256", headers={"kid": KID})


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    """An OIDC discovery document and JWKS served over HTTP on 127.0.0.1, as a real identity provider."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": KID, "use": "sig", "alg": "RS256"})
    documents: dict[str, bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = documents.get(self.path)
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body or b"{}")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    issuer = f"http://127.0.0.1:{server.server_address[1]}/realms/test"
    documents["/realms/test/.well-known/openid-configuration"] = json.dumps(
        {"issuer": issuer, "jwks_uri": f"{issuer}/jwks"}).encode()
    documents["/realms/test/jwks"] = json.dumps({"keys": [jwk]}).encode()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Provider(issuer, key)
    finally:
        server.shutdown()
        server.server_close()


def auth_settings(directory: Path, provider: Provider, **overrides: Any) -> Settings:
    return Settings(  # type: ignore[call-arg]
        data_dir=directory, dimse_enabled=False, _env_file=None, auth_enabled=True, oidc_issuer=provider.issuer,
        oidc_audience=AUDIENCE, auth_api_keys=API_KEYS, **overrides,
    )


@pytest.fixture(scope="module")
def secured(provider: Provider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArchiveServer]:
    audit = tmp_path_factory.mktemp("audit") / "audit.jsonl"
    with running_archive(auth_settings(tmp_path_factory.mktemp("secured"), provider, audit_log=str(audit))) as s:
        yield s


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --------------------------------------------------------------------------- every door


def doors(settings: Settings) -> list[tuple[str, str, str]]:
    """(method, concrete path, scope needed) for every route of the real application but the probes, UIDs
    filled in."""
    app = create_app(settings)
    found: list[tuple[str, str, str]] = []
    for route in _api_routes(app.router.routes):
        path = route.path
        for name in route.param_convertors:
            path = path.replace("{" + name + ":path}", "00100010").replace("{" + name + "}", _value_for(name))
        if path in OPEN_PATHS:
            continue
        for method in sorted(route.methods - {"HEAD"}):
            found.append((method, path, _scope_for(method, path)))
    return sorted(set(found))


def _api_routes(routes: list[Any], prefix: str = "") -> Iterator[APIRoute]:
    """The app's APIRoutes with their full paths, whatever way this FastAPI version keeps included routers."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        inner = getattr(route, "original_router", None)
        if inner is not None:
            context = route.include_context
            for child in _api_routes(inner.routes):
                copy = APIRoute(context.prefix + child.path, child.endpoint, methods=list(child.methods))
                yield copy


def _value_for(name: str) -> str:
    return {"frames": "1", "tags": "00100010"}.get(name, UNKNOWN_UID)


def _scope_for(method: str, path: str) -> str:
    """The operations APIs under /api (admin, AE registry, FHIR, webhooks) and /metrics need `admin`; UPS
    subscriptions `write`, whatever their method (a subscriber changes only its own interest); the change feed
    and the other DICOMweb doors the scope of their method."""
    if path == "/metrics" or (path.startswith("/api/") and not path.startswith("/api/changes")):
        return "admin"
    if "/subscribers/" in path:
        return "write"
    return SCOPE_OF_METHOD[method]


def call(server: ArchiveServer, method: str, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.request(method, server.base_url + path, headers=headers or {}, timeout=60)


@pytest.fixture(scope="module")
def every_door(secured: ArchiveServer) -> list[tuple[str, str, str]]:
    found = doors(secured.settings)
    paths = {path for _, path, _ in found}
    # The list is the real application's: the doors the issue names are all in it.
    assert {"/dicom-web/studies", "/wado", "/api/admin/statistics", "/metrics", "/api/changes"} <= paths
    assert {"GET", "POST", "DELETE"} <= {method for method, _, _ in found}
    return found


def test_every_door_refuses_a_request_without_a_token_with_401(
    secured: ArchiveServer, every_door: list[tuple[str, str, str]]
) -> None:
    for method, path, _ in every_door:
        response = call(secured, method, path)
        assert response.status_code == 401, (method, path, response.status_code)
        assert response.headers["www-authenticate"] == 'Bearer realm="dicomweb-archive"', (method, path)


def test_every_door_refuses_a_token_without_its_scope_with_403(
    secured: ArchiveServer, provider: Provider, every_door: list[tuple[str, str, str]]
) -> None:
    for method, path, scope in every_door:
        others = " ".join(s for s in ("read", "write", "delete", "admin") if s != scope)
        response = call(secured, method, path, bearer(provider.token(others)))
        assert response.status_code == 403, (method, path, response.status_code)
        challenge = response.headers["www-authenticate"]
        assert 'error="insufficient_scope"' in challenge and f'scope="{scope}"' in challenge, (method, path)


def test_every_door_lets_a_token_with_its_scope_through(
    secured: ArchiveServer, provider: Provider, every_door: list[tuple[str, str, str]]
) -> None:
    for method, path, scope in every_door:
        response = call(secured, method, path, bearer(provider.token(scope)))
        # Past authorisation the door answers as usual: unknown UIDs 404, an empty STOW body 400/415...
        assert response.status_code not in (401, 403), (method, path, response.status_code, response.text)
        assert response.status_code < 500, (method, path, response.status_code, response.text)


def test_probes_stay_open_for_orchestrators(secured: ArchiveServer) -> None:
    assert call(secured, "GET", "/health").status_code == 200
    assert call(secured, "GET", "/ready").status_code == 200


def test_with_authentication_off_no_door_asks_for_a_token(archive_server: ArchiveServer) -> None:
    for method, path, _ in doors(archive_server.settings):
        response = call(archive_server, method, path)
        assert response.status_code not in (401, 403), (method, path)
        assert "www-authenticate" not in response.headers


# --------------------------------------------------------------------------- tokens


@pytest.mark.parametrize(
    "change",
    [
        {"exp": int(time.time()) - 3600},  # expired
        {"aud": "another-service"},
        {"iss": "https://impostor.example"},
        {"signed_by_other_key": True},
        {"garbage": True},
    ],
    ids=["expired", "wrong-audience", "wrong-issuer", "wrong-signature", "not-a-token"],
)
def test_a_bad_token_is_401_invalid_token(secured: ArchiveServer, provider: Provider, change: dict[str, Any]) -> None:
    if change.pop("garbage", False):
        token = "not.a.jwt"
    elif change.pop("signed_by_other_key", False):
        token = provider.token("read", key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    else:
        token = provider.token("read", **change)
    response = call(secured, "GET", "/dicom-web/studies", bearer(token))
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert response.json()["00000902"]["Value"][0].startswith("invalid token")


def test_scopes_are_also_read_from_a_scp_list(secured: ArchiveServer, provider: Provider) -> None:
    token = provider.token("", scp=["read", "write"])
    assert call(secured, "GET", "/dicom-web/studies", bearer(token)).status_code == 200


def test_api_keys_carry_their_own_scopes(secured: ArchiveServer) -> None:
    ds = dicom_files.renewed("CT_small.dcm")
    body = dicom_files.multipart([dicom_files.part10(ds)])
    content_type = {"Content-Type": 'multipart/related; type="application/dicom"; boundary=dicom-boundary'}

    def post(secret: str) -> int:
        return httpx.post(f"{secured.dicomweb}/studies", content=body,
                          headers={**content_type, **bearer(secret)}).status_code

    assert post("viewer-secret") == 403
    assert post("robot-secret") == 200
    assert call(secured, "GET", f"/dicom-web/studies/{ds.StudyInstanceUID}/series",
                bearer("viewer-secret")).status_code == 200
    assert call(secured, "DELETE", f"/dicom-web/studies/{ds.StudyInstanceUID}", bearer("robot-secret")).status_code == 403
    assert call(secured, "DELETE", f"/dicom-web/studies/{ds.StudyInstanceUID}", bearer("ops-secret")).status_code == 204
    assert call(secured, "GET", "/dicom-web/studies", bearer("no-such-key")).status_code == 401


def test_the_audit_trail_names_who_acted(secured: ArchiveServer, provider: Provider) -> None:
    study = "1.2.826.0.1.3680043.77.1"
    call(secured, "GET", f"/dicom-web/studies/{study}/series", bearer(provider.token("read", sub="bob")))
    call(secured, "GET", f"/dicom-web/studies/{study}/series", bearer("viewer-secret"))
    call(secured, "GET", f"/dicom-web/studies/{study}/series")
    assert secured.settings.audit_log is not None
    deadline = time.monotonic() + 10
    mine: list[dict[str, Any]] = []
    while time.monotonic() < deadline and len(mine) < 3:
        lines = Path(secured.settings.audit_log).read_text().splitlines()
        mine = [r for r in map(json.loads, lines) if r.get("study") == study]
        time.sleep(0.05)
    assert [(r["user"], r["outcome"]) for r in mine] == [("bob", 200), ("viewer", 200), ("anonymous", 401)]


def test_an_unreachable_identity_provider_is_503_not_a_bad_token(tmp_path: Path, provider: Provider) -> None:
    settings = auth_settings(tmp_path, provider).model_copy(
        update={"oidc_issuer": None, "oidc_jwks_url": "http://127.0.0.1:9/jwks"})
    with running_archive(settings) as server:
        response = call(server, "GET", "/dicom-web/studies", bearer(provider.token("read")))
        assert response.status_code == 503
        assert call(server, "GET", "/dicom-web/studies", bearer("viewer-secret")).status_code == 200


def test_authentication_on_needs_a_way_to_check_tokens() -> None:
    with pytest.raises(ValueError, match="AUTH_ENABLED needs"):
        Settings(auth_enabled=True, _env_file=None)  # type: ignore[call-arg]


def test_the_api_documentation_needs_a_read_token_when_authentication_is_on(secured: ArchiveServer) -> None:
    assert call(secured, "GET", "/openapi.json").status_code == 401
    assert call(secured, "GET", "/openapi.json", bearer("viewer-secret")).status_code == 200
    # The pages are shells that hold none of it: open, so a browser can load them and ask with a credential.
    for path in ("/docs", "/redoc"):
        page = call(secured, "GET", path)
        assert page.status_code == 200 and "/openapi.json" in page.text
        assert "/dicom-web/studies" not in page.text and "QIDO-RS" not in page.text


def test_api_docs_public_opens_the_documentation_and_off_removes_it(tmp_path: Path, provider: Provider) -> None:
    settings = auth_settings(tmp_path / "public", provider).model_copy(update={"api_docs": "public"})
    with running_archive(settings) as server:
        assert call(server, "GET", "/openapi.json").json()["info"]["title"] == "DICOMweb archive"
        assert call(server, "GET", "/docs").status_code == 200
        assert call(server, "GET", "/dicom-web/studies").status_code == 401  # the API itself stays closed
    settings = auth_settings(tmp_path / "off", provider).model_copy(update={"api_docs": "off"})
    with running_archive(settings) as server:
        for path in ("/openapi.json", "/docs", "/redoc"):
            assert call(server, "GET", path, bearer("viewer-secret")).status_code == 404


def test_a_jwks_url_without_an_issuer_is_warned_about_at_start_up(
    tmp_path: Path, provider: Provider, caplog: pytest.LogCaptureFixture
) -> None:
    settings = auth_settings(tmp_path, provider).model_copy(
        update={"oidc_issuer": None, "oidc_jwks_url": f"{provider.issuer}/jwks"})
    with caplog.at_level("WARNING"):
        create_app(settings)
    assert any("OIDC_JWKS_URL is set without OIDC_ISSUER" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING"):
        create_app(auth_settings(tmp_path, provider))
    assert not any("OIDC_ISSUER" in r.getMessage() for r in caplog.records)
