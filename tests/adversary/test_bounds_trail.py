"""Invariant: a model added or removed is on the audit trail whatever the moment of a crash, and
a crash mid-add leaves no blob behind after the next start (issue 10 item 7). The crash is a
real SIGKILL of the CLI process at the exact moment in question (a hook in place of the step
that follows), not a simulation of its effects."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.adversary._bounds import audit_entries, bytes_model
from tests.conftest import ROOT, init_node, outpost, start_daemon

pytestmark = [pytest.mark.integration]

# Runs the real CLI with one step replaced by SIGKILL of the process itself.
_KILLED_AT = """
import os, signal, sys
import node.modelhost as mh, node.store as st
target = sys.argv.pop(1)
def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
if target == "audit":
    mh.ModelHost._audit = die          # after the catalogue commit, before the entry
elif target == "catalogue":
    st.Store.add_model = die           # after the blob is stored, before the catalogue
from cli.main import main
main()
"""


def _killed(at: str, *args: str, data_dir: Path) -> None:
    result = subprocess.run([sys.executable, "-c", _KILLED_AT, at, *args, "--data-dir",
                             str(data_dir)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == -9, (result.returncode, result.stderr)


def test_a_model_added_when_the_node_is_killed_before_its_entry_is_recovered_on_the_trail(
        tmp_path: Path) -> None:
    data_dir = tmp_path / "n"
    init_node(data_dir)
    model = bytes_model(tmp_path / "echo.onnx")
    _killed("audit", "models", "add", str(model), "--name", "echo", data_dir=data_dir)
    # The catalogue change survived the kill; its entry is not there yet.
    assert not [e for e in audit_entries(data_dir) if e.get("model") == "echo"]
    node = start_daemon(data_dir)
    try:
        with node.http() as http:
            assert http.get("/v2/models/echo").status_code == 200  # served ...
        added = [e for e in audit_entries(data_dir) if e.get("model") == "echo"]
        # ... and on the trail, saying it was recovered.
        assert [e["kind"] for e in added] == ["model.add"], added
        assert added[0]["detail"]["recovered"] is True and "recovered" in added[0]["reason"]
        # A removal killed the same way is recovered too (daemon stopped: the offline path).
    finally:
        node.stop()
    _killed("audit", "models", "rm", "echo", data_dir=data_dir)
    node = start_daemon(data_dir)
    try:
        with node.http() as http:
            assert http.get("/v2/models/echo").status_code == 404
        kinds = [e["kind"] for e in audit_entries(data_dir) if e.get("model") == "echo"]
        assert kinds == ["model.add", "model.remove"], kinds
    finally:
        node.stop()
    # A second start writes nothing twice.
    node = start_daemon(data_dir)
    node.stop()
    kinds = [e["kind"] for e in audit_entries(data_dir) if e.get("model") == "echo"]
    assert kinds == ["model.add", "model.remove"], kinds
    assert "ok" in outpost("audit", "verify", data_dir=data_dir).stdout


def test_an_entry_written_just_before_the_kill_is_not_written_twice(tmp_path: Path) -> None:
    """Killed after the entry, before the pending change was cleared: recovery finds the entry
    (by its change id) and adds nothing."""
    data_dir = tmp_path / "n"
    init_node(data_dir)
    model = bytes_model(tmp_path / "echo.onnx")
    hook = _KILLED_AT.replace('elif target == "catalogue":', '''elif target == "drop":
    mh.drop_change = die
elif target == "catalogue":''')
    result = subprocess.run([sys.executable, "-c", hook, "drop", "models", "add", str(model),
                             "--name", "echo", "--data-dir", str(data_dir)],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == -9, result.stderr
    node = start_daemon(data_dir)
    node.stop()
    added = [e for e in audit_entries(data_dir) if e.get("model") == "echo"]
    assert [e["kind"] for e in added] == ["model.add"], added
    assert "recovered" not in added[0]["detail"]


def test_a_blob_left_by_a_kill_mid_add_is_removed_at_start(tmp_path: Path) -> None:
    data_dir = tmp_path / "n"
    init_node(data_dir)
    model = bytes_model(tmp_path / "echo.onnx")
    before = {p.name for p in (data_dir / "blobs").iterdir()}
    _killed("catalogue", "models", "add", str(model), "--name", "echo", data_dir=data_dir)
    left = {p.name for p in (data_dir / "blobs").iterdir()} - before
    assert len(left) == 1, left  # the complete blob no model refers to
    node = start_daemon(data_dir)
    try:
        assert {p.name for p in (data_dir / "blobs").iterdir()} == before
        listed = json.loads(outpost("models", "list", "--json", data_dir=data_dir).stdout)
        assert [m["name"] for m in listed] == ["digits"]
        with node.http() as http:  # the models that are catalogued are still served
            assert http.get("/v2/models/digits").status_code == 200
    finally:
        node.stop()
