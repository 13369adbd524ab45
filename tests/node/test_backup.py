"""Backup taken while the daemon serves and writes, then restored into a new directory: the
restored node's audit log verifies, it serves the same models, and a damaged backup or an
occupied directory is refused with nothing written."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from node.testing import eventually
from tests.conftest import outpost, start_daemon

pytestmark = pytest.mark.integration


def test_online_backup_restores_a_node_whose_audit_verifies(
        node_dir: Path, tmp_path: Path, sample_digits: dict) -> None:
    daemon = start_daemon(node_dir)
    example = sample_digits["examples"][0]  # type: ignore[index]
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                        "data": example["input"]}]}
    stop = threading.Event()
    answered = []

    def traffic() -> None:  # audit entries keep landing while the backup runs
        with daemon.http() as http:
            for _ in range(500):
                if stop.is_set():
                    break
                answered.append(http.post("/v2/models/digits/infer", json=body).status_code)

    writer = threading.Thread(target=traffic)
    writer.start()
    try:
        eventually(lambda: answered, what="traffic is flowing before the backup starts")
        result = json.loads(outpost("backup", "-o", str(tmp_path / "bk"), "--json",
                                    data_dir=node_dir).stdout)
    finally:
        stop.set()
        writer.join()
        assert daemon.stop() == 0
    assert answered and set(answered) == {200}
    assert result["models"] == 1 and (tmp_path / "bk" / "node.key").exists()
    assert oct((tmp_path / "bk").stat().st_mode & 0o777) == "0o700"
    restored = tmp_path / "restored"
    outpost("restore", str(tmp_path / "bk"), data_dir=restored)
    report = json.loads(outpost("audit", "verify", "--json", data_dir=restored).stdout)
    assert report["ok"] is True and report["entries"] >= 2
    assert oct((restored / "node.key").stat().st_mode & 0o777) == "0o600"
    models = json.loads(outpost("models", "list", "--json", data_dir=restored).stdout)
    assert [m["name"] for m in models] == ["digits"]
    # the restored node starts and serves
    again = start_daemon(restored)
    try:
        with again.http() as http:
            assert http.post("/v2/models/digits/infer", json=body).status_code == 200
    finally:
        assert again.stop() == 0


def test_restore_refuses_damage_and_occupied_directories(node_dir: Path, tmp_path: Path) -> None:
    outpost("backup", "-o", str(tmp_path / "bk"), data_dir=node_dir)
    result = outpost("restore", str(tmp_path / "bk"), data_dir=node_dir, check=False)
    assert result.returncode == 1 and "already holds a node" in result.stderr
    with (tmp_path / "bk" / "outpost.db").open("r+b") as f:
        f.seek(200)
        f.write(b"\xff\xff")
    target = tmp_path / "new"
    result = outpost("restore", str(tmp_path / "bk"), data_dir=target, check=False)
    assert result.returncode == 1 and "changed since the backup" in result.stderr
    assert not (target / "outpost.db").exists()
    again = outpost("backup", "-o", str(tmp_path / "bk"), data_dir=node_dir, check=False)
    assert again.returncode == 1 and "not empty" in again.stderr
