"""What can go wrong with a note, in the domain's words."""

from service.exceptions import DomainError, NotFoundError, PreconditionFailedError


class NoteError(DomainError):
    """Base of the notes domain's errors."""


class NoteNotFoundError(NoteError, NotFoundError):
    """No note has this id."""

    def __init__(self, note_id: int) -> None:
        super().__init__(f"Note {note_id} not found")
        self.note_id = note_id


class NoteVersionMismatchError(NoteError, PreconditionFailedError):
    """The client's If-Match no longer names the note's current version."""

    def __init__(self, note_id: int) -> None:
        super().__init__(f"Note {note_id} has changed since the given ETag")
        self.note_id = note_id
