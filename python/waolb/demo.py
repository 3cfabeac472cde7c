"""``make demo``: energy-aware weights, programmed into a real kernel, steering real traffic.

In a throwaway node namespace with three pod namespaces (waolb.lab), it scores the pods'
nodes from sample predicted power increases as WAO-LB does, programs a ClusterIP service
with those weights through the Rust dataplane, prints what ``nft`` shows, then opens
thousands of TCP connections to the ClusterIP and compares where they landed with the
weights. Everything is removed at the end. Needs root.
"""

from __future__ import annotations

import argparse
import sys

from waolb import lab, logs
from waolb._native import wao_scores
from waolb.config import TABLE_NAME
from waolb.dataplane import NftablesDataplane
from waolb.state import EndpointInfo, PortEndpoints, ServicePortInfo, ServicePortKey

CLUSTER_IP = "10.96.0.10"
SERVICE_PORT = 80
# Watts each pod's node would draw extra for one more request (what the power models
# predict); the cheapest node gets score 100, the others proportionally less.
PREDICTED_DELTA_WATTS = (12.4, 15.1, 18.9)


def run_demo(connections: int) -> int:
    log = logs.get_logger("waolb.demo")
    scores = wao_scores(list(PREDICTED_DELTA_WATTS), [0, len(PREDICTED_DELTA_WATTS)])
    with lab.cluster(pods=len(PREDICTED_DELTA_WATTS)) as cluster:
        key = ServicePortKey(4, "demo", "web", "http", "TCP")
        info = ServicePortInfo(
            key=key,
            cluster_ip=CLUSTER_IP,
            port=SERVICE_PORT,
            node_port=0,
            target_port=lab.SERVER_PORT,
            session_affinity_timeout=None,
            external_traffic_policy="Cluster",
            internal_traffic_policy="Cluster",
        )
        endpoints = tuple(
            EndpointInfo(pod.ipv4 or "", lab.SERVER_PORT, None, None, True, True, False, False)
            for pod in cluster.pods
        )
        with lab.entered(cluster.node):
            dataplane = NftablesDataplane.open(TABLE_NAME)
        outcome = dataplane.sync({key: (PortEndpoints(info, endpoints), tuple(scores))})
        log.info("programmed", messages=outcome.messages, refused=len(outcome.refused))
        chain = "service-demo/web/tcp/http"
        listing = cluster.node.nft("list", "chain", "ip", dataplane.table, chain).stdout
        print(f"\n# nft list chain ip {dataplane.table} {chain}\n{listing}")
        seen = lab.exchange(cluster.node, CLUSTER_IP, SERVICE_PORT, count=connections)
        total_score = sum(scores)
        print(f"{'pod':<6} {'node +W':>8} {'score':>6} {'expected':>9} {'observed':>9}")
        for pod, delta, score in zip(cluster.pods, PREDICTED_DELTA_WATTS, scores, strict=True):
            observed = seen.counts.get(pod.name, 0) / max(seen.total, 1)
            print(
                f"{pod.name:<6} {delta:>8.1f} {score:>6} {score / total_score:>9.1%}"
                f" {observed:>9.1%}"
            )
        print(f"{seen.total} connections in {seen.seconds:.2f} s; errors: {seen.errors or 'none'}")
        return 0 if seen.total == connections else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m waolb.demo", description=__doc__)
    parser.add_argument("--connections", type=int, default=3000, help="TCP connections to open")
    args = parser.parse_args(argv)
    logs.configure_logging(0, "console")
    return run_demo(args.connections)


if __name__ == "__main__":
    sys.exit(main())
