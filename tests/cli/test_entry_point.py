"""The real ``outpost`` entry point as a shell runs it, in a subprocess: what in-process
``CliRunner`` runs (every other CLI test) cannot see — the process exit code, the two streams
as separate pipes, and native libraries writing to fds 1 and 2 behind Python's back.

Invariants: in-process and subprocess runs of a command agree on exit code, stdout and
stderr; a refusal is exactly one line on stderr and nothing on stdout; a listing's stdout is
pure JSON with nothing on stderr; usage errors exit 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from node.testing import init_node, outpost

pytestmark = pytest.mark.integration


def test_the_entry_point_runs_and_reports_its_version() -> None:
    result = outpost("--version", in_process=False)
    assert result.returncode == 0 and "version" in result.stdout and result.stderr == ""


@pytest.mark.parametrize(
    "args",
    [
        ("models", "list", "--json"),  # a listing: JSON on stdout
        ("models", "rm", "nope"),  # a refusal: exit 1, one line on stderr
        ("models", "rm"),  # a usage error: exit 2
        ("audit", "verify"),
    ],
)
def test_in_process_and_subprocess_runs_agree(node_dir: Path, args: tuple[str, ...]) -> None:
    here = outpost(*args, data_dir=node_dir, check=False)
    there = outpost(*args, data_dir=node_dir, check=False, in_process=False)
    # (click names the program as it was started: `python -m cli.main` there, `outpost` here
    # and from the installed script)
    assert (here.returncode, here.stdout, here.stderr) == (
        there.returncode,
        there.stdout,
        there.stderr.replace("python -m cli.main", "outpost"),
    )


def test_streams_are_separate_and_refusals_are_one_line(tmp_path: Path, node_dir: Path) -> None:
    listing = outpost("models", "list", "--json", data_dir=node_dir, in_process=False)
    assert [m["name"] for m in json.loads(listing.stdout)] == ["digits"]
    assert listing.stderr == ""
    missing = outpost("models", "rm", "nope", data_dir=node_dir, check=False, in_process=False)
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr.count("\n") == 1 and missing.stderr.startswith("outpost: error:")
    usage = outpost("models", "rm", data_dir=node_dir, check=False, in_process=False)
    assert usage.returncode == 2 and usage.stdout == "" and "Usage:" in usage.stderr


def test_onnxruntime_writes_nothing_of_its_own_to_the_terminal(
    tmp_path: Path, node_dir: Path
) -> None:
    """onnxruntime prints to fd 2 from C++ (a failed CUDA load, a bad model): the CLI keeps
    it out, so a good model adds with its one line and a bad one is refused with one."""
    from models.sample.dense import build_dense

    good, bad = tmp_path / "good.onnx", tmp_path / "bad.onnx"
    build_dense(good, width=8, layers=1)
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    added = outpost(
        "models", "add", str(good), "--name", "good", data_dir=node_dir, in_process=False
    )
    assert added.stdout.startswith("added good:1") and added.stdout.count("\n") == 1
    refused = outpost(
        "models", "add", str(bad), "--name", "bad", data_dir=node_dir, check=False, in_process=False
    )
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1 and "onnx" in refused.stderr.lower()


def test_init_through_the_entry_point(tmp_path: Path) -> None:
    data_dir = tmp_path / "n"
    first = outpost("init", "--name", "edge-1", data_dir=data_dir, in_process=False)
    assert "created node key" in first.stdout
    init_node(data_dir, "edge-1")  # and in-process, on what the subprocess made
    again = outpost("init", "--name", "other", data_dir=data_dir, check=False, in_process=False)
    assert again.returncode == 1 and "cannot change" in again.stderr
