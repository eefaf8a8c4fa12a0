"""The command line as a new user meets it: wrong paths, wrong ports and a busy DICOM port each get one clear
line and a non-zero exit, never a traceback or a silent success. Each runs `python -m app` as a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import free_port
from tests.tools import listening, stop


def run_app(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith(("MONGO_", "STORAGE_", "HTTP_", "DIMSE_"))}
    return subprocess.run(
        [sys.executable, "-m", "app", "--data-dir", str(tmp_path / "data"), *args],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env={**clean, **env}, check=False,
    )


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port on 127.0.0.1 that another program listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def test_import_of_a_missing_path_names_it_and_fails(tmp_path: Path) -> None:
    result = run_app(tmp_path, "import", "/nonexistent/path")
    assert result.returncode != 0
    assert "/nonexistent/path" in result.stderr and "no such file" in result.stderr
    assert "stored 0" not in result.stdout


@pytest.mark.parametrize("flag", ["--port", "--dimse-port"])
@pytest.mark.parametrize("value", ["70000", "0", "-1", "http"])
def test_serve_refuses_a_port_outside_1_to_65535_in_one_line(tmp_path: Path, flag: str, value: str) -> None:
    result = run_app(tmp_path, "serve", flag, value)
    assert result.returncode == 2
    assert "not a TCP port (1-65535)" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_port_setting_outside_the_range_is_one_line_naming_the_variable(tmp_path: Path) -> None:
    result = run_app(tmp_path, "serve", DIMSE_PORT="70000")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "invalid setting DIMSE_PORT: Input should be less than or equal to 65535"
    ]


def test_a_busy_dicom_port_is_one_line_naming_host_and_port(tmp_path: Path, taken_port: int) -> None:
    result = run_app(tmp_path, "serve", "--host", "127.0.0.1", "--port", str(free_port()),
                     "--dimse-port", str(taken_port))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"127.0.0.1:{taken_port}" in lines[0] and "address already in use" in lines[0]


def test_dimse_host_flag_moves_the_dicom_door_over_its_setting(tmp_path: Path) -> None:
    """--dimse-host wins over DIMSE_HOST (here a name that cannot be resolved, so the server would not start
    on it); --host is for HTTP alone."""
    http_port, dimse_port = free_port(), free_port()
    env = {**os.environ, "DIMSE_HOST": "no-such-host.invalid"}
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "--data-dir", str(tmp_path / "data"), "serve", "--host", "127.0.0.1",
         "--port", str(http_port), "--dimse-host", "127.0.0.1", "--dimse-port", str(dimse_port)],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not (listening(http_port) and listening(dimse_port)):
            assert process.poll() is None, "the server stopped"
            assert time.monotonic() < deadline, "HTTP and DICOM did not both listen on 127.0.0.1"
            time.sleep(0.1)
    finally:
        stop(process)
