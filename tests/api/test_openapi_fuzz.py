"""Property-based API testing from the OpenAPI schema (schemathesis): never a 5xx.

Generated requests carry a valid doctor's token, so they reach the FHIR and ledger code
rather than stopping at authentication.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.api.conftest import Api, open_api


@pytest.fixture(scope="module")
def fuzz_api(demo_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """An API of its own: fuzzing writes many records."""
    yield from open_api(demo_template, tmp_path_factory.mktemp("fuzz") / "node")


def test_no_server_errors(fuzz_api: Api) -> None:
    """Whatever the generator sends to any operation, the server answers without a 5xx."""
    bearer = fuzz_api.headers("dokter-melati")
    # Loaded here, not at import: the app exists only once its fixture has opened a node.
    # (schemathesis.pytest.from_fixture does not run under this pytest version.)
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_api.client.app)
    seen = []
    for result in schema.get_all_operations():
        operation = result.ok()
        seen.append(f"{operation.method.upper()} {operation.path}")

        @given(case=operation.as_strategy())
        @settings(
            max_examples=20,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: Any) -> None:
            response = case.call(headers=bearer)
            assert response.status_code < 500, (case.method, case.path, response.text[:200])
            assert "Traceback" not in response.text

        run()
    assert "POST /fhir/{resource_type}" in seen and "GET /api/blocks/{height}" in seen
