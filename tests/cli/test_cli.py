"""The `outpost` CLI against real data directories: init, models add/list/rm with the daemon
stopped and running, status, infer — and the refusals that must leave nothing behind."""

from __future__ import annotations

import json
import stat
import tomllib
from pathlib import Path

import pytest

from node.testing import DaemonProc, init_node, outpost


def _blobs(data_dir: Path) -> list[str]:
    return sorted(p.name for p in (data_dir / "blobs").iterdir())


def test_init_creates_key_config_and_sample_and_keeps_them(tmp_path: Path) -> None:
    data_dir = tmp_path / "n"
    first = outpost("init", "--name", "edge-1", data_dir=data_dir)
    key = data_dir / "node.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert "created node key" in first.stdout
    config = tomllib.loads((data_dir / "outpost.toml").read_text())
    assert config["node"]["name"] == "edge-1"
    assert config["node"]["listen"] == "127.0.0.1:8470"
    # every default is written with its documentation
    text = (data_dir / "outpost.toml").read_text()
    assert "# App endpoint" in text and "max_batch_size" in text
    before = key.read_bytes()
    second = outpost("init", data_dir=data_dir)
    assert "already exists; kept it" in second.stdout
    assert key.read_bytes() == before
    listing = json.loads(outpost("models", "list", "--json", data_dir=data_dir).stdout)
    assert [(m["name"], m["version"]) for m in listing] == [("digits", "1")]


def test_init_refuses_to_rename_a_node(tmp_path: Path) -> None:
    data_dir = tmp_path / "n"
    init_node(data_dir, "one")
    result = outpost("init", "--name", "two", data_dir=data_dir, check=False)
    assert result.returncode == 1
    assert "cannot change" in result.stderr


def test_invalid_node_name_is_refused(tmp_path: Path) -> None:
    result = outpost("init", "--name", "../evil", data_dir=tmp_path / "n", check=False)
    assert result.returncode != 0
    assert "node name" in result.stderr


def test_models_add_list_rm_offline(tmp_path: Path, node_dir: Path) -> None:
    from models.sample.dense import build_dense

    model = tmp_path / "dense.onnx"
    build_dense(model, width=16, layers=2)
    added = json.loads(outpost("models", "add", str(model), "--name", "dense", "--json",
                               data_dir=node_dir).stdout)
    assert added["version"] == "1"
    again = json.loads(outpost("models", "add", str(model), "--name", "dense", "--json",
                               data_dir=node_dir).stdout)
    assert again["version"] == "2" and again["sha256"] == added["sha256"]
    assert f"{added['sha256']}.onnx" in _blobs(node_dir)
    names = {(m["name"], m["version"]) for m in
             json.loads(outpost("models", "list", "--json", data_dir=node_dir).stdout)}
    assert names == {("digits", "1"), ("dense", "1"), ("dense", "2")}
    outpost("models", "rm", "dense:1", data_dir=node_dir)
    assert f"{added['sha256']}.onnx" in _blobs(node_dir)  # still used by dense:2
    outpost("models", "rm", "dense", data_dir=node_dir)
    assert f"{added['sha256']}.onnx" not in _blobs(node_dir)
    missing = outpost("models", "rm", "dense", data_dir=node_dir, check=False)
    assert missing.returncode == 1 and "models list" in missing.stderr


@pytest.mark.parametrize("content", [b"", b"not an onnx model at all" * 10, "truncated"])
def test_models_add_refuses_bad_files_and_leaves_nothing(
    tmp_path: Path, node_dir: Path, content: bytes | str
) -> None:
    bad = tmp_path / "bad.onnx"
    if content == "truncated":
        from models.sample.dense import build_dense

        build_dense(bad, width=64, layers=2)
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    else:
        assert isinstance(content, bytes)
        bad.write_bytes(content)
    before = _blobs(node_dir)
    result = outpost("models", "add", str(bad), "--name", "bad", data_dir=node_dir, check=False)
    assert result.returncode == 1
    assert "onnx" in result.stderr.lower()
    assert len(result.stderr.strip().splitlines()) == 1
    assert _blobs(node_dir) == before
    names = [m["name"] for m in json.loads(outpost("models", "list", "--json", data_dir=node_dir).stdout)]
    assert "bad" not in names


