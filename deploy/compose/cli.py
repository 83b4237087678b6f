"""`make up|down|status|logs ENGINE=docker`: the stack with Docker Compose, whichever is here.

    python -m deploy.compose.cli [--pooler pgbouncer] [--standins] [--project-directory DIR]
        up [--scale SERVICE=N] [SERVICE...] | down [--volumes] | ps | logs

Compose is v2's `docker compose` when the docker CLI has it, else a `docker-compose` command:
Debian's is 1.29 (v1), the only one Debian 12 packages, installed when there is none (as
root, with apt-get). The command says which it found. v1 cannot read two things of
docker-compose.yml, and refuses the whole file for them: the top-level `name` (given here as
--project-name, `<STACK_NAME>-stack`, to both versions) and depends_on's `restart` (v2.17's
"restart nginx when app is recreated"). It is handed a copy without them, so there nginx does
not follow a recreated app (docs/operations.md).

`up` needs `.env` in the project directory (the checkout) and refuses its placeholder secrets
in production; builds the app image as `make image` does (`deploy.image`, offline from local
bases); with `--standins`, builds the local stand-ins of PostgreSQL and nginx
(deploy/compose/standins.yml) for a machine where no registry answers; starts the services
(all, or those named and what they depend on) without building; and returns once nginx answers
/readyz with 200, as native mode's `make up` does.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml  # type: ignore[import-untyped]
from dotenv import dotenv_values

from deploy.compose.settings import refusal
from deploy.image.build import DEFAULT_TAG, build, docker_cli, ensure_engine, local_base
from deploy.native.processes import StackError, fail, http_status, log, run_helper
from service.config import ROOT

COMPOSE_FILE = ROOT / "docker-compose.yml"
POOLER_FILES = {"pgbouncer": ROOT / "deploy" / "compose" / "pgbouncer.yml"}
STANDINS_FILE = ROOT / "deploy" / "compose" / "standins.yml"
# Seconds `up` waits for /readyz through nginx once Compose has started the services.
READY_WITHIN = 180


@dataclass(frozen=True)
class Compose:
    """A Compose command line and its version."""

    argv: tuple[str, ...]
    version: str

    @property
    def v1(self) -> bool:
        """Compose v1 (docker-compose 1.x, Python), which reads an older file format."""
        return self.version.split(".")[0] == "1"

    def __str__(self) -> str:
        name = "docker compose" if len(self.argv) > 1 else Path(self.argv[0]).name
        return f"{name} {self.version}"


def find() -> Compose:
    """v2's `docker compose` if the docker CLI has the plugin, else `docker-compose`."""
    candidates: list[tuple[str, ...]] = []
    docker = shutil.which("docker")
    if docker:
        candidates.append((docker, "compose"))
    standalone = shutil.which("docker-compose")
    if standalone:
        candidates.append((standalone,))
    for argv in candidates:
        result = subprocess.run(
            [*argv, "version", "--short"], capture_output=True, text=True, check=False
        )
        if result.returncode == 0 and result.stdout.strip():
            return Compose(argv, result.stdout.strip().removeprefix("v"))
    msg = (
        "ENGINE=docker needs Docker Compose: v2's `docker compose`, or docker-compose "
        "(Debian 12: apt-get install docker-compose, which is 1.29)"
    )
    raise StackError(msg)


def ensure_compose() -> Compose:
    """The Compose that is here; with none, Debian's docker-compose installed first
    (`install-deps compose`), as the other commands install what they need."""
    try:
        return find()
    except StackError:
        run_helper("install-deps", "compose")
    return find()


def settings_of(project_directory: Path) -> dict[str, str]:
    """What Compose interpolates with: the project's .env, then the environment over it."""
    env_file = project_directory / ".env"
    found = {key: value for key, value in dotenv_values(env_file).items() if value is not None}
    return {**found, **os.environ}


def project_name(settings: Mapping[str, str]) -> str:
    """docker-compose.yml's `name:`, `<STACK_NAME>-stack`, for both Compose versions."""
    return f"{settings.get('STACK_NAME') or 'notes'}-stack"


def v1_compose_file(directory: Path) -> Path:
    """docker-compose.yml as Compose v1 reads it: without `name:` and depends_on's `restart`."""
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    data.pop("name", None)
    for service in data["services"].values():
        for condition in (service.get("depends_on") or {}).values():
            if isinstance(condition, dict):
                condition.pop("restart", None)
    path = directory / "docker-compose.v1.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@dataclass(frozen=True)
