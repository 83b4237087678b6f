"""The docker CLI for the container tier: `make image`'s own (Debian's, with BuildKit)."""

import subprocess

from deploy.image.build import docker_cli


def docker(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the docker CLI; with `check`, a failure fails the test with its stderr."""
    result = subprocess.run(
        [docker_cli(), *argv], capture_output=True, text=True, timeout=300, check=False
    )
    if check:
        assert result.returncode == 0, f"docker {' '.join(argv)}:\n{result.stderr}"
    return result
