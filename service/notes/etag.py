"""Entity tags for notes and the If-Match precondition that uses them."""

import re
from dataclasses import dataclass

from service.database.models import BIGINT_MAX

# ASCII digits only: str.isdigit() also accepts characters such as "²" that int() refuses.
_VERSION = re.compile(r"[0-9]{1,19}")


def etag_for(note_id: int, version: int) -> str:
    """The strong ETag of one version of a note."""
    return f'"{note_id}-{version}"'


@dataclass(frozen=True, slots=True)
class IfMatch:
    """A parsed If-Match header: `*`, or the versions of this note that it names."""

    any_version: bool
    versions: frozenset[int]

    def matches(self, version: int) -> bool:
        """Whether a note at `version` satisfies the precondition."""
        return self.any_version or version in self.versions


def parse_if_match(header: str, note_id: int) -> IfMatch:
    """Parse If-Match for one note, by strong comparison (RFC 9110 §13.1.1).

    Weak tags, tags of other notes and versions no note can have never match, so they are
    dropped; a header that names nothing usable still exists and so fails on any note with 412.
    """
    if header.strip() == "*":
        return IfMatch(any_version=True, versions=frozenset())
    prefix = f'"{note_id}-'
    versions = set()
    for raw_tag in header.split(","):
        tag = raw_tag.strip()
        if tag.startswith(prefix) and tag.endswith('"'):
            version = tag[len(prefix) : -1]
            if _VERSION.fullmatch(version) and int(version) <= BIGINT_MAX:
                versions.add(int(version))
    return IfMatch(any_version=False, versions=frozenset(versions))
