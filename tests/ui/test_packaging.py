"""The wheel carries what the browser doors serve: the console's page and modules, the vendored Swagger UI and
ReDoc with their licences (pyproject's package-data), so an installed archive works offline like a checkout."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "app" / "ui" / "static"
ASSETS = ROOT / "app" / "api" / "docs_assets"


def test_the_wheel_ships_the_console_and_the_documentation_assets(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert built.returncode == 0, built.stderr
    [wheel] = tmp_path.glob("*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        path.relative_to(ROOT).as_posix()
        for folder in (STATIC, ASSETS)
        for path in folder.rglob("*")
        if path.is_file()
    }
    assert expected <= shipped, sorted(expected - shipped)
    assert {"app/api/docs_assets/swagger-ui/LICENSE", "app/api/docs_assets/redoc/LICENSE"} <= shipped
