"""`make bench BENCH=statements` runs the service's own statements: on a small table, every one
of them runs and is timed at each size."""

from sqlalchemy.engine import URL

from loadtest.bench.statements import measure, statements
from tests.postgres import fresh_database, migrate


async def test_every_statement_runs_at_each_size(pg_server: URL) -> None:
    with fresh_database(pg_server) as url:
        result = migrate(url, "upgrade", "head")
        assert result.returncode == 0, result.stderr
        timings = await measure(url.render_as_string(hide_password=False), [100, 300])
    assert timings.keys() == statements().keys()
    assert all(len(values) == 2 and all(v > 0 for v in values) for values in timings.values())
