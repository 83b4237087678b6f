"""TLS at nginx: `make up TLS=self-signed` on a real stack, asked by clients that verify the
certificate against the CA it printed; TLS=files checked before anything starts."""

import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import URL

from deploy.native import tls
from deploy.native.layout import RunLayout
from deploy.native.processes import StackError, free_port
from tests.postgres import ROOT, fresh_database
from tests.stack import Stack, running_stack

# What Mozilla's intermediate profile allows: its TLS 1.2 ciphers, and TLS 1.3's own suites.
TLS13_SUITES = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}


@pytest.fixture(scope="module")
def tls_stack(pg_server: URL) -> Iterator[Stack]:
    env = {"TLS": "self-signed", "HTTPS_PORT": str(free_port())}
    with fresh_database(pg_server) as url, running_stack(url, workers=2, extra_env=env) as stack:
        yield stack


def https_url(stack: Stack, host: str = "localhost") -> str:
    return f"https://{host}:{stack.env['HTTPS_PORT']}"


def trusting(stack: Stack) -> ssl.SSLContext:
    """A client context that trusts the stack's local CA, and nothing else."""
    return ssl.create_default_context(cafile=stack.layout.tls_dir / "ca.pem")


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_https_answers_a_verifying_client_with_hsts(tls_stack: Stack, host: str) -> None:
    answer = httpx.get(f"{https_url(tls_stack, host)}/api/v1/notes", verify=trusting(tls_stack))
    assert answer.status_code == 200
    assert answer.headers["strict-transport-security"] == "max-age=63072000"
    assert answer.headers["x-content-type-options"] == "nosniff"


def test_the_handshake_is_mozillas_intermediate(tls_stack: Stack) -> None:
    port = int(tls_stack.env["HTTPS_PORT"])
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        context = trusting(tls_stack)
        context.minimum_version = context.maximum_version = version
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as conn,
        ):
            name, protocol, _ = conn.cipher() or ("", "", 0)
            assert protocol == version.name.replace("v1_", "v1.")
            allowed = (
                TLS13_SUITES
                if version is ssl.TLSVersion.TLSv1_3
                else set(tls.INTERMEDIATE_CIPHERS.split(":"))
            )
            assert name in allowed, name


def test_a_client_that_does_not_trust_the_ca_is_refused(tls_stack: Stack) -> None:
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{https_url(tls_stack)}/api/v1/notes", verify=ssl.create_default_context())


def test_plain_http_redirects_to_https_but_the_probes(tls_stack: Stack) -> None:
    api = httpx.get(f"{tls_stack.url}/api/v1/notes?limit=5")
    assert api.status_code == 308
    port = tls_stack.env["HTTPS_PORT"]
    assert api.headers["location"] == f"https://127.0.0.1:{port}/api/v1/notes?limit=5"
    assert "strict-transport-security" not in api.headers  # HSTS means nothing over HTTP
    for probe in ("/healthz", "/readyz"):
        answer = httpx.get(f"{tls_stack.url}{probe}")
        assert answer.status_code == 200, probe
    followed = httpx.get(
        f"{tls_stack.url}/api/v1/notes", verify=trusting(tls_stack), follow_redirects=True
    )
    assert followed.status_code == 200
    assert followed.url.scheme == "https"


def test_the_cas_key_and_the_servers_are_private(tls_stack: Stack) -> None:
    directory = tls_stack.layout.tls_dir
    assert oct(directory.stat().st_mode & 0o777) == "0o700"
    for key in ("ca.key", "server.key"):
        assert oct((directory / key).stat().st_mode & 0o777) == "0o600", key


def openssl_pair(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and its key, made with openssl."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost"],
        capture_output=True, check=True,
    )  # fmt: skip
    return cert, key


def test_tls_files_are_checked_as_a_pair(tmp_path: Path) -> None:
    cert, key = openssl_pair(tmp_path, "one")
    _, other_key = openssl_pair(tmp_path, "two")
    assert tls.checked_files(cert, key) == (cert.resolve(), key.resolve())
    with pytest.raises(StackError, match="is not the key of TLS_CERT"):
        tls.checked_files(cert, other_key)
    with pytest.raises(StackError, match="TLS=files needs TLS_CERT"):
        tls.checked_files(cert, None)


def test_up_refuses_tls_files_that_are_not_a_pair_before_starting_anything(
    tmp_path: Path,
) -> None:
    cert, _ = openssl_pair(tmp_path, "one")
    _, other_key = openssl_pair(tmp_path, "two")
    run_dir = tmp_path / "run"
    env = {
        **{name: value for name, value in os.environ.items() if name != "DATABASE_URL"},
        "RUN_DIR": str(run_dir),
        "TLS": "files",
        "TLS_CERT": str(cert),
        "TLS_KEY": str(other_key),
    }
    result = subprocess.run(
        [sys.executable, "-m", "deploy.native", "up"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "is not the key of TLS_CERT" in result.stderr
    assert not RunLayout(run_dir).gunicorn_pidfile.exists()
    assert not RunLayout(run_dir).postgres_dir.exists()
