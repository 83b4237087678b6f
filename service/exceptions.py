"""Domain error bases: what went wrong, in words every domain shares.

Domains raise subclasses of these; `service.http.errors` maps each base to its HTTP answer, so no
domain imports FastAPI and the mapping never imports a domain.
"""


class DomainError(Exception):
    """An outcome the client caused and can be told about; never a fault of the service."""


class NotFoundError(DomainError):
    """The resource the request names does not exist (404)."""


class PreconditionFailedError(DomainError):
    """A precondition the client set, such as If-Match, does not hold (412)."""


class UnprocessableRequestError(DomainError):
    """The request is well formed but cannot be carried out as sent (422).

    Answered like a validation error: `loc` names the part of the request at fault (such as
    `("header", "Idempotency-Key")`) and `type` is a stable, machine-readable reason.
    """

    def __init__(self, message: str, *, loc: tuple[str, ...], type: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.type = type
