"""Issue 10, rows 4 and 14: a model's expected SHA-256 comes from its holder's signed advert,
never from the serving peer's reply; models carried in sync bundles obey ``model.pull`` as on
the network (the importing node decides for itself; an export for a named receiver decides as
the holder would for that node's pull). Real mutual TLS against a scripted hostile enrolled node, real CLI and SQLite."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from node.peerclient import PeerClients
from node.pull import PullError, Source, download
from tests.adversary._conns import Hostile, Interposer
from tests.cli.test_bundle_cli import bundle
from tests.cli.test_federation_cli import enroll
from tests.conftest import ROOT, outpost
from tests.fedharness import free_port

pytestmark = pytest.mark.integration

DIGITS = ROOT / "models" / "sample" / "digits.onnx"


def clients_of(d: Path, seen: list[Any]) -> PeerClients:
    return PeerClients((d / "node.crt").read_bytes(), (d / "node.key").read_bytes(),
                       (d / "federation.crt").read_bytes(), None, seen.append)


def test_pull_takes_the_hash_from_the_holders_advert_never_from_its_reply(tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    outpost("federation", "init", "--dir", str(ca), "--name", "acme")
    attrs = ("--tier", "edge", "--site", "s", "--jurisdiction", "DE")
    edge = enroll(tmp_path, ca, "edge", *attrs)
    evil = Hostile(enroll(tmp_path, ca, "evil", *attrs))
    digits = DIGITS.read_bytes()
    advertised = hashlib.sha256(digits).hexdigest()
    other = bytes(b ^ 0xFF for b in digits)  # same size, other bytes
    partial_dir = tmp_path / "partial"
    partial_dir.mkdir()
    mitm = Interposer(evil, free_port(), free_port(), "evil", other).start()
    mitm.set_mode("impersonate")
    # What evil's signed advert says it holds; it serves something else.
    source = Source("evil", mitm.address, "digits", "1", advertised, len(digits))
    seen: list[Any] = []

    async def go() -> tuple[str, str]:
        clients = clients_of(edge, seen)
        try:
            with pytest.raises(PullError) as named_other:  # its reply names its own hash
                await download(source, partial_dir, clients, max_bytes=1 << 26)
            assert not any(r.endswith("/blob HTTP/1.1") for r in mitm.requests)
            mitm.claim = advertised  # now it repeats the advert's hash and sends other bytes
            with pytest.raises(PullError) as lied:
                await download(source, partial_dir, clients, max_bytes=1 << 26)
            return str(named_other.value), str(lied.value)
        finally:
            await clients.close()

    try:
        named_other, lied = asyncio.run(go())
    finally:
        mitm.stop()
    assert "not the" in named_other and "evil's signed advert" in named_other
    assert any(r.endswith("/blob HTTP/1.1") for r in mitm.requests)  # fetched, then refused
    assert "corrupt" in lied and "signed advert" in lied
    assert list(partial_dir.iterdir()) == []  # nothing kept
    assert seen == []  # evil was the node chosen: nothing to refuse at the connection


POLICY = """
permit(principal, action == Action::"infer", resource);
@id("models-only-on-prem")
permit(principal, action == Action::"model.pull", resource)
  when { context.target.tier == "onprem" };
"""


def test_bundle_import_applies_model_pull_policy_like_the_network(tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    outpost("federation", "init", "--dir", str(ca), "--name", "acme")
    holder = enroll(tmp_path, ca, "holder", "--tier", "onprem", "--site", "s", "--jurisdiction",
                    "DE")
    edge = enroll(tmp_path, ca, "edge", "--tier", "edge", "--site", "s", "--jurisdiction", "DE")
    onprem = enroll(tmp_path, ca, "onprem", "--tier", "onprem", "--site", "s",
                    "--jurisdiction", "DE")
    outpost("models", "add", str(DIGITS), "--name", "digits", "--version", "1", data_dir=holder)
    cedar = tmp_path / "p.cedar"
    cedar.write_text(POLICY)
    signed = tmp_path / "p.bundle"
    outpost("policy", "sign", str(cedar), "--version", "1", "--ca", str(ca), "-o", str(signed))
    outpost("apply", str(signed), data_dir=holder)
    carried = tmp_path / "holder.outpost"
    bundle("export", "-o", str(carried), "--models", data_dir=holder)

    result = bundle("import", str(carried), "--json", data_dir=edge, check=False)
    assert result.returncode == 4, result.stderr  # imported in part: the model was refused
    imported = json.loads(result.stdout)
    [model] = imported["models"]
    assert model["status"] == "denied" and "model.pull" in model["reason"]
    assert imported["policy"] == 1  # the rest of the bundle still applies
    assert json.loads(outpost("models", "list", "--json", data_dir=edge).stdout) == []
    assert not list(edge.glob("blobs/*.onnx"))
    entry = json.loads(outpost("audit", "tail", "-n", "1", "--json",
                               data_dir=edge).stdout)["entry"]
    assert entry["kind"] == "audit.replicate" and entry["detail"]["models_denied"] == 1
    assert "refused by model.pull policy" in entry["reason"]
    assert "model.pull" in result.stderr

    # the same bundle into a node the policy lets have models
    imported = json.loads(bundle("import", str(carried), "--json", data_dir=onprem).stdout)
    assert imported["models"][0]["status"] == "added"
    [held] = json.loads(outpost("models", "list", "--json", data_dir=onprem).stdout)
    assert held["sha256"] == hashlib.sha256(DIGITS.read_bytes()).hexdigest()

    # Exporting for a named receiver, the holder decides as it would for a network pull.
    for_edge = tmp_path / "for-edge.outpost"
    result = bundle("export", "-o", str(for_edge), "--models", "--to", str(edge / "node.crt"),
                    "--json", data_dir=holder)
    exported = json.loads(result.stdout)
    assert exported["models"] == []
    assert [m["model"] for m in exported["models_left_out"]] == ["digits:1"]
    assert "model.pull" in exported["models_left_out"][0]["reason"]
    assert "left out model digits:1" in result.stderr
    for_onprem = tmp_path / "for-onprem.outpost"
    exported = json.loads(bundle("export", "-o", str(for_onprem), "--models", "--to",
                                 str(onprem / "node.crt"), "--json", data_dir=holder).stdout)
    assert [m["name"] for m in exported["models"]] == ["digits"]
    assert exported["models_left_out"] == []
