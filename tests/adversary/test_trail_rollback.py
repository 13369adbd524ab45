"""Issue 10 row 6, as an attacker would try it: a node's log cut back with SQL only to an
earlier signed checkpoint, and witnesses that forget across restarts. Real daemons on loopback.

Each test asserts the attack fails (the cut is caught by `audit verify` against what the
witness saw, and flagged by the witness in `status`, `peers` and its own trail) and that honest
service goes on (the restarted witness keeps accepting newer checkpoints, on both the
tlog-witness and the gossip path).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from federation.merkle import node_from_key
from tests.conftest import outpost, write_config
from tests.fedharness import Fed, eventually, free_port, peers, status

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ORIGIN_A = "outpost/acme/node-a"


def _policy(fed: Fed, version: int, target: str) -> None:
    """Apply a signed policy bundle at ``target``: one entry on every node's trail."""
    policy = fed.tmp / "p.cedar"
    policy.write_text('permit(principal, action == Action::"infer", resource);\n')
    bundle = fed.tmp / f"b{version}.json"
    outpost("policy", "sign", str(policy), "--version", str(version), "--ca", str(fed.ca),
            "-o", str(bundle))
    outpost("policy", "apply", str(bundle), data_dir=fed.dirs[target])


def _held(d: Path) -> int:
    return int((status(d).get("witness") or {}).get("held", {}).get(ORIGIN_A, 0))


def _cut_back(db_path: Path, below: int) -> int:
    """What an attacker with the database (not the key) does: cut the log back to the newest
    retained signed checkpoint below ``below`` and make every table agree. Returns its size."""
    db = sqlite3.connect(db_path)
    size, note = db.execute("SELECT size, note FROM audit_checkpoint WHERE size <= ? "
                            "ORDER BY size DESC LIMIT 1", (below,)).fetchone()
    db.execute("DELETE FROM audit_entry WHERE seq >= ?", (size,))
    doomed = [k for (k,) in db.execute("SELECT id FROM audit_node")
              if (node_from_key(k)[1] + 1) << node_from_key(k)[0] > size]
    db.executemany("DELETE FROM audit_node WHERE id = ?", [(k,) for k in doomed])
    db.execute("DELETE FROM audit_checkpoint WHERE size > ?", (size,))
    db.execute("UPDATE audit_head SET size = ?, note = ? WHERE id = 0", (size, note))
    db.execute("DELETE FROM audit_cosignature")  # leave no trace of what witnesses cosigned
    db.commit()
    db.close()
    return int(size)


def test_log_cut_back_with_sql_is_caught_by_verify_and_flagged_by_the_witness(fed: Fed) -> None:
    a = fed.add("node-a")
    b = fed.add("node-b", seed="node-a")
    tiles = free_port()
    write_config(a, "audit", checkpoint_every_s=0.1,  # retain signed checkpoints often
                 tiles_listen=f"127.0.0.1:{tiles}")
    fed.start("node-a")
    fed.start("node-b")
    for version in range(1, 6):
        _policy(fed, version, "node-a")
    size_a = status(a)["audit"]["size"]
    held = eventually(lambda: (h := _held(b)) >= size_a and h, timeout=60,
                      what="node-b witnessed node-a's grown log")
    # An outside auditor verified node-a's log from its tiles and remembers it.
    vkey = outpost("audit", "vkey", data_dir=a).stdout.strip()
    state = fed.tmp / "auditor.json"
    url = f"http://127.0.0.1:{tiles}"
    outpost("audit", "verify-log", url, "--vkey", vkey, "--state", str(state))
    fed.procs["node-a"].stop()
    cut = _cut_back(a / "outpost.db", held - 3)
    assert 0 < cut <= held - 3
    # Locally the cut is invisible: the log verifies against its own remaining checkpoints.
    assert json.loads(outpost("audit", "verify", "--json", data_dir=a,
                              check=False).stdout)["ok"] is True

    fed.start("node-a")

    def caught() -> str | None:
        r = outpost("audit", "verify", data_dir=a, check=False)
        return r.stderr if r.returncode == 1 and "cut back" in r.stderr else None

    stderr = eventually(caught, timeout=60, what="audit verify at node-a catches the cut")
    assert "node-b" in stderr and str(held) in stderr
    # The auditor's next verify-log reports the rollback from what it remembered.
    again = outpost("audit", "verify-log", url, "--vkey", vkey, "--state", str(state),
                    check=False)
    assert again.returncode == 1 and "ROLLBACK" in again.stderr

    # The witness flagged it: status, peers and its own trail.
    rollbacks = eventually(lambda: status(b)["witness"]["rollbacks"], timeout=60,
                           what="node-b reports the rollback")
    assert rollbacks[0]["origin"] == ORIGIN_A and rollbacks[0]["kind"] == "smaller"
    assert peers(b)["node-a"]["rolled_back"] is True
    assert "ROLLBACK outpost/acme/node-a" in outpost("status", data_dir=b).stdout
    entries = [json.loads(x)["entry"] for x in outpost(
        "audit", "tail", "--json", "--kind", "rollback", data_dir=b).stdout.splitlines()]
    assert entries and entries[0]["peer"] == "node-a" and entries[0]["detail"]["held"] == held
    # ... and it still holds the larger checkpoint: the cut log cannot talk it back down.
    assert _held(b) == held
    # Gossiped like equivocation evidence: node-a's own view of itself is not needed, the
    # evidence item reached it too (it now holds what accuses it).
    eventually(lambda: any(r["origin"] == ORIGIN_A
                           for r in status(a)["witness"]["rollbacks"]),
               timeout=60, what="rollback evidence gossiped to node-a")


def test_restarted_witness_keeps_accepting_newer_checkpoints(fed: Fed) -> None:
    a = fed.add("node-a")
    b = fed.add("node-b", seed="node-a")
    fed.start("node-a")
    fed.start("node-b")
    _policy(fed, 1, "node-a")
    before = eventually(lambda: _held(b), timeout=60, what="node-b witnessed node-a")
    gossiped = eventually(lambda: peers(b)["node-a"].get("checkpoint_size"), timeout=60,
                          what="node-a's checkpoint gossiped to node-b")
    fed.procs["node-b"].stop()
    fed.start("node-b")
    assert _held(b) >= before  # persisted, not forgotten
    for version in range(2, 5):
        _policy(fed, version, "node-a")
    grown = status(a)["audit"]["size"]
    eventually(lambda: _held(b) >= grown, timeout=60,
               what="restarted node-b cosigns node-a's newer checkpoints")
    eventually(lambda: (peers(b)["node-a"].get("checkpoint_size") or 0) > gossiped, timeout=60,
               what="restarted node-b accepts node-a's newer gossiped checkpoints")
    assert status(b)["witness"]["rollbacks"] == []
    cosigned = outpost("audit", "checkpoint", "--cosigned", data_dir=a)
    assert "outpost/acme/node-b/witness" in cosigned.stdout
