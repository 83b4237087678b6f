"""The Idempotency-Key header, parsed and checked before the route runs."""

from typing import Annotated

from fastapi import Depends, Header, Request

from service.idempotency.models import KEY_MAX_LENGTH
from service.idempotency.service import IdempotentRequest, fingerprint

# Visible ASCII: what a UUID, a ULID or any generated token is made of, and what every
# HTTP stack carries unchanged.
KEY_PATTERN = rf"^[!-~]{{1,{KEY_MAX_LENGTH}}}$"


async def idempotent_request(
    request: Request,
    idempotency_key: Annotated[
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
    ] = None,
) -> IdempotentRequest | None:
    """The request's Idempotency-Key with the fingerprint its retries must match."""
    if idempotency_key is None:
        return None
    return IdempotentRequest(
        key=idempotency_key,
        fingerprint=fingerprint(
            request.method, request.url.path, request.headers.get("if-match"), await request.body()
        ),
        ttl=request.state.settings.idempotency_key_ttl,
    )


IdempotencyDep = Annotated[IdempotentRequest | None, Depends(idempotent_request)]
