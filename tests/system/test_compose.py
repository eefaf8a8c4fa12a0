"""The container files agree with the settings: docker-compose.yaml, .env.template and app/config.py name the
same variables, the compose file is valid for docker-compose, and what it hands the archive is a valid Settings.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.config import Settings

ROOT = Path(__file__).resolve().parents[2]  # tests/system/ -> the repository root
COMPOSE = ROOT / "docker-compose.yaml"


def settings_variables() -> set[str]:
    return {name.upper() for name in Settings.model_fields}


def template_variables() -> list[str]:
    text = (ROOT / ".env.template").read_text()
    return re.findall(r"^([A-Z0-9_]+)=", text, flags=re.MULTILINE)


def compose_file() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def docker_compose(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.fail("docker-compose not found: `apt-get install -y --no-install-recommends docker-compose` "
                    "(.ci/run does)", pytrace=False)
    return subprocess.run([tool, "-f", str(COMPOSE), *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120, check=False)


def test_env_template_lists_every_setting_once() -> None:
    listed = template_variables()
    assert len(listed) == len(set(listed)), "a variable is listed twice"
    assert set(listed) == settings_variables()


def test_compose_hands_the_archive_every_setting_and_nothing_else() -> None:
    environment = compose_file()["services"]["archive"]["environment"]
    template = dict(re.findall(r"^([A-Z0-9_]+)=(.*)$", (ROOT / ".env.template").read_text(), flags=re.MULTILINE))
    missing = sorted(settings_variables() - set(environment))
    lines = "\n".join(f'      {name}: "${{{name}:-{template.get(name, "")}}}"' for name in missing)
    assert not missing, f"add to the archive's environment in docker-compose.yaml:\n{lines}"
    assert set(environment) == settings_variables()


def test_compose_reads_the_template_defaults_from_env() -> None:
    """Each variable the container does not fix is `${NAME:-default}` with the template's default."""
    environment = compose_file()["services"]["archive"]["environment"]
    template = dict(re.findall(r"^([A-Z0-9_]+)=(.*)$", (ROOT / ".env.template").read_text(), flags=re.MULTILINE))
    fixed = {"DATA_DIR", "STORAGE_ROOT", "HTTP_HOST", "HTTP_PORT", "DIMSE_HOST", "DIMSE_PORT"}
    overridden = {"MONGO_URL": "mongodb://mongo:27017", "LOG_FORMAT": "json"}
    for name, value in environment.items():
        if name in fixed:
            continue
        assert value == f"${{{name}:-{overridden.get(name, template[name])}}}", name


def test_compose_file_is_valid_with_every_profile() -> None:
    for profiles in ((), ("--profile", "fhir"), ("--profile", "s3")):
        result = docker_compose(*profiles, "config", "-q")
        assert result.returncode == 0, result.stderr


def test_compose_runs_mongo_with_a_healthcheck_and_the_archive_waits_for_it() -> None:
    services = compose_file()["services"]
    assert services["mongo"]["image"].startswith("mongo:")
    assert "healthcheck" in services["mongo"]
    assert services["archive"]["depends_on"]["mongo"]["condition"] == "service_healthy"
    assert {"${PUBLISH_ADDRESS:-127.0.0.1}:8042:8042", "${PUBLISH_ADDRESS:-127.0.0.1}:11112:11112"} <= set(
        services["archive"]["ports"]
    )
    assert services["fhir"]["profiles"] == ["fhir"] and services["minio"]["profiles"] == ["s3"]


def test_the_environment_compose_resolves_is_a_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    result = docker_compose("config")
    assert result.returncode == 0, result.stderr
    environment = yaml.safe_load(result.stdout)["services"]["archive"]["environment"]
    for name in settings_variables():
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, "" if value is None else str(value))
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.mongo_url == "mongodb://mongo:27017"
    assert (settings.http_host, settings.http_port, settings.dimse_port) == ("0.0.0.0", 8042, 11112)
    assert settings.storage_path == Path("/storage")
    assert settings.auth_enabled is False and settings.storage_backend == "filesystem"


def test_the_image_runs_as_a_user_not_root_and_has_a_healthcheck() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", dockerfile, flags=re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*", dockerfile, flags=re.MULTILINE)
    assert re.search(r"^FROM python:3\.11-slim", dockerfile, flags=re.MULTILINE)


def test_compose_pulls_pinned_images_only() -> None:
    """`:latest` (or no tag) would make the same compose file start other software next month."""
    for name, service in compose_file()["services"].items():
        image = service.get("image", "")
        tag = image.rpartition(":")[2] if ":" in image else ""
        assert tag and tag != "latest", f"{name}: {image!r} is not pinned"


def test_compose_publishes_ports_on_loopback_unless_told_otherwise() -> None:
    result = docker_compose("--profile", "fhir", "--profile", "s3", "config")
    assert result.returncode == 0, result.stderr
    for name, service in yaml.safe_load(result.stdout)["services"].items():
        for port in service.get("ports", ()):
            # docker-compose 1.29 prints `host_ip:published:target/proto`; Compose v2 a mapping.
            host = port["host_ip"] if isinstance(port, dict) else port.split(":")[0]
            assert host == "127.0.0.1", (name, port)