class Project:
    """One Compose project: the command, its files, where it runs and under which name."""

    compose: Compose
    files: tuple[Path, ...]
    directory: Path
    name: str

    def argv(self, *command: str) -> list[str]:
        """The full command line of `compose <command>` for this project."""
        files = [arg for path in self.files for arg in ("--file", str(path))]
        return [
            *self.compose.argv, "--project-name", self.name,
            "--project-directory", str(self.directory), *files, *command,
        ]  # fmt: skip

    def run(self, *command: str) -> None:
        """Run `compose <command>`, its output on this terminal; fail when it fails."""
        result = subprocess.run(self.argv(*command), check=False)
        if result.returncode != 0:
            fail(f"{self.compose} {' '.join(command)} failed (exit {result.returncode})")

    def containers(self) -> list[dict[str, str]]:
        """This project's containers: name, state and exit code."""
        label = f"label=com.docker.compose.project={self.name}"
        listed = subprocess.run(
            [docker_cli(), "ps", "--all", "--filter", label, "--format", "{{.Names}}"],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        if not listed:
            return []
        inspected = subprocess.run(
            [docker_cli(), "inspect", "--format",
             "{{.Name}} {{.State.Status}} {{.State.ExitCode}}", *listed],
            capture_output=True, text=True, check=False,
        ).stdout.splitlines()  # fmt: skip
        rows = [line.split() for line in inspected if line.strip()]
        return [{"name": n.lstrip("/"), "state": s, "exit_code": c} for n, s, c in rows]


@contextmanager
def project(args: argparse.Namespace) -> Iterator[Project]:
    """The project these arguments name, with v1's copy of the file for as long as it runs."""
    compose = ensure_compose()
    directory = Path(args.project_directory).resolve()
    with tempfile.TemporaryDirectory(prefix="notes-compose-") as scratch:
        base = v1_compose_file(Path(scratch)) if compose.v1 else COMPOSE_FILE
        files = [base]
        if args.pooler:
            files.append(POOLER_FILES[args.pooler])
        if args.standins:
            files.append(STANDINS_FILE)
        name = project_name(settings_of(directory))
        yield Project(compose, tuple(files), directory, name)


def said(compose: Compose) -> str:
    """Which Compose this is, and what it means for the file."""
    if compose.v1:
        return (
            f"{compose} (Compose v1: docker-compose.yml without `name:` and depends_on's "
            "`restart`, which v1 cannot read)"
        )
    return str(compose)


def build_standins() -> None:
    """The stand-in images of standins.yml, on the local base, with the engine's own builder."""
    base = local_base()
    services = yaml.safe_load(STANDINS_FILE.read_text())["services"]
    for name, service in services.items():
        context = ROOT / service["build"]["context"]
        log(f"compose: stand-in for {name}: {service['image']} from {context.relative_to(ROOT)}")
        result = subprocess.run(
            [docker_cli(), "build", "--quiet", "--build-arg", f"BASE_IMAGE={base}",
             "--tag", service["image"], str(context)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            fail(f"docker build of the {name} stand-in failed:\n{result.stderr[-4000:]}")


def up(args: argparse.Namespace, stack: Project) -> None:
    """Build the app image (and the stand-ins), start the services, wait for /readyz."""
    env_file = stack.directory / ".env"
    if not env_file.is_file():
        fail(f"Docker Compose needs {env_file}: cp .env.example .env, then replace every change-me")
    refused = refusal(env_file)
    if refused:
        fail(refused)
    settings = settings_of(stack.directory)
    ensure_engine()
    build(settings.get("APP_PATH") or ".", DEFAULT_TAG)
    if args.standins:
        build_standins()
    started = time.monotonic()
    scale = [arg for pair in args.scale for arg in ("--scale", pair)]
    stack.run("up", "--detach", "--no-build", *scale, *args.services)
    if args.services and "nginx" not in args.services:
        log(f"compose: {' '.join(args.services)} started in {time.monotonic() - started:.1f}s")
        return
    url = f"http://127.0.0.1:{settings.get('HTTP_PORT') or 8080}"
    while http_status(f"{url}/readyz") != 200:
        broken = [
            row["name"]
            for row in stack.containers()
            if row["state"] == "restarting"
            or (row["state"] == "exited" and row["exit_code"] != "0")
        ]
        if broken:
            fail(f"compose: {', '.join(broken)} stopped or restarting: make logs ENGINE=docker")
        if time.monotonic() - started > READY_WITHIN:
            fail(f"compose: {url}/readyz did not answer 200 within {READY_WITHIN}s")
        time.sleep(0.5)
    log(f"compose: ready in {time.monotonic() - started:.1f}s at {url}/api/v1/notes")


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pooler", choices=sorted(POOLER_FILES), help="deploy/compose/<pooler>.yml"
    )
    parser.add_argument(
        "--standins", action="store_true", help="local PostgreSQL and nginx (standins.yml)"
    )
    parser.add_argument(
        "--project-directory", default=str(ROOT), help="where .env is (default: the checkout)"
    )
    verbs = parser.add_subparsers(dest="verb", required=True)
    start = verbs.add_parser("up", help="build, start, wait for /readyz through nginx")
    start.add_argument("--scale", action="append", default=[], metavar="SERVICE=N")
    start.add_argument("services", nargs="*", help="these and what they depend on (default: all)")
    stop = verbs.add_parser("down", help="stop and remove the containers and networks")
    stop.add_argument("--volumes", action="store_true", help="and the volumes (the database)")
    verbs.add_parser("ps", help="the containers")
    verbs.add_parser("logs", help="follow the containers' logs")
    args = parser.parse_args()
    try:
        with project(args) as stack:
            log(f"compose: {said(stack.compose)}, project {stack.name}")
            if args.verb == "up":
                up(args, stack)
            elif args.verb == "down":
                stack.run("down", "--remove-orphans", *(["--volumes"] if args.volumes else []))
            elif args.verb == "ps":
                stack.run("ps")
            else:
                stack.run("logs", "--follow")
    except StackError as exc:
        print(f"stack: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
