"""Log lines: text or JSON (one object per line), node id and request id stamped, third-party
libraries quiet at INFO, and no ERROR on a normal start and stop.

Real daemons; the lines are read from their stderr.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import httpx
import pytest

from node import logs
from tests.conftest import DaemonProc, outpost, start_daemon
from tests.fedharness import Fed, eventually, peers


@pytest.fixture
def restore_logging() -> object:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield None
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    logs.set_level(logging.getLevelName(level).lower() if level else "warning")


def test_json_lines_carry_node_and_request_id(restore_logging: object) -> None:
    stream = io.StringIO()
    logs.setup("info", "json", node_id="n1", stream=stream)
    log = logging.getLogger("outpost.test")
    log.info("outside %s", "requests")
    token = logs.request_id.set("abc123")
    try:
        log.warning("inside")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    finally:
        logs.request_id.reset(token)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["message"] for line in lines] == ["outside requests", "inside", "failed"]
    assert lines[0].keys() == {"time", "level", "logger", "message", "node_id"}
    assert lines[1]["request_id"] == "abc123" and lines[1]["level"] == "WARNING"
    assert "ValueError: boom" in lines[2]["exc"]
    assert lines[0]["time"].endswith("Z")


def test_third_parties_are_quiet_unless_debug(restore_logging: object) -> None:
    stream = io.StringIO()
    logs.setup("info", "text", stream=stream)
    for name in ("httpx", "aiohttp.access", "uvicorn.error", "zeroconf"):
        logging.getLogger(name).info("a line per request")
    assert stream.getvalue() == ""
    logs.set_level("debug")
    logging.getLogger("httpx").info("now shown")
    assert "now shown" in stream.getvalue()
    with pytest.raises(ValueError, match="one of"):
        logs.setup("info", "xml")


def _json_lines(daemon: DaemonProc) -> list[dict[str, object]]:
    lines = []
    for raw in daemon.log:
        if raw.startswith("outpost: node "):  # the ready line on stdout, for humans
            continue
        lines.append(json.loads(raw))  # every other line must parse
    return lines


@pytest.mark.integration
def test_daemon_json_log_has_the_request_id_the_app_got_back(
        node_dir: Path, sample_digits: dict) -> None:
    daemon = start_daemon(node_dir, "--log-format", "json", "--log-level", "debug")
    try:
        example = sample_digits["examples"][0]  # type: ignore[index]
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                            "data": example["input"]}]}
        response = httpx.post(daemon.url + "/v2/models/digits/infer", json=body)
        assert response.status_code == 200, response.text
        rid = response.headers["outpost-request-id"]
        eventually(lambda: any(rid in line for line in daemon.log), what="request log line")
        # and a refused request tells the app its id too
        bad = httpx.post(daemon.url + "/v2/models/digits/infer", json={"inputs": []})
        assert bad.status_code == 400 and bad.headers["outpost-request-id"] != rid
    finally:
        assert daemon.stop() == 0
    lines = _json_lines(daemon)
    mine = [line for line in lines if line.get("request_id") == rid]
    assert mine and all(line["node_id"] == "node-a" for line in mine)
    assert {"time", "level", "logger", "message"} <= mine[0].keys()
    # the audit entry of that request carries the same id
    entries = [json.loads(e) for e in outpost("audit", "tail", "--json", data_dir=node_dir)
               .stdout.splitlines()]
    assert any(rid[:64] in json.dumps(e) for e in entries)


@pytest.mark.integration
def test_federated_nodes_log_no_noise_and_no_errors(fed: Fed) -> None:
    fed.add("node-a")
    fed.add("node-b", seed="node-a")
    for name in fed.dirs:
        fed.procs[name] = start_daemon(fed.dirs[name], "--peer-listen",
                                       f"127.0.0.1:{fed.ports[name]}", "--log-format", "json")
    for name in fed.dirs:
        eventually(lambda n=name: len([p for p in peers(fed.dirs[n]).values()
                                       if p["state"] == "alive"]) == 2, what="membership")
    for name, proc in fed.procs.items():
        assert outpost("stop", data_dir=fed.dirs[name]).returncode == 0
        assert proc.wait(30) == 0
        lines = _json_lines(proc)
        assert not [line for line in lines if line["level"] in ("ERROR", "CRITICAL")], lines
        noisy = [line for line in lines if str(line["logger"]).split(".")[0]
                 in ("uvicorn", "aiohttp", "httpx", "httpcore", "zeroconf")]
        assert noisy == [], noisy
        held = json.loads(outpost("models", "list", "--json", data_dir=fed.dirs[name]).stdout)
        loaded = [line for line in lines if "loaded" in str(line["message"])]
        assert len(loaded) == len(held)  # one line per model, not one per layer
        assert all(line.get("node_id") == name for line in lines)
