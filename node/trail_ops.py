"""CLI operations for checking and exporting the trail: offline proof checks, verifying a log
served as C2SP tiles (remembering what was verified), exports and filtered reads, cosigned
checkpoints, and ``audit verify`` against the checkpoints witnesses hold.

``verify_proof`` and ``verify_log`` need no data directory: an auditor runs them with public
keys only. Everything else reads the node's database like ``node.ops_federation`` does.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from federation.errors import FederationError, MalformedInput
from federation.merkle import leaf_hash
from federation.note import Checkpoint, Verifier
from federation.tiles import TileBuilder, TileId, bundles, decode_bundle
from federation.verify import EntryFilter, Remembered, judge, verify_entry_proof
from federation.witness import CosignatureVerifier, cosignatures
from node.errors import OperatorError

# verify-log fetches this many tiles at once (HTTP/1.1 keep-alive connections).
FETCH_CONCURRENCY = 8
FETCH_TIMEOUT_S = 30.0


class TrailError(OperatorError, ValueError):
    """Verification failed or the input is unusable; the message is the reason."""


def _text_or_file(value: str) -> str:
    path = Path(value)
    if len(value) < 4096 and path.is_file():
        return path.read_text()
    return value


# -- verify-proof ------------------------------------------------------------------------


def verify_proof(vkey: str, checkpoint: Path, entry: Path, proof: Path) -> dict[str, Any]:
    try:
        cp = verify_entry_proof(_text_or_file(vkey).strip(), checkpoint.read_text(),
                                entry.read_bytes(), proof.read_bytes())
    except (FederationError, ValueError) as exc:
        raise TrailError(str(exc)) from None
    index = json.loads(proof.read_bytes())["leaf_index"]
    return {"ok": True, "origin": cp.origin, "tree_size": cp.size, "leaf_index": index}


# -- verify-log ----------------------------------------------------------------------------


def default_state_path() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "outpost" / "verified-logs.json"


def _load_state(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise TrailError(f"state file {path} is unreadable ({exc}); move it aside to start "
                         "over (rollback detection then restarts from this run)") from None
    return data if isinstance(data, dict) else {}


def _save_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".verified-")
    with os.fdopen(fd, "w") as f:
        json.dump(state, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def verify_log(url: str, vkey: str, witnesses: list[str], quorum: int | None,
               state_path: Path | None = None) -> dict[str, Any]:
    """Fetch checkpoint, every entry bundle and every tile; recompute every hash; check the
    cosignatures; compare with the checkpoint remembered from the last run; remember this
    one. Raises TrailError with the reason on any failure."""
    try:
        verifier = Verifier.from_vkey(_text_or_file(vkey).strip())
        cosigners = [CosignatureVerifier.from_vkey(_text_or_file(w).strip()) for w in witnesses]
    except (FederationError, ValueError) as exc:
        raise TrailError(f"bad key: {exc}") from None
    need = len(cosigners) if quorum is None else quorum
    if need > len(cosigners):
        raise TrailError(f"--quorum {need} needs at least {need} --witness keys")
    state_path = state_path or default_state_path()
    state = _load_state(state_path)
    result = asyncio.run(_verify_log(url.rstrip("/"), verifier, cosigners, need, state))
    state[result["origin"]] = result.pop("_remember")
    _save_state(state_path, state)
    return result


async def _verify_log(base: str, verifier: Verifier, cosigners: list[CosignatureVerifier],
                      need: int, state: dict[str, Any]) -> dict[str, Any]:
    import httpx

    limits = httpx.Limits(max_connections=FETCH_CONCURRENCY)
    async with httpx.AsyncClient(timeout=FETCH_TIMEOUT_S, limits=limits) as http:

        async def get(path: str) -> bytes:
            for attempt in range(3):
                try:
                    r = await http.get(f"{base}/{path}")
                    break
                except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
                    # A keep-alive connection the server closed as we reused it: try again.
                    if attempt == 2:
                        raise TrailError(f"cannot fetch {base}/{path}: {exc}") from None
                except httpx.HTTPError as exc:
                    raise TrailError(f"cannot fetch {base}/{path}: {exc}") from None
            if r.status_code != 200:
                raise TrailError(f"{base}/{path} answered {r.status_code}: {r.text[:200]}")
            return r.content

        note = (await get("checkpoint")).decode("utf-8", errors="replace")
        try:
            checkpoint = Checkpoint.open(note, verifier)
            cosigned = cosignatures(note, cosigners)
        except (FederationError, ValueError) as exc:
            raise TrailError(f"the checkpoint does not verify: {exc}") from None
        if len(cosigned) < need:
            missing = sorted({c.name for c in cosigners} - set(cosigned))
            raise TrailError(f"the checkpoint has {len(cosigned)} of the {need} cosignatures "
                             f"required; missing: {', '.join(missing)}")
        previous = None
        if checkpoint.origin in state:
            try:
                previous = Remembered.from_json(checkpoint.origin, state[checkpoint.origin])
            except MalformedInput as exc:
                raise TrailError(str(exc)) from None
        if previous is not None and checkpoint.size < previous.size:
            raise TrailError(judge(previous, checkpoint, None) or "rollback")
        builder = TileBuilder(checkpoint.size)
        if previous is not None:
            builder.watch(previous.size)
        fetched = 0

        async def check(tile: TileId, want: bytes) -> None:
            got = await get(tile.path)
            if got != want:
                raise TrailError(f"{tile.path} differs from the hashes recomputed from the "
                                 "entries: the log serves a tampered tree")

        pending: set[asyncio.Task[None]] = set()
        queue = list(bundles(checkpoint.size))
        ahead: list[asyncio.Task[bytes]] = []
        for tile in queue[:FETCH_CONCURRENCY]:
            ahead.append(asyncio.create_task(get(tile.path)))
        try:
            for i, tile in enumerate(queue):
                data = await ahead[i]
                nxt = i + FETCH_CONCURRENCY
                if nxt < len(queue):
                    ahead.append(asyncio.create_task(get(queue[nxt].path)))
                try:
                    entries = decode_bundle(data, tile.width)
                except MalformedInput as exc:
                    raise TrailError(f"{tile.path}: {exc}") from None
                fetched += len(entries)
                for done, want in builder.add(entries):
                    pending.add(asyncio.create_task(check(done, want)))
                if len(pending) >= FETCH_CONCURRENCY:
                    finished, pending = await asyncio.wait(pending,
                                                           return_when=asyncio.FIRST_COMPLETED)
                    for f in finished:
                        f.result()
            for tile, want in builder.finish():
                pending.add(asyncio.create_task(check(tile, want)))
            for done_task in asyncio.as_completed(pending):
                await done_task
        finally:
            for t in [*ahead, *pending]:
                t.cancel()
        if builder.root() != checkpoint.root_hash:
            raise TrailError(f"the entries do not hash to the checkpoint's root at size "
                             f"{checkpoint.size}: the log serves tampered entries")
        reason = judge(previous, checkpoint,
                       builder.root_at(previous.size) if previous else None)
        if previous is not None and previous.size == 0:
            reason = None
        if reason is not None:
            raise TrailError(reason)
    text = note.split("\n\n", 1)[0] + "\n"
    remembered = Remembered(checkpoint.origin, checkpoint.size, checkpoint.root_hash, text)
    return {
        "ok": True, "origin": checkpoint.origin, "size": checkpoint.size,
        "entries": fetched, "cosignatures": sorted(cosigned),
        "previous_size": previous.size if previous else None,
        "_remember": remembered.to_json(),
    }


# -- reading, filtering, exporting ---------------------------------------------------------


def _entries(data_dir: Path, start: int = 0) -> Iterator[tuple[int, bytes]]:
    """Stream the node's entries in order, on one read snapshot (a plain sqlite3 reader,
    so a live daemon keeps writing)."""
    import sqlite3

    from node.store import DB_FILE

    db = sqlite3.connect(f"file:{data_dir / DB_FILE}?mode=ro", uri=True)
    try:
        db.execute("BEGIN")
        for seq, entry in db.execute(
                "SELECT seq, entry FROM audit_entry WHERE seq >= ? ORDER BY seq", (start,)):
            yield int(seq), entry.encode() if isinstance(entry, str) else bytes(entry)
    finally:
        db.close()


def filtered(data_dir: Path, flt: EntryFilter, start: int = 0,
             limit: int | None = None) -> list[tuple[int, dict[str, Any]]]:
    """Entries matching ``flt`` (the newest ``limit`` of them when given)."""
    from collections import deque

    out: deque[tuple[int, dict[str, Any]]] = deque(maxlen=limit)
    for index, raw in _entries(data_dir, start):
        entry = json.loads(raw)
        if flt.matches(entry):
            out.append((index, entry))
    return list(out)


# Columns of the export, in order: the entry's fields (DESIGN §3) plus where it is in the log
# and its leaf hash, so a warehouse row can be tied back to an inclusion proof.
EXPORT_COLUMNS = ("origin", "index", "leaf_hash", "time", "kind", "model", "version", "caller",
                  "data_class", "decision", "outcome", "policy_version", "peer", "input_sha256",
                  "reason", "detail")


def _rows(data_dir: Path, origin: str, flt: EntryFilter) -> Iterator[dict[str, Any]]:
    for index, raw in _entries(data_dir):
        entry = json.loads(raw)
        if not flt.matches(entry):
            continue
        row = {"origin": origin, "index": index, "leaf_hash": leaf_hash(raw).hex()}
        for col in EXPORT_COLUMNS[3:]:
            value = entry.get(col)
            row[col] = json.dumps(value, sort_keys=True) if col == "detail" and value else value
        yield row


def export(data_dir: Path, fmt: str, out: Path | None, flt: EntryFilter) -> int:
    """Write the matching entries as JSON Lines (stdout when ``out`` is None) or Parquet."""
    from node.ops_federation import _verifier_names

    origin, _ = _verifier_names(data_dir)
    rows = _rows(data_dir, origin, flt)
    if fmt == "jsonl":
        import sys

        count = 0
        target = out.open("w") if out is not None else sys.stdout
        try:
            for row in rows:
                target.write(json.dumps(row, sort_keys=True, separators=(",", ":")) + "\n")
                count += 1
        finally:
            if out is not None:
                target.close()
        return count
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise TrailError("Parquet export needs pyarrow: pip install 'outpost[batch]' (or use "
                         "--format jsonl)") from None
    if out is None:
        raise TrailError("Parquet is binary: give an output file with -o FILE.parquet")
    schema = pa.schema([
        ("origin", pa.string()), ("index", pa.int64()), ("leaf_hash", pa.string()),
        ("time", pa.timestamp("us", tz="UTC")), *((c, pa.string()) for c in (
            "kind", "model", "version", "caller", "data_class", "decision", "outcome")),
        ("policy_version", pa.int64()),
        *((c, pa.string()) for c in ("peer", "input_sha256", "reason", "detail"))])
    from datetime import datetime

    count = 0
    with pq.ParquetWriter(str(out), schema) as writer:
        batch: list[dict[str, Any]] = []
        for row in rows:
            row["time"] = datetime.fromisoformat(row["time"])
            batch.append(row)
            if len(batch) == 65536:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                count += len(batch)
                batch = []
        if batch or count == 0:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
            count += len(batch)
    return count


# -- cosigned checkpoint, and verify against witnesses -------------------------------------


def cosigned(data_dir: Path) -> dict[str, Any]:
    """The newest checkpoint with the cosignatures collected for it, and whether it reaches
    ``audit.witness_quorum``."""
    import sqlite3

    from node import config as cfg
    from node.store import DB_FILE

    quorum = cfg.load(data_dir).audit.witness_quorum
    db = sqlite3.connect(f"file:{data_dir / DB_FILE}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT size, note, line FROM audit_cosignature WHERE size = (SELECT MAX(size) "
            "FROM audit_cosignature) ORDER BY witness").fetchall()
    finally:
        db.close()
    if not rows:
        raise TrailError("no checkpoint of this node is cosigned yet: witnesses are its "
                         "federation peers and audit.witnesses; check `outpost peers`")
    note = str(rows[0][1]) + "".join(str(r[2]) for r in rows)
    return {"size": int(rows[0][0]), "note": note, "cosignatures": len(rows),
            "quorum": quorum, "witnessed": len(rows) >= max(quorum, 1)}


def witnessed_checkpoints(data_dir: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """(witness, signed note) of this node's log that witnesses hold or cosigned, and the
    problems already known (a witness that holds more than the log has)."""
    import sqlite3

    from node.client import connect
    from node.store import DB_FILE

    found: list[tuple[str, str]] = []
    problems: list[str] = []
    db = sqlite3.connect(f"file:{data_dir / DB_FILE}?mode=ro", uri=True)
    try:
        found += [(str(w), str(n)) for w, n in db.execute(
            "SELECT witness, note FROM audit_cosignature")]
    finally:
        db.close()
    client = connect(data_dir)
    if client is not None:
        with client:
            for row in client.request("GET", "/trail/witnessed"):
                if "checkpoint" in row:
                    found.append((str(row["witness"]), str(row["checkpoint"])))
                elif "beyond" in row:
                    problems.append(f"witness {row['witness']} holds size {row['beyond']} of "
                                    "this log, more than it has: the log was cut back")
    return found, problems


def check_witnessed(report: dict[str, Any], found: list[tuple[str, str]],
                    verifiers: list[Verifier], root_at: Any) -> list[str]:
    """Problems of the local log against checkpoints witnesses hold: a witnessed size the log
    does not reach (cut back), or another root at that size (rewritten)."""
    problems: list[str] = []
    by_name = {v.name: v for v in verifiers}
    seen: set[tuple[int, bytes]] = set()
    for witness, note in found:
        origin = note.split("\n", 1)[0]
        verifier = by_name.get(origin)
        if verifier is None:
            continue
        try:
            cp = Checkpoint.open(note, verifier)  # cosignature lines are unknown keys: ignored
        except (FederationError, ValueError):
            continue  # not signed by this log: says nothing about it
        if (cp.size, cp.root_hash) in seen:
            continue
        seen.add((cp.size, cp.root_hash))
        if cp.size > report["entries"]:
            problems.append(f"witness {witness} holds a checkpoint of size {cp.size} signed by "
                            f"this log, which has only {report['entries']} entries: the log "
                            "was cut back; restore it from an audit collector's replica")
        elif root_at(cp.size) != cp.root_hash:
            problems.append(f"witness {witness} holds a checkpoint of size {cp.size} whose root "
                            "differs from this log's: the log was rewritten")
    return problems


def audit_verify(data_dir: Path) -> dict[str, Any]:
    """``outpost audit verify``: the stored log against its own checkpoints, then against the
    checkpoints witnesses hold (live from the peers when the daemon runs)."""
    from federation.merkle import CompactRange
    from node.ops_federation import _verifier_names
    from node.ops_federation import audit_verify as verify_stored

    report = verify_stored(data_dir)
    found, problems = witnessed_checkpoints(data_dir)
    _, verifiers = _verifier_names(data_dir)
    wanted = sorted({int(n.split("\n", 2)[1]) for _, n in found
                     if n.count("\n") > 2 and n.split("\n", 2)[1].isdigit()})
    roots: dict[int, bytes] = {}
    if wanted:
        cr = CompactRange()
        targets = set(wanted)
        for _, raw in _entries(data_dir):
            cr.append(leaf_hash(raw))
            if cr.size in targets:
                roots[cr.size] = cr.root()
                if cr.size == wanted[-1]:
                    break
    problems += check_witnessed(report, found, verifiers, roots.get)
    report["witnessed_checked"] = len({n for _, n in found})
    if problems:
        report["ok"] = False
        report["problems"] = [*report["problems"], *problems]
    return report


def witness_vkey(data_dir: Path) -> str:
    """This node's cosigner key: its node key under the name ``<origin>/witness``."""
    from node.keys import load_key
    from node.ops_federation import _verifier_names
    from node.trail import witness_name

    origin, _ = _verifier_names(data_dir)
    return CosignatureVerifier(witness_name(origin), load_key(data_dir).public_key()).vkey


def entry_bytes(data_dir: Path, index: int) -> bytes:
    for seq, raw in _entries(data_dir, index):
        if seq == index:
            return raw
        break
    raise TrailError(f"no entry {index} in this log; `outpost audit tail` shows the indexes")
