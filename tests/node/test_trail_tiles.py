"""The trail served as C2SP tiles and checked with public keys only: tiles read from a real
SQLite log equal an RFC 9162 reference at tile boundaries; a real daemon's tiles listener
passes `verify-log` and fails it once an entry is edited; `verify-proof` on good and tampered
inputs; export and tail filters."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from federation.tiles import TileId, decode_bundle, tiles_at
from tests.conftest import ROOT, DaemonProc, init_node, outpost, start_daemon, write_config
from tests.fedharness import free_port

pytestmark = [pytest.mark.integration]


# -- tiles from a real stored log, against the RFC reference ----------------------------


async def _tiles_at_sizes(tmp_path: Path, sizes: list[int]) -> dict[int, dict[TileId, bytes]]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from node.audit import AuditLog
    from node.config import AuditSection, Config
    from node.store import Store
    from node.trail import TileStore

    store = await Store.open(tmp_path)
    audit = await AuditLog.open(store, Ed25519PrivateKey.generate(), "n", None, AuditSection())
    daemon = SimpleNamespace(store=store, audit=audit, config=Config())
    tiles = TileStore(daemon)  # type: ignore[arg-type]
    out: dict[int, dict[TileId, bytes]] = {}
    try:
        for size in sizes:
            futures = [audit.append_bytes(b'{"i":%d}' % i) for i in range(audit.size, size)]
            for f in futures:
                await f
            got: dict[TileId, bytes] = {}
            for right in tiles_at(size):
                for tile in {right, TileId(right.level, max(right.index - 1, 0))}:
                    data = await tiles.tile(audit.origin, tile)
                    if data is not None:
                        got[tile] = data
                entries = TileId(-1, right.index, right.width) if right.level == 0 else None
                if entries is not None:
                    got[entries] = await tiles.tile(audit.origin, entries)  # type: ignore[assignment]
            # nothing beyond the tree is served
            assert await tiles.tile(audit.origin, TileId(0, size // 256 + 1)) is None
            out[size] = got
    finally:
        await audit.close()
        await store.close()
    return out


@pytest.mark.asyncio
async def test_stored_tiles_are_byte_identical_to_the_rfc_reference(tmp_path: Path) -> None:
    from tests.federation.test_tiles import ref_tile

    sizes = [255, 256, 257, 65535, 65536, 65537]
    served = await _tiles_at_sizes(tmp_path, sizes)
    for size, tiles in served.items():
        widths = {t.level: t.width for t in tiles_at(size)}
        for tile, data in tiles.items():
            if tile.is_entries:
                first = tile.index * 256
                assert decode_bundle(data, tile.width) == [
                    b'{"i":%d}' % i for i in range(first, first + tile.width)]
            else:
                assert data == ref_tile(tile.level, tile.index, tile.width), (size, tile.path)
        assert {t.level for t in tiles if not t.is_entries} == set(widths)


# -- a real daemon's tiles listener ------------------------------------------------------


@pytest.fixture
def tiles_daemon(tmp_path: Path):  # type: ignore[no-untyped-def]
    data_dir = tmp_path / "node"
    init_node(data_dir, "node-a")
    port = free_port()
    write_config(data_dir, "audit", tiles_listen=f"127.0.0.1:{port}")
    proc = start_daemon(data_dir)
    yield proc, f"http://127.0.0.1:{port}"
    proc.stop()


def _grow(proc: DaemonProc, sample: dict[str, object], n: int) -> None:
    """``n`` inferences: ``n`` entries of kind ``infer`` on the node's trail."""
    pixels = sample["examples"][0]["input"]  # type: ignore[index]
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                        "data": pixels}]}
    with proc.http() as http:
        for _ in range(n):
            r = http.post("/v2/models/digits/infer", json=body)
            assert r.status_code == 200, r.text


