"""The container deployment (Dockerfile, docker-compose.yml, .env.example), checked without a
Docker engine by the tools' own code: hadolint, BuildKit's Dockerfile parser, Docker's SDK
walking the build context through .dockerignore, the Compose spec's schema (check-jsonschema
ships it). Held to native mode's topology, ports and files (`python -m deploy.native`) so the
two modes cannot drift apart."""

import io
import json
import os
import re
import subprocess
import sys
import tomllib
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from string import Template
from typing import Any
from urllib.parse import urlsplit

import check_jsonschema
import dockerfile as buildkit_parser
import pytest
from docker.utils.build import PatternMatcher, exclude_paths
from dotenv import dotenv_values
from ruamel.yaml import YAML
from sqlalchemy.engine import make_url

from deploy import settings_docs
from deploy.compose.settings import placeholders as compose_placeholders
from deploy.image.build import BASE_IMAGE, DEFAULT_TAG
from deploy.native import nginx
from deploy.native.layout import RunLayout
from deploy.native.settings import StackSettings, cidrs
from deploy.native.state import Stack
from service.config import (
    ROOT,
    BudgetSettings,
    ConfigurationError,
    GunicornSettings,
    Settings,
    load,
    load_settings,
)
from tests.deploy.prometheus.test_prometheus_config import load_yaml, promtool

BIN = Path(sys.executable).parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
NATIVE_RUNNER = ROOT / "deploy" / "native"
NGINX_CONF = ROOT / "nginx.conf"
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"

PLACEHOLDER = re.compile(r"\$\{([A-Z_]+)\}")
# Compose interpolation: $$ is a literal $, ${NAME}, ${NAME:-default}, ${NAME:?error}, ...
INTERPOLATION = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")
# The short port syntax this file uses: HOST_IP:HOST_PORT:CONTAINER_PORT.
PORT_MAPPING = re.compile(r"^(?P<ip>[0-9.]+):(?P<host>[^:]+|\$\{[^}]+\}):(?P<container>\d+)$")
CORE_SERVICES = ("db", "migrate", "app", "nginx")
# nginx-prometheus-exporter's default --web.listen-address; native mode runs Debian's
# prometheus-nginx-exporter on 127.0.0.1 at the same port.
EXPORTER_PORT = 9113
GUNICORN_COMMAND = ["gunicorn", "--config", "gunicorn.conf.py"]


# --- helpers: Compose ------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    data = YAML(typ="safe", pure=True).load(COMPOSE_FILE)
    assert isinstance(data, dict), "docker-compose.yml is not a mapping"
    return data


def services() -> dict[str, dict[str, Any]]:
    found = compose()["services"]
    assert isinstance(found, dict)
    return found


def interpolate(value: str, env: dict[str, str]) -> str:
    """What Compose makes of `value` when the environment (and .env) hold `env`."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, operator, argument = match.group(1), match.group(2), match.group(3)
        if operator in (":-", "-") and not env.get(name):
            return str(argument)
        assert name in env, f"{name} is not set and has no default"
        return env[name]

    return INTERPOLATION.sub(replace, value)


def interpolated_names() -> set[str]:
    """Every variable docker-compose.yml takes from the environment or .env."""
    return {m.group(1) for m in INTERPOLATION.finditer(COMPOSE_FILE.read_text()) if m.group(1)}


def depends_on(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    deps = service.get("depends_on", {})
    if isinstance(deps, list):
        return {name: {"condition": "service_started"} for name in deps}
    assert isinstance(deps, dict)
    return deps


def env_files(service: dict[str, Any]) -> list[str]:
    files = service.get("env_file", [])
    entries = [files] if isinstance(files, str) else files
    return [entry if isinstance(entry, str) else entry["path"] for entry in entries]


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool


def mounts(service: dict[str, Any]) -> list[Mount]:
    found = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            found.append(Mount(source, target, "ro" in "".join(mode).split(",")))
        else:
            found.append(
                Mount(volume["source"], volume["target"], bool(volume.get("read_only", False)))
            )
    return found


def bind_source(mount: Mount) -> Path | None:
    """The host path of a bind mount (None for a named volume)."""
    if not mount.source.startswith((".", "/")):
        return None
    return (COMPOSE_FILE.parent / mount.source).resolve()


@dataclass(frozen=True)
class Published:
    host_ip: str
    host_port: str
    container_port: int


def published(service: dict[str, Any]) -> list[Published]:
    found = []
    for entry in service.get("ports", []):
        assert isinstance(entry, str), f"use the short port syntax: {entry!r}"
        match = PORT_MAPPING.match(entry)
        assert match, f"port {entry!r} is not HOST_IP:HOST_PORT:CONTAINER_PORT"
        found.append(Published(match["ip"], match["host"], int(match["container"])))
    return found


def networks(service: dict[str, Any]) -> set[str]:
    return set(service.get("networks", ["default"]))


def duration_seconds(value: str | int) -> float:
    """A Compose duration ("35s", "1m30s") in seconds."""
    if isinstance(value, int):
        return float(value)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 0.000001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", value)
    assert parts, f"not a duration: {value!r}"
    assert "".join(number + unit for number, unit in parts) == value, f"bad duration {value!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def nginx_render_script() -> str:
    """The nginx service's start script, as its shell sees it (after Compose's interpolation)."""
    command = services()["nginx"]["command"]
    assert isinstance(command, list), "nginx: use an exec-form command"
    assert command[:2] == ["/bin/sh", "-euc"], command
    return interpolate(command[2], {})


def envsubst_names(script: str) -> set[str]:
    """The variables the script lets envsubst replace (its SHELL-FORMAT argument)."""
    match = re.search(r"envsubst\s+'([^']*)'", script)
    assert match, "nginx must call envsubst with an explicit variable list"
    names = PLACEHOLDER.findall(match.group(1))
    assert match.group(1).split() == [f"${{{name}}}" for name in names], match.group(1)
    return set(names)


# --- helpers: Dockerfile, native mode ---------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction as BuildKit's own parser reads it (continuations joined,
    comments and parser directives gone, the exec form's JSON decoded)."""

    keyword: str
    flags: tuple[str, ...]
    value: tuple[str, ...]
    exec_form: bool

    @property
    def text(self) -> str:
        return " ".join((self.keyword, *self.flags, *self.value))


