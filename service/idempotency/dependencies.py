"""The Idempotency-Key header: a parameter of every write route, checked by FastAPI before the
route runs; the route turns it into the `IdempotentRequest` its retries must match.

A header parameter rather than a dependency: FastAPI solves each dependency per request,
which cost a POST about a tenth of its CPU (py-spy under wrk, docs/performance.md).
"""

from typing import Annotated

from fastapi import Header, Request

from service.idempotency.models import KEY_MAX_LENGTH
from service.idempotency.service import IdempotentRequest, fingerprint

# Visible ASCII: what a UUID, a ULID or any generated token is made of, and what every
# HTTP stack carries unchanged.
KEY_PATTERN = rf"^[!-~]{{1,{KEY_MAX_LENGTH}}}$"


IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        max_length=KEY_MAX_LENGTH,
        pattern=KEY_PATTERN,
        description=(
            "Makes the write safe to retry: a retry with the same key and the same request "
            "gets the first response again (`Idempotent-Replayed: true`) and writes "
            "nothing; the same key with another request is 422. Keys are kept for "
            "IDEMPOTENCY_KEY_TTL (24 h by default)."
        ),
    ),
]


async def idempotent_request(request: Request, key: str | None) -> IdempotentRequest | None:
    """The request's Idempotency-Key (validated as a header parameter) with the fingerprint
    its retries must match."""
    if key is None:
        return None
    return IdempotentRequest(
        key=key,
        fingerprint=fingerprint(
            request.method, request.url.path, request.headers.get("if-match"), await request.body()
        ),
        ttl=request.state.settings.idempotency_key_ttl,
    )
