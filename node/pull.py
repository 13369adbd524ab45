"""Model distribution: fetch a model blob from a peer, resumably, verified by SHA-256.

Serving side (peer endpoint, mutual TLS): ``GET /peer/v1/models/{name}/{version}`` answers the
model's hash and size, ``GET .../blob`` streams the file with HTTP ``Range`` support — both only
when ``model.pull`` policy lets the calling node have that model, and both audited.

Pulling side (the CLI, as the node's owner, with the node's own certificate): the partial file
``<data-dir>/blobs/.pull-<sha256>`` grows across attempts (``Range: bytes=<size>-``), is hashed
when complete, and is discarded when the hash is wrong; only a verified file is added to the
store, through the same path as ``outpost models add``.
"""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from node.errors import OperatorError
from node.http import HTTPError, Receive, Scope, Send, header, send_json
from node.limits import FILE_CHUNK_BYTES

if TYPE_CHECKING:
    from federation.identity import NodeIdentity
    from node.peer import PeerApp
    from node.ports import AuditSink, ModelSource, PolicyView

CHUNK = FILE_CHUNK_BYTES


class PullError(OperatorError):
    """The model could not be fetched or did not verify; the message names the fix."""


@dataclass(frozen=True)
class Source:
    node_id: str
    address: str
    name: str
    version: str
    sha256: str


def peer_routes(app: PeerApp, models: ModelSource, policy: PolicyView,
                audit: AuditSink) -> None:
    """``GET /peer/v1/models/...`` on the peer endpoint: the models ``model.pull`` policy
    lets the calling node have."""

    async def model(scope: Scope, receive: Receive, send: Send, peer: NodeIdentity,
                    rest: str) -> None:
        from federation.policy_engine import NodeAttrs

        parts = rest.split("/")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "blob"):
            raise HTTPError(404, "use /peer/v1/models/{name}/{version}[/blob]")
        name, version = parts[0], parts[1]
        try:
            served = models.resolve(name, version)
        except LookupError:
            raise HTTPError(404, f"model {name}:{version} is not held here") from None
        decision = policy.engine.decide_model_pull(NodeAttrs(**peer.attributes()), name, version)
        if not decision.allowed:
            raise HTTPError(403, f"policy does not let {peer.node_id} pull {name}:{version}: "
                                 + ("; ".join(decision.reasons) or "denied"))
        record = served.record
        if len(parts) == 2:
            await send_json(send, 200, {"name": name, "version": version,
                                        "sha256": record.sha256, "size": record.size})
            return
        path = models.blobs.path(record.sha256)
        start = _range_start(header(scope, b"range"), record.size)
        await audit.append(audit.record(
            "model.pull", model=name, version=version, caller=f"node:{peer.node_id}",
            decision="allowed", policy_version=decision.policy_version,
            detail={"sha256": record.sha256, "offset": start},
        ))
        await _send_file(send, path, start, record.size)

    app.route("GET", "/peer/v1/models", model)


def _range_start(value: bytes | None, size: int) -> int:
    if value is None:
        return 0
    text = value.decode(errors="replace").strip()
    if not text.startswith("bytes=") or not text.endswith("-"):
        raise HTTPError(416, "only 'Range: bytes=N-' is supported")
    try:
        start = int(text[len("bytes="):-1])
    except ValueError:
        raise HTTPError(416, "Range start is not an integer") from None
    if not 0 <= start <= size:
        raise HTTPError(416, f"Range start {start} is beyond the {size}-byte file")
    return start


async def _send_file(send: Send, path: Path, start: int, size: int) -> None:
    status = 206 if start else 200
    headers = [(b"content-type", b"application/octet-stream"),
               (b"content-length", str(size - start).encode())]
    if start:
        headers.append((b"content-range", f"bytes {start}-{size - 1}/{size}".encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    with path.open("rb") as f:
        f.seek(start)
        while chunk := f.read(CHUNK):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


def choose_source(peers: list[dict[str, Any]], name: str, version: str | None,
                  from_node: str | None) -> Source:
    """The peer to pull from: ``--from`` when given, else the alive holder with lowest RTT."""
    holders = []
    for peer in peers:
        if peer["state"] != "alive" or (from_node and peer["node_id"] != from_node):
            continue
        for m in peer.get("models", []):
            if m["name"] == name and (version is None or m["version"] == version):
                holders.append((peer.get("rtt_ms") or 1e9, peer, m))
    if not holders:
        where = f"node {from_node}" if from_node else "any alive peer"
        raise PullError(f"{where} does not hold {name}{':' + version if version else ''}; "
                        "`outpost peers` shows who holds what")
    _, peer, m = min(holders, key=lambda h: (h[0], h[1]["node_id"], h[2]["version"]))
    return Source(peer["node_id"], peer["address"], name, m["version"], m.get("sha256", ""))


def download(source: Source, partial_dir: Path, tls: ssl.SSLContext, *,
             progress: Callable[[int, int], None] | None = None,
             timeout: float = 30.0) -> tuple[Path, str, int]:
    """Fetch the blob into ``partial_dir``, resuming a partial file; verify; return its path.

    Raises PullError (policy refusal, unreachable peer, corrupt or truncated transfer).
    """
    base = f"https://{source.address}/peer/v1/models/{source.name}/{source.version}"
    with httpx.Client(verify=tls, timeout=timeout) as http:
        try:
            meta = http.get(base)
        except httpx.HTTPError as exc:
            raise PullError(f"{source.node_id} at {source.address} is unreachable ({exc}); "
                            "retry, or pick another node with --from") from None
        if meta.status_code != 200:
            raise PullError(_error(meta))
        sha, size = str(meta.json()["sha256"]), int(meta.json()["size"])
        partial = partial_dir / f".pull-{sha}"
        have = partial.stat().st_size if partial.exists() else 0
        if have > size:
            partial.unlink()
            have = 0
        if have < size:
            headers = {"range": f"bytes={have}-"} if have else {}
            try:
                with http.stream("GET", f"{base}/blob", headers=headers) as response:
                    if response.status_code not in (200, 206):
                        response.read()
                        raise PullError(_error(response))
                    if response.status_code == 200:
                        have = 0  # the peer ignored the range: start over
                    with partial.open("r+b" if have else "wb") as out:
                        out.seek(have)
                        for chunk in response.iter_bytes(CHUNK):
                            out.write(chunk)
                            have += len(chunk)
                            if progress:
                                progress(have, size)
            except httpx.HTTPError as exc:
                raise PullError(f"transfer from {source.node_id} broke at {have} of {size} "
                                f"bytes ({type(exc).__name__}); run the same command again to "
                                "resume") from None
        digest = hashlib.sha256()
        with partial.open("rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
        got = partial.stat().st_size
        if got != size or digest.hexdigest() != sha:
            partial.unlink()
            raise PullError(f"the transfer from {source.node_id} is corrupt or truncated "
                            f"({got} of {size} bytes, hash mismatch); it was discarded — run "
                            "the command again")
        return partial, sha, size


def _error(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error"))
    except ValueError:
        return f"HTTP {response.status_code}"