def test_models_add_refuses_oversized_file(tmp_path: Path, node_dir: Path) -> None:
    from models.sample.dense import build_dense
    from node.testing import write_config

    model = tmp_path / "big.onnx"
    build_dense(model, width=256, layers=2)
    write_config(node_dir, "models", max_model_bytes=4096)
    before = _blobs(node_dir)
    result = outpost("models", "add", str(model), "--name", "big", data_dir=node_dir, check=False)
    assert result.returncode == 1
    assert "models.max_model_bytes" in result.stderr
    assert _blobs(node_dir) == before


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", "x" * 200, "white space"])
def test_model_names_are_validated(tmp_path: Path, node_dir: Path, name: str) -> None:
    from models.sample.dense import build_dense

    model = tmp_path / "m.onnx"
    build_dense(model, width=8, layers=1)
    result = outpost("models", "add", str(model), "--name", name, data_dir=node_dir, check=False)
    assert result.returncode != 0
    assert not (node_dir.parent / "escape").exists()


@pytest.mark.integration
def test_models_add_and_rm_live_while_daemon_runs(tmp_path: Path, daemon: DaemonProc) -> None:
    from models.sample.dense import build_dense

    model = tmp_path / "dense.onnx"
    build_dense(model, width=32, layers=2)
    outpost("models", "add", str(model), "--name", "dense", data_dir=daemon.data_dir)
    with daemon.http() as http:
        meta = http.get("/v2/models/dense")
        assert meta.status_code == 200
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 32],
                            "data": [0.5] * 32}]}
        assert http.post("/v2/models/dense/infer", json=body).status_code == 200
    listing = json.loads(outpost("models", "list", "--json", data_dir=daemon.data_dir).stdout)
    assert {m["name"]: m["provider"] for m in listing}["dense"] == "CPUExecutionProvider"
    outpost("models", "rm", "dense", data_dir=daemon.data_dir)
    with daemon.http() as http:
        assert http.get("/v2/models/dense").status_code == 404
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"nope")
    result = outpost("models", "add", str(bad), "--name", "bad", data_dir=daemon.data_dir,
                     check=False)
    assert result.returncode == 1 and "onnx" in result.stderr.lower()


@pytest.mark.integration
def test_status_and_infer_through_the_daemon(daemon: DaemonProc, sample_digits: dict) -> None:
    status = json.loads(outpost("status", "--json", data_dir=daemon.data_dir).stdout)
    assert status["running"] is True and status["node_id"] == "node-a"
    assert status["models"][0]["provider"] == "CPUExecutionProvider"
    assert status["capabilities"]["cpu"]["logical"] >= 1
    assert "CPUExecutionProvider" in status["capabilities"]["providers_installed"]
    example = sample_digits["examples"][0]  # type: ignore[index]
    result = outpost("infer", "digits", "--input", json.dumps({"input": [example["input"]]}),
                     "--json", data_dir=daemon.data_dir)
    response = json.loads(result.stdout)
    labels = {o["name"]: o["data"] for o in response["outputs"]}["label"]
    assert labels == [example["label"]]
    human = outpost("status", data_dir=daemon.data_dir).stdout
    assert "running" in human and "digits" in human


def test_status_offline_and_infer_without_daemon(node_dir: Path) -> None:
    status = json.loads(outpost("status", "--json", data_dir=node_dir).stdout)
    assert status["running"] is False
    assert [m["name"] for m in status["models"]] == ["digits"]
    result = outpost("infer", "digits", "--input", "[[0]]", data_dir=node_dir, check=False)
    assert result.returncode == 1
    assert "outpost run" in result.stderr
