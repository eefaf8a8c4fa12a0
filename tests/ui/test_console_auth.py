"""The console with authentication on: nothing works without a credential, a credential's scopes decide which
actions the page offers, and signing in works both ways the API accepts: an API key pasted once, and OIDC
(authorization code with PKCE, RFC 7636) against an identity provider served on 127.0.0.1.

Credentials travel in the Authorization header only: the browser holds no cookie for the archive.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from playwright.sync_api import BrowserContext, Page, expect

from app.config import Settings
from tests import dicom_files
from tests.servers import ArchiveServer, running_archive
from tests.ui.conftest import screenshot

TIMEOUT = 30_000
READER = "reader-secret-0123456789"
OPERATOR = "operator-secret-0123456789"
API_KEYS = f"reader:{READER}:read,operator:{OPERATOR}:read+write+delete+admin"
CLIENT_ID = "archive-console"
PAGES = ("#/studies", "#/upload", "#/aes", "#/system", "#/workflow")


@dataclass
class IdentityProvider:
    """An OIDC provider on 127.0.0.1 that signs anyone in at once: discovery, authorize, token, JWKS."""

    issuer: str
    key: rsa.RSAPrivateKey
    exchanges: list[dict[str, str]] = field(default_factory=list)


@pytest.fixture(scope="module")
def provider() -> Iterator[IdentityProvider]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": "k1", "use": "sig", "alg": "RS256"})
    pending: dict[str, dict[str, str]] = {}  # code -> the authorize request's parameters

    class Handler(BaseHTTPRequestHandler):
        def answer(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Access-Control-Allow-Origin", "*")  # the console calls from its own origin
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path == "/.well-known/openid-configuration":
                self.answer(200, {"issuer": idp.issuer, "authorization_endpoint": f"{idp.issuer}/authorize",
                                  "token_endpoint": f"{idp.issuer}/token", "jwks_uri": f"{idp.issuer}/jwks"})
            elif url.path == "/jwks":
                self.answer(200, {"keys": [jwk]})
            elif url.path == "/authorize":
                query = {name: values[0] for name, values in parse_qs(url.query).items()}
                code = secrets.token_urlsafe(16)
                pending[code] = query
                back = f"{query['redirect_uri']}?{urlencode({'code': code, 'state': query['state']})}"
                self.answer(302, {}, {"Location": back})
            else:
                self.answer(404, {})

        def do_POST(self) -> None:
            form = {k: v[0] for k, v in parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode()).items()}
            asked = pending.pop(form.get("code", ""), None)
            idp.exchanges.append(form)
            verifier = form.get("code_verifier", "").encode()
            challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier).digest()).rstrip(b"=").decode()
            if (asked is None or asked["code_challenge_method"] != "S256" or asked["code_challenge"] != challenge
                    or form.get("client_id") != asked["client_id"] or form.get("redirect_uri") != asked["redirect_uri"]):
                self.answer(400, {"error": "invalid_grant"})
                return
            now = int(time.time())
            claims = {"iss": idp.issuer, "sub": "oidc-user", "aud": CLIENT_ID, "iat": now, "exp": now + 300,
                      "scope": asked["scope"]}
            token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"})
            self.answer(200, {"access_token": token, "token_type": "Bearer", "expires_in": 300})

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    idp = IdentityProvider(f"http://127.0.0.1:{server.server_address[1]}", key)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield idp
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def secured(provider: IdentityProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArchiveServer]:
    settings = Settings(  # type: ignore[call-arg]
        data_dir=tmp_path_factory.mktemp("secured-console"), dimse_enabled=False, _env_file=None,
        auth_enabled=True, auth_api_keys=API_KEYS, oidc_issuer=provider.issuer, ui_oidc_client_id=CLIENT_ID,
        ui_oidc_scope="openid read write",
    )
    with running_archive(settings) as server:
        operator = {"Authorization": f"Bearer {OPERATOR}"}
        body = dicom_files.multipart([dicom_files.part10(dicom_files.renewed("CT_small.dcm", PatientID="AUTH-1"))])
        stored = httpx.post(
            f"{server.dicomweb}/studies", content=body, headers={
                **operator, "Content-Type": 'multipart/related; type="application/dicom"; boundary=dicom-boundary'})
        assert stored.status_code == 200, stored.text
        assert httpx.put(f"{server.base_url}/api/aes/FAR", json={"host": "127.0.0.1", "port": 104},
                         headers=operator).status_code == 201
        yield server


def study_uid(server: ArchiveServer) -> str:
    rows = httpx.get(f"{server.dicomweb}/studies", params={"PatientID": "AUTH-1"},
                     headers={"Authorization": f"Bearer {READER}"}).json()
    return str(rows[0]["0020000D"]["Value"][0])


def sign_in_with_key(page: Page, server: ArchiveServer, key: str) -> None:
    page.goto(f"{server.base_url}/ui/")
    page.fill("#api-key", key)
    page.click("#sign-in-key")
    expect(page.locator("#studies tbody tr.study-row").first).to_be_visible(timeout=TIMEOUT)


def test_without_a_credential_no_page_and_no_call_works(page: Page, secured: ArchiveServer) -> None:
    for place in (*PAGES, f"#/study/{study_uid(secured)}"):
        page.goto(f"{secured.base_url}/ui/{place}")
        expect(page.locator("#api-key")).to_be_visible(timeout=TIMEOUT)
        expect(page.locator("#sign-in-oidc")).to_be_visible()
        expect(page.locator("#studies, #series, #aes, #statistics, #dropzone, #worklist")).to_have_count(0)
    screenshot(page, "sign-in")
    for path in ("/ui/whoami", "/dicom-web/studies", "/api/aes", "/api/changes?tail=5"):
        status = page.evaluate("path => fetch(path).then(r => r.status)", path)
        assert status == 401, path
    # A wrong key is refused by the archive and the page asks again, saying why.
    page.fill("#api-key", "not-a-key")
    page.click("#sign-in-key")
    expect(page.locator(".notice-line.error")).to_contain_text("invalid token", timeout=TIMEOUT)
    expect(page.locator("#api-key")).to_be_visible()


def test_a_read_only_key_sees_the_studies_but_no_delete_upload_or_send(
    context: BrowserContext, page: Page, secured: ArchiveServer
) -> None:
    sign_in_with_key(page, secured, READER)
    expect(page.locator("#who")).to_contain_text("reader")
    expect(page.locator("#nav a[data-page=upload]")).to_be_hidden()
    expect(page.locator("#nav a[data-page=aes]")).to_be_hidden()
    page.click("#studies tbody tr.study-row a")
    page.wait_for_function(
        "() => { const i = document.querySelector('#series img.thumbnail'); return i && i.naturalWidth > 0; }",
        timeout=TIMEOUT,
    )
    expect(page.locator("#download")).to_be_visible()
    expect(page.locator("#delete-study")).to_have_count(0)
    expect(page.locator("#send")).to_have_count(0)
    screenshot(page, "study-read-only")
    page.goto(f"{secured.base_url}/ui/#/system")
    expect(page.locator("main")).to_contain_text("Statistics need the admin scope.", timeout=TIMEOUT)
    # Kept in this tab's sessionStorage and sent as a header: the browser holds no cookie for the archive.
    assert context.cookies() == []
    assert READER in page.evaluate("() => sessionStorage.getItem('archive.credential')")


def test_an_operator_key_is_offered_every_action_and_can_sign_out(
    page: Page, secured: ArchiveServer, tmp_path: Path
) -> None:
    sign_in_with_key(page, secured, OPERATOR)
    page.click("#studies tbody tr.study-row a")
    expect(page.locator("#delete-study")).to_be_visible(timeout=TIMEOUT)
    expect(page.locator("#send-to")).to_contain_text("FAR")
    page.goto(f"{secured.base_url}/ui/#/upload")
    upload = tmp_path / "one.dcm"
    upload.write_bytes(dicom_files.part10(dicom_files.renewed("MR_small.dcm", PatientID="AUTH-2")))
    page.set_input_files("#upload-files", [str(upload)])
    expect(page.locator("#upload-summary")).to_have_text("Done: 1 stored, 0 replaced, 0 failed.", timeout=TIMEOUT)
    page.click("#sign-out")
    expect(page.locator("#api-key")).to_be_visible(timeout=TIMEOUT)
    assert page.evaluate("() => sessionStorage.getItem('archive.credential')") is None


def test_signing_in_with_oidc_uses_the_authorization_code_with_pkce(
    page: Page, secured: ArchiveServer, provider: IdentityProvider
) -> None:
    page.goto(f"{secured.base_url}/ui/#/system")
    page.click("#sign-in-oidc")
    expect(page.locator("#probes")).to_contain_text("oidc-user", timeout=TIMEOUT)
    expect(page.locator("#probes")).to_contain_text("read, write")
    # Back where it started, without the code in the address.
    assert page.url == f"{secured.base_url}/ui/#/system"
    exchange = provider.exchanges[-1]
    assert exchange["grant_type"] == "authorization_code" and exchange["client_id"] == CLIENT_ID
    assert len(exchange["code_verifier"]) >= 43  # RFC 7636 4.1
    # Its scopes (read, write) offer upload but no delete.
    page.goto(f"{secured.base_url}/ui/#/study/{study_uid(secured)}")
    expect(page.locator("#download")).to_be_visible(timeout=TIMEOUT)
    expect(page.locator("#delete-study")).to_have_count(0)
    expect(page.locator("#nav a[data-page=upload]")).to_be_visible()


def test_the_api_documentation_opened_from_the_console_reads_and_tries_the_api_with_its_credential(
    context: BrowserContext, page: Page, secured: ArchiveServer
) -> None:
    # No credential in this tab: the page loads, says how to sign in, and shows nothing of the API.
    page.goto(f"{secured.base_url}/docs")
    expect(page.locator("#docs-sign-in")).to_contain_text("needs a credential with the read scope", timeout=TIMEOUT)
    expect(page.locator(".swagger-ui .opblock")).to_have_count(0)
    assert page.evaluate("() => fetch('/openapi.json').then(r => r.status)") == 401
    sign_in_with_key(page, secured, READER)
    with context.expect_page() as opened:
        page.click("#api-docs")
    docs = opened.value
    expect(docs.locator(".swagger-ui .info .title")).to_contain_text("DICOMweb archive", timeout=TIMEOUT)
    # "Try it out" on the study search goes with the console's credential too.
    summary = docs.locator(".opblock-summary", has_text="Search for studies (QIDO-RS)")
    summary.click()
    operation = docs.locator(".opblock.is-open")
    operation.locator(".try-out__btn").click()
    operation.locator(".execute").click()
    expect(operation.locator(".live-responses-table td.response-col_status:not(.col_header)")).to_contain_text("200", timeout=TIMEOUT)
    expect(operation.locator(".live-responses-table")).to_contain_text("AUTH-1")
    screenshot(docs, "api-docs-signed-in")
    docs.goto(f"{secured.base_url}/redoc")  # the same tab, so the same credential
    expect(docs.locator("h1")).to_contain_text("DICOMweb archive", timeout=TIMEOUT)
    expect(docs.locator("body")).to_contain_text("Search for studies (QIDO-RS)")
