"""`make audit`'s inputs: what it asks the vulnerability service about is every package uv.lock
pins, at its locked version. (The service itself is not reachable from CI: docs/security.md.)"""

import tomllib

from deploy.audit import MANIFEST_CHECKS, locked_requirements
from service.config import ROOT


def test_the_audit_asks_about_every_locked_package_at_its_version() -> None:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"]
    locked = {
        package["name"]: package["version"]
        for package in lock["package"]
        if package["name"] != project and "version" in package
    }
    pinned = {}
    for line in locked_requirements().splitlines():
        requirement = line.split(";")[0].strip()
        if requirement and not requirement.startswith(("#", "-")):
            name, _, version = requirement.partition("==")
            pinned[name.lower().replace("_", "-")] = version
    assert pinned == {name.lower().replace("_", "-"): v for name, v in locked.items()}


def test_the_manifest_checks_it_runs_exist() -> None:
    assert all((ROOT / path).exists() for path in MANIFEST_CHECKS)
