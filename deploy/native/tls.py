"""TLS at nginx (`TLS=off|self-signed|files`), written as the `tls.conf` nginx.conf includes in
its public server.

- `off`: nothing; plain HTTP on HTTP_PORT.
- `self-signed`: a local CA made once (`.run/tls/ca.pem`, its key beside it, 0600) and a
  certificate it signs for this host's names (localhost, 127.0.0.1, ::1, LISTEN_ADDRESS and the
  host name), made again when those change. Clients trust `ca.pem`.
- `files`: TLS_CERT (the chain, leaf first) and TLS_KEY, checked before nginx sees them.

With TLS on, nginx answers HTTPS on HTTPS_PORT with Mozilla's "intermediate" settings (TLS 1.2
and 1.3, their AEAD ciphers, no session tickets), adds HSTS, and answers plain HTTP with a 308
to HTTPS, the probes aside (nginx.conf's maps).
"""

import ipaddress
import os
import socket
import subprocess
from pathlib import Path

from deploy.native.processes import fail, log
from deploy.native.secrets import write_private
from deploy.native.state import Stack
from service.config import WorkerSettings, load

# Mozilla's "intermediate" configuration (ssl-config.mozilla.org, guideline 5.7).
INTERMEDIATE_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384", "DHE-RSA-CHACHA20-POLY1305",
    ]
)  # fmt: skip
INTERMEDIATE = f"""\
ssl_protocols TLSv1.2 TLSv1.3;
ssl_ecdh_curve X25519:prime256v1:secp384r1;
ssl_ciphers {INTERMEDIATE_CIPHERS};
ssl_prefer_server_ciphers off;
ssl_session_timeout 1d;
ssl_session_cache shared:TLS:10m;
ssl_session_tickets off;
"""
CA_DAYS, SERVER_DAYS = 3650, 825  # a certificate over 825 days is refused by Apple's clients


def _openssl(*argv: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        ["openssl", *argv], input=stdin, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        fail(f"openssl {argv[0]} failed: {result.stderr.strip()}")
    return result.stdout


def host_names(listen_address: str) -> list[str]:
    """The names and addresses a certificate for this host is made for."""
    names = ["DNS:localhost", "IP:127.0.0.1", "IP:::1"]
    for name in (listen_address, socket.gethostname()):
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            entry = f"DNS:{name}"
        else:
            if address.is_unspecified:  # 0.0.0.0: every address, none of them a name
                continue
            entry = f"IP:{address}"
        if name and entry not in names:
            names.append(entry)
    return names


def self_signed(directory: Path, stack_name: str, names: list[str]) -> tuple[Path, Path]:
    """The local CA (made once) and a certificate it signs for `names` (made again when they
    change); the certificate and key nginx serves."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    cert, key, made_for = directory / "server.pem", directory / "server.key", directory / "names"
    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    if not (ca.is_file() and ca_key.is_file()):
        _openssl(
            "req", "-x509", *curve, "-keyout", str(ca_key), "-out", str(ca),
            "-days", str(CA_DAYS), "-subj", f"/CN={stack_name} stack local CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
        ca.chmod(0o644)  # what clients are given to trust
        log(f"tls: made a local CA, {ca} (trust it in your clients)")
    wanted = ",".join(names)
    if cert.is_file() and key.is_file() and made_for.is_file() and made_for.read_text() == wanted:
        return cert, key
    csr = directory / "server.csr"
    _openssl("req", *curve, "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={names[0][4:]}")
    extensions = directory / "server.ext"
    extensions.write_text(
        f"subjectAltName={wanted}\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(cert), "-days", str(SERVER_DAYS),
        "-extfile", str(extensions),
    )  # fmt: skip
    csr.unlink()
    key.chmod(0o600)
    write_private(made_for, wanted)
    log(f"tls: a certificate for {wanted}, signed by {ca}")
    return cert, key


def checked_files(cert: Path | None, key: Path | None) -> tuple[Path, Path]:
    """TLS=files: TLS_CERT and TLS_KEY, readable, a pair, and the certificate still valid."""
    if cert is None or key is None:
        fail("TLS=files needs TLS_CERT (the certificate chain, PEM) and TLS_KEY (its key, PEM)")
    for path in (cert, key):
        if not os.access(path, os.R_OK):
            fail(f"TLS: cannot read {path}")
    certificate_key = _openssl("x509", "-in", str(cert), "-noout", "-pubkey")
    private_key = _openssl("pkey", "-in", str(key), "-pubout")
    if certificate_key.strip() != private_key.strip():
        fail(f"TLS_KEY {key} is not the key of TLS_CERT {cert}")
    expiry = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", "-checkend", "0"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if expiry.returncode != 0:
        fail(f"TLS_CERT {cert} has expired")
    return cert.resolve(), key.resolve()


def config(stack: Stack) -> str:
    """tls.conf for the public server: nothing with TLS=off."""
    settings = stack.settings
    if settings.tls == "off":
        return "# TLS=off: plain HTTP only.\n"
    if settings.tls == "self-signed":
        names = host_names(settings.listen_address)
        cert, key = self_signed(stack.layout.tls_dir, load(WorkerSettings).stack_name, names)
    else:
        cert, key = checked_files(settings.tls_cert, settings.tls_key)
    return (
        f"# TLS={settings.tls}, written by deploy/native/tls.py on each start.\n"
        f"listen {settings.listen_address}:{settings.https_port} ssl http2;\n"
        f"ssl_certificate {cert};\n"
        f"ssl_certificate_key {key};\n"
        f"{INTERMEDIATE}"
        "if ($redirect_to_https) {\n"
        f"    return 308 https://$host:{settings.https_port}$request_uri;\n"
        "}\n"
    )