def dockerfile() -> tuple[list[Instruction], list[list[Instruction]]]:
    """The global instructions (before the first FROM) and each build stage's instructions."""
    preamble: list[Instruction] = []
    stages: list[list[Instruction]] = []
    for command in buildkit_parser.parse_file(str(DOCKERFILE)):
        instruction = Instruction(
            str(command.cmd).upper(), tuple(command.flags), tuple(command.value), command.json
        )
        if instruction.keyword == "FROM":
            stages.append([])
        (stages[-1] if stages else preamble).append(instruction)
    assert stages, "Dockerfile has no FROM"
    return preamble, stages


def stage_named(stages: list[list[Instruction]], name: str) -> list[Instruction]:
    for stage in stages:
        _, *alias = stage[0].value
        if [word.upper() for word in alias[:1]] == ["AS"] and alias[1:] == [name]:
            return stage
    raise AssertionError(f"Dockerfile has no stage {name!r}")


def arg_defaults(instructions: list[Instruction]) -> dict[str, str]:
    """The defaults of the build ARGs these instructions declare."""
    return dict(
        word.partition("=")[::2] for i in instructions if i.keyword == "ARG" for word in i.value
    )


def base_images() -> list[str]:
    """Each stage's base image with the global build ARGs' defaults filled in; a stage built
    on an earlier stage (`FROM build AS app`) is not an image."""
    preamble, stages = dockerfile()
    args = arg_defaults(preamble)
    names = {stage[0].value[2] for stage in stages if len(stage[0].value) == 3}
    bases = [Template(stage[0].value[0]).substitute(args) for stage in stages]
    return [base for base in bases if base not in names]


def env_of(stage: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in stage:
        if instruction.keyword == "ENV":
            env.update(zip(instruction.value[::2], instruction.value[1::2], strict=True))
    return env


def exec_form(instruction: Instruction) -> list[str]:
    """The argv of a CMD/ENTRYPOINT/HEALTHCHECK CMD, or fail for the shell form."""
    assert instruction.exec_form, f"{instruction.keyword} is not in exec form"
    if instruction.keyword == "HEALTHCHECK":
        assert instruction.value[0] == "CMD", instruction.value
        return list(instruction.value[1:])
    return list(instruction.value)


def copy_sources(stage: list[Instruction]) -> list[list[str]]:
    """The build-context sources of each COPY in `stage` (COPY --from=... excluded)."""
    return [
        list(instruction.value[:-1])
        for instruction in stage
        if instruction.keyword in ("COPY", "ADD")
        and not any(flag.startswith("--from=") for flag in instruction.flags)
    ]


def dockerignore_patterns() -> list[str]:
    """The patterns of .dockerignore, as Docker reads them (a comment starts the line)."""
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def build_context() -> set[str]:
    """Every path (file or directory) `docker build .` sends from this tree: Docker's SDK
    walks it with its port of Docker's .dockerignore matcher (`*` stays within one path
    segment, a parent's match leaves out what is under it, `!` lets a path back in)."""
    return set(exclude_paths(str(ROOT), dockerignore_patterns(), dockerfile=DOCKERFILE.name))


def native_nginx_values() -> set[str]:
    """The placeholders native mode fills nginx.conf's with."""
    stack = Stack(RunLayout(Path("/run/notes")), StackSettings())
    return set(nginx.values(stack))


def env_example() -> dict[str, str]:
    """.env.example's variables, read by python-dotenv (what the settings read a .env with)."""
    values = dotenv_values(ENV_EXAMPLE)
    unset = [name for name, value in values.items() if value is None]
    assert not unset, f".env.example: not NAME=value: {unset}"
    return {name: str(value) for name, value in values.items()}


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=False)


