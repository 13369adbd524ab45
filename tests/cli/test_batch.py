"""`outpost batch run` over real files with the node's sample model.

Invariants: the output holds, row for row, what the in-process runtime gives for the input,
whatever the input layout (.npy, a Parquet list column, a plain Parquet table) and engine (in
this process, or Ray Data); an interrupted run continues after its last complete chunk and
ends with the same output as an uninterrupted one; every chunk has exactly one `infer`
entry with caller `batch` and its inputs' SHA-256, written by the daemon when one runs and by
the job under the data-directory lock otherwise.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomli_w
from click.testing import CliRunner

from cli.batch import batch
from models import SAMPLE_MODEL, OrtBackend, RuntimeConfig, inspect_model
from node.batch import BatchError, BatchSettings, run_batch
from node.batchio import MANIFEST, read_output
from node.testing import init_node, start_daemon

Array = np.ndarray[Any, Any]
ROWS = 2_500
CHUNK = 1_000


@pytest.fixture
def node(tmp_path: Path) -> Path:
    data_dir = tmp_path / "node"
    init_node(data_dir)
    return data_dir


@pytest.fixture(scope="module")
def rows() -> Array:
    return np.random.default_rng(11).integers(0, 17, (ROWS, 64)).astype(np.float32)


@pytest.fixture(scope="module")
def expected(rows: Array) -> dict[str, Array]:
    async def run() -> dict[str, Array]:
        model = await OrtBackend(RuntimeConfig(providers="cpu")).load(
            "digits", "1", SAMPLE_MODEL, inspect_model(SAMPLE_MODEL))
        try:
            return await model.infer({"input": rows})
        finally:
            await model.close()

    return asyncio.run(run())


def write_parquet(path: Path, rows: Array, *, wide: bool = False) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if wide:  # a plain table: one column per feature
        table = pa.table({f"pixel_{i}": rows[:, i] for i in range(rows.shape[1])})
    else:  # one list column named like the model's input
        table = pa.table({"input": pa.FixedSizeListArray.from_arrays(
            pa.array(rows.ravel()), rows.shape[1])})
    pq.write_table(table, path, row_group_size=700)  # row groups that straddle chunks
    return path


def cli(*args: str) -> Any:
    result = CliRunner().invoke(batch, ["run", *args], catch_exceptions=False)
    return result


def batch_entries(data_dir: Path) -> list[dict[str, Any]]:
    from node.ops_federation import audit_tail

    return [e for _i, e in audit_tail(data_dir, 1000)
            if e["kind"] == "infer" and e.get("caller") == "batch"]


def assert_same(output: Path, expected: dict[str, Array]) -> None:
    got = read_output(output)
    assert got.keys() == expected.keys()
    for name, want in expected.items():
        assert got[name].dtype == want.dtype and np.array_equal(got[name], want), name


@pytest.mark.parametrize("layout", ["parquet", "npy", "wide"])
def test_in_process_output_equals_the_runtime_and_each_chunk_is_audited(
    node: Path, tmp_path: Path, rows: Array, expected: dict[str, Array], layout: str
) -> None:
    if layout == "npy":
        source = tmp_path / "in.npy"
        np.save(source, rows.astype(np.float64))  # cast to FP32 on the way in (safe kind)
    else:
        source = write_parquet(tmp_path / "in.parquet", rows, wide=layout == "wide")
    out = tmp_path / "out"
    result = cli("digits", "--data-dir", str(node), "--input", str(source), "--output",
                 str(out), "--chunk-rows", str(CHUNK), "--batch-size", "300", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["engine"] == "onnxruntime" and summary["chunks"] == 3
    assert summary["complete"] and summary["audit"] == "offline"
    assert_same(out, expected)  # (grey levels 0..16 survive the float64 -> float32 cast)
    entries = batch_entries(node)
    assert len(entries) == 3
    for index, entry in enumerate(entries):
        start = index * CHUNK
        chunk = rows[start:start + CHUNK]
        assert entry["model"] == "digits" and entry["version"] == "1"
        assert entry["outcome"] == "ok" and entry["data_class"] == "restricted"
        assert entry["input_sha256"] == hashlib.sha256(chunk.tobytes()).hexdigest()
        assert entry["detail"]["rows"] == len(chunk) and entry["detail"]["start"] == start
        assert entry["detail"]["engine"] == "onnxruntime"
    assert len({e["detail"]["job"] for e in entries}) == 1


def test_an_interrupted_run_resumes_after_its_last_complete_chunk(
    node: Path, tmp_path: Path, rows: Array, expected: dict[str, Array]
) -> None:
    source = write_parquet(tmp_path / "in.parquet", rows)
    out = tmp_path / "out"
    seen: list[int] = []

    def interrupt_after_two_chunks(done: int, total: int) -> None:
        seen.append(done)
        if done >= 2 * CHUNK:
            raise KeyboardInterrupt  # Ctrl-C right after the second chunk landed

    with pytest.raises(KeyboardInterrupt):
        run_batch(node, "digits", source, out, settings=BatchSettings(chunk_rows=CHUNK),
                  progress=interrupt_after_two_chunks)
    assert seen == [0, CHUNK, 2 * CHUNK]
    (out / "part-00002.parquet.tmp").write_bytes(b"half a chunk")  # as a crash would leave
    manifest = json.loads((out / MANIFEST).read_text())
    assert [c["rows"] for c in manifest["chunks"]] == [CHUNK, CHUNK] and not manifest["complete"]

    # A different chunk size would misalign the resume: refused, nothing changed.
    result = cli("digits", "--data-dir", str(node), "--input", str(source), "--output",
                 str(out), "--chunk-rows", "999")
    assert result.exit_code == 1 and "chunk-rows" in result.output

    result = cli("digits", "--data-dir", str(node), "--input", str(source), "--output",
                 str(out), "--chunk-rows", str(CHUNK), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["resumed_at"] == 2 * CHUNK and summary["computed"] == ROWS - 2 * CHUNK
    assert not (out / "part-00002.parquet.tmp").exists()
    assert_same(out, expected)
    assert [e["detail"]["chunk"] for e in batch_entries(node)] == [0, 1, 2]
    # Complete: running again computes nothing and audits nothing.
    again = json.loads(cli("digits", "--data-dir", str(node), "--input", str(source),
                           "--output", str(out), "--chunk-rows", str(CHUNK), "--json").output)
    assert again["computed"] == 0 and len(batch_entries(node)) == 3


def test_inputs_that_do_not_fit_are_refused_with_the_fix(node: Path, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"pixels": [[1.0] * 64]}), bad)
    result = cli("digits", "--data-dir", str(node), "--input", str(bad), "--output",
                 str(tmp_path / "o1"))
    assert result.exit_code == 1 and "'input'" in result.output and "column" in result.output
    text = tmp_path / "in.npy"
    np.save(text, np.array(["a"] * 64).reshape(1, 64))
    result = cli("digits", "--data-dir", str(node), "--input", str(text), "--output",
                 str(tmp_path / "o2"))
    assert result.exit_code == 1 and "FP32" in result.output
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    np.save(tmp_path / "ok.npy", np.zeros((2, 64), np.float32))
    result = cli("digits", "--data-dir", str(node), "--input", str(tmp_path / "ok.npy"),
                 "--output", str(used))
    assert result.exit_code == 1 and "not a batch output" in result.output
    result = cli("nope", "--data-dir", str(node), "--input", str(tmp_path / "ok.npy"),
                 "--output", str(tmp_path / "o3"))
    assert result.exit_code == 1 and "no model 'nope'" in result.output


def test_the_ray_section_of_the_node_config_is_read(node: Path) -> None:
    from node.batch import node_ray_config

    assert not node_ray_config(node).enabled  # no [ray]: in-process
    path = node / "outpost.toml"
    raw = tomllib.loads(path.read_text())
    raw["ray"] = {"address": "auto", "max_replicas": 4}
    path.write_text(tomli_w.dumps(raw))
    ray = node_ray_config(node)
    assert ray.address == "auto" and ray.max_replicas == 4
    raw["ray"] = {"address": "nowhere"}
    path.write_text(tomli_w.dumps(raw))
    with pytest.raises(ValueError, match=r"ray\.address"):
        node_ray_config(node)


@pytest.mark.ray
def test_ray_data_output_equals_in_process(
    ray_up: Any, node: Path, tmp_path: Path, rows: Array, expected: dict[str, Array]
) -> None:
    source = write_parquet(tmp_path / "in.parquet", rows)
    here, there = tmp_path / "here", tmp_path / "there"
    assert cli("digits", "--data-dir", str(node), "--input", str(source), "--output",
               str(here), "--chunk-rows", str(CHUNK)).exit_code == 0
    result = cli("digits:1", "--data-dir", str(node), "--input", str(source), "--output",
                 str(there), "--chunk-rows", str(CHUNK), "--batch-size", "512", "--ray",
                 "local", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["engine"] == "ray-data" and summary["chunks"] == 3
    assert_same(there, read_output(here))
    assert_same(there, expected)
    engines = [e["detail"]["engine"] for e in batch_entries(node)]
    assert engines == ["onnxruntime"] * 3 + ["ray-data"] * 3


@pytest.mark.integration
def test_with_the_daemon_running_entries_go_through_it(
    node: Path, tmp_path: Path, rows: Array, expected: dict[str, Array]
) -> None:
    proc = start_daemon(node, module="tests.cli._route_daemon")
    try:
        source = tmp_path / "in.npy"
        np.save(source, rows)
        result = cli("digits", "--data-dir", str(node), "--input", str(source), "--output",
                     str(tmp_path / "out"), "--chunk-rows", str(CHUNK), "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["audit"] == "daemon"
        assert_same(tmp_path / "out", expected)
        entries = batch_entries(node)  # read through the daemon's admin socket
        assert [e["detail"]["chunk"] for e in entries] == [0, 1, 2]
    finally:
        assert proc.stop() == 0


def test_the_admin_route_appends_a_validated_entry(node: Path) -> None:
    from types import SimpleNamespace

    from node import batch as batch_module
    from node.audit import AuditLog
    from node.config import load
    from node.keys import load_key
    from node.store import Store

    async def go() -> None:
        store = await Store.open(node)
        audit = await AuditLog.open(store, load_key(node), "node-a", None, load(node).audit)
        try:
            handler = batch_module.admin_route(SimpleNamespace(audit=audit, policy_version=7))
            payload = {"model": "digits", "version": "1", "data_class": "public", "job": "ab",
                       "engine": "ray-data", "chunk": 0, "start": 0, "rows": 10,
                       "input_sha256": "0" * 64}
            status, body = await handler(payload, "")
            assert status == 200 and body["index"] == audit.size - 1
            for broken in ({"rows": -1}, {"engine": "spark"}, {"input_sha256": "xyz"},
                           {"model": "../etc"}, {"kind": "forward", "model": None}):
                with pytest.raises(ValueError):
                    await handler({**payload, **broken}, "")
        finally:
            await audit.close()
            await store.close()

    asyncio.run(go())
    [entry] = batch_entries(node)
    assert entry["policy_version"] == 7 and entry["caller"] == "batch"
    assert entry["detail"]["engine"] == "ray-data" and entry["data_class"] == "public"


def test_batch_errors_are_value_errors() -> None:
    assert issubclass(BatchError, ValueError)  # cli._output.errors prints them as one line
