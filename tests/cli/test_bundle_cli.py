"""Sync bundles through the real CLI: nodes of one federation with no network between them
exchange policy, revocations, audit logs and models on "removable media" (a file).

Invariants: an import verifies the whole file against the importer's federation or changes
nothing; importing the same bundle again changes nothing; another node's log is merged only
where it extends the copy held (a conflict or a gap is reported, never merged), and the copy
held verifies against that node's signed checkpoint, even after relaying it onwards.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from models import SAMPLE_MODEL
from node.testing import enroll, outpost, start_daemon

POLICY = ('permit(principal, action == Action::"infer", resource);\n'
          # models in a bundle are subject to model.pull like a network pull
          'permit(principal, action == Action::"model.pull", resource);\n')


def bundle(*args: str, data_dir: Path | None = None,
           check: bool = True) -> subprocess.CompletedProcess[str]:
    """`outpost bundle ...`"""
    return outpost("bundle", *args, data_dir=data_dir, check=check)


@dataclass
class World:
    root: Path
    ca: Path

    def node(self, name: str, tmp_path: Path) -> Path:
        """A private copy of an enrolled node, as the fixture left it."""
        return Path(shutil.copytree(self.root / name, tmp_path / name))

    def file(self, name: str) -> Path:
        return self.root / name


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """Federation acme: node-a (sample model, policy v2, revocation list v2), node-b (policy
    v1, revocation list v1), node-c (nothing); federation evil: node-e. Signed documents:
    policy v1..v3 and revocation lists v1..v2 of acme."""
    root = tmp_path_factory.mktemp("world")
    ca = root / "ca"
    outpost("federation", "init", "--dir", str(ca), "--name", "acme")
    attrs = ("--tier", "edge", "--site", "s", "--jurisdiction", "DE")
    node_a = enroll(root, ca, "node-a", *attrs)
    outpost("models", "add", str(SAMPLE_MODEL), "--name", "digits", "--version", "1",
            data_dir=node_a)
    node_b = enroll(root, ca, "node-b", *attrs)
    enroll(root, ca, "node-c", *attrs)
    evil = root / "evil"
    outpost("federation", "init", "--dir", str(evil), "--name", "evil")
    enroll(root, evil, "node-e", *attrs)
    cedar = root / "p.cedar"
    cedar.write_text(POLICY)
    for v in (1, 2, 3):
        outpost("policy", "sign", str(cedar), "--version", str(v), "--ca", str(ca),
                "-o", str(root / f"policy{v}.bundle"))
    for v, who in ((1, "node-x"), (2, "node-y")):
        outpost("federation", "revoke", who, "--ca", str(ca), "-o", str(root / f"crl{v}.pem"))
    outpost("apply", str(root / "policy2.bundle"), data_dir=node_a)
    outpost("apply", str(root / "crl2.pem"), data_dir=node_a)
    outpost("apply", str(root / "policy1.bundle"), data_dir=node_b)
    outpost("apply", str(root / "crl1.pem"), data_dir=node_b)
    return World(root, ca)


# -- looking at a node ------------------------------------------------------------------------


def audit_entries(data_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line)["entry"] for line in
            outpost("audit", "tail", "-n", "100000", "--json", data_dir=data_dir).stdout.splitlines()]


def raw_entries(data_dir: Path) -> list[bytes]:
    with sqlite3.connect(data_dir / "outpost.db") as db:
        return [bytes(e) for (e,) in db.execute("SELECT entry FROM audit_entry ORDER BY seq")]


def doc_version(data_dir: Path, kind: str) -> int | None:
    with sqlite3.connect(data_dir / "outpost.db") as db:
        row = db.execute("SELECT version FROM federation_doc WHERE kind = ?", (kind,)).fetchone()
    return int(row[0]) if row else None


def replicas(data_dir: Path) -> dict[str, int]:
    from node.sync import replicas as held

    return {r["origin"]: r["size"] for r in held(data_dir)}


def state(data_dir: Path) -> tuple[Any, ...]:
    """Everything an import may change."""
    from node.sync import replica_entries

    models = json.loads(outpost("models", "list", "--json", data_dir=data_dir).stdout)
    held = replicas(data_dir)
    return (raw_entries(data_dir), doc_version(data_dir, "policy"),
            doc_version(data_dir, "revocation"), held,
            {o: replica_entries(data_dir, o) for o in held},
            sorted((m["name"], m["version"], m["sha256"]) for m in models))


def assert_replicas_verify(data_dir: Path) -> None:
    from node.sync import verify_replicas

    reports = verify_replicas(data_dir)
    assert reports and all(r["ok"] for r in reports), reports


def export(node: Path, out: Path, *extra: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(
        bundle("export", "-o", str(out), "--json", *extra, data_dir=node).stdout)
    return result


def import_(node: Path, path: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return bundle("import", str(path), data_dir=node, check=check)


A, B = "outpost/acme/node-a", "outpost/acme/node-b"


# -- tests ------------------------------------------------------------------------------------


def test_policy_revocations_and_log_cross_the_gap_once(world: World, tmp_path: Path) -> None:
    a, b = world.node("node-a", tmp_path), world.node("node-b", tmp_path)
    path = tmp_path / "a.bundle"
    exported = export(a, path)
    a_entries = raw_entries(a)
    assert exported["logs"] == [{"origin": A, "start": 0, "size": len(a_entries),
                                 "entries": len(a_entries)}]
    assert (exported["policy_version"], exported["revocation_version"]) == (2, 2)

    done = import_(b, path)
    assert "imported bundle" in done.stdout and done.stderr == ""
    policy = json.loads(outpost("policy", "show", "--json", data_dir=b).stdout)
    assert policy["version"] == 2
    assert doc_version(b, "revocation") == 2
    kinds = [e["kind"] for e in audit_entries(b)]
    assert kinds[-3:] == ["revocation.apply", "policy.apply", "audit.replicate"]
    record = audit_entries(b)[-1]
    assert record["peer"] == "node-a"
    assert record["detail"]["entries"] == len(a_entries) and record["detail"]["policy"] == 2
    # A's log is held byte for byte, and verifies against A's signed checkpoint
    from node.sync import replica_entries

    assert replicas(b) == {A: len(a_entries)}
    assert [e for _, e in replica_entries(b, A)] == a_entries
    assert_replicas_verify(b)
    assert json.loads(outpost("audit", "verify", "--json", data_dir=b).stdout)["ok"]

    before = state(b)
    again = import_(b, path)
    assert "nothing new" in again.stdout and "nothing changed" in again.stdout
    assert state(b) == before


def test_an_altered_bundle_is_refused_whole(world: World, tmp_path: Path) -> None:
    a, b = world.node("node-a", tmp_path), world.node("node-b", tmp_path)
    path = tmp_path / "a.bundle"
    export(a, path, "--models")
    good = path.read_bytes()
    manifest_len = struct.unpack(">I", good[22:26])[0]
    flips = {
        "manifest": 26 + manifest_len // 2,
        "signature": 26 + manifest_len + 10,
        "model bytes": len(good) - 100,
    }
    before = state(b)
    for what, pos in flips.items():
        bad = bytearray(good)
        bad[pos] ^= 0x01
        altered = tmp_path / f"bad-{what}.bundle"
        altered.write_bytes(bytes(bad))
        result = import_(b, altered, check=False)
        assert result.returncode == 1, (what, result.stdout, result.stderr)
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("outpost: error:"), (what, lines)
        assert state(b) == before, what
    for what, data in (("cut short", good[:-1]), ("appended to", good + b"\0")):
        altered = tmp_path / "bad.bundle"
        altered.write_bytes(data)
        result = import_(b, altered, check=False)
        assert result.returncode == 1 and "outpost: error:" in result.stderr, what
        assert state(b) == before, what
    import_(b, path)  # the unaltered file imports
    assert state(b) != before


def test_a_bundle_of_another_federation_is_refused(world: World, tmp_path: Path) -> None:
    e, b = world.node("node-e", tmp_path), world.node("node-b", tmp_path)
    path = tmp_path / "e.bundle"
    export(e, path)
    before = state(b)
    result = import_(b, path, check=False)
    assert result.returncode == 1
    assert "not issued by the federation authority" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert state(b) == before


def test_models_travel_by_hash(world: World, tmp_path: Path) -> None:
    a, b = world.node("node-a", tmp_path), world.node("node-b", tmp_path)
    assert json.loads(outpost("models", "list", "--json", data_dir=b).stdout) == []
    path = tmp_path / "a.bundle"
    exported = export(a, path, "--models")
    [model] = exported["models"]
    assert "added model digits:1" in import_(b, path).stdout
    [held] = json.loads(outpost("models", "list", "--json", data_dir=b).stdout)
    assert (held["name"], held["version"], held["sha256"]) == ("digits", "1", model["sha256"])
    assert audit_entries(b)[-1]["detail"]["models"] == 1
    before = state(b)
    assert "nothing new" in import_(b, path).stdout
    assert state(b) == before


def test_since_gives_incremental_bundles(world: World, tmp_path: Path) -> None:
    a, b = world.node("node-a", tmp_path), world.node("node-b", tmp_path)
    first = tmp_path / "first.bundle"
    size = export(a, first)["logs"][0]["size"]
    outpost("apply", str(world.file("policy3.bundle")), data_dir=a)  # A's log grows by one
    second = tmp_path / "second.bundle"
    exported = export(a, second, "--since", f"{A}={size}")
    assert exported["logs"] == [{"origin": A, "start": size, "size": size + 1, "entries": 1}]
    assert export(a, tmp_path / "same.bundle", "--since", f"node-a={size}")["logs"] == exported["logs"]

    # on its own, the increment does not join up to anything held: reported, not merged
    lone = world.node("node-b", tmp_path / "lone")
    result = import_(lone, second, check=False)
    assert result.returncode == 4 and "gap" in result.stderr
    assert replicas(lone) == {}
    assert doc_version(lone, "policy") == 3  # the rest of the bundle still applies

    import_(b, first)
    assert "+1 entries" in import_(b, second).stdout
    assert replicas(b) == {A: size + 1}
    assert_replicas_verify(b)
    before = state(b)
    assert "nothing new" in import_(b, first).stdout  # older than what is held: nothing to do
    assert state(b) == before


def test_logs_relay_through_several_air_gaps(world: World, tmp_path: Path) -> None:
    a, b, c = (world.node(n, tmp_path) for n in ("node-a", "node-b", "node-c"))
    export(a, tmp_path / "a.bundle")
    import_(b, tmp_path / "a.bundle")
    relayed = export(b, tmp_path / "b.bundle")
    assert [log["origin"] for log in relayed["logs"]] == [A, B]
    import_(c, tmp_path / "b.bundle")  # C never met A
    assert replicas(c) == {A: len(raw_entries(a)), B: len(raw_entries(b))}
    assert_replicas_verify(c)
    # back at A: its own log in B's bundle is not taken as a replica of itself
    before = raw_entries(a)
    import_(a, tmp_path / "b.bundle")
    assert replicas(a) == {B: len(raw_entries(b))}
    assert raw_entries(a)[: len(before)] == before


def test_a_copy_that_differs_is_reported_not_merged(world: World, tmp_path: Path) -> None:
    a, b = world.node("node-a", tmp_path), world.node("node-b", tmp_path)
    size = export(a, tmp_path / "first.bundle")["logs"][0]["size"]
    import_(b, tmp_path / "first.bundle")
    with sqlite3.connect(b / "outpost.db") as db:  # someone edits B's copy of A's log
        db.execute("UPDATE replica_entry SET entry = CAST(? AS BLOB) WHERE origin = ? AND seq = 1",
                   (b'{"kind":"enroll","time":"2020-01-01T00:00:00Z"}', A))
    outpost("apply", str(world.file("policy3.bundle")), data_dir=a)
    export(a, tmp_path / "second.bundle")
    result = import_(b, tmp_path / "second.bundle", check=False)
    assert result.returncode == 4 and "conflict" in result.stderr and A in result.stderr
    assert replicas(b) == {A: size}  # nothing appended to the differing copy
    assert audit_entries(b)[-1]["detail"]["conflicts"] == 1
    assert doc_version(b, "policy") == 3


@pytest.mark.integration
async def test_import_into_a_running_daemon_takes_effect_live(world: World, tmp_path: Path) -> None:
    """Export beside a running daemon; import into a running daemon (in-process, with the
    admin route ``node.sync.admin_route`` registered as ``node.daemon`` is to do)."""
    from node import config as cfg
    from node.daemon import start
    from node.sync import IMPORT_ROUTE, admin_route, import_bundle

    a = await asyncio.to_thread(world.node, "node-a", tmp_path)  # (copies: off the loop)
    b = await asyncio.to_thread(world.node, "node-b", tmp_path)
    path = tmp_path / "a.bundle"
    running = await asyncio.to_thread(start_daemon, a)
    try:
        exported = await asyncio.to_thread(export, a, path, "--models")
    finally:
        await asyncio.to_thread(running.stop)
    assert "node.start" in [json.loads(e)["kind"] for e in raw_entries(a)[: exported["logs"][0]["size"]]]

    config = cfg.load(b).replace("node", listen="127.0.0.1:0", peer_listen="127.0.0.1:0")
    config = config.replace("discovery", mdns=False)
    daemon = await start(b, config)
    try:
        assert daemon.admin is not None
        daemon.admin.route("POST", IMPORT_ROUTE, admin_route(daemon))
        assert daemon.policy_version == 1 and daemon.host.served() == []
        result = await asyncio.to_thread(import_bundle, b, path)
        assert (result["policy"], result["revocations"]) == (2, 2)
        assert daemon.policy_version == 2  # live, and handed to gossip by Daemon.apply
        assert daemon.host.resolve("digits").record.sha256 == exported["models"][0]["sha256"]
        again = await asyncio.to_thread(import_bundle, b, path)
        assert again["nothing_new"]
        bad = bytearray(path.read_bytes())
        bad[len(bad) // 4] ^= 1
        (tmp_path / "bad.bundle").write_bytes(bytes(bad))
        from node.client import DaemonError

        with pytest.raises(DaemonError):
            await asyncio.to_thread(import_bundle, b, tmp_path / "bad.bundle")
    finally:
        await daemon.stop()
    kinds = [e["kind"] for e in await asyncio.to_thread(audit_entries, b)]
    assert kinds.count("audit.replicate") == 1 and "model.add" in kinds
    assert await asyncio.to_thread(replicas, b) == {A: exported["logs"][0]["size"]}
    await asyncio.to_thread(assert_replicas_verify, b)
