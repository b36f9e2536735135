"""Contract tests generated from the committed OpenAPI document (schemathesis) against the API on
real uvicorn and PostgreSQL: every answer matches its documented status, content type and schema,
and no generated request gets a 5xx. Small example counts: this runs in CI."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from api.app import OPENAPI_PATH
from api.keys import ApiKeys
from consumers.transports.memory import provision_memory
from services.settings import ApiSettings, DatabaseSettings, MemorySettings, Settings, StorageSettings
from tests.support.api_server import RunningApi


@pytest.fixture
def api_schema(postgres_url: str, tenants: list[str], tmp_path: Path, request: pytest.FixtureRequest):
    tenant = tenants[0]
    config = Settings(
        transport="memory",
        tenants=[tenant],
        memory=MemorySettings(broker=f"contract-{uuid.uuid4().hex[:8]}"),
        storage=StorageSettings(tenant_file_roots={tenant: [tmp_path / tenant]}),
        database=DatabaseSettings(url=postgres_url),
        # no waiting and no limit: the generator may ask for wait=999999 and sends many requests
        api=ApiSettings(
            key_cache_seconds=60, max_wait_seconds=0, rate_limit_per_second=1000, rate_limit_burst=1000
        ),
    )
    provision_memory(config, [tenant])
    running = RunningApi(config).__enter__()
    request.addfinalizer(lambda: running.__exit__(None, None, None))
    token = ApiKeys(postgres_url).create(tenant, "contract").token
    schema = schemathesis.openapi.from_path(OPENAPI_PATH)
    schema.config.update(base_url=running.url, headers={"Authorization": f"Bearer {token}"})
    return schema


def test_every_operation_keeps_its_documented_contract(api_schema) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 4
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case) -> None:
            # schema-valid is not always acceptable: audio that does not decode and URLs outside the
            # tenant's storage are refused with their reason codes (tests/integration/test_api_http.py)
            case.call_and_validate(excluded_checks=[schemathesis.checks.positive_data_acceptance])

        check()
