"""A small FHIR R4 server for tests: Starlette under uvicorn on 127.0.0.1, resources in memory.

Every resource written is validated with fhir.resources (R4B models: R4 for the resources used here) and
refused with 400 and an OperationOutcome if invalid, so a test passing against it means the archive sends valid
FHIR. It supports what the sync uses, with FHIR R4 semantics (http.html):
* `GET /{type}?identifier=[system|]value` (searchset Bundle), `GET /{type}/{id}`;
* `POST /{type}` with `If-None-Exist` (conditional create: 200 with the match, or 201 and Location);
* `PUT /{type}?identifier=...` (conditional update: 0 matches create, 1 updates, more is 412), `PUT /{type}/{id}`;
* `DELETE /{type}?identifier=...` (conditional delete).
It can be stopped and started again on the same port with its data (`stop()`/`start()`), to play an outage.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs

import uvicorn
from fhir.resources.R4B import get_fhir_model_class
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.servers import free_port

FHIR_JSON = "application/fhir+json"
Resource = dict[str, Any]


def _outcome(status: int, message: str) -> JSONResponse:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "invalid" if status == 400 else "processing", "diagnostics": message}],
    }
    return JSONResponse(body, status_code=status, media_type=FHIR_JSON)


class FhirTestServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.store: dict[str, dict[str, Resource]] = {}
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.app = Starlette(
            routes=[
                Route("/fhir/{rtype}", self.type_level, methods=["GET", "POST", "PUT", "DELETE"]),
                Route("/fhir/{rtype}/{rid}", self.instance_level, methods=["GET", "PUT"]),
            ]
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> None:
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="fhir-test-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the FHIR test server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=30)
        self._server = self._thread = None

    # -- queries used by tests ------------------------------------------------------------------------------
    def resources(self, rtype: str) -> list[Resource]:
        with self.lock:
            return list(self.store.get(rtype, {}).values())

    # -- FHIR interactions ----------------------------------------------------------------------------------
    def _matches(self, rtype: str, query: str) -> list[Resource]:
        params = parse_qs(query)
        wanted = params.get("identifier", [None])[0]
        if wanted is None:
            return list(self.store.get(rtype, {}).values())
        system, sep, value = wanted.rpartition("|")
        found = []
        for resource in self.store.get(rtype, {}).values():
            for identifier in resource.get("identifier", []):
                if identifier.get("value") == value and (not sep or identifier.get("system") == system):
                    found.append(resource)
                    break
        return found

    @staticmethod
    def _validate(rtype: str, body: Any) -> Resource:
        if not isinstance(body, dict) or body.get("resourceType") != rtype:
            raise ValueError(f"resourceType must be {rtype}")
        model = get_fhir_model_class(rtype)
        validated: Resource = model.model_validate(body).model_dump(mode="json", exclude_none=True)
        return validated

    def _write(self, rtype: str, rid: str, body: Resource, created: bool) -> JSONResponse:
        existing = self.store.setdefault(rtype, {}).get(rid)
        version = 1 if existing is None else int(existing["meta"]["versionId"]) + 1
        resource = {**body, "id": rid, "meta": {"versionId": str(version)}}
        self.store[rtype][rid] = resource
        return JSONResponse(
            resource,
            status_code=201 if created else 200,
            media_type=FHIR_JSON,
            headers={"Location": f"{self.base_url}/{rtype}/{rid}/_history/{version}"},
        )

    async def type_level(self, request: Request) -> Response:
        rtype = request.path_params["rtype"]
        query = request.url.query
        self.requests.append((request.method, f"{rtype}?{query}"))
        try:
            get_fhir_model_class(rtype)
        except (KeyError, ValueError):
            return _outcome(404, f"unknown resource type {rtype}")
        body: Any = None
        if request.method in ("POST", "PUT"):
            try:
                body = self._validate(rtype, await request.json())
            except Exception as exc:
                return _outcome(400, f"invalid {rtype}: {exc}")
        with self.lock:
            if request.method == "GET":
                matches = self._matches(rtype, query)
                bundle = {
                    "resourceType": "Bundle",
                    "type": "searchset",
                    "total": len(matches),
                    "entry": [{"resource": r, "fullUrl": f"{self.base_url}/{rtype}/{r['id']}"} for r in matches],
                }
                return JSONResponse(bundle, media_type=FHIR_JSON)
            if request.method == "POST":
                condition = request.headers.get("If-None-Exist")
                if condition:
                    matches = self._matches(rtype, condition)
                    if len(matches) > 1:
                        return _outcome(412, "If-None-Exist matches several resources")
                    if matches:
                        return JSONResponse(matches[0], media_type=FHIR_JSON)
                return self._write(rtype, uuid.uuid4().hex, body, created=True)
            if request.method == "PUT":
                if not query:
                    return _outcome(400, "conditional update needs search parameters")
                matches = self._matches(rtype, query)
                if len(matches) > 1:
                    return _outcome(412, "conditional update matches several resources")
                if matches:
                    return self._write(rtype, matches[0]["id"], body, created=False)
                return self._write(rtype, body.get("id") or uuid.uuid4().hex, body, created=True)
            # DELETE
            if not query:
                return _outcome(400, "conditional delete needs search parameters")
            for resource in self._matches(rtype, query):
                del self.store[rtype][resource["id"]]
            return Response(status_code=204)

    async def instance_level(self, request: Request) -> Response:
        rtype, rid = request.path_params["rtype"], request.path_params["rid"]
        self.requests.append((request.method, f"{rtype}/{rid}"))
        if request.method == "PUT":
            try:
                body = self._validate(rtype, await request.json())
            except Exception as exc:
                return _outcome(400, f"invalid {rtype}: {exc}")
            with self.lock:
                return self._write(rtype, rid, body, created=rid not in self.store.get(rtype, {}))
        with self.lock:
            resource = self.store.get(rtype, {}).get(rid)
        if resource is None:
            return _outcome(404, f"{rtype}/{rid} not found")
        return JSONResponse(resource, media_type=FHIR_JSON)


@contextmanager
def running_fhir_server() -> Iterator[FhirTestServer]:
    server = FhirTestServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
