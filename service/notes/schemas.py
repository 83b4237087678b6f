"""Request and response bodies of the notes API."""

from datetime import datetime
from typing import Annotated, Any, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from service.notes.models import TEXT_MAX_LENGTH


def _visible_text(text: str) -> str:
    if not text.strip():
        msg = "text must not be only whitespace"
        raise ValueError(msg)
    if "\x00" in text:
        msg = "text must not contain NUL characters"
        raise ValueError(msg)
    return text


NoteText = Annotated[
    str, Field(min_length=1, max_length=TEXT_MAX_LENGTH), AfterValidator(_visible_text)
]


class _Input(BaseModel):
    # strict: "yes" is not a boolean and 1 is not a text; unknown fields are a client bug.
    model_config = ConfigDict(extra="forbid", strict=True)


class NoteCreate(_Input):
    """Body of POST /api/v1/notes."""

    text: NoteText
    completed: bool = False


class NoteReplace(_Input):
    """Body of PUT /api/v1/notes/{id}: every field."""

    text: NoteText
    completed: bool


class NoteUpdate(_Input):
    """Body of PATCH /api/v1/notes/{id}: any of the fields, none of them null."""

    text: NoteText | None = None
    completed: bool | None = None

    @model_validator(mode="after")
    def _no_nulls(self) -> Self:
        nulls = [name for name in self.model_fields_set if getattr(self, name) is None]
        if nulls:
            msg = f"{', '.join(sorted(nulls))} must not be null"
            raise ValueError(msg)
        return self

    def changes(self) -> dict[str, Any]:
        """The fields the client sent, by column name."""
        return self.model_dump(exclude_unset=True)


class Note(BaseModel):
    """A note as the API returns it."""

    id: int
    text: str
    completed: bool
    created_at: datetime
    updated_at: datetime


class NotePage(BaseModel):
    """One page of a keyset-paginated list."""

    items: list[Note]
    next_cursor: str | None


class NoteStats(BaseModel):
    """How many notes there are, by state."""

    total: int
    completed: int
    open: int
