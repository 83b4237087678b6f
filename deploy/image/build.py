"""`make image`: the service image, built with the real engine, offline if need be.

    python -m deploy.image [--app-path DIR] [--tag TAG]

The Dockerfile's defaults are the official images (`python:3.11-slim-bookworm`, uv's own
image), for a machine that can pull them. Where no registry answers, the bases are made here,
the way air-gapped builds make them, and named by build arguments, never by an edit of the
Dockerfile:

- `PYTHON_IMAGE`: unless set, `notes-stack-base:bookworm`, Debian bookworm (whose python3 is
  3.11) from `debootstrap --variant=minbase` against Debian's mirror, imported once and kept
  while the engine keeps it;
- `UV_IMAGE`: unless set, an image holding only `/uv`, the binary the project already runs
  (`.tools/bin/uv`), tagged with its version;
- a proxy's CA: when `SSL_CERT_FILE` names a trust store, it is the build secret
  `ca-certificates`, so that uv can reach PyPI through the proxy; it never reaches a layer.

The dependencies come from `uv.lock` (`uv sync --frozen`). With `--app-path` (make's
`APP_PATH`), the image serves that project of the build context (docs/your-app.md). The
engine is started (as root) when none answers; `docker info` failing after that is an error,
not a skip.
"""

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from deploy.native.app_deps import uv_binary
from deploy.native.processes import fail, log, run_helper, wait_for
from service.config import ROOT

BASE_IMAGE = "notes-stack-base:bookworm"
DEFAULT_TAG = "notes-stack-app:local"
DEBIAN_MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
DOCKERD_LOG = Path(tempfile.gettempdir()) / "notes-stack-dockerd.log"


def docker_cli() -> str:
    """A docker CLI that builds with BuildKit without the buildx plugin (Debian's), else the
    one on PATH (which then has buildx)."""
    debian = Path("/usr/bin/docker")
    found = str(debian) if debian.exists() else shutil.which("docker")
    if found is None:
        fail("no docker CLI: apt-get install docker.io (make image installs it as root)")
    return found


def docker(*argv: str, check: bool = True, quiet: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the docker CLI with BuildKit."""
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    return subprocess.run(
        [docker_cli(), *argv], env=env, capture_output=quiet, text=True, check=check
    )


def engine_answers() -> bool:
    """Whether a Docker engine answers."""
    return docker("info", check=False).returncode == 0


def ensure_engine() -> subprocess.Popen[bytes] | None:
    """A running engine: start Debian's dockerd (as root) when none answers, and return it
    (None when one already ran), so that whoever started it can stop it."""
    if engine_answers():
        return None
    run_helper("install-deps", "docker")
    if os.geteuid() != 0:
        fail("no Docker engine answers, and only root can start one: sudo dockerd")
    log(f"docker: starting dockerd (its log: {DOCKERD_LOG})")
    with DOCKERD_LOG.open("ab") as out:
        dockerd = subprocess.Popen(
            ["/usr/sbin/dockerd"], stdout=out, stderr=out, start_new_session=True
        )
    wait_for("the Docker engine", engine_answers, 60, interval=0.5)
    return dockerd


def image_exists(tag: str) -> bool:
    """Whether the engine holds `tag`."""
    return docker("image", "inspect", tag, check=False).returncode == 0


def local_base() -> str:
    """Debian bookworm with Python 3.11, made with debootstrap once per engine."""
    if image_exists(BASE_IMAGE):
        return BASE_IMAGE
    run_helper("install-deps", "debootstrap")
    with tempfile.TemporaryDirectory(prefix="notes-stack-base-") as directory:
        rootfs = Path(directory) / "rootfs"
        log(f"image: debootstrap bookworm (minbase, python3) from {DEBIAN_MIRROR}")
        result = subprocess.run(
            ["/usr/sbin/debootstrap", "--variant=minbase",
             "--include=python3,ca-certificates", "bookworm", str(rootfs), DEBIAN_MIRROR],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            fail(f"debootstrap failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            [docker_cli(), "import", "-", BASE_IMAGE],
            stdin=tar.stdout, capture_output=True, text=True, check=False,
        )  # fmt: skip
        tar.wait()
        if imported.returncode != 0 or tar.returncode != 0:
            fail(f"docker import of the base failed: {imported.stderr}")
    log(f"image: base {BASE_IMAGE} made")
    return BASE_IMAGE


def local_uv() -> str:
    """An image holding only `/uv`, the binary this project runs, tagged by its version."""
    uv = uv_binary()
    version = subprocess.run([uv, "--version"], capture_output=True, text=True, check=True)
    tag = f"notes-stack-uv:{version.stdout.split()[1]}"
    if image_exists(tag):
        return tag
    with tempfile.TemporaryDirectory(prefix="notes-stack-uv-") as directory:
        shutil.copy2(uv, Path(directory) / "uv")
        (Path(directory) / "Dockerfile").write_text("FROM scratch\nCOPY uv /uv\n")
        docker("build", "--quiet", "--tag", tag, directory)
    return tag


def build(app_path: str, tag: str) -> None:
    """Build the service image `tag` serving the project at `app_path` (`.`: the notes)."""
    ensure_engine()
    python_image = os.environ.get("PYTHON_IMAGE") or local_base()
    uv_image = os.environ.get("UV_IMAGE") or local_uv()
    argv = [
        "build", "--tag", tag, "--target", "runtime",
        "--build-arg", f"PYTHON_IMAGE={python_image}",
        "--build-arg", f"UV_IMAGE={uv_image}",
        "--build-arg", f"APP_PATH={app_path}",
    ]  # fmt: skip
    certificates = os.environ.get("SSL_CERT_FILE")
    if certificates and Path(certificates).is_file():
        argv += ["--secret", f"id=ca-certificates,src={certificates}"]
    log(f"image: building {tag} (APP_PATH={app_path}) on {python_image}, uv from {uv_image}")
    started = time.monotonic()
    result = docker(*argv, str(ROOT), check=False)
    if result.returncode != 0:
        fail(f"docker build failed:\n{result.stderr[-4000:]}")
    size = docker("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip()
    log(f"image: {tag} built in {time.monotonic() - started:.1f}s, {int(size) / 1e6:.0f} MB")


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app-path", default=".", help="the app's directory in the context")
    parser.add_argument("--tag", default=DEFAULT_TAG)
    args = parser.parse_args()
    app_path = Path(args.app_path)
    if app_path.is_absolute():
        try:
            app_path = app_path.relative_to(ROOT)
        except ValueError:
            parser.error(f"--app-path {args.app_path} is outside the build context {ROOT}")
    if not (ROOT / app_path).is_dir():
        parser.error(f"--app-path {args.app_path}: no such directory")
    build(app_path.as_posix() or ".", args.tag)
