"""Settings for the archive, read from the environment and `.env` (pydantic-settings).

One class, created by the caller (the CLI or a test), never at import time, so a test can point the
application at its own data directory and metadata backend. Every field is listed in `.env.template`; a test
keeps the two in step.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, PositiveFloat, PositiveInt, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.core.ingest.outcomes import DuplicatePolicy
from app.core.retrieve.turns import RenderLimits

# A comma-separated environment value ("A,B,C"), not JSON: pydantic-settings would otherwise decode list fields
# as JSON. The validators below split it.
CommaList = Annotated[list[str], NoDecode]
# A TCP port to listen on: 0 (any free port) would leave clients not knowing where to connect.
Port = Annotated[int, Field(ge=1, le=65535)]


class Settings(BaseSettings):
    """Everything an operator can set. Names map to environment variables by upper-casing."""

    # env_ignore_empty: `NAME=` (as .env.template writes optional settings) means "the default", not "" (which
    # would make an optional path Path(".") and an optional number a parse error).
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", env_ignore_empty=True
    )

    # Where things live
    data_dir: Path = Field(Path("./data"), description="Root for the SQLite database and, by default, files.")
    storage_root: Path | None = Field(
        None, description="Root of the DICOM file tree; default DATA_DIR/storage."
    )
    viewer_dir: Path | None = Field(
        None,
        description="The OHIF Viewer served at /viewer (python -m app viewer install); default "
        "PREFIX/share/dicomweb-archive/viewer beside the installed archive (software, not data: an upgraded "
        "image or environment brings its own).",
    )
    mongo_url: str | None = Field(
        None, description="MongoDB URL; when unset the embedded SQLite store is used."
    )
    mongo_database: str = Field("dicomweb", description="MongoDB database name.")

    # HTTP
    http_host: str = "127.0.0.1"
    http_port: Port = 8080
    public_base_url: str | None = Field(
        None, description="External URL of the service root, used to build RetrieveURL and BulkDataURI."
    )

    # DIMSE
    dimse_enabled: bool = True
    dimse_host: str = "127.0.0.1"
    dimse_port: Port = 11112
    ae_title: str = "DICOMWEB"
    # Presentation contexts (PS3.8 9.3.2.2; policy in dimse_bridge/policy.py). SOP classes: `AllStorage` (every
    # storage SOP class pynetdicom knows), `All` (also private and unknown storage-like SOP classes), or a comma
    # list of SOP Class UIDs or keywords (CTImageStorage,1.2.840.10008.5.1.4.1.1.4). Verification is always on.
    dimse_sop_class_policy: CommaList = Field(default_factory=lambda: ["AllStorage"])
    # Transfer syntaxes: `All`, `UncompressedOnly`, or a comma list of UIDs or keywords (ExplicitVRLittleEndian).
    dimse_transfer_syntax_policy: CommaList = Field(default_factory=lambda: ["All"])
    # Largest P-DATA PDU we accept (PS3.8 9.3.1, A-ASSOCIATE-RQ/AC Maximum Length item); 0 = no limit.
    dimse_max_pdu: int = Field(262144, ge=0)
    # Seconds. The ARTIM timer (PS3.8 9.1.5): a connection that has not delivered its whole A-ASSOCIATE-RQ (TLS
    # handshake included) this long after it was accepted is closed; pynetdicom drives it from the ACSE timeout.
    dimse_acse_timeout: PositiveFloat = 5.0
    dimse_dimse_timeout: PositiveFloat = 60.0  # also bounds one store/find step run on the app loop
    dimse_network_timeout: PositiveFloat = 60.0  # idle association is released after this
    dimse_connection_timeout: PositiveFloat | None = None  # TCP connect of our outgoing associations
    # Associations at once (from their A-ASSOCIATE-RQ to their end), in all and from one peer IP address; one
    # more is rejected-transient, local-limit-exceeded (PS3.8 9.3.4).
    dimse_max_associations: PositiveInt = 16
    dimse_max_associations_per_peer: PositiveInt = 8
    # Calling AE titles allowed to associate (PS3.8 9.3.4 A-ASSOCIATE-RJ reason 3); empty = any.
    dimse_allowed_calling_aets: CommaList = Field(default_factory=list)
    # Reject an association whose Called AE Title is not AE_TITLE (A-ASSOCIATE-RJ reason 7).
    dimse_require_called_aet: bool = False
    # `user:password,user2:password2` for User Identity Negotiation (PS3.7 D.3.3.7); empty = not required.
    dimse_users: Annotated[dict[str, SecretStr], NoDecode] = Field(default_factory=dict)
    # TLS (PS3.15 B.1): certificate and key enable it; a CA file also requires and verifies client certificates.
    dimse_tls_cert: Path | None = None
    dimse_tls_key: Path | None = None
    dimse_tls_ca: Path | None = None
    # Remote AEs (app/core/aes.py) upserted into the AE registry at start-up: comma list of `AET@host:port`,
    # each optionally followed by `+tls` (e.g. `PACS@10.0.0.5:104,VIEWER@viewer.local:11112+tls`). More can be
    # added at run time through /api/aes.
    dimse_remote_aes: CommaList = Field(default_factory=list)
    # Seconds to wait for an SCU association of ours (C-ECHO / C-STORE from the REST API, Storage Commitment
    # reports) to be accepted and for each response.
    dimse_scu_timeout: PositiveFloat = 30.0

    # Behaviour and limits
    duplicate_policy: DuplicatePolicy = DuplicatePolicy.REPLACE
    max_request_bytes: int = Field(4 * 1024**3, description="Largest STOW-RS body accepted (413 above it).")
    max_request_parts: PositiveInt = Field(
        10_000,
        description="Most parts in one STOW-RS body, and most data sets its DICOM JSON metadata may describe (413 "
        "above it): each part that looks like DICOM costs a staged file and a header parse whatever its size.",
    )
    storage_fsync: bool = Field(True, description="fsync each file before it is renamed into place.")
    qido_default_limit: int = 1000
    qido_max_limit: int = 10000
    # Rendered images (WADO-RS rendered/thumbnail, WADO-URI; app/core/retrieve/render.py). A side of the output may be
    # as long as the frame's own side or this many pixels, whichever is more; a viewport asking for more is 400.
    max_render_side: PositiveInt = RenderLimits.max_side
    # Renders made at once (each holds a decoded frame and its output in memory); the others wait their turn
    # up to RENDER_WAIT_SECONDS, then get 503 with Retry-After.
    render_concurrency: PositiveInt = RenderLimits.concurrency
    render_wait_seconds: PositiveFloat = RenderLimits.wait_seconds

    # Study lifecycle (app/core/lifecycle/completion.py, app/core/ingest/rules.py, app/core/lifecycle/webhooks.py, app/fhir)
    # A study is complete when no instance of it arrived for this many seconds (the seeds' studyTimeout).
    study_quiet_seconds: PositiveFloat = 30.0
    # YAML or JSON file of ingest rules (reject / coerce / de-identify); a bad file fails start-up.
    ingest_rules_file: Path | None = None
    # Dotted path `package.module:function` (or `package.module.function`) of an async ingest hook.
    ingest_hook: str | None = None
    # UID root under which de-identification makes its replacement UIDs (2.25 = UUID-derived, PS3.5 B.2).
    deidentify_uid_root: str = "2.25"
    # URLs that receive each change (instance created/updated/deleted, study completed) as a JSON POST.
    webhook_urls: CommaList = Field(default_factory=list)
    # First delay before a failed FHIR or webhook delivery is retried; doubles each time, up to 300 s.
    outbox_retry_seconds: PositiveFloat = 5.0
    # Several archive processes over one MongoDB (README "Scaling out"): how long a process's claim on shared
    # work lasts (an outbox delivery, a study completion, a webhook URL, an instance being stored or deleted)
    # before another may take it over, should the process die; longer than any one delivery or store takes.
    lease_seconds: PositiveFloat = 60.0

    # FHIR
    fhir_enabled: bool = False
    fhir_base_url: str | None = None

    startup_sweep: bool = Field(
        True, description="Remove files without metadata and metadata without files once after start-up."
    )
    ingest_workers: int = Field(
        1,
        ge=0,
        description="Processes that parse headers for ingest (0: in threads of the server process; rules or a "
        "hook imply 0).",
    )

    log_level: str = "INFO"

    # Operations (app/core/logs.py, app/core/metrics.py, app/core/audit.py)
    # `text` for a terminal, `json` for log shippers: one object per line with the request/association id.
    log_format: Literal["text", "json"] = "text"
    # Audit trail, one JSON line per store/retrieve/query/delete/admin action: `-` = stdout, a path = that
    # file (appended), empty = off.
    audit_log: str | None = None
    # `json` (one flat object per line) or `atna` (DICOM Audit Messages, PS3.15 A.5.1 XML, one per line).
    audit_format: Literal["json", "atna"] = "json"

    # Security (app/api/auth.py, app/api/proxies.py)
    # Require a bearer token (OIDC JWT or API key) on every HTTP route but /health and /ready.
    auth_enabled: bool = False
    # OIDC issuer (its /.well-known/openid-configuration gives the JWKS) and/or the JWKS URL itself.
    oidc_issuer: str | None = None
    oidc_jwks_url: str | None = None
    # Expected `aud` of the JWTs; empty = not checked.
    oidc_audience: str | None = None
    # Static API keys `name:secret:scope+scope,...` with scopes read, write, delete, admin.
    auth_api_keys: SecretStr = SecretStr("")
    # The console's OIDC sign-in (app/ui/console.py): its public client id at OIDC_ISSUER (authorization code with
    # PKCE, redirect URI {archive}/ui/) and the scopes it asks for; no client id = API keys only.
    ui_oidc_client_id: str | None = None
    ui_oidc_scope: str = "openid read write delete admin"
    # /openapi.json, /docs and /redoc: `auth` (the document behind the API's own authentication, scope read; the
    # pages, which hold no data, read it with the console's credential), `public`, or `off`.
    api_docs: Literal["auth", "public", "off"] = "auth"
    # Origins allowed by CORS (e.g. the OHIF viewer's); `*` = any; empty = no CORS headers.
    cors_origins: CommaList = Field(default_factory=list)
    # HTTPS served by uvicorn itself (PEM files); without them put a TLS-terminating proxy in front.
    http_tls_cert: Path | None = None
    http_tls_key: Path | None = None
    # Peers whose X-Forwarded-For/-Proto/-Host/-Prefix are believed (addresses or networks; `*` = any).
    trusted_proxies: CommaList = Field(default_factory=lambda: ["127.0.0.1", "::1"])

    # Object storage (app/storage/s3.py): `filesystem` (STORAGE_ROOT) or `s3` (the S3_* settings).
    storage_backend: Literal["filesystem", "s3"] = "filesystem"
    s3_bucket: str | None = None
    s3_prefix: str = ""  # key prefix inside the bucket, e.g. `archive/`
    s3_endpoint_url: str | None = None  # MinIO / other S3-compatible endpoint; empty = AWS
    s3_region: str | None = None
    s3_access_key_id: str | None = None  # empty = the AWS default credential chain
    s3_secret_access_key: SecretStr | None = None

    @field_validator(
        "dimse_sop_class_policy",
        "dimse_transfer_syntax_policy",
        "dimse_allowed_calling_aets",
        "dimse_remote_aes",
        "webhook_urls",
        "cors_origins",
        "trusted_proxies",
        mode="before",
    )
    @classmethod
    def _split_comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("dimse_allowed_calling_aets")
    @classmethod
    def _check_ae_titles(cls, value: list[str]) -> list[str]:
        for title in value:
            # PS3.5 6.2: AE is at most 16 characters, no backslash or control characters.
            if len(title) > 16 or "\\" in title or not title.isprintable():
                raise ValueError(f"not an AE title: {title!r}")
        return value

    @field_validator("dimse_remote_aes")
    @classmethod
    def _check_remote_aes(cls, value: list[str]) -> list[str]:
        from app.core.aes import InvalidAE, parse_remote_aes

        try:
            parse_remote_aes(value)
        except InvalidAE as exc:
            raise ValueError(f"DIMSE_REMOTE_AES: {exc}") from exc
        return value

    @field_validator("dimse_users", mode="before")
    @classmethod
    def _parse_users(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        users: dict[str, str] = {}
        for pair in filter(None, (item.strip() for item in value.split(","))):
            name, sep, password = pair.partition(":")
            if not sep or not name:
                raise ValueError("DIMSE_USERS takes user:password pairs separated by commas")
            users[name] = password
        return users

    @model_validator(mode="after")
    def _check_operations(self) -> Settings:
        if (self.http_tls_cert is None) != (self.http_tls_key is None):
            raise ValueError("HTTP_TLS_CERT and HTTP_TLS_KEY go together")
        if self.storage_backend == "s3" and not self.s3_bucket:
            raise ValueError("STORAGE_BACKEND=s3 needs S3_BUCKET")
        if self.auth_enabled and not (
            self.oidc_issuer or self.oidc_jwks_url or self.auth_api_keys.get_secret_value()
        ):
            raise ValueError("AUTH_ENABLED needs OIDC_ISSUER, OIDC_JWKS_URL or AUTH_API_KEYS")
        return self

    @model_validator(mode="after")
    def _check_tls(self) -> Settings:
        if (self.dimse_tls_cert is None) != (self.dimse_tls_key is None):
            raise ValueError("DIMSE_TLS_CERT and DIMSE_TLS_KEY go together")
        if self.dimse_tls_ca is not None and self.dimse_tls_cert is None:
            raise ValueError("DIMSE_TLS_CA needs DIMSE_TLS_CERT and DIMSE_TLS_KEY")
        if self.fhir_enabled and not self.fhir_base_url:
            raise ValueError("FHIR_ENABLED needs FHIR_BASE_URL")
        return self

    @property
    def storage_path(self) -> Path:
        return self.storage_root if self.storage_root is not None else self.data_dir / "storage"

    @property
    def viewer_path(self) -> Path:
        if self.viewer_dir is not None:
            return self.viewer_dir
        return Path(sys.prefix) / "share" / "dicomweb-archive" / "viewer"

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "index.sqlite3"
