"""Model distribution: fetch a model blob from a peer, resumably, verified by SHA-256.

Serving side (peer endpoint, mutual TLS): ``GET /peer/v1/models/{name}/{version}`` answers the
model's hash and size, ``GET .../blob`` streams the file with HTTP ``Range`` support — both only
when ``model.pull`` policy lets the calling node have that model, and both audited.

Pulling side (the daemon, asked by ``outpost models pull`` over the admin socket): the source is
a node whose *signed capability advert* lists the model, and the expected SHA-256 is the one in
that advert — the statement signed by the node that holds the model — never the serving peer's
reply (a reply that names another hash is refused before any byte is fetched). Every connection
goes through ``node.peerclient``: the server must prove it is the chosen node, with the
revocation list in force. The partial file ``<data-dir>/blobs/.pull-<sha256>`` grows across
attempts (``Range: bytes=<size>-``), is hashed when complete, and is discarded when the hash is
wrong; only a verified file is added to the store, through the same ``ModelHost.add`` as
``outpost models add``.

Must never: take a hash, a size or an identity from the serving peer's word; add a file that
does not hash to the advertised SHA-256.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models import ModelError, parse_ref
from node.errors import OperatorError
from node.http import HTTPError, Receive, Scope, Send, header, send_json
from node.limits import FILE_CHUNK_BYTES
from node.peerclient import PeerClients, PeerError, PeerRefused

if TYPE_CHECKING:
    from federation.identity import NodeIdentity
    from node.modelhost import ModelHost
    from node.peer import PeerApp
    from node.ports import AuditSink, ModelSource, PolicyView

CHUNK = FILE_CHUNK_BYTES


class PullError(OperatorError):
    """The model could not be fetched or did not verify; the message names the fix."""

    def __init__(self, message: str, status: int = 502) -> None:
        super().__init__(message)
        self.status = status  # the admin API's answer: 404 no holder, 403 refused, 502 else


# Seconds one pull's transfer may take: below the admin client's 600 s (node.client), so the
# CLI hears the daemon's answer; a longer transfer keeps what it got and resumes when the
# command runs again.
PULL_TIMEOUT_S = 540.0
# Seconds for the metadata request before the transfer.
META_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Source:
    """Where to pull from, and what to expect: from the holder's signed advert."""

    node_id: str
    address: str
    name: str
    version: str
    sha256: str
    size: int | None  # in adverts of nodes that publish it


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
                        "`outpost peers` shows who holds what", 404)
    _, peer, m = min(holders, key=lambda h: (h[0], h[1]["node_id"], h[2]["version"]))
    sha = m.get("sha256")
    if not isinstance(sha, str) or len(sha) != 64:
        raise PullError(f"{peer['node_id']}'s signed advert gives no sha256 for {name}:"
                        f"{m['version']}; nothing to verify a transfer against — upgrade that "
                        "node", 404)
    size = m.get("size")
    return Source(peer["node_id"], peer["address"], name, m["version"], sha,
                  size if isinstance(size, int) and not isinstance(size, bool) else None)