def compose_schema_check(path: Path) -> tuple[int, str]:
    """check-jsonschema's command line against the Compose spec's schema that it ships, run
    in this process (no interpreter start per file): its exit status and what it printed."""
    printed = io.StringIO()
    with redirect_stdout(printed), redirect_stderr(printed):
        try:
            check_jsonschema.main(["--builtin-schema", "vendor.compose-spec", str(path)])
        except SystemExit as exit_:
            return int(exit_.code or 0), printed.getvalue()
    raise AssertionError("check-jsonschema returned without an exit status")


# --- linters and schema ------------------------------------------------------------------------


def test_hadolint_passes() -> None:
    result = run_tool(str(BIN / "hadolint"), "--no-color", "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_matches_the_compose_spec() -> None:
    status, printed = compose_schema_check(COMPOSE_FILE)
    assert status == 0, printed


def test_the_linters_refuse_what_they_should(tmp_path: Path) -> None:
    """hadolint and the Compose schema each fail a file with a known fault: their passes
    above mean something."""
    bad_dockerfile = tmp_path / "Dockerfile"
    bad_dockerfile.write_text("FROM python:latest\nRUN cd /app && pip install gunicorn\n")
    result = run_tool(str(BIN / "hadolint"), "--no-color", str(bad_dockerfile))
    assert result.returncode != 0
    assert {"DL3007", "DL3003", "DL3013"} <= set(re.findall(r"DL\d{4}", result.stdout))
    compose_file = tmp_path / "docker-compose.yml"
    compose_file.write_text("services:\n  app:\n    image: notes:1\n    restart_policy: always\n")
    status, printed = compose_schema_check(compose_file)
    assert status == 1
    assert "'restart_policy' was unexpected" in printed


# --- Dockerfile ---------------------------------------------------------------------------------


def test_images_are_pinned_and_python_matches_the_project() -> None:
    images = base_images()
    for image in images:
        assert re.fullmatch(r"[\w./-]+:[\w.-]+", image), f"unpinned base {image}"
        assert not image.endswith(":latest"), f"unpinned base {image}"
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    minor = re.search(r">=\s*(3\.\d+)", requires)
    assert minor, requires
    assert images[-1].startswith(f"python:{minor.group(1)}-slim"), images[-1]
    assert any(re.fullmatch(r"ghcr\.io/astral-sh/uv:\d+\.\d+\.\d+", image) for image in images)
    for service in services().values():
        if "image" in service and "build" not in service:
            assert re.search(r":[\w.-]+$", service["image"]), service["image"]
            assert not service["image"].endswith(":latest"), service["image"]


def test_dependencies_are_a_layer_of_their_own() -> None:
    _, stages = dockerfile()
    build = stage_named(stages, "build")
    sync = next(i for i in build if i.keyword == "RUN" and "uv sync" in i.text)
    assert any(flag.startswith("--mount=type=cache,") for flag in sync.flags), sync.flags
    for flag in ("--frozen", "--no-dev", "--no-install-project"):
        assert flag in sync.text.split(), f"uv sync without {flag}"
    before = build[: build.index(sync)]
    assert copy_sources(before) == [["pyproject.toml", "uv.lock"]]
    # The app stage adds another project's requirements to that venv, in a layer of its own.
    app = stage_named(stages, "app")
    assert app[0].value[0] == "build"
    # The code arrives only in the runtime stage, after the venv.
    runtime = stages[-1]
    venv = next(i for i in runtime if i.keyword == "COPY" and "--from=app" in i.flags)
    code = [i for i in runtime if i.keyword == "COPY" and "service/" in i.value]
    assert code
    assert runtime.index(code[0]) > runtime.index(venv)
    copied = {PurePosixPath(s).as_posix().rstrip("/") for c in copy_sources(runtime) for s in c}
    assert copied == {"service", "migrations", "alembic.ini", "gunicorn.conf.py"}


def test_runtime_stage_runs_gunicorn_as_non_root_without_build_tools() -> None:
    _, stages = dockerfile()
    runtime = stages[-1]
    text = "\n".join(i.text for i in runtime)
    assert not re.search(r"--from=uv\b|\buv\s+(sync|pip|run)\b", text), "uv in the runtime stage"
    assert not re.search(r"apt-get|apk add|gcc|build-essential|pip install", text)

    users = [i.value[0] for i in runtime if i.keyword == "USER"]
    assert users, "the runtime stage must set USER"
    assert users[-1].split(":")[0] not in ("root", "0"), users[-1]

    env = env_of(runtime)
    assert env["PATH"].split(":")[0] == "/app/.venv/bin"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["GUNICORN_BIND"] == "0.0.0.0:8000"
    run_dir = env["RUN_DIR"]
    assert run_dir.startswith("/tmp/")  # noqa: S108 (the container's own, created below)
    # RUN_DIR exists and belongs to the service's user before USER switches to it.
    assert re.search(rf"install -d -o (\S+) .*{re.escape(run_dir)}\b", text)

    healthchecks = [i for i in runtime if i.keyword == "HEALTHCHECK"]
    assert len(healthchecks) == 1
    probe = exec_form(healthchecks[0])
    assert probe[0] == "python"
    assert "urllib.request" in probe[-1]
    # On the port gunicorn binds (8000 unless GUNICORN_BIND says otherwise).
    assert "GUNICORN_BIND" in probe[-1]
    assert "/healthz" in probe[-1]

    commands = [i for i in runtime if i.keyword in ("CMD", "ENTRYPOINT")]
    assert commands, "the runtime stage needs a CMD or ENTRYPOINT"
    argv = [part for i in commands for part in exec_form(i)]
    assert argv == GUNICORN_COMMAND, argv


def test_build_context_holds_what_the_image_copies_and_no_secrets() -> None:
    ignored = PatternMatcher(dockerignore_patterns())
    for wanted_out in (
        ".env",
        ".venv",
        ".run",
        ".tools",
        ".git",
        ".pytest_cache",
        ".mypy_cache",
        ".ruff_cache",
        "loadtest/results",
        "service/__pycache__",
    ):
        assert ignored.matches(wanted_out), f".dockerignore lets {wanted_out} in"
    context = build_context()
    assert not [path for path in context if "__pycache__" in path.split("/")]
    _, stages = dockerfile()
    for stage in stages:
        for sources in copy_sources(stage):
            for written in sources:
                source = written
                # ${APP_PATH}: the notes (`.`, the context itself) or the example project.
                if "${" in written:
                    assert Template(written).substitute(arg_defaults(stage)) == "./"
                    source = Template(written).substitute(APP_PATH="examples/inventory")
                    assert (ROOT / source / "requirements.txt").is_file()
                assert (ROOT / source).exists(), f"COPY {source}: no such file"
                path = source.rstrip("/")
                assert path in context, f"COPY {source} is .dockerignored"
                # A directory arrives whole: every module under it is in the context.
                modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / path).rglob("*.py")}
                assert modules <= context, f"COPY {source} misses {sorted(modules - context)}"


