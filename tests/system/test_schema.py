"""Schemathesis against our own OpenAPI document: generated requests for every operation, sent to the real
server on 127.0.0.1; no answer is a 5xx and every answer matches what the schema declares for its status.

Bounded for CI: `EXAMPLES_PER_OPERATION` generated requests per operation (derandomized, so a red run can be
replayed), about 50 operations.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from app.config import Settings
from app.main import create_app
from tests.servers import ArchiveServer, running_archive

pytestmark = pytest.mark.faults

EXAMPLES_PER_OPERATION = 25

# The schema the application serves at /openapi.json (create_app opens nothing until its lifespan runs).
SCHEMA = schemathesis.openapi.from_dict(
    create_app(Settings(data_dir=Path("unused"), dimse_enabled=False, _env_file=None)).openapi()  # type: ignore[call-arg]
)
OPERATIONS = {op.label: op for op in (result.ok() for result in SCHEMA.get_all_operations())}
TRIED: dict[str, int] = {}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArchiveServer]:
    settings = Settings(  # type: ignore[call-arg]
        data_dir=tmp_path_factory.mktemp("schema"), dimse_enabled=False, dimse_scu_timeout=2, _env_file=None
    )
    with running_archive(settings) as running:
        yield running


def test_the_schema_lists_the_dicomweb_operations() -> None:
    assert {"POST /dicom-web/studies", "GET /dicom-web/studies", "GET /wado"} <= set(OPERATIONS)


def test_the_schema_documents_the_wado_uri_parameters() -> None:
    """WADO-URI reads its query string by hand, so its parameters are declared for the document."""
    wado = SCHEMA.raw_schema["paths"]["/wado"]["get"]
    names = {parameter["name"]: parameter["required"] for parameter in wado["parameters"]}
    assert {"requestType", "studyUID", "seriesUID", "objectUID"} <= {n for n, required in names.items() if required}
    assert {"contentType", "transferSyntax", "frameNumber", "rows", "columns"} <= set(names)
    assert "image/jpeg" in wado["responses"]["200"]["content"]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_generated_requests_are_never_a_server_error_and_match_the_schema(
    server: ArchiveServer, label: str, mode: GenerationMode
) -> None:
    """Valid requests (per the schema) and invalid ones (values the schema excludes): never a 5xx, and the
    answer's body matches the schema of its status whenever the schema declares one."""
    operation = OPERATIONS[label]

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: schemathesis.Case) -> None:
        TRIED[f"{label} {mode.value}"] = TRIED.get(f"{label} {mode.value}", 0) + 1
        response = case.call(base_url=server.base_url, timeout=60)
        case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])

    try:
        check()
    except Unsatisfiable:
        # Nothing the schema excludes can be generated for this operation (every string is a valid value).
        assert mode is GenerationMode.NEGATIVE, label


def test_report_the_number_of_generated_requests() -> None:
    print(f"\nschemathesis: {sum(TRIED.values())} generated requests over {len(TRIED)} operations x modes")
