"""The container tier's Docker engine: the running one, or dockerd started for the tier."""

from collections.abc import Iterator

import pytest

from deploy.image.build import ensure_engine


@pytest.fixture(scope="session")
def engine() -> Iterator[None]:
    """A Docker engine: the running one, or dockerd started for this tier and stopped after."""
    started = ensure_engine()
    yield
    if started is not None:
        started.terminate()
        started.wait(timeout=60)