def test_verify_log_passes_then_catches_an_edited_entry_and_remembers(
        tiles_daemon: tuple[DaemonProc, str], sample_digits: dict[str, object],
        tmp_path: Path) -> None:
    proc, url = tiles_daemon
    _grow(proc, sample_digits, 300)  # past one full tile
    vkey = outpost("audit", "vkey", data_dir=proc.data_dir).stdout.strip()
    state = tmp_path / "state.json"
    ok = outpost("audit", "verify-log", url, "--vkey", vkey, "--state", str(state), "--json")
    result = json.loads(ok.stdout)
    assert result["ok"] and result["size"] >= 300 and result["entries"] == result["size"]
    remembered = json.loads(state.read_text())[result["origin"]]
    assert remembered["size"] == result["size"]
    # Full tiles are immutable, the checkpoint is not.
    with httpx.Client(base_url=url) as http:
        full = http.get("/tile/0/000")
        assert len(full.content) == 8192 and "immutable" in full.headers["cache-control"]
        assert "immutable" not in http.get("/checkpoint").headers["cache-control"]
        assert http.get(f"/{result['origin']}/tile/entries/000").status_code == 200
        assert http.post("/checkpoint").status_code == 405
        assert http.get("/tile/0/999").status_code == 404
    # A wrong key fails with the reason.
    other = outpost("audit", "verify-log", url, "--vkey", vkey.replace("node-a", "node-b"),
                    "--state", str(state), check=False)
    assert other.returncode == 1 and "key" in other.stderr
    # An entry edited in the database (the row a human reads) breaks the served tree. (Full
    # tiles already served come from the daemon's cache of immutable tiles: edit one in the
    # newest, partial bundle, which is read from the database each time.)
    db = sqlite3.connect(proc.data_dir / "outpost.db")
    db.execute("UPDATE audit_entry SET entry = replace(entry, 'digits', 'digitz') "
                "WHERE seq = 260")
    db.commit()
    db.close()
    bad = outpost("audit", "verify-log", url, "--vkey", vkey, "--state", str(state), check=False)
    assert bad.returncode == 1 and "tampered" in bad.stderr and "tile/0/001.p/" in bad.stderr, \
        bad.stderr


def test_verify_proof_offline_good_and_tampered(
        tiles_daemon: tuple[DaemonProc, str], sample_digits: dict[str, object],
        tmp_path: Path) -> None:
    proc, url = tiles_daemon
    _grow(proc, sample_digits, 3)
    with httpx.Client(base_url=url) as http:
        note = http.get("/checkpoint").text
        size = int(note.split("\n")[1])
        bundle = http.get(f"/tile/entries/000.p/{size}").content
    entry = decode_bundle(bundle, size)[2]
    proof = outpost("audit", "proof", "--index", "2", "--size", str(size),
                    data_dir=proc.data_dir).stdout
    vkey = outpost("audit", "vkey", data_dir=proc.data_dir).stdout.strip()
    files = {"c": note, "p": proof}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "e").write_bytes(entry)
    args = ["audit", "verify-proof", "--vkey", vkey, "--checkpoint", str(tmp_path / "c"),
            "--entry", str(tmp_path / "e"), "--proof", str(tmp_path / "p")]
    assert "ok: entry 2" in outpost(*args).stdout
    (tmp_path / "e").write_bytes(entry.replace(b"digits", b"digitz"))
    bad = outpost(*args, check=False)
    assert bad.returncode == 1 and "does not hash to the proof's leaf" in bad.stderr
    (tmp_path / "e").write_bytes(entry)
    (tmp_path / "c").write_text(note.replace(f"\n{size}\n", f"\n{size + 1}\n"))
    bad = outpost(*args, check=False)
    assert bad.returncode == 1 and "FAILED" in bad.stderr