async def download(source: Source, partial_dir: Path, peers: PeerClients, *,
                   max_bytes: int, timeout_s: float = PULL_TIMEOUT_S) -> Path:
    """Fetch the blob into ``partial_dir``, resuming a partial file; verify it against the
    advert's hash; return its path.

    Raises PullError (policy refusal, wrong or unreachable peer, a hash other than the
    advert's, corrupt or truncated transfer).
    """
    base = f"/peer/v1/models/{source.name}/{source.version}"
    who = f"{source.node_id} at {source.address}"
    try:
        meta = await peers.request(source.node_id, source.address, "GET", base,
                                   purpose="model.pull", timeout_s=META_TIMEOUT_S)
        if meta.status != 200:
            raise PullError(f"{source.node_id}: {meta.error()}",
                            403 if meta.status == 403 else 502)
        try:
            answer = meta.json()
            claimed, size = answer.get("sha256"), answer.get("size")
        except (ValueError, AttributeError):
            raise PullError(f"{who} answered something that is not the model's metadata; "
                            "refused") from None
        if claimed != source.sha256:
            raise PullError(
                f"{who} offers {source.name}:{source.version} with sha256 {str(claimed)[:16]}…, "
                f"not the {source.sha256[:16]}… of {source.node_id}'s signed advert; refused, "
                "nothing fetched — check `outpost peers` and pull again")
        if source.size is not None and size != source.size:
            raise PullError(f"{who} gives the size {size}, its signed advert {source.size}; "
                            "refused")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= max_bytes:
            raise PullError(f"{who} gives the size {size!r}, outside 1..{max_bytes} "
                            "(models.max_model_bytes); refused")
        partial = partial_dir / f".pull-{source.sha256}"
        have = partial.stat().st_size if partial.exists() else 0
        if have > size:
            partial.unlink()
            have = 0
        if have < size:
            headers = {"range": f"bytes={have}-"} if have else {}
            async with peers.stream(source.node_id, source.address, "GET", f"{base}/blob",
                                    headers=headers, purpose="model.pull",
                                    timeout_s=timeout_s) as (response, _peer):
                if response.status not in (200, 206):
                    text = (await response.read())[:500].decode(errors="replace")
                    raise PullError(f"{source.node_id}: {_message(text, response.status)}",
                                    403 if response.status == 403 else 502)
                if response.status == 200:
                    have = 0  # the peer ignored the range: start over
                with partial.open("r+b" if have else "wb") as out:
                    out.seek(have)
                    async for chunk in response.content.iter_chunked(CHUNK):
                        if have + len(chunk) > size:  # never more than the advertised size
                            raise PullError(f"{who} sent more than the {size} bytes it "
                                            "announced; refused")
                        out.write(chunk)
                        have += len(chunk)
    except PeerRefused as exc:
        raise PullError(f"{exc}; nothing was fetched (audited as peer.refused)", 403) from None
    except PeerError as exc:
        raise PullError(f"{exc}; the transfer stopped at the bytes held so far — run the same "
                        "command again to resume, or pick another node with --from") from None
    got, digest = await asyncio.to_thread(_hash, partial)
    if got != size or digest != source.sha256:
        partial.unlink()
        raise PullError(f"the transfer from {source.node_id} is corrupt or truncated ({got} of "
                        f"{size} bytes, not the sha256 of {source.node_id}'s signed advert); it "
                        "was discarded — run the command again")
    return partial


def _hash(path: Path) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _message(text: str, status: int) -> str:
    import json

    try:
        return str(json.loads(text).get("error"))
    except (ValueError, AttributeError):
        return f"HTTP {status}"


@dataclass(frozen=True)
class Puller:
    """What a pull needs of the daemon (wired in ``node.daemon``); None on a lone node."""

    directory: Any  # the cluster: ``peers()`` rows with verified adverts
    clients: PeerClients
    host: ModelHost


async def pull(node: Puller | None, ref: str, from_node: str | None) -> dict[str, Any]:
    """``outpost models pull``: choose the source from verified adverts, fetch, verify, add."""
    name, version = parse_ref(ref)
    if node is None:
        raise PullError("this node is not enrolled; peers only give models to enrolled nodes",
                        400)
    source = choose_source(node.directory.peers(), name, version, from_node)
    partial = await download(source, node.host.blobs.root, node.clients,
                             max_bytes=node.host.max_model_bytes)
    try:
        record = await node.host.add(partial, name, source.version, pulled_from=source.node_id)
    finally:
        partial.unlink(missing_ok=True)
    return {**record.to_json(), "source": source.node_id}


def admin_route(daemon: Puller | None) -> Callable[[dict[str, Any], str], Any]:
    """The daemon's handler of ``POST /models/pull`` {"ref": NAME[:VERSION], "from": NODE}."""

    async def handle(payload: dict[str, Any], _rest: str) -> tuple[int, Any]:
        ref = payload.get("ref")
        if not isinstance(ref, str) or not ref:
            return 400, {"error": "models pull needs {\"ref\": \"NAME[:VERSION]\"}"}
        try:
            return 200, await pull(daemon, ref, payload.get("from") or None)
        except PullError as exc:
            return exc.status, {"error": str(exc)}
        except ModelError as exc:  # the verified file does not load, or name:version is taken
            return 400, {"error": str(exc)}

    return handle
