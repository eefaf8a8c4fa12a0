"""Real tools the tests drive (DCMTK, openssl) and small network helpers, in one place.

A test that needs a tool which is not installed fails with a clear message; it never skips. `.ci/run` installs
every tool named here, so CI always runs them.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest

DCMTK = ("echoscu", "storescu", "dcmsend", "findscu", "getscu", "movescu")


def require(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: `.ci/run` installs them (apt-get install -y dcmtk)")


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def make_pki(folder: Path, names: tuple[str, ...]) -> Path:
    """A throw-away CA in `folder` with a certificate for 127.0.0.1 per name (`{name}.crt`, `{name}.key`)."""
    require("openssl")

    def openssl(*args: str | Path) -> None:
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=Test CA",
            "-keyout", folder / "ca.key", "-out", folder / "ca.crt")  # fmt: skip
    for name in names:
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                "-keyout", folder / f"{name}.key", "-out", folder / f"{name}.csr")  # fmt: skip
        (folder / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1\n")
        openssl("x509", "-req", "-in", folder / f"{name}.csr", "-CA", folder / "ca.crt", "-CAkey", folder / "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", folder / f"{name}.ext",
                "-out", folder / f"{name}.crt")  # fmt: skip
    return folder


def stop(process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """SIGTERM, and SIGKILL if the process has not ended within `timeout` seconds."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)

