"""Invariant: what the node keeps on disk is readable by its owner only, even when the
directories existed with looser modes, and a config a crash or power cut emptied or cut short
never starts a node under another name (issue 10 row 16, item 8)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from node.durable import write_atomic
from tests.conftest import ROOT, init_node, outpost, start_daemon

pytestmark = [pytest.mark.integration]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_into_an_existing_open_directory_makes_everything_private(tmp_path: Path) -> None:
    data_dir = tmp_path / "n"
    data_dir.mkdir(mode=0o755)
    os.chmod(data_dir, 0o755)
    init_node(data_dir)
    assert _mode(data_dir) == 0o700
    for name in ("outpost.db", "node.key", "outpost.toml"):
        assert _mode(data_dir / name) == 0o600, name
    # A database left 0644 by an older version, and its WAL, are tightened when opened.
    os.chmod(data_dir / "outpost.db", 0o644)
    os.chmod(data_dir, 0o755)
    node = start_daemon(data_dir)
    try:
        with node.http() as http:
            assert http.get("/v2/health/ready").status_code == 200
        assert _mode(data_dir) == 0o700
        assert _mode(data_dir / "outpost.db") == 0o600
        wal = data_dir / "outpost.db-wal"
        assert wal.exists() and _mode(wal) == 0o600
    finally:
        node.stop()


def test_an_authority_directory_that_existed_becomes_private(tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    ca.mkdir(mode=0o755)
    os.chmod(ca, 0o755)
    outpost("federation", "init", "--dir", str(ca), "--name", "acme")
    assert _mode(ca) == 0o700
    assert all(_mode(p) == 0o600 for p in ca.iterdir()), {p.name: oct(_mode(p)) for p in ca.iterdir()}


def _run(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", "run", "--data-dir", str(data_dir),
                           "--listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:0"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


@pytest.mark.parametrize(("content", "says"), [
    (b"", "is empty"),
    (b"   \n", "is empty"),
    (b"# Outpost node configuration.\n\n[node]\nlist", "not valid TOML"),
    (b"[node]\nlisten = \"127.0.0.1:8470\"\n", "names no node"),
    (b"[node]\nname = \"\"\n", "names no node"),
    (b"\xff\xfe\x00garbage", "not text"),
])
def test_a_damaged_config_refuses_to_start_with_one_line_naming_the_fix(
        tmp_path: Path, content: bytes, says: str) -> None:
    data_dir = tmp_path / "n"
    init_node(data_dir, "node-a", "--no-sample")
    (data_dir / "outpost.toml").write_bytes(content)
    result = _run(data_dir)
    assert result.returncode == 3, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.startswith("outpost:")]
    assert len(lines) == 1 and says in lines[0], result.stderr
    assert "outpost init" in lines[0] or "fix it" in lines[0] or "set name" in lines[0]
    # Nothing was signed under another origin meanwhile.
    assert not (data_dir / "daemon.json").exists()


def test_a_node_file_is_replaced_whole_or_not_at_all(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "outpost.toml"
    write_atomic(target, "old = 1\n")
    assert _mode(target) == 0o600 and target.read_text() == "old = 1\n"

    def cut(*_args: object) -> None:
        raise OSError("power cut before the rename")

    monkeypatch.setattr(os, "replace", cut)
    with pytest.raises(OSError):
        write_atomic(target, "new = 2\n")
    assert target.read_text() == "old = 1\n"  # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["outpost.toml"]  # no temporary left
    monkeypatch.undo()
    with pytest.raises(FileExistsError):
        write_atomic(target, "other", exclusive=True)  # keys are never overwritten
    write_atomic(target, "new = 2\n")
    assert target.read_text() == "new = 2\n"
