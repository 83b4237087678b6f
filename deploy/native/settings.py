"""The native runner's settings (`python -m deploy.native`, `make up` without Docker).

Declared like the app's (service.config), listed with them in docs/settings.md; no worker and
nothing in the image reads them.
"""

import ipaddress
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator

from deploy.native.roles import known_role, roles_help
from service.config import Pooler, RunDirSettings, Unset, setting


def parse_size(text: object) -> int:
    """LOG_ROTATE_SIZE: bytes, or a number with a K, M or G suffix (powers of 1024)."""
    if isinstance(text, int):
        size = text
    else:
        cleaned = str(text).strip().upper().removesuffix("B")
        factor = 1
        for suffix, power in (("K", 1), ("M", 2), ("G", 3)):
            if cleaned.endswith(suffix):
                cleaned, factor = cleaned[:-1], 1024**power
                break
        try:
            size = int(float(cleaned) * factor)
        except ValueError:
            msg = f"{text!r} is not a size: bytes, or a number with K, M or G (10M)"
            raise ValueError(msg) from None
    if size < 1024:
        msg = f"{text!r} is below 1K: every few lines would start a new file"
        raise ValueError(msg)
    return size


def cidrs(value: str) -> str:
    """A list of networks (`10.0.0.0/8 ::1`), each checked; normalized to single spaces."""
    networks = value.replace(",", " ").split()
    for network in networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError as exc:
            msg = f"not a network (CIDR): {network!r}"
            raise ValueError(msg) from exc
    return " ".join(networks)