# --- Compose: services, order, exposure ---------------------------------------------------------


def test_services_cover_the_native_components_plus_grafana() -> None:
    # Native mode: PostgreSQL, migrations, gunicorn, nginx, Prometheus and nginx's exporter.
    assert set(services()) == {
        "db",
        "migrate",
        "app",
        "nginx",
        "prometheus",
        "nginx-exporter",
        "grafana",
    }
    assert "version" not in compose()


def test_only_nginx_publishes_a_port_and_only_on_localhost() -> None:
    found = services()
    for name in (*CORE_SERVICES, "nginx-exporter"):
        assert bool(found[name].get("ports")) == (name == "nginx"), f"{name} publishes ports"
    for name, service in found.items():
        for port in published(service):
            assert port.host_ip == "127.0.0.1", f"{name} publishes on {port.host_ip}"
    prometheus = published(found["prometheus"])
    assert [p.container_port for p in prometheus] == [9090]
    assert interpolate(prometheus[0].host_port, {}) == "9090"
    grafana = published(found["grafana"])
    assert [p.container_port for p in grafana] == [3000]
    assert interpolate(grafana[0].host_port, {}) == "3000"


def test_start_order_db_then_migrate_then_app_then_nginx() -> None:
    found = services()
    assert "pg_isready" in " ".join(found["db"]["healthcheck"]["test"])
    assert depends_on(found["migrate"])["db"]["condition"] == "service_healthy"
    assert depends_on(found["app"])["migrate"]["condition"] == "service_completed_successfully"
    assert depends_on(found["nginx"])["app"]["condition"] == "service_healthy"
    migrate = found["migrate"]
    assert migrate["command"] == ["python", "-m", "service.stack.migrate"]
    assert migrate["image"] == found["app"]["image"]
    assert migrate["build"] == found["app"]["build"]
    assert migrate.get("restart") == "no"


def test_app_outlives_gunicorns_graceful_timeout() -> None:
    default = GunicornSettings.model_fields["gunicorn_graceful_timeout"].default
    configured = env_example()["GUNICORN_GRACEFUL_TIMEOUT"]
    grace = duration_seconds(services()["app"]["stop_grace_period"])
    assert grace > int(default), f"stop_grace_period {grace}s <= graceful_timeout {default}s"
    assert grace > int(configured), ".env.example's GUNICORN_GRACEFUL_TIMEOUT outlasts the stop"


