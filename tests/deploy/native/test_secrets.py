"""The secrets directory (deploy.native.secrets), on its own: where each password goes, that
URLs handed to processes get it back, and that nothing is readable by anyone else."""

import stat
from pathlib import Path

from sqlalchemy.engine import make_url

from deploy.native.secrets import Secrets, scram_verifier


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_urls_password_moves_to_a_file_of_its_own_and_comes_back(tmp_path: Path) -> None:
    secrets = Secrets(tmp_path / "secrets")
    url = make_url("postgresql+asyncpg://owner:s3cret@db.example:5432/app")

    kept = secrets.without_password(url)

    assert kept.password is None
    assert "s3cret" not in kept.render_as_string(hide_password=False)
    assert secrets.password("owner") == "s3cret"
    assert secrets.with_password(kept) == url
    assert mode(secrets.directory) == 0o700
    assert mode(secrets.path("owner")) == 0o600
    # A URL whose role the stack keeps nothing for is handed on as it is.
    stranger = make_url("postgresql+asyncpg://someone@db.example/app")
    assert secrets.with_password(stranger) == stranger


def test_a_generated_password_and_its_verifier_are_made_once(tmp_path: Path) -> None:
    secrets = Secrets(tmp_path / "secrets")
    password, verifier = secrets.generated("app")
    assert len(password) >= 32
    assert secrets.generated("app") == (password, verifier)
    assert secrets.verifier("app") == verifier
    assert mode(secrets.path("app", "scram")) == 0o600
    method, rest = verifier.split("$", 1)
    iterations_salt, keys = rest.split("$")
    assert method == "SCRAM-SHA-256"
    assert iterations_salt.startswith("4096:")
    assert len(keys.split(":")) == 2
    assert password not in verifier


def test_the_verifier_is_salted() -> None:
    assert scram_verifier("pencil") != scram_verifier("pencil")
    salt = b"0123456789abcdef"
    assert scram_verifier("pencil", salt) == scram_verifier("pencil", salt)
    assert scram_verifier("pencil", salt) != scram_verifier("pencils", salt)
