"""FHIR ImagingStudy sync: on study completion (and on delete) the study's ImagingStudy, its Patient and our
Endpoint are put on the FHIR server configured by FHIR_BASE_URL.

* Persistent outbox: the event only records "study X needs syncing" in the repository (`outbox_put`, target
  "fhir", key = the Study Instance UID); a worker does the HTTP work. A FHIR server that is down loses nothing:
  the entry stays, retried with exponential backoff (OUTBOX_RETRY_SECONDS doubling up to 300 s), and the sync
  resumes when the server is back, across restarts of the archive too. A study changed again while being synced
  gets a newer entry version, which the worker does not remove (`outbox_done` compares versions).
* Once among replicas: several archive processes may share the outbox; each entry is claimed before it is
  synced (`outbox_claim`, atomic, with a lease of LEASE_SECONDS), so one of them does it, and one killed
  mid-sync hands the entry on when its claim expires.
* Idempotent: ImagingStudy by conditional update (`PUT ImagingStudy?identifier=urn:dicom:uid|urn:oid:<uid>`),
  so any number of re-syncs leave one resource; the Endpoint likewise by its address; the Patient is matched by
  identifier and created only if absent (`If-None-Exist`), so records the EHR owns are never overwritten.
* Each resource is built and validated by fhir.resources (app/fhir/builder.py) from the stored headers at sync
  time, so a re-sent instance or a deleted series shows in the next sync. A study no longer held is removed with
  a conditional delete.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any, Protocol

import httpx

from app.config import Settings
from app.core.lifecycle.background import run_rounds, start_task, stop_tasks
from app.core.lifecycle.events import Event, EventBus, InstanceDeleted, StudyCompleted
from app.core.ports import InstanceIndex, Outbox
from app.fhir.builder import (
    RFC3986,
    StudySummary,
    build_endpoint,
    build_imaging_study,
    build_patient,
    patient_identifier,
    study_identifier,
)

log = logging.getLogger(__name__)

TARGET = "fhir"
BATCH = 20
POLL_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 300.0
FHIR_JSON = "application/fhir+json"
HTTP_TIMEOUT = httpx.Timeout(30.0, connect=5.0)


class FhirError(RuntimeError):
    """The FHIR server refused or did not answer; the outbox entry is retried later."""


def dicomweb_address(settings: Settings) -> str:
    """The DICOMweb base URL the Endpoint resource names."""
    root = settings.public_base_url or f"http://{settings.http_host}:{settings.http_port}"
    return root.rstrip("/") + "/dicom-web"


def backoff(first: float, attempts: int) -> float:
    return float(min(first * 2 ** min(attempts, 30), MAX_BACKOFF_SECONDS))


class FhirStore(InstanceIndex, Outbox, Protocol):
    """The roles the sync uses: the studies' stored DICOM JSON, and the outbox of resources owed to the FHIR server."""


