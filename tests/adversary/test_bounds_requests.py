"""Invariant: no single request can make the node hold memory far beyond its body, stall the
event loop for its whole parse, or end in a 500; every refusal is on the deciding node's trail,
and a flood of refusals costs the trail a bounded number of entries (issue 10 rows 8-11)."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import httpx
import pytest

from models import SAMPLE_MODEL
from node import limits
from tests.adversary._bounds import (
    audit_entries,
    big_json_request,
    bytes_model,
    bytes_request,
    digits_body,
    hostport,
    peer_listen,
    proc_status,
    tiny_bytes_request,
)
from tests.conftest import init_node, outpost, start_daemon
from tests.fedharness import Fed, eventually
from tests.node.test_peer_endpoint import client_ctx

pytestmark = [pytest.mark.integration]

MIB = 1 << 20


def test_a_bytes_flood_is_refused_413_before_it_is_decoded(tmp_path: Path) -> None:
    data_dir = tmp_path / "n"
    init_node(data_dir)
    outpost("models", "add", str(bytes_model(tmp_path / "echo.onnx")), "--name", "echo",
            data_dir=data_dir)
    node = start_daemon(data_dir)
    try:
        pid = node.proc.pid
        body, head = tiny_bytes_request(57 * MIB // 5)  # 57 MiB of one-byte elements
        before = proc_status(pid)
        with node.http(timeout=120) as http:
            r = http.post("/v2/models/echo/infer", content=body,
                          headers={"inference-header-content-length": str(head)})
            after = proc_status(pid)
            print(f"RSS {before['VmRSS'] / MIB:.0f} MiB -> peak {after['VmHWM'] / MIB:.0f} MiB "
                  f"for a {len(body) / MIB:.0f} MiB BYTES request (was 4.5 GiB)")
            assert r.status_code == 413, r.text
            assert "bytes of memory" in r.json()["error"], r.text
            # The body is read and copied once or twice; nothing is decoded.
            assert after["VmHWM"] - before["VmRSS"] < 6 * len(body), (before, after)
            # Honest service: real strings, and the sample model.
            words = [f"word {i}".encode() for i in range(1000)]
            good, ghead = bytes_request(words)
            r = http.post("/v2/models/echo/infer", content=good,
                          headers={"inference-header-content-length": str(ghead)})
            assert r.status_code == 200, r.text
            assert r.json()["outputs"][0]["data"][:2] == ["word 0", "word 1"]
            r = http.post("/v2/models/digits/infer", json=digits_body())
            assert r.status_code == 200, r.text
        refused = [e for e in audit_entries(data_dir) if e["kind"] == "infer"
                   and e.get("outcome") == "too_large"]
        assert refused and refused[-1]["detail"]["status"] == 413
        assert refused[-1]["caller"] == "app:anonymous" and refused[-1]["model"] == "echo"
    finally:
        node.stop()


def test_a_huge_json_body_is_parsed_away_from_the_event_loop(tmp_path: Path) -> None:
    """Ordering, not timing: while the node parses 63 MiB of JSON, a stream of small requests on
    another connection keeps being answered (parsing on the loop answered none of them until
    the parse ended)."""
    data_dir = tmp_path / "n"
    init_node(data_dir)
    node = start_daemon(data_dir)
    try:
        body = big_json_request(63 * MIB)
        address = hostport(node.hostport)
        big = socket.create_connection(address, timeout=120)
        big.sendall(b"POST /v2/models/digits/infer HTTP/1.1\r\nhost: x\r\ncontent-length: "
                    + str(len(body)).encode() + b"\r\n\r\n" + body)
        answer: list[bytes] = []

        def read_big() -> None:
            got = b""
            while b"\r\n\r\n" not in got:
                chunk = big.recv(65536)
                if not chunk:
                    break
                got += chunk
            answer.append(got)

        reader = threading.Thread(target=read_big)
        reader.start()
        answered = 0
        with node.http() as http:
            while reader.is_alive() and answered < 10_000:
                r = http.post("/v2/models/digits/infer", json=digits_body(0.75))
                assert r.status_code == 200, r.text
                answered += 1
        reader.join(timeout=120)
        print(f"{answered} small requests answered while the 63 MiB body was parsed")
        assert answer and answer[0].startswith(b"HTTP/1.1 400"), answer
        assert answered >= 3, answered
    finally:
        node.stop()


def test_malformed_forwards_are_refused_400_on_the_trail_and_floods_are_aggregated(
        fed: Fed) -> None:
    a = fed.add("a", tier="onprem")
    b = fed.add("b", seed="a")
    outpost("models", "add", str(SAMPLE_MODEL), "--name", "digits", data_dir=a)
    node = fed.start("a")
    fed.start("b")
    url = "https://{}:{}".format(*hostport(peer_listen(a)))
    labelled = digits_body()
    labelled["parameters"] = {"outpost.data_class": "public", "outpost.jurisdiction": "DE"}
    deep = b'{"inputs":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with httpx.Client(verify=client_ctx(b), timeout=60) as http:
        # Row 10: hop counts that reached the policy engine as huge integers.
        for hops in (str(2**62), str(10**30), "-1", "0", "1e3", "abc"):
            r = http.post(f"{url}/peer/v1/infer/digits", json=labelled,
                          headers={"outpost-hops": hops})
            assert r.status_code == 400 and "Outpost-Hops" in r.json()["error"], (hops, r.text)
        # Row 11: nesting beyond the parser's depth, on both endpoints.
        r = http.post(f"{url}/peer/v1/infer/digits", content=deep,
                      headers={"outpost-hops": "1"})
        assert r.status_code == 400 and "nested deeper" in r.json()["error"], r.text
        with node.http() as app:
            r = app.post("/v2/models/digits/infer", content=deep)
            assert r.status_code == 400 and "nested" in r.json()["error"], r.text
            # Honest service from an app.
            assert app.post("/v2/models/digits/infer", json=digits_body()).status_code == 200
        # A well-formed forward with no policy in force is denied, and recorded where decided.
        r = http.post(f"{url}/peer/v1/infer/digits", json=labelled, headers={"outpost-hops": "1"})
        assert r.status_code == 403 and "no policy bundle" in r.json()["error"], r.text
        # Honest peer service goes on.
        r = http.get(f"{url}/peer/v1/hello")
        assert r.status_code == 200 and r.json()["you"] == "b", r.text
        # A flood of cheap garbage: refused every time, but the trail grows by a bounded count.
        flood = 400
        before = len(audit_entries(a))
        for _ in range(flood):
            r = http.post(f"{url}/peer/v1/infer/digits", content=b"{",
                          headers={"outpost-hops": "1"})
            assert r.status_code == 400
    entries = audit_entries(a)
    refusals = [e for e in entries if e["kind"] == "infer" and e.get("caller") == "node:b"
                and e.get("outcome") == "bad_request"]
    hop_refusals = [e for e in refusals if "Outpost-Hops" in e.get("reason", "")]
    assert len(hop_refusals) == 6 and all(e["detail"]["status"] == 400 for e in hop_refusals)
    assert any("nested deeper" in e.get("reason", "") for e in refusals)
    assert any(e["kind"] == "infer" and e.get("caller") == "node:b" and e.get("outcome") == "denied"
               and e.get("data_class") == "public" for e in entries)
    assert any(e.get("caller") == "app:anonymous" and e.get("outcome") == "bad_request"
               for e in entries)

    def counted() -> int:
        new = [e for e in audit_entries(a)[before:] if e.get("caller") == "node:b"
               and e.get("outcome") == "bad_request"]
        return sum(int(e["detail"].get("aggregated", 1)) for e in new)

    # Every refusal is counted on the trail (itemised within the rate, aggregated beyond) ...
    eventually(lambda: counted() == flood, timeout=30, what="refusals counted")
    written = len(audit_entries(a)) - before
    print(f"{flood} malformed forwards -> {written} audit entries")
    # ... and the flood cost at most the burst plus a few aggregate entries per second.
    assert written <= limits.REFUSAL_BURST + 60, written
    assert "ok" in outpost("audit", "verify", data_dir=a).stdout
    assert json.loads(outpost("status", "--json", data_dir=a).stdout)["ready"] is True
