"""Server errors answer like every other error: DICOM JSON with the reason and the request id, and one log
line that carries the same id, so a user's report leads an operator to the traceback."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.config import Settings
from app.core.logs import JsonFormatter, RequestIdFilter
from app.main import create_app


@pytest.fixture
def captured_log() -> Iterator[io.StringIO]:
    """The archive's log as LOG_FORMAT=json writes it."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield out
    finally:
        root.removeHandler(handler)


async def test_an_unexpected_exception_answers_500_in_dicom_json_with_the_request_id(
    tmp_path: Path, captured_log: io.StringIO
) -> None:
    app = create_app(Settings(data_dir=tmp_path, dimse_enabled=False, _env_file=None))  # type: ignore[call-arg]

    async def crash() -> None:
        raise RuntimeError("a bug")

    # A route that fails as a bug would, on the real application and its middleware.
    app.add_api_route("/crash", crash)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        response = await client.get("/crash", headers={"X-Request-ID": "crash-42"})
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("application/dicom+json")
    comment = response.json()["00000902"]["Value"][0]
    assert "RuntimeError" in comment and "crash-42" in comment
    assert "crash-42" in response.headers["warning"]
    assert response.headers["x-request-id"] == "crash-42"
    lines = [line for line in captured_log.getvalue().splitlines() if '"crash-42"' in line]
    assert len(lines) == 1 and "a bug" in lines[0] and "Traceback" in lines[0]
