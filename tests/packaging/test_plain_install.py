"""A plain ``pip install <repo>`` into a fresh venv (no extras) gives a working ``outpost``.

Invariant: every documented command answers ``--help`` from the installed script, the node
serves the bundled model, and a command that needs an extra that is not installed (batch ->
pyarrow, [ray] address -> ray) exits with one line naming ``outpost[EXTRA]``, no traceback.
Uses pip's cache and the configured indexes; slow (a minute) on a cold cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import numpy as np
import pytest

from tests.conftest import ROOT, write_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("plain") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True, timeout=300)
    pip = subprocess.run([str(where / "bin" / "pip"), "install", "--quiet", str(ROOT)],
                         capture_output=True, text=True, timeout=1800)
    assert pip.returncode == 0, pip.stderr[-3000:]
    return where


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if cmd is None or cmd.hidden:
            continue
        yield (*prefix, name)
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*prefix, name))


def _run(venv: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    # cwd outside the repo: the installed package must be what runs, not the checkout.
    return subprocess.run([str(venv / "bin" / "outpost"), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=venv, env=env)


def test_no_extras_are_installed(venv: Path) -> None:
    probe = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import importlib.util as u; print([m for m in ('pyarrow', 'ray', 'pytest') "
         "if u.find_spec(m)])"], capture_output=True, text=True, check=True, cwd=venv)
    assert probe.stdout.strip() == "[]"


def test_every_command_answers_help(venv: Path) -> None:
    from cli.main import main

    commands = list(_commands(main))
    assert ("batch", "run") in commands and ("stop",) in commands
    for command in [(), *commands]:
        result = _run(venv, *command, "--help")
        assert result.returncode == 0, (command, result.stderr)
        assert "Usage:" in result.stdout and "Traceback" not in result.stderr


def test_node_serves_and_missing_extras_name_themselves(venv: Path, tmp_path: Path,
                                                         sample_digits: dict) -> None:
    data = tmp_path / "node"
    assert _run(venv, "init", "--name", "plain", "--data-dir", str(data)).returncode == 0
    # batch run writes Parquet: without pyarrow, one line naming the extra
    rows = np.asarray([sample_digits["examples"][0]["input"]], dtype=np.float32)  # type: ignore[index]
    np.save(tmp_path / "rows.npy", rows)
    result = _run(venv, "batch", "run", "digits", "--input", str(tmp_path / "rows.npy"),
                  "--output", str(tmp_path / "out"), "--data-dir", str(data))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert "pip install 'outpost[batch]'" in result.stderr
    assert not (tmp_path / "out").exists()
    # a node configured for Ray, without Ray: refuses to start (exit 3), naming the extra
    write_config(data, "ray", address="local")
    result = _run(venv, "run", "--data-dir", str(data), "--listen", "127.0.0.1:0",
                  "--peer-listen", "127.0.0.1:0")
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    assert "pip install 'outpost[ray]'" in result.stderr
    # status reports the runtime it has
    status = json.loads(_run(venv, "status", "--json", "--data-dir", str(data)).stdout)
    caps = status["capabilities"]
    assert caps["onnxruntime_package"].split()[0] in ("onnxruntime", "onnxruntime-gpu")
    assert "CPUExecutionProvider" in caps["providers_installed"]
