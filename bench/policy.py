"""Policy decision benchmark (DESIGN §9 budget: a decision <= 100 µs p50).

Run from the repository root: ``python bench/policy.py [--n 5000]``. Prints p50/p99 in µs for a
``forward`` and an ``infer`` decision with the DESIGN §4 example policy:

* process-cold — the first decision this process makes (one sample: cedarpy's lazy set-up);
* bundle-cold  — the first decision after a new bundle is put in force (cache empty);
* warm, no cache — ``PolicyEngine(cache_size=0)``: a full cedarpy evaluation every call;
* warm, cached — the same inputs again, answered from the decision cache;

and, in the same run, a bare ``cedarpy.is_authorized`` with the policy text (what a naive caller
pays: it re-parses the policies every call) and with a pre-parsed ``PolicySet``, so the ratio
is comparable across machines. Timings go to stdout only; no test asserts on them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from functools import partial
from importlib import metadata

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cedarpy
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.policy import (
    DataAttrs,
    NodeAttrs,
    PolicyEngine,
    read_bundle,
    sign_bundle,
)
from node.testing import EXAMPLE_POLICY

SENDER = NodeAttrs("edge-1", "edge", "berlin", "DE", {"zone": "lan"})
TARGET = NodeAttrs("onprem-1", "onprem", "munich", "DE", {"zone": "dmz"})
DATA = DataAttrs("req-1", "personal", "DE", "resnet:1")


def percentiles(samples_ns: list[int]) -> tuple[float, float]:
    s = sorted(samples_ns)
    return s[len(s) // 2] / 1000, s[min(len(s) - 1, int(len(s) * 0.99))] / 1000


def timed(fn: Callable[[], object], n: int) -> tuple[float, float]:
    fn()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - t0)
    return percentiles(samples)


def row(name: str, p50: float, p99: float, bare: float) -> None:
    print(f"{name:44s} {p50:9.1f} {p99:9.1f} {p50 / bare:8.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="samples per warm measurement")
    parser.add_argument("--cold", type=int, default=200, help="fresh bundles for bundle-cold")
    args = parser.parse_args()

    key = Ed25519PrivateKey.generate()
    raw = sign_bundle(key, EXAMPLE_POLICY, 1, "2025-01-31T12:00:00Z", "bench")
    t0 = time.perf_counter_ns()
    bundle = read_bundle(raw, key.public_key())
    read_us = (time.perf_counter_ns() - t0) / 1000

    decisions: dict[str, Callable[[PolicyEngine], object]] = {
        "forward": lambda e: e.decide_forward(SENDER, DATA, TARGET, 0),
        "infer": lambda e: e.decide_infer(SENDER, DATA, TARGET, 1),
    }
    t0 = time.perf_counter_ns()
    decisions["forward"](PolicyEngine(bundle))
    process_cold_us = (time.perf_counter_ns() - t0) / 1000

    # Bare cedarpy, same request as the forward decision.
    entities = json.dumps(
        [
            {
                "uid": {"type": "Node", "id": SENDER.node_id},
                "attrs": {
                    "tier": "edge",
                    "site": "berlin",
                    "jurisdiction": "DE",
                    "labels": {"zone": "lan"},
                },
                "parents": [],
            },
            {
                "uid": {"type": "Data", "id": DATA.request_id},
                "attrs": {"data_class": "personal", "jurisdiction": "DE", "model": "resnet:1"},
                "parents": [],
            },
        ]
    )
    request = {
        "principal": 'Node::"edge-1"',
        "action": 'Action::"forward"',
        "resource": 'Data::"req-1"',
        "context": {
            "hops": 0,
            "target": {
                "node_id": "onprem-1",
                "tier": "onprem",
                "site": "munich",
                "jurisdiction": "DE",
                "labels": {"zone": "dmz"},
            },
        },
    }
    assert cedarpy.is_authorized(request, EXAMPLE_POLICY, entities).allowed
    policy_set = cedarpy.PolicySet.from_str(EXAMPLE_POLICY)
    bare_text = timed(lambda: cedarpy.is_authorized(request, EXAMPLE_POLICY, entities), args.n)
    bare_set = timed(lambda: cedarpy.is_authorized(request, policy_set, entities), args.n)
    bare = bare_text[0]

    print(
        f"cedarpy {metadata.version('cedarpy')}, python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs; read_bundle (verify + parse once): {read_us:.0f} µs"
    )
    print(f"{'measurement':44s} {'p50 µs':>9s} {'p99 µs':>9s} {'vs bare':>9s}")
    row("bare cedarpy.is_authorized(policy text)", *bare_text, bare)
    row("bare cedarpy.is_authorized(PolicySet handle)", *bare_set, bare)
    print(f"{'forward, process-cold (1 sample)':44s} {process_cold_us:9.1f}")
    for name, decide in decisions.items():
        cold = []
        for version in range(args.cold):
            fresh = read_bundle(
                sign_bundle(key, EXAMPLE_POLICY, version + 1, "2025-01-31T12:00:00Z", "bench"),
                key.public_key(),
            )
            engine = PolicyEngine(fresh)
            t0 = time.perf_counter_ns()
            decide(engine)
            cold.append(time.perf_counter_ns() - t0)
        row(f"{name}, bundle-cold (first call, empty cache)", *percentiles(cold), bare)
        uncached = PolicyEngine(bundle, cache_size=0)
        row(f"{name}, warm, no cache", *timed(partial(decide, uncached), args.n), bare)
        cached = PolicyEngine(bundle)
        row(f"{name}, warm, cached", *timed(partial(decide, cached), args.n), bare)
    print("budget (DESIGN §9): a decision <= 100 µs p50")


if __name__ == "__main__":
    main()