class StackSettings(RunDirSettings):
    """The native runner's ports and roles (`make up` without Docker).

    HTTP_PORT and PROMETHEUS_PORT are the published host ports in compose too.
    """

    http_port: int = setting(8080, "nginx's public server, on LISTEN_ADDRESS", ge=1, le=65535)
    ops_port: int = setting(
        8081,
        "nginx's ops server (/metrics, /stub_status), 127.0.0.1 only",
        per_deployment=False,
        ge=1,
        le=65535,
    )
    postgres_port: int = setting(
        55432,
        "the private cluster's port, when DATABASE_URL is not set",
        per_deployment=False,
        ge=1,
        le=65535,
    )
    prometheus_port: int = setting(9090, "Prometheus on 127.0.0.1", ge=1, le=65535)
    pooler: Pooler = setting(
        "none",
        "`pgbouncer`: run PgBouncer (transaction mode) between the workers and PostgreSQL "
        "(`make up POOLER=pgbouncer`); `none`: the workers connect to PostgreSQL",
        per_deployment=False,
    )
    pgbouncer_port: int = setting(
        56432,
        "PgBouncer, on LISTEN_ADDRESS, with POOLER=pgbouncer",
        per_deployment=False,
        ge=1,
        le=65535,
    )
    nginx_exporter_port: int = setting(
        9113,
        "the nginx exporter on 127.0.0.1 (stub_status as metrics)",
        per_deployment=False,
        ge=1,
        le=65535,
    )
    # Any role of ROLES; its description lists them, from the same table.
    stack_role: Annotated[str, AfterValidator(known_role)] = setting(
        "all", roles_help(), per_deployment=False
    )
    listen_address: str = setting(
        "127.0.0.1",
        "the address nginx's public server and PgBouncer listen on: this host's own address "
        "when other hosts connect to it (the ops server and Prometheus stay on 127.0.0.1)",
        per_deployment=False,
    )
    service_user: str = setting(
        "stack",
        "started as root, the system user gunicorn, Prometheus and the nginx exporter run as "
        "(made when missing, no login, no home); started as another user, they run as it",
        per_deployment=False,
        pattern=r"^[a-z_][a-z0-9_-]{0,31}$",
    )
    nginx_user: str = setting(
        "www-data",
        "started as root, the user nginx's workers run as (its master keeps root to open "
        "ports and logs), in SERVICE_USER's group, the one that may reach gunicorn's socket",
        per_deployment=False,
        pattern=r"^[a-z_][a-z0-9_-]{0,31}$",
    )
    nginx_worker_processes: Annotated[int | None, Unset] = setting(
        None,
        "nginx's worker processes: unset, one per 8 usable cores (one up to 8 cores): nginx "
        "costs about a tenth of a request's CPU, and fewer workers each find more events "
        "ready when they wake (docs/performance.md); Compose counts the host's cores",
        example="",
        ge=1,
        le=1024,
    )
    nginx_sched_policy: Literal["batch", "other"] = setting(
        "batch",
        "the kernel's scheduling policy nginx's master and workers run under: `batch` "
        "(SCHED_BATCH: the same share of the CPU, but a wake-up does not preempt a running "
        "worker, so nginx handles several events a wake-up; docs/performance.md measures it); "
        "`other`: the kernel's default",
        per_deployment=False,
    )
    app_database_url: str | None = setting(
        None,
        "with DATABASE_URL (the owner, which migrates): the role the workers log in as, with "
        "only DML on the app's tables. Unset: `make up` makes `<database>_app` itself when "
        "DATABASE_URL's role may create roles, else the workers use DATABASE_URL (refused "
        "with ENVIRONMENT=production)",
        per_deployment=False,
    )
    log_rotate_size: Annotated[int, BeforeValidator(parse_size)] = setting(
        "100M",
        "each log under .run/logs/ is rotated once it reaches this size: bytes, or with a K, M "
        "or G suffix (the rotator checks every second); Compose gives it to Docker's json-file "
        "driver",
    )
    log_keep: int = setting(
        5,
        "rotated files kept of each log; the oldest is deleted (Compose: files in all)",
        ge=1,
    )
    prometheus_scrape_interval: int = setting(
        5,
        "seconds between two of Prometheus's scrapes and rule evaluations (Compose's keeps "
        "deploy/prometheus/prometheus.yml's 5); shorter shows a short load test in more "
        "points at more scrapes' cost, and a step of `make sweep` lasts two scrapes at least",
        ge=1,
        le=60,
    )
    prometheus_retention_size: str = setting(
        "1GB",
        "Prometheus deletes its oldest data past this size (--storage.tsdb.retention.size, "
        "with its own units: KB, MB, GB); its 15-day time limit still holds",
        pattern=r"^[0-9]+(B|KB|MB|GB|TB)$",
    )
    tls: Literal["off", "self-signed", "files"] = setting(
        "off",
        "TLS at nginx: `self-signed` (a local CA, .run/tls/ca.pem, and a certificate for this "
        "host's names), `files` (TLS_CERT, TLS_KEY); HTTPS on HTTPS_PORT, HSTS, plain HTTP "
        "redirected but for the probes",
        per_deployment=False,
    )
    tls_cert: Path | None = setting(
        None, "TLS=files: the certificate chain, PEM, leaf first", per_deployment=False
    )
    tls_key: Path | None = setting(None, "TLS=files: its private key, PEM", per_deployment=False)
    https_port: int = setting(
        8443,
        "nginx's HTTPS server, on LISTEN_ADDRESS, with TLS on",
        ge=1,
        le=65535,
        per_deployment=False,
    )
    app_upstream: str | None = setting(
        None,
        "nginx's upstream: unset, the local gunicorn's socket; `HOST:PORT` for app hosts "
        "elsewhere, a name that resolves to every app host (as Compose's `app` does)",
        per_deployment=False,
    )
    rate_limit_rps: int = setting(
        100,
        "requests a second nginx takes from one client address before answering 429 (with "
        "bursts of RATE_LIMIT_BURST); Compose reads it too",
        ge=1,
        le=1_000_000,
    )
    rate_limit_burst: int = setting(
        200, "requests above the rate one client address may send at once", ge=0, le=1_000_000
    )
    conn_limit: int = setting(
        100, "connections one client address may hold open at once", ge=1, le=1_000_000
    )
    rate_limit_exempt: Annotated[str, AfterValidator(cidrs)] = setting(
        "127.0.0.0/8 ::1",
        "client addresses (CIDRs, space- or comma-separated) nginx does not limit: loopback, "
        "so that the load tests measure the stack; empty: every client is limited",
    )
    metrics_targets: str | None = setting(
        None,
        "what Prometheus scrapes for the app's metrics: unset, the ops server; with app hosts "
        "elsewhere, each host's `HOST:PORT` (space-separated), so that each has its own series",
        per_deployment=False,
    )