def test_export_and_tail_filters(tiles_daemon: tuple[DaemonProc, str],
                                 sample_digits: dict[str, object], tmp_path: Path) -> None:
    proc, _ = tiles_daemon
    _grow(proc, sample_digits, 4)
    d = proc.data_dir
    rows = [json.loads(x) for x in outpost("audit", "export", "--kind", "infer",
                                            data_dir=d).stdout.splitlines()]
    assert len(rows) == 4 and {r["kind"] for r in rows} == {"infer"}
    assert all(r["model"] == "digits" and len(r["leaf_hash"]) == 64 for r in rows)
    first = rows[0]["time"]
    later = [json.loads(x) for x in outpost("audit", "export", "--kind", "infer", "--since",
                                             rows[1]["time"], data_dir=d).stdout.splitlines()]
    assert [r["index"] for r in later] == [r["index"] for r in rows[1:]]
    before = outpost("audit", "export", "--until", first, "--kind", "infer", data_dir=d).stdout
    assert before == ""
    assert outpost("audit", "export", "--model", "nope", data_dir=d).stdout == ""
    assert len(outpost("audit", "export", "--model", "digits:1", "--outcome",
                       rows[0].get("outcome") or "ok", data_dir=d).stdout.splitlines()) == 4
    tail = outpost("audit", "tail", "--json", "-n", "2", "--kind", "infer", data_dir=d).stdout
    assert [json.loads(x)["index"] for x in tail.splitlines()] == [r["index"] for r in rows[2:]]
    assert outpost("audit", "tail", "--caller", "nobody", data_dir=d).stdout == ""
    bad = outpost("audit", "export", "--since", "yesterday", data_dir=d, check=False)
    assert bad.returncode == 1 and "2026-01-02" in bad.stderr
    # Parquet, read back with pyarrow.
    import pyarrow.parquet as pq

    out = tmp_path / "trail.parquet"
    outpost("audit", "export", "--format", "parquet", "-o", str(out), "--kind", "infer",
            data_dir=d)
    table = pq.read_table(out)
    assert table.num_rows == 4 and table.column("index").to_pylist() == [r["index"] for r in rows]
    # Without pyarrow: one line naming the extra.
    fake = tmp_path / "nopyarrow" / "pyarrow"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no pyarrow here')\n")
    env_path = f"{fake.parent}"
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "audit", "export", "--format", "parquet", "-o",
         str(tmp_path / "x.parquet"), "--data-dir", str(d)],
        capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": env_path, "PATH": "/usr/bin"})
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "outpost[batch]" in result.stderr


# -- an external witness, added by URL and verifier key ----------------------------------


class _ExternalWitness:
    """A tlog-witness service that is not Outpost: stdlib HTTP server around the protocol core
    (the way any third-party witness would answer). Records the statuses it answered."""

    def __init__(self, log_vkey: str) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from federation.note import Verifier
        from federation.witness import Cosigner, WitnessState

        self.cosigner = Cosigner("witness.example/w1", Ed25519PrivateKey.generate())
        self.state = WitnessState("witness.example/w1")
        self.answers: list[int] = []
        verifier = Verifier.from_vkey(log_vkey)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                import time as _time

                result = outer.state.add_checkpoint(
                    body, {verifier.name: verifier}, cosigner=outer.cosigner,
                    now=int(_time.time()))
                outer.answers.append(result.status)
                data = result.body.encode()
                self.send_response(result.status)
                self.send_header("content-type", result.content_type)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/w"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def test_external_witness_by_url_and_vkey_cosigns_across_restarts(tmp_path: Path) -> None:
    from tests.fedharness import eventually

    data_dir = tmp_path / "node"
    init_node(data_dir, "node-a", "--no-sample")
    vkey = outpost("audit", "vkey", data_dir=data_dir).stdout.strip()
    witness = _ExternalWitness(vkey)
    try:
        write_config(data_dir, "audit", witness_quorum=1,
                     witnesses=[f"{witness.url} {witness.cosigner.verifier.vkey}"])
        write_config(data_dir, "federation", checkpoint_interval_s=0.5)
        proc = start_daemon(data_dir)
        try:
            out = eventually(lambda: (r := outpost("audit", "checkpoint", "--cosigned",
                                                   data_dir=data_dir, check=False)).returncode
                             == 0 and r, timeout=30, what="cosigned by the external witness")
            assert "\u2014 witness.example/w1 " in out.stdout and "witnessed" in out.stderr
        finally:
            proc.stop()
        held = witness.state.held("outpost/local/node-a")
        assert held is not None
        # Restarted, the node does not know what the witness holds: 409 tells it, and the
        # next request carries the consistency proof from there.
        proc = start_daemon(data_dir)
        try:
            eventually(lambda: (h := witness.state.held("outpost/local/node-a")) is not None
                       and h.size > held.size, timeout=30, what="witness follows the restart")
        finally:
            proc.stop()
        assert 409 in witness.answers and witness.answers[-1] == 200
        assert 422 not in witness.answers and 403 not in witness.answers
    finally:
        witness.close()