class FhirSync:
    def __init__(self, repository: FhirStore, settings: Settings) -> None:
        if not settings.fhir_base_url:
            raise ValueError("FHIR sync needs FHIR_BASE_URL")
        self.repository = repository
        self.base_url = settings.fhir_base_url.rstrip("/")
        self.ae_title = settings.ae_title
        self.address = dicomweb_address(settings)
        self.retry_seconds = settings.outbox_retry_seconds
        self.lease_seconds = settings.lease_seconds
        self._client: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._endpoint_id: str | None = None
        self.synced = 0
        self.last_synced_at: float | None = None
        self.last_error: str | None = None

    # -- events -> outbox -----------------------------------------------------------------------------------
    def attach(self, bus: EventBus) -> None:
        bus.subscribe(self.on_event, StudyCompleted, InstanceDeleted)

    async def on_event(self, event: Event) -> None:
        await self.repository.outbox_put(
            TARGET, event.study_instance_uid, json.dumps({"study": event.study_instance_uid, "cause": event.kind})
        )
        self._wake.set()

    # -- worker ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._client = httpx.AsyncClient(timeout=HTTP_TIMEOUT, headers={"Accept": FHIR_JSON})
            work = run_rounds(self.run_once, what="FHIR sync round", interval=POLL_SECONDS, wake=self._wake)
            self._task = start_task(work, "fhir-sync")

    async def stop(self) -> None:
        await stop_tasks(self._task)
        self._task = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def run_once(self) -> int:
        """Sync every due outbox entry this process can claim; return how many were attempted."""
        due = await self.repository.outbox_due(TARGET, time.time(), BATCH)
        attempted = 0
        for entry in due:
            now = time.time()
            if not await self.repository.outbox_claim(TARGET, entry.key, entry.version, now, now + self.lease_seconds):
                continue  # another process has it, or it changed meanwhile
            attempted += 1
            try:
                await self.sync_study(entry.key)
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                delay = backoff(self.retry_seconds, entry.attempts)
                log.warning("FHIR sync of study %s failed (attempt %d, next in %.0f s): %s",
                            entry.key, entry.attempts + 1, delay, self.last_error)
                await self.repository.outbox_retry(TARGET, entry.key, entry.version, time.time() + delay,
                                                   self.last_error)
                continue
            await self.repository.outbox_done(TARGET, entry.key, entry.version)
            self.synced += 1
            self.last_synced_at = time.time()
        return attempted

    async def status(self) -> dict[str, Any]:
        outbox = await self.repository.outbox_status(TARGET)
        return {
            "enabled": True,
            "base_url": self.base_url,
            "pending": outbox.pending,
            "failing": outbox.failing,
            "oldest_pending_at": outbox.oldest_created_at,
            "last_error": (outbox.last_error or self.last_error) if outbox.pending else None,
            "synced": self.synced,
            "last_synced_at": self.last_synced_at,
        }

    # -- one study ------------------------------------------------------------------------------------------
    async def sync_study(self, study_uid: str) -> None:
        system, value = study_identifier(study_uid)
        datasets = await self.repository.instance_datasets(study_uid)
        if not datasets:
            await self._request("DELETE", "ImagingStudy", params={"identifier": f"{system}|{value}"})
            return
        summary = StudySummary.from_datasets(study_uid, datasets)
        endpoint_id = await self._endpoint()
        patient_id = await self._patient(summary)
        study = build_imaging_study(summary, f"Patient/{patient_id}", f"Endpoint/{endpoint_id}")
        await self._request(
            "PUT", "ImagingStudy", params={"identifier": f"{system}|{value}"}, body=study.model_dump_json()
        )

    async def _endpoint(self) -> str:
        if self._endpoint_id is None:
            answer = await self._request(
                "PUT",
                "Endpoint",
                params={"identifier": f"{RFC3986}|{self.address}"},
                body=build_endpoint(self.address).model_dump_json(),
            )
            self._endpoint_id = _resource_id(answer, "Endpoint")
        return self._endpoint_id

    async def _patient(self, summary: StudySummary) -> str:
        system, value = patient_identifier(summary, self.ae_title)
        search = f"identifier={system}|{value}"
        found = await self._request("GET", "Patient", params={"identifier": f"{system}|{value}"})
        for entry in found.json().get("entry", []) if found.content else []:
            resource = entry.get("resource", {})
            if resource.get("resourceType") == "Patient" and resource.get("id"):
                return str(resource["id"])
        created = await self._request(
            "POST", "Patient", body=build_patient(summary, self.ae_title).model_dump_json(),
            headers={"If-None-Exist": search},
        )
        return _resource_id(created, "Patient")

    async def _request(
        self,
        method: str,
        resource_type: str,
        *,
        params: dict[str, str] | None = None,
        body: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        client = self._client
        if client is None:
            raise FhirError("FHIR sync is not started")
        all_headers = {**(headers or {}), **({"Content-Type": FHIR_JSON} if body is not None else {})}
        try:
            response = await client.request(
                method, f"{self.base_url}/{resource_type}", params=params, content=body, headers=all_headers
            )
        except httpx.HTTPError as exc:
            raise FhirError(f"{method} {resource_type}: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 300 and not (method == "DELETE" and response.status_code == 404):
            raise FhirError(f"{method} {resource_type}: HTTP {response.status_code} {response.text[:300]}")
        return response


def _resource_id(response: httpx.Response, resource_type: str) -> str:
    """The logical id of a created or updated resource: from the body, else from Location."""
    with contextlib.suppress(ValueError):
        body = response.json()
        if isinstance(body, dict) and body.get("resourceType") == resource_type and body.get("id"):
            return str(body["id"])
    location = response.headers.get("Location") or response.headers.get("Content-Location") or ""
    parts = location.split("/")
    if resource_type in parts and parts.index(resource_type) + 1 < len(parts):
        return parts[parts.index(resource_type) + 1]
    raise FhirError(f"the FHIR server named no id for the {resource_type}")