def test_network_topology_is_nginx_app_db() -> None:
    found = services()
    declared = compose()["networks"]
    internal = {name for name, net in declared.items() if (net or {}).get("internal")}
    assert internal, "the app and database need an internal network"
    for name in ("db", "migrate", "app"):
        assert networks(found[name]) <= internal, f"{name} is on a network with a way out"
    assert networks(found["nginx"]) & internal, "nginx cannot reach the app"
    assert networks(found["nginx"]) - internal, "nginx cannot publish its port"
    # Prometheus scrapes nginx's ops server, never the app or the database directly; so does
    # the exporter, which Prometheus scrapes in turn.
    assert networks(found["prometheus"]) & networks(found["nginx"])
    assert not networks(found["prometheus"]) & internal
    assert networks(found["nginx-exporter"]) & networks(found["nginx"])
    assert networks(found["nginx-exporter"]) & networks(found["prometheus"])
    assert not networks(found["nginx-exporter"]) & internal
    assert "8081" in [str(port) for port in found["nginx"]["expose"]]


def test_secrets_come_from_the_uncommitted_env_file() -> None:
    found = services()
    for name in ("db", "migrate", "app"):
        assert env_files(found[name]) == [".env"], name
    for name, service in found.items():
        environment = service.get("environment", {})
        assert isinstance(environment, dict), f"{name}: use the mapping form of environment"
        for key, value in environment.items():
            if re.search(r"PASSWORD|DATABASE_URL|SECRET", key):
                assert re.fullmatch(r"\$\{\w+:\?[^}]+\}", str(value)), f"{name}: {key} inline"
    gitignored = (ROOT / ".gitignore").read_text().split()
    assert ".env" in gitignored


