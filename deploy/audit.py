"""`make audit`: known vulnerabilities in the locked dependencies, then the container and
manifest checks.

    python -m deploy.audit [--service pypi|osv]

1. uv.lock's every package, exported pinned (`uv export`), is checked by pip-audit against a
   vulnerability service (PyPI's, or OSV). `--strict`: a package the service cannot answer for
   fails the audit, as a known vulnerability does. An audit that could not look is not a pass.
2. The checks of the Dockerfile, Compose and the Kubernetes manifests that run without an
   engine or a cluster (tests/deploy/test_containers.py, tests/deploy/kubernetes/): the
   non-root user, the read-only root filesystem, no capabilities, the network policies,
   secrets only by reference.

Exits 0 when both pass, 1 when either fails, naming which. It needs the vulnerability
service on the network, so CI does not run it (docs/security.md).
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from deploy.native.app_deps import uv_binary
from service.config import ROOT

PIP_AUDIT = "pip-audit==2.10.1"
MANIFEST_CHECKS = ("tests/deploy/test_containers.py", "tests/deploy/kubernetes")


def locked_requirements() -> str:
    """Every package uv.lock pins, as a requirements file (the project itself aside)."""
    return subprocess.run(
        [uv_binary(), "export", "--frozen", "--format", "requirements-txt", "--no-hashes",
         "--no-emit-project", "--quiet"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip


def vulnerabilities(service: str) -> int:
    """pip-audit on the locked requirements; its exit status."""
    with tempfile.TemporaryDirectory(prefix="audit-") as directory:
        requirements = Path(directory) / "requirements.txt"
        requirements.write_text(locked_requirements())
        print(f"audit: {PIP_AUDIT} against {service}, every package of uv.lock", flush=True)
        return subprocess.run(
            [uv_binary(), "tool", "run", "--python", sys.executable, PIP_AUDIT,
             "--requirement", str(requirements), "--no-deps", "--disable-pip", "--strict",
             "--vulnerability-service", service, "--progress-spinner", "off"],
            cwd=ROOT, check=False,
        ).returncode  # fmt: skip


def manifest_checks() -> int:
    """The container and manifest checks; pytest's exit status."""
    print("audit: the container and manifest checks", flush=True)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *MANIFEST_CHECKS]
    return subprocess.run(command, cwd=ROOT, check=False).returncode


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.audit", description=__doc__)
    parser.add_argument("--service", choices=("pypi", "osv"), default="pypi")
    args = parser.parse_args()
    failed = [
        name
        for name, status in (
            ("known vulnerabilities (or packages the service could not answer for)",
             vulnerabilities(args.service)),
            ("the container and manifest checks", manifest_checks()),
        )
        if status != 0
    ]  # fmt: skip
    for name in failed:
        print(f"audit: failed: {name}", file=sys.stderr)
    if not failed:
        print("audit: passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
