"""The API keeps its own OpenAPI: schemathesis drives every operation through nginx to the
real workers, with valid and with invalid input, and finds no 5xx, no status the document
does not list, and no response that breaks its schema."""

from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, given, settings

from tests.stack import Stack

# schemathesis takes a second to import: the functions that run it import it, so that the
# collection of every run (`make test-fast` too) does not pay for it.
if TYPE_CHECKING:
    from schemathesis import APIOperation, Case, GenerationMode

# Per operation and mode. Any input to each endpoint is the subject of test_input.py's
# properties (150 examples each, in process); what these add is the document's statuses,
# schemas and headers, through nginx, which fewer examples per operation already reach.
EXAMPLES = 30


def run_operation(
    operation: "APIOperation[Any, Any, Any, Any]",
    mode: "GenerationMode",
    statuses: Counter[tuple[str, int]],
) -> None:
    """Up to EXAMPLES cases of one operation in one mode, each answer checked and counted."""
    from schemathesis.checks import not_a_server_error  # noqa: PLC0415
    from schemathesis.specs.openapi import checks  # noqa: PLC0415

    conformance = [
        not_a_server_error,
        checks.status_code_conformance,
        checks.content_type_conformance,
        checks.response_headers_conformance,
        checks.response_schema_conformance,
    ]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    def keeps_its_openapi(case: "Case[Any]") -> None:
        response = case.call_and_validate(checks=conformance)
        statuses[operation.label, response.status_code] += 1

    keeps_its_openapi()


@pytest.mark.parametrize("mode_name", ["positive", "negative"])
def test_every_operation_keeps_its_openapi(stack: Stack, mode_name: str) -> None:
    import schemathesis  # noqa: PLC0415
    from schemathesis import GenerationMode  # noqa: PLC0415
    from schemathesis.core.result import Ok  # noqa: PLC0415

    mode = GenerationMode(mode_name)
    schema = schemathesis.openapi.from_url(f"{stack.url}/openapi.json")
    statuses: Counter[tuple[str, int]] = Counter()
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result.err()
        operations.append(result.ok())
    assert len(operations) >= 7
    if mode is GenerationMode.NEGATIVE:
        # Invalid input needs some input: a request with neither parameters nor body is valid.
        operations = [
            operation
            for operation in operations
            if {"parameters", "requestBody"} & set(operation.definition.raw)
        ]
    for operation in operations:
        run_operation(operation, mode, statuses)

    assert sum(statuses.values()) >= len(operations) * 10, statuses
    assert not [status for (_, status) in statuses if status >= 500]