def test_settings_docs_and_env_example_are_generated_from_the_declarations() -> None:
    assert settings_docs.env_example() == ENV_EXAMPLE.read_text()
    assert settings_docs.settings_doc() == settings_docs.SETTINGS_DOC.read_text()
    result = subprocess.run(
        [sys.executable, "-m", "deploy.settings_docs", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_env_example_sets_what_compose_reads_with_placeholders() -> None:
    example = env_example()
    assert interpolated_names() <= example.keys()
    assert {name.upper() for name in Settings.model_fields} <= example.keys()
    for secret in ("POSTGRES_PASSWORD", "APP_DB_PASSWORD", "GRAFANA_ADMIN_PASSWORD"):
        assert example[secret] == "change-me"

    # The app logs in as the app role; the migrations as the owner, the image's POSTGRES_USER.
    for key, role in (("DATABASE_URL", "APP_DB"), ("MIGRATION_DATABASE_URL", "POSTGRES")):
        url = urlsplit(example[key])
        assert url.scheme == "postgresql+asyncpg"
        assert (url.hostname, url.port) == ("db", 5432), "the database is the compose service db"
        assert url.username == example[f"{role}_USER"], key
        assert url.password == example[f"{role}_PASSWORD"], key
        assert url.path == f"/{example['POSTGRES_DB']}"
    assert example["APP_DB_USER"] != example["POSTGRES_USER"]
    values = {name.lower(): value for name, value in example.items()}
    # As it is, the example is refused: its secrets are placeholders, and it says production.
    with pytest.raises(ConfigurationError, match="placeholder"):
        load_settings(**values)
    assert compose_placeholders(example) == [
        "APP_DB_PASSWORD",
        "DATABASE_URL",
        "GRAFANA_ADMIN_PASSWORD",
        "MIGRATION_DATABASE_URL",
        "POSTGRES_PASSWORD",
    ]
    edited = {name: value.replace("change-me", "Kx9-a-real-one") for name, value in example.items()}
    assert compose_placeholders(edited) == []
    settings = load_settings(**{name.lower(): value for name, value in edited.items()})
    assert settings.environment == "production"
    assert compose_placeholders({**edited, "ENVIRONMENT": "development"}) == []
    assert compose_placeholders({**example, "ENVIRONMENT": "development"}) == []


# --- Compose and native mode agree ------------------------------------------------------------


def test_both_modes_fill_exactly_nginx_confs_placeholders() -> None:
    template = set(PLACEHOLDER.findall(NGINX_CONF.read_text()))
    nginx = services()["nginx"]
    assert envsubst_names(nginx_render_script()) == template
    # RATE_LIMIT_EXEMPT is no placeholder: the script turns it into the included geo entries.
    assert set(nginx["environment"]) == template | {"RATE_LIMIT_EXEMPT"}
    assert native_nginx_values() == template


def test_both_modes_write_the_same_rate_limit_exemptions(tmp_path: Path) -> None:
    """Compose's start script, run by a real shell, writes the geo entries native mode writes,
    for the same RATE_LIMIT_EXEMPT."""
    script = nginx_render_script()
    loop = script[script.index("for network in") : script.index("rate-limit-exempt.conf") + 23]
    exempt = "10.0.0.0/8, 192.168.1.0/24 ::1"
    env = {"PATH": os.environ["PATH"], "RATE_LIMIT_EXEMPT": exempt, "NGINX_RUN_DIR": str(tmp_path)}
    subprocess.run(["/bin/sh", "-euc", loop], env=env, check=True)
    written = (tmp_path / "rate-limit-exempt.conf").read_text()
    assert written == nginx.exempt_geo(cidrs(exempt))
    assert written == "10.0.0.0/8 1;\n192.168.1.0/24 1;\n::1 1;\n"


@pytest.mark.parametrize("given", ["", "3"])
def test_both_modes_start_as_many_nginx_workers(given: str) -> None:
    """Compose's start script, run by a real shell: NGINX_WORKER_PROCESSES when given, else
    native mode's default for the host's cores."""
    script = nginx_render_script()
    line = next(line for line in script.splitlines() if "NGINX_WORKER_PROCESSES:=" in line)
    env = {"PATH": os.environ["PATH"], "NGINX_WORKER_PROCESSES": given}
    result = subprocess.run(
        ["/bin/sh", "-euc", f'{line}\necho "$NGINX_WORKER_PROCESSES"'],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cores = sum(line.startswith("processor") for line in cpuinfo)
    assert int(result.stdout) == int(given or nginx.default_worker_processes(cores))


def test_compose_renders_nginx_conf_completely_and_keeps_nginx_variables() -> None:
    nginx = services()["nginx"]
    env = {key: str(value) for key, value in nginx["environment"].items()}
    listed = envsubst_names(nginx_render_script())
    template = NGINX_CONF.read_text()
    rendered = PLACEHOLDER.sub(
        lambda m: env[m.group(1)] if m.group(1) in listed else m.group(0), template
    )
    assert not PLACEHOLDER.search(rendered)
    nginx_variables = re.compile(r"\$[a-z_]+")
    assert nginx_variables.findall(rendered) == nginx_variables.findall(template)
    # The upstream is the app service on the port gunicorn binds in the image.
    _, stages = dockerfile()
    bind_port = env_of(stages[-1])["GUNICORN_BIND"].rpartition(":")[2]
    assert env["APP_UPSTREAM"] == f"app:{bind_port}"
    assert env["NGINX_ACCESS_LOG"] == "/dev/stdout"
    assert env["NGINX_ERROR_LOG"] == "/dev/stderr"


def test_both_modes_serve_public_8080_and_ops_8081() -> None:
    native = {name.upper(): str(info.default) for name, info in StackSettings.model_fields.items()}
    assert (native["HTTP_PORT"], native["OPS_PORT"]) == ("8080", "8081")
    nginx = services()["nginx"]
    env = nginx["environment"]
    assert (str(env["HTTP_PORT"]), str(env["OPS_PORT"])) == ("8080", "8081")
    [public] = published(nginx)
    assert public.container_port == int(env["HTTP_PORT"])
    assert interpolate(public.host_port, {}) == native["HTTP_PORT"]
    assert interpolate(public.host_port, {"HTTP_PORT": "18080"}) == "18080"
    assert str(env["OPS_PORT"]) in [str(port) for port in nginx["expose"]]
    healthcheck = " ".join(nginx["healthcheck"]["test"])
    assert f"127.0.0.1:{env['HTTP_PORT']}/readyz" in healthcheck


def test_compose_uses_the_repos_nginx_conf_and_gunicorn_conf() -> None:
    found = services()
    [conf] = [m for m in mounts(found["nginx"]) if bind_source(m) == NGINX_CONF]
    assert conf.read_only
    assert re.search(rf"<\s*{re.escape(conf.target)}\s", nginx_render_script())
    app = found["app"]
    assert (COMPOSE_FILE.parent / app["build"]["context"]).resolve() == ROOT
    assert app["build"].get("dockerfile", "Dockerfile") == DOCKERFILE.name
    assert "command" not in app, "app must run the image's gunicorn"
    assert "entrypoint" not in app, "app must run the image's gunicorn"
    assert "gunicorn.conf.py" in (NATIVE_RUNNER / "gunicorn.py").read_text()


def test_monitoring_mounts_its_config_read_only() -> None:
    found = services()
    expected = {
        # The whole directory: prometheus.yml names rules/ and targets/ relative to itself.
        "prometheus": {PROMETHEUS_DIR},
        "grafana": {
            ROOT / "deploy" / "grafana" / "provisioning",
            ROOT / "deploy" / "grafana" / "dashboards",
        },
    }
    for name, sources in expected.items():
        binds = {bind_source(m): m for m in mounts(found[name]) if bind_source(m)}
        assert sources <= binds.keys(), f"{name} mounts {sorted(map(str, binds))}"
        assert all(binds[source].read_only for source in sources), name
    [config] = [m for m in mounts(found["prometheus"]) if bind_source(m) == PROMETHEUS_DIR]
    assert config.target == "/etc/prometheus"
    assert found["prometheus"]["entrypoint"] == ["/bin/sh", f"{config.target}/compose-start"]
    assert found["prometheus"]["command"][0] == "/bin/prometheus"


@pytest.mark.parametrize("stack_name", ["notes", "inventory"])
def test_composes_prometheus_names_the_app_job_after_stack_name(
    tmp_path: Path, stack_name: str
) -> None:
    """compose-start, run as Compose runs it: the repository's config with the app job renamed,
    which promtool accepts, and the command it was given run with that config."""
    work = tmp_path / "prometheus"
    env = {
        "PATH": os.environ["PATH"],
        "STACK_NAME": stack_name,
        "PROMETHEUS_CONFIG_DIR": str(PROMETHEUS_DIR),
        "PROMETHEUS_WORK_DIR": str(work),
    }
    script = str(PROMETHEUS_DIR / "compose-start")
    result = subprocess.run(
        ["/bin/sh", script, "echo", "ran"], env=env, capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["ran", f"--config.file={work}/prometheus.yml"]
    config = load_yaml(work / "prometheus.yml")
    jobs = [scrape["job_name"] for scrape in config["scrape_configs"]]
    assert jobs == [stack_name, "nginx", "prometheus"]
    checked = promtool("check", "config", str(work / "prometheus.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr

    refused = subprocess.run(
        ["/bin/sh", script, "echo"], env={**env, "STACK_NAME": "Bad_Name"},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert refused.returncode == 2
    assert "STACK_NAME='Bad_Name'" in refused.stderr


def test_prometheus_targets_are_compose_services_it_can_reach() -> None:
    found = services()
    nginx_env = found["nginx"]["environment"]
    expected = {
        "notes": f"nginx:{nginx_env['OPS_PORT']}",
        "nginx": f"nginx-exporter:{EXPORTER_PORT}",
    }
    for job, target in expected.items():
        groups = json.loads((PROMETHEUS_DIR / "targets" / f"{job}.json").read_text())
        assert [t for group in groups for t in group["targets"]] == [target], job
        host, _, port = target.partition(":")
        assert networks(found[host]) & networks(found["prometheus"]), f"{job}: {host} unreachable"
        assert port in [str(p) for p in found[host]["expose"]], f"{host} does not expose {port}"


def test_nginx_exporter_reads_the_ops_servers_stub_status() -> None:
    exporter = services()["nginx-exporter"]
    assert re.fullmatch(r"nginx/nginx-prometheus-exporter:\d+\.\d+\.\d+", exporter["image"])
    command = exporter["command"]
    assert isinstance(command, list), "nginx-exporter: use an exec-form command"
    ops_port = services()["nginx"]["environment"]["OPS_PORT"]
    assert command == [f"--nginx.scrape-uri=http://nginx:{ops_port}/stub_status"]
    assert depends_on(exporter)["nginx"]["condition"] == "service_started"
    assert exporter.get("restart") == "unless-stopped"
    # The ops server (not the public one) serves stub_status.
    servers = re.split(r"\n\s*server\s*\{", NGINX_CONF.read_text())
    [ops] = [server for server in servers if re.search(r"listen\s+\S*:\$\{OPS_PORT\};", server)]
    assert re.search(r"location\s*=\s*/stub_status\s*\{\s*stub_status;", ops)


# --- PgBouncer (make up POOLER=pgbouncer) -------------------------------------------------------

POOLER_FILE = ROOT / "deploy" / "compose" / "pgbouncer.yml"


def test_the_pooler_override_matches_the_compose_spec() -> None:
    status, printed = compose_schema_check(POOLER_FILE)
    assert status == 0, printed


def test_the_pooler_override_puts_pgbouncer_between_app_and_db_only() -> None:
    """The app reaches PgBouncer, told it is there; migrate still goes straight to db;
    PgBouncer, in transaction mode, sits on the internal network with no published port."""
    override = YAML(typ="safe", pure=True).load(POOLER_FILE)["services"]
    assert set(override) == {"pgbouncer", "app"}
    bouncer = override["pgbouncer"]
    assert re.fullmatch(r"edoburu/pgbouncer:v1\.\d+\.\d+(-p\d+)?", bouncer["image"])
    assert bouncer["networks"] == ["internal"]
    assert "ports" not in bouncer
    assert depends_on(bouncer) == {"db": {"condition": "service_healthy"}}
    env = {
        "POSTGRES_USER": "notes",
        "POSTGRES_PASSWORD": "secret",
        "POSTGRES_DB": "notes",
        "APP_DB_PASSWORD": "app-secret",
    }
    settings = {
        name: interpolate(str(value), env) for name, value in bouncer["environment"].items()
    }
    assert settings["POOL_MODE"] == "transaction"
    assert (settings["DB_HOST"], settings["DB_PORT"], settings["LISTEN_PORT"]) == (
        "db",
        "5432",
        "5432",
    )
    assert set(settings["IGNORE_STARTUP_PARAMETERS"].split(",")) == {"statement_timeout", "jit"}
    defaults = load(BudgetSettings)
    assert int(settings["MAX_CLIENT_CONN"]) == defaults.pgbouncer_max_client_conn
    assert int(settings["DEFAULT_POOL_SIZE"]) == defaults.pgbouncer_pool_size
    app = override["app"]
    url = make_url(interpolate(app["environment"]["DATABASE_URL"], env))
    assert (url.host, url.port, url.database) == ("pgbouncer", 5432, "notes")
    # The app role, on both sides of PgBouncer: never the owner.
    assert (url.username, url.password) == ("notes_app", "app-secret")
    assert (settings["DB_USER"], settings["DB_PASSWORD"]) == ("notes_app", "app-secret")
    assert app["environment"]["DB_POOLER"] == "pgbouncer"
    assert load_settings(db_pooler=app["environment"]["DB_POOLER"]).db_pooler == "pgbouncer"
    assert depends_on(app) == {"pgbouncer": {"condition": "service_started"}}
    assert "migrate" not in override  # its advisory lock needs a session of its own


# --- Local stand-ins (make up ENGINE=docker STANDINS=local) -------------------------------------

STANDINS_FILE = ROOT / "deploy" / "compose" / "standins.yml"
# The official images' stop signals: PostgreSQL's fast shutdown, nginx's graceful stop.
STOP_SIGNALS = {"db": "SIGINT", "nginx": "SIGQUIT"}


def test_the_standins_override_matches_the_compose_spec() -> None:
    status, printed = compose_schema_check(STANDINS_FILE)
    assert status == 0, printed


def test_the_standins_replace_only_the_images_of_db_and_nginx() -> None:
    """Each stand-in changes an image and how it is built, nothing of the service: command,
    volumes, networks, healthcheck and settings stay docker-compose.yml's. Each is built on
    the local base `make image` makes, passes hadolint, and stops as the official one does
    (tests/containers/test_compose.py runs them)."""
    override = YAML(typ="safe", pure=True).load(STANDINS_FILE)["services"]
    assert set(override) == set(STOP_SIGNALS)
    for name, service in override.items():
        assert set(service) == {"image", "build"}, name
        assert service["image"] != services()[name]["image"]
        context = ROOT / service["build"]["context"]
        result = run_tool(str(BIN / "hadolint"), "--no-color", str(context / "Dockerfile"))
        assert result.returncode == 0, result.stdout + result.stderr
        parsed = buildkit_parser.parse_file(str(context / "Dockerfile"))
        args = [c.value[0] for c in parsed if str(c.cmd).upper() == "ARG"]
        assert args == [f"BASE_IMAGE={BASE_IMAGE}"], args
        assert [c.value for c in parsed if str(c.cmd).upper() == "FROM"] == [("${BASE_IMAGE}",)]
        signals = [c.value[0] for c in parsed if str(c.cmd).upper() == "STOPSIGNAL"]
        assert signals == [STOP_SIGNALS[name]], name
    entrypoint = ROOT / "deploy" / "compose" / "standins" / "postgres" / "entrypoint.sh"
    checked = run_tool("/bin/sh", "-n", str(entrypoint))
    assert checked.returncode == 0, checked.stderr


def test_compose_runs_the_image_make_image_builds() -> None:
    found = services()
    assert found["app"]["image"] == found["migrate"]["image"] == DEFAULT_TAG


def test_make_hands_docker_mode_to_the_compose_cli() -> None:
    """make's own expansion of the recipes (`make -n`), for each knob."""

    def recipe(*argv: str) -> str:
        result = run_tool("make", "--no-print-directory", "-n", *argv)
        assert result.returncode == 0, result.stderr
        return result.stdout.splitlines()[-1]

    cli = "python -m deploy.compose.cli"
    up = recipe("up", "ENGINE=docker", "POOLER=pgbouncer", "STANDINS=local", "SERVICES=nginx")
    assert up.endswith(f"{cli} --pooler pgbouncer --standins up nginx"), up
    assert recipe("down", "ENGINE=docker").split()[-4:] == [*cli.split(), "down"]
    assert recipe("status", "ENGINE=docker").split()[-4:] == [*cli.split(), "ps"]
    assert recipe("up").endswith("python -m deploy.native up")
