"""Decoding a list of 10 000 EndpointSlices of 10 endpoints: raw orjson, as waolb's reflector does,
against the Kubernetes client's model objects (ApiClient.deserialize into V1EndpointSliceList).

Both run in the same session; the second records the ratio of the means in its extra_info
(``client_models_over_raw_orjson``), since only figures of one run compare on shared machines.
"""

import random
from typing import Any

import orjson
import pytest
from kubernetes.client import ApiClient, Configuration
from pytest_benchmark.fixture import BenchmarkFixture

SLICES = 10_000
ENDPOINTS_PER_SLICE = 10

pytestmark = pytest.mark.benchmark(group="decode a list of 10 000 EndpointSlices x 10 endpoints")


def endpoint_slice_list() -> bytes:
    """A LIST answer shaped as the API server sends it (items without apiVersion and kind)."""
    rng = random.Random(20250226)  # a fixed seed: every run decodes the same bytes
    items: list[dict[str, Any]] = []
    for index in range(SLICES):
        service = f"svc-{index // 2}"
        items.append(
            {
                "metadata": {
                    "name": f"{service}-{index:05x}",
                    "generateName": f"{service}-",
                    "namespace": f"ns-{index % 50}",
                    "uid": f"00000000-0000-4000-8000-{index:012d}",
                    "resourceVersion": str(100_000 + index),
                    "generation": 1,
                    "creationTimestamp": "2025-02-26T09:00:00Z",
                    "labels": {
                        "kubernetes.io/service-name": service,
                        "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                    },
                },
                "addressType": "IPv4",
                "endpoints": [
                    {
                        "addresses": [f"10.{rng.randrange(256)}.{rng.randrange(256)}.{slot + 1}"],
                        "conditions": {"ready": True, "serving": True, "terminating": False},
                        "nodeName": f"node-{rng.randrange(100)}",
                        "zone": f"zone-{rng.randrange(3)}",
                        "targetRef": {
                            "kind": "Pod",
                            "namespace": f"ns-{index % 50}",
                            "name": f"{service}-pod-{slot}",
                            "uid": f"11111111-0000-4000-8000-{index * 16 + slot:012d}",
                        },
                    }
                    for slot in range(ENDPOINTS_PER_SLICE)
                ],
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            }
        )
    return orjson.dumps(
        {
            "kind": "EndpointSliceList",
            "apiVersion": "discovery.k8s.io/v1",
            "metadata": {"resourceVersion": "200000"},
            "items": items,
        }
    )


PAYLOAD = endpoint_slice_list()
_MEANS: dict[str, float] = {}


def _record_mean(benchmark: BenchmarkFixture, decoder: str) -> None:
    if benchmark.stats is None:  # benchmarks disabled: nothing was measured
        return
    _MEANS[decoder] = benchmark.stats.stats.mean
    if {"orjson", "client"} <= _MEANS.keys():
        ratio = _MEANS["client"] / _MEANS["orjson"]
        benchmark.extra_info["client_models_over_raw_orjson"] = round(ratio, 1)


def test_decode_raw_orjson(benchmark: BenchmarkFixture) -> None:
    decoded = benchmark(orjson.loads, PAYLOAD)
    assert len(decoded["items"]) == SLICES
    assert len(decoded["items"][-1]["endpoints"]) == ENDPOINTS_PER_SLICE
    _record_mean(benchmark, "orjson")


def test_decode_client_models(benchmark: BenchmarkFixture) -> None:
    client = ApiClient(Configuration())

    def deserialize() -> Any:
        # What the client does with a preloaded response: text, then models.
        return client.deserialize(PAYLOAD.decode(), "V1EndpointSliceList", "application/json")

    # Seconds per round: a few rounds are enough to compare.
    decoded = benchmark.pedantic(deserialize, rounds=3, iterations=1)
    assert len(decoded.items) == SLICES
    assert len(decoded.items[-1].endpoints) == ENDPOINTS_PER_SLICE
    _record_mean(benchmark, "client")
