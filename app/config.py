"""Settings for the archive, read from the environment and `.env` (pydantic-settings).

One class, created by the caller (the CLI or a test), never at import time, so a test can point the
application at its own data directory and metadata backend. Every field is listed in `.env.template`; a test
keeps the two in step.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class DuplicatePolicy(StrEnum):
    """What a store of an already-held SOP Instance UID does.

    `replace` keeps one copy, the newest, and answers success with warning 0xB000-class semantics in the
    response (PS3.18 Table 10.5.3-2 has no dedicated code, so the instance is listed with a WarningReason);
    `reject` answers failure 0x0111 (Duplicate SOP Instance, PS3.7 C.4.1.1.1 / PS3.18 Table 10.5.3-1);
    `keep` answers success and keeps the copy already held.
    """

    REPLACE = "replace"
    REJECT = "reject"
    KEEP = "keep"


class Settings(BaseSettings):
    """Everything an operator can set. Names map to environment variables by upper-casing."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # Where things live
    data_dir: Path = Field(Path("./data"), description="Root for the SQLite database and, by default, files.")
    storage_root: Path | None = Field(
        None, description="Root of the DICOM file tree; default DATA_DIR/storage."
    )
    mongo_url: str | None = Field(
        None, description="MongoDB URL; when unset the embedded SQLite store is used."
    )
    mongo_database: str = Field("dicomweb", description="MongoDB database name.")

    # HTTP
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    public_base_url: str | None = Field(
        None, description="External URL of the service root, used to build RetrieveURL and BulkDataURI."
    )

    # DIMSE
    dimse_enabled: bool = True
    dimse_host: str = "127.0.0.1"
    dimse_port: int = 11112
    ae_title: str = "DICOMWEB"

    # Behaviour and limits
    duplicate_policy: DuplicatePolicy = DuplicatePolicy.REPLACE
    max_request_bytes: int = Field(4 * 1024**3, description="Largest STOW-RS body accepted (413 above it).")
    storage_fsync: bool = Field(True, description="fsync each file before it is renamed into place.")
    qido_default_limit: int = 1000
    qido_max_limit: int = 10000

    # FHIR
    fhir_enabled: bool = False
    fhir_base_url: str | None = None

    log_level: str = "INFO"

    @property
    def storage_path(self) -> Path:
        return self.storage_root if self.storage_root is not None else self.data_dir / "storage"

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "index.sqlite3"
