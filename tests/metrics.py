"""Reading what the stack reports: Prometheus exposition text, and Prometheus's query API."""

from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

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


async def instant_query(client: httpx.AsyncClient, prometheus_url: str, expr: str) -> list[Any]:
    """The result vector of an instant query; a query Prometheus rejects fails at once."""
    response = await client.get(f"{prometheus_url}/api/v1/query", params={"query": expr})
    assert response.status_code == 200, f"{expr}: {response.text}"
    body = response.json()
    assert body["status"] == "success", f"{expr}: {body}"
    assert body["data"]["resultType"] == "vector", f"{expr}: {body['data']['resultType']}"
    result: list[Any] = body["data"]["result"]
    return result
