"""The stack's secrets: one file per secret in `.run/secrets/` (mode 0700), each of mode 0600.

A database role's password lives in `<role>.password`, generated at the first `make up` (or
copied there from the URL an operator gave), and its SCRAM-SHA-256 verifier, when the stack
set the role's password itself, in `<role>.scram`: what the server stores, and what PgBouncer
checks the workers' logins against and logs into the server with. Nothing else under `.run/`
holds a password: the saved state names roles, and the runner puts the password into the URL
it hands a process from here.
"""

import base64
import hashlib
import hmac
import os
import secrets
import tempfile
from pathlib import Path

from sqlalchemy.engine import URL

# PostgreSQL's own default (scram_iterations, and what libpq's PQencryptPasswordConn uses).
SCRAM_ITERATIONS = 4096


def write_private(path: Path, text: str) -> None:
    """`text` into `path`, mode 0600 from its first byte, replacing it whole: a reader never
    sees half of it, and no one else ever sees any of it."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "w") as file:  # mkstemp makes it 0600
            file.write(text)
        Path(temporary).replace(path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def scram_verifier(password: str, salt: bytes | None = None) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802, 7677): given to
    `ALTER ROLE ... PASSWORD`, the server keeps it as it is."""
    salt = salt or secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, SCRAM_ITERATIONS)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${SCRAM_ITERATIONS}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def password_removed(url: URL) -> URL:
    """`url` without a password (`URL.set` leaves a field it is given None for as it is)."""
    return url._replace(password=None)


class Secrets:
    """The secrets directory of one run directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _ensure_directory(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.directory.chmod(0o700)

    def path(self, role: str, kind: str = "password") -> Path:
        """Where `role`'s password (or its `scram` verifier) is kept."""
        return self.directory / f"{role}.{kind}"

    def password(self, role: str) -> str | None:
        """`role`'s password, if the stack keeps one."""
        try:
            return self.path(role).read_text().strip() or None
        except FileNotFoundError:
            return None

    def keep(self, role: str, password: str) -> None:
        """Keep `password` as `role`'s (an operator's, from a URL it was given)."""
        self._ensure_directory()
        if self.password(role) != password:
            write_private(self.path(role), password + "\n")

    def generated(self, role: str) -> tuple[str, str]:
        """`role`'s password and its SCRAM verifier, made the first time they are asked for
        and the same ever after."""
        password = self.password(role)
        verifier_path = self.path(role, "scram")
        if password is None or not verifier_path.is_file():
            self._ensure_directory()
            password = secrets.token_urlsafe(24)
            write_private(self.path(role), password + "\n")
            write_private(verifier_path, scram_verifier(password) + "\n")
        return password, verifier_path.read_text().strip()

    def verifier(self, role: str) -> str | None:
        """`role`'s SCRAM verifier, when the stack set the role's password itself."""
        try:
            return self.path(role, "scram").read_text().strip() or None
        except FileNotFoundError:
            return None

    def with_password(self, url: URL) -> URL:
        """`url` with its user's kept password, if the stack keeps one (else as it is)."""
        if url.username is None or url.password is not None:
            return url
        password = self.password(url.username)
        return url if password is None else url.set(password=password)

    def without_password(self, url: URL) -> URL:
        """`url` without its password, which is kept here instead."""
        if url.password is None or url.username is None:
            return url
        self.keep(url.username, str(url.password))
        return password_removed(url)
