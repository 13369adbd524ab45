"""Helpers for the resource-bound attacks (issue 10 rows 7-11, 13, 16): what a hostile client
or enrolled peer sends, and what the daemon's /proc says it cost."""

from __future__ import annotations

import json
import resource
import socket
import ssl
import struct
from pathlib import Path
from typing import Any

import numpy as np

from tests.conftest import outpost


def raise_nofile(wanted: int) -> None:
    """This test process needs ``wanted`` descriptors (it holds the attack's sockets)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


def proc_status(pid: int) -> dict[str, int]:
    """``VmRSS``/``VmHWM`` (peak) in bytes, from /proc/PID/status."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def hostport(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def peer_listen(data_dir: Path) -> str:
    return str(json.loads((data_dir / "daemon.json").read_text())["peer_listen"])


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server closed ``sock`` (EOF or reset); never blocks."""
    sock.setblocking(False)
    try:
        data = sock.recv(65536)
    except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
        return False
    except OSError:
        return True
    if data:
        return closed_by_server(sock)  # e.g. a 408 before the close: read on
    return True


def digits_body(value: float = 0.5, rows: int = 1) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": [rows, 64],
                        "data": [value] * (64 * rows)}]}


def bytes_model(path: Path) -> Path:
    """``y = x`` over a BYTES vector of any length: a model whose input is strings."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "echo",
        [helper.make_tensor_value_info("x", TensorProto.STRING, [None])],
        [helper.make_tensor_value_info("y", TensorProto.STRING, [None])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def bytes_request(elements: list[bytes]) -> tuple[bytes, int]:
    """A binary OIP request with one BYTES input ``x``; returns (body, JSON header length)."""
    blob = b"".join(struct.pack("<I", len(e)) + e for e in elements)
    return _binary("x", "BYTES", [len(elements)], blob)


def tiny_bytes_request(count: int) -> tuple[bytes, int]:
    """``count`` one-byte BYTES elements: 5 wire bytes each, built without a Python loop."""
    one = struct.pack("<I", 1) + b"a"
    return _binary("x", "BYTES", [count], one * count)


def _binary(name: str, datatype: str, shape: list[int], blob: bytes) -> tuple[bytes, int]:
    head = json.dumps({"inputs": [{"name": name, "datatype": datatype, "shape": shape,
                                   "parameters": {"binary_data_size": len(blob)}}]},
                      separators=(",", ":")).encode()
    return head + blob, len(head)


def big_json_request(target_bytes: int) -> bytes:
    """A digits request of about ``target_bytes`` of JSON whose shape is one row short, so the
    node must parse it all before refusing it (400) and never runs the model on it."""
    rows = max(1, target_bytes // (64 * 7))  # "0.125, " per value
    values = np.full(rows * 64, 0.125).tolist()
    return json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [rows + 1, 64],
                                   "data": values}]}).encode()


def audit_entries(data_dir: Path, n: int = 5000) -> list[dict[str, Any]]:
    lines = outpost("audit", "tail", "-n", str(n), "--json", data_dir=data_dir).stdout
    return [json.loads(line)["entry"] for line in lines.splitlines()]
