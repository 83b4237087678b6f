"""Reading what the stack reports: Prometheus exposition text, and Prometheus's query API
(through the stack's one client, `deploy.prometheus.client`)."""

import asyncio

from prometheus_client.parser import text_string_to_metric_families

from deploy.prometheus.client import Prometheus, Series, instant_path, series

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, keyed by name and labels."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


async def instant_query(prometheus_url: str, expr: str) -> list[Series]:
    """The result vector of an instant query; a query Prometheus rejects fails at once."""
    data = await asyncio.to_thread(Prometheus(prometheus_url).get, instant_path(expr))
    assert data["resultType"] == "vector", f"{expr}: {data['resultType']}"
    return series(data)
