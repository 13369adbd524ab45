"""Node configuration: one documented dataclass per concern, read from one TOML file.

Every default lives here and nowhere else: ``outpost init`` writes these defaults (with their
documentation as comments) into ``<data-dir>/outpost.toml``, and the CLI reads its defaults from
these fields. This module never opens sockets; it only reads and writes the config file.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import itertools
import os
import re
import socket
import textwrap
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from federation import identity
from federation.errors import MalformedInput
from models.ray_backend import RayConfig
from models.runtime import RuntimeConfig
from node.errors import OperatorError

CONFIG_FILE = "outpost.toml"


class ConfigError(OperatorError, ValueError):
    """The configuration file or a setting in it is invalid; the message names the key and fix."""


def parse_hostport(value: str, *, key: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` too); raise ConfigError naming ``key`` otherwise."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{key} = {value!r} is not HOST:PORT (for example 127.0.0.1:8470)")
    return host.strip("[]"), int(port)


def default_node_id() -> str:
    """The host name, lower-cased and reduced to the node-id alphabet."""
    raw = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().lower()).strip("-")
    return raw[:63].rstrip("-") or "node"


def validate_node_id(node_id: str) -> str:
    """The one node-id rule (``federation.identity.validate_node_id``: what a certificate
    may carry), as a configuration error."""
    try:
        return identity.validate_node_id(node_id)
    except MalformedInput:
        raise ConfigError(
            f"node name {node_id!r} is invalid: use 1-63 characters a-z, 0-9 and '-', "
            "starting and ending with a letter or digit (it becomes a DNS name in the node's "
            "certificate)"
        ) from None


@dataclass(frozen=True)
class NodeSection:
    """Who this node is and where it listens."""

    name: str = ""
    """Node id: unique in the federation, bound into the node's certificate at enrollment.
    Defaults to the host name at `outpost init`."""

    listen: str = "127.0.0.1:8470"
    """App endpoint (Open Inference Protocol). Loopback by default: apps on this machine only.
    Binding elsewhere exposes inference to the network."""

    peer_listen: str = "0.0.0.0:8471"
    """Peer endpoint (mutual TLS; UDP gossip on the same port number)."""

    max_body_bytes: int = 64 * 1024 * 1024
    """Largest request body accepted on the app endpoint, in bytes. Larger bodies get 413
    before they are read: bounds memory per request."""

    drain_timeout_s: float = 10.0
    """On SIGTERM/SIGINT: how long in-flight requests may take to finish before they are
    cancelled. Longer is kinder to clients, shorter restarts faster."""

    metrics_listen: str = ""
    """Optional HOST:PORT serving only `GET /metrics`, so Prometheus can scrape without
    reaching the app endpoint (e.g. 0.0.0.0:9470 while `listen` stays on loopback). Empty:
    /metrics is on the app endpoint only."""

    default_data_class: str = "restricted"
    """Data class given to requests that carry no `outpost.data_class` parameter. The shipped
    default, `restricted`, is a class the example policies never let leave the node."""

    app_auth: str = "optional"
    """`optional`: a request without credentials is App::"anonymous" and policy decides;
    `required`: it gets 401. A wrong, expired or revoked token is 401 in both modes."""

    app_socket: str = ""
    """Path of a Unix socket serving the same API, where the caller is the connecting
    process's uid (see app_uids), so on-box services need no secret. Empty: no socket."""

    app_socket_group: str = ""
    """Group given to app_socket (mode 0660): the users whose services may connect. Empty:
    the daemon's own group."""

    app_uids: dict[str, str] = field(default_factory=dict)
    """uid (or user name) -> app name, for callers on app_socket, e.g. { "1001" =
    "camera-svc" }. An unmapped uid is refused (403)."""

    def __post_init__(self) -> None:
        if self.name:
            validate_node_id(self.name)
        parse_hostport(self.listen, key="node.listen")
        parse_hostport(self.peer_listen, key="node.peer_listen")
        if self.metrics_listen:
            parse_hostport(self.metrics_listen, key="node.metrics_listen")
        if not 1024 <= self.max_body_bytes <= 4 * 1024**3:
            raise ConfigError("node.max_body_bytes must be between 1024 and 4 GiB")
        if not 0 <= self.drain_timeout_s <= 600:
            raise ConfigError("node.drain_timeout_s must be between 0 and 600 seconds")
        if self.app_auth not in ("optional", "required"):
            raise ConfigError('node.app_auth must be "optional" or "required"')
        if not all(isinstance(k, str) and isinstance(v, str) and v for k, v in self.app_uids.items()):
            raise ConfigError('node.app_uids maps uids or user names to app names, e.g. '
                              '{ "1001" = "camera-svc" }')


@dataclass(frozen=True)
class ModelsSection:
    """The model store."""

    max_model_bytes: int = 2 * 1024**3
    """Largest ONNX file `models add` accepts, in bytes. Bounds disk use and load time."""

    install_sample: bool = True
    """At `outpost init`, add the bundled sample model `digits` so a new node serves something
    with no download."""


    def __post_init__(self) -> None:
        if not 1024 <= self.max_model_bytes <= 64 * 1024**3:
            raise ConfigError("models.max_model_bytes must be between 1 KiB and 64 GiB")


@dataclass(frozen=True)
class AuditSection:
    """The node's signed, Merkle-chained audit log."""

    checkpoint_every_entries: int = 1000
    """Sign a new checkpoint after this many new entries. Smaller = fresher witness coverage,
    more signatures stored."""

    checkpoint_every_s: float = 60.0
    """Also sign a checkpoint this often (seconds) when the log has grown at all."""

    max_group: int = 4096
    """Most entries written in one group-commit transaction. Bigger groups amortise the fsync;
    the cap bounds one transaction's latency."""

    sync: str = "full"
    """When an appended entry counts as durable (like PostgreSQL's synchronous_commit).
    "full": fsynced before the caller is answered; survives power loss (costs one fdatasync
    per group commit on the answer path). "normal": committed to the write-ahead log but not
    fsynced before answering; survives a crash of the process (kill -9), but a power loss may
    drop the last moments of entries. Either way the log always verifies, and a checkpoint is
    fsynced before it can leave the node, so a power loss never rolls back a log past what a
    witness saw."""
    tiles_listen: str = ""
    """HOST:PORT of a read-only plain-HTTP listener serving this node's log (and the replicas
    it holds) as C2SP tlog-tiles, for auditors without a federation certificate. Empty (the
    default): tiles are served only on the mutual-TLS peer endpoint, to peers `audit.read`
    policy allows. Anyone who reaches it reads every entry's metadata."""

    witnesses: list[str] = field(default_factory=list)
    """External C2SP tlog-witness services to ask for cosignatures, each `"<URL> <vkey>"`: the
    submission prefix (`add-checkpoint` is appended) and the witness's cosignature/v1 verifier
    key. Federation peers witness each other without being listed."""

    witness_quorum: int = 0
    """Cosignatures a checkpoint needs before it is called witnessed: the tiles `checkpoint`
    then serves the newest checkpoint with at least this many. 0: serve the newest head."""


    def __post_init__(self) -> None:
        if not 1 <= self.checkpoint_every_entries <= 10**7:
            raise ConfigError("audit.checkpoint_every_entries must be between 1 and 10^7")
        if not 0.1 <= self.checkpoint_every_s <= 86400:
            raise ConfigError("audit.checkpoint_every_s must be between 0.1 and 86400")
        if not 1 <= self.max_group <= 100_000:
            raise ConfigError("audit.max_group must be between 1 and 100000")
        if self.sync not in ("full", "normal"):
            raise ConfigError(f'audit.sync must be "full" or "normal", got {self.sync!r}')
        if self.tiles_listen:
            parse_hostport(self.tiles_listen, key="audit.tiles_listen")
        for w in self.witnesses:
            url, _, vkey = w.strip().partition(" ")
            if not url.startswith(("http://", "https://")) or not vkey.strip():
                raise ConfigError(f"audit.witnesses entry {w!r} must be \"<http(s) URL> <vkey>\"")
        if not 0 <= self.witness_quorum <= 100:
            raise ConfigError("audit.witness_quorum must be between 0 and 100")


@dataclass(frozen=True)
class FederationSection:
    """How this node reaches the rest of its federation."""

    seeds: list[str] = field(default_factory=list)
    """Peer addresses (HOST:PORT of their peer endpoints) to contact at start and retry with
    back-off: for peers on other subnets or sites, which mDNS cannot see. Set by
    `outpost join CERT --seed HOST:PORT`."""

    advertise: str = ""
    """HOST:PORT other nodes use to reach this node's peer endpoint (UDP and HTTPS). Empty: the
    `node.peer_listen` address, or this host's primary address when that is a wildcard."""

    preset: str = "lan"
    """Membership timing preset: `lan` (probe 1 s, gossip 200 ms), `wan` (slower, for nodes
    across sites) or `local` (loopback and tests). Faster detects failures sooner and sends
    more packets."""

    advert_interval_s: float = 10.0
    """How often this node republishes its capability advert (models, load). Shorter = fresher
    placement data, more gossip traffic."""

    checkpoint_interval_s: float = 5.0
    """How often this node gossips a new audit checkpoint and asks its witnesses (peers and
    `audit.witnesses`) to cosign it when the log grew."""

    def __post_init__(self) -> None:
        for seed in self.seeds:
            parse_hostport(seed, key="federation.seeds")
        if self.advertise:
            parse_hostport(self.advertise, key="federation.advertise")
        if self.preset not in ("lan", "wan", "local"):
            raise ConfigError("federation.preset must be one of lan, wan, local")
        if not 0.5 <= self.advert_interval_s <= 3600:
            raise ConfigError("federation.advert_interval_s must be between 0.5 and 3600")
        if not 0.5 <= self.checkpoint_interval_s <= 3600:
            raise ConfigError("federation.checkpoint_interval_s must be between 0.5 and 3600")


@dataclass(frozen=True)
class DiscoverySection:
    """Finding peers on the local network by mDNS/DNS-SD (`_outpost._tcp.local.`)."""

    mdns: bool = True
    """Advertise and browse on the LAN so enrolled peers find each other with no seeds. Turn
    off where multicast is not allowed; seeds still work."""

    interfaces: list[str] = field(default_factory=list)
    """IP addresses of the interfaces to use for mDNS; empty = all."""

    record_ttl_s: int = 120
    """Lifetime of our mDNS records. Shorter notices vanished peers sooner at the cost of more
    multicast traffic (SWIM detects failures much faster anyway)."""

    confirm_interval_s: float = 5.0
    """How often a discovered peer is re-confirmed over mDNS."""

    def __post_init__(self) -> None:
        if not 1 <= self.record_ttl_s <= 4500:
            raise ConfigError("discovery.record_ttl_s must be between 1 and 4500")
        if not 0.1 <= self.confirm_interval_s <= 600:
            raise ConfigError("discovery.confirm_interval_s must be between 0.1 and 600")


@dataclass(frozen=True)
class PlacementSection:
    """Where requests run when this node cannot or should not (DESIGN §6 placement)."""

    local_queue_limit: int = 8
    """Serve here while fewer requests than this wait for the model. Higher keeps data local
    at the cost of tail latency; lower sheds to allowed peers sooner."""

    local_latency_limit_s: float = 0.25
    """Serve here while the measured local latency is at most this (seconds)."""

    tier_weights: dict[str, float] = field(
        default_factory=lambda: {"edge": 1.0, "onprem": 1.0, "cloud": 1.25})
    """Multiplier on a peer's expected latency per tier: above 1 prefers other tiers (cloud
    costs egress and money)."""

    gpu_bonus: float = 0.5
    """Fraction taken off the expected service time of a peer with a GPU."""

    max_record_age_s: float = 30.0
    """A peer whose capability advert is older than this is stale and never chosen."""

    max_hops: int = 1
    """How many times a request may be forwarded. 1: a forwarded request runs where it lands."""

    forward_timeout_s: float = 10.0
    """How long a forwarded request may take before the next peer is tried."""

    def __post_init__(self) -> None:
        if not 1 <= self.local_queue_limit <= 100_000:
            raise ConfigError("placement.local_queue_limit must be between 1 and 100000")
        if not 0.1 <= self.forward_timeout_s <= 600:
            raise ConfigError("placement.forward_timeout_s must be between 0.1 and 600")
        if not 0 <= self.max_hops <= 8:
            raise ConfigError("placement.max_hops must be between 0 and 8")

    def core(self) -> Any:
        from federation.placement import PlacementConfig

        try:
            return PlacementConfig(
                local_queue_limit=self.local_queue_limit,
                local_latency_limit_s=self.local_latency_limit_s,
                tier_weights=dict(self.tier_weights), gpu_bonus=self.gpu_bonus,
                max_record_age_s=self.max_record_age_s, max_hops=self.max_hops,
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"[placement] {exc}") from exc


@dataclass(frozen=True)
class LogSection:
    """The daemon's log on stderr (the journal under systemd)."""

    level: str = "info"
    """debug, info, warning or error. Changes live on SIGHUP (`systemctl reload outpost`).
    Libraries (uvicorn, aiohttp, httpx, zeroconf, ray) log only warnings unless this is debug."""

    format: str = "text"
    """`text` for people, `json` for log shippers: one object per line with time, level,
    logger, message, node_id and request_id (when the line belongs to a request)."""

    def __post_init__(self) -> None:
        if self.level not in ("debug", "info", "warning", "error"):
            raise ConfigError("log.level must be one of debug, info, warning, error")
        if self.format not in ("text", "json"):
            raise ConfigError('log.format must be "text" or "json"')


@dataclass(frozen=True)
class OtelSection:
    """OpenTelemetry spans (needs `pip install 'outpost[otel]'`)."""

    endpoint: str = ""
    """OTLP/HTTP traces endpoint, e.g. `http://collector:4318/v1/traces`. Empty: no spans
    (and nothing of OpenTelemetry is loaded). Spans: decode, policy, run, audit, forward."""

    service_name: str = "outpost"
    """`service.name` of the spans; the node id is `service.instance.id`."""

    def __post_init__(self) -> None:
        if self.endpoint and not self.endpoint.startswith(("http://", "https://")):
            raise ConfigError("otel.endpoint must be an http:// or https:// URL (or empty)")


@dataclass(frozen=True)
class Config:
    """The whole node configuration, as stored in ``outpost.toml``."""

    node: NodeSection = field(default_factory=NodeSection)
    models: ModelsSection = field(default_factory=ModelsSection)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    audit: AuditSection = field(default_factory=AuditSection)
    federation: FederationSection = field(default_factory=FederationSection)
    discovery: DiscoverySection = field(default_factory=DiscoverySection)
    placement: PlacementSection = field(default_factory=PlacementSection)
    ray: RayConfig = field(default_factory=RayConfig)
    log: LogSection = field(default_factory=LogSection)
    otel: OtelSection = field(default_factory=OtelSection)

    def replace(self, section: str, **changes: Any) -> Config:
        """A copy with fields of one section changed (validated again)."""
        current = getattr(self, section)
        return dataclasses.replace(self, **{section: dataclasses.replace(current, **changes)})


_SECTIONS: dict[str, type[Any]] = {
    "node": NodeSection,
    "models": ModelsSection,
    "runtime": RuntimeConfig,
    "audit": AuditSection,
    "federation": FederationSection,
    "discovery": DiscoverySection,
    "placement": PlacementSection,
    "ray": RayConfig,
    "log": LogSection,
    "otel": OtelSection,
}


def from_dict(raw: dict[str, Any], *, source: str = "config") -> Config:
    sections: dict[str, Any] = {}
    for key, value in raw.items():
        cls = _SECTIONS.get(key)
        if cls is None or not isinstance(value, dict):
            raise ConfigError(f"{source}: unknown section [{key}]; known: {sorted(_SECTIONS)}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(value) - known
        if unknown:
            raise ConfigError(
                f"{source}: unknown key(s) {sorted(unknown)} in [{key}]; known: {sorted(known)}"
            )
        try:
            sections[key] = cls(**value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: [{key}] {exc}") from exc
    return Config(**sections)


def load(data_dir: Path) -> Config:
    path = data_dir / CONFIG_FILE
    restore = (f"restore it from a backup, or move it aside and run `outpost init --data-dir "
               f"{data_dir} --name NAME` with the node's name (its certificate binds it)")
    try:
        text = path.read_text()
        raw = tomllib.loads(text)
    except FileNotFoundError:
        raise ConfigError(
            f"no node in {data_dir}: {CONFIG_FILE} is missing; run `outpost init --data-dir {data_dir}`"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not text (damaged by a crash?); {restore}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc}); fix it, or {restore}") from exc
    if not text.strip():
        # What a power cut after a non-durable write leaves: starting anyway signed the trail
        # under another origin.
        raise ConfigError(f"{path} is empty (cut short by a crash or power loss?); {restore}")
    config = from_dict(raw, source=str(path))
    if not config.node.name:
        raise ConfigError(f"{path} names no node ([node] name is empty or missing; truncated?); "
                          f"set name = \"NODE-ID\" under [node], or {restore}")
    return config


def render(config: Config) -> str:
    """TOML text of ``config`` with each field's documentation as a comment above it."""
    out = ["# Outpost node configuration. Every key is shown with its default; edit and restart.\n"]
    for sec in dataclasses.fields(config):
        section = getattr(config, sec.name)
        out.append(f"\n[{sec.name}]\n")
        for f in dataclasses.fields(section):
            section_type: Any = type(section)
            doc = field_docs(section_type).get(f.name, "")
            for line in _wrap(doc):
                out.append(f"# {line}\n")
            out.append(f"{f.name} = {_toml_value(getattr(section, f.name))}\n")
    return "".join(out)


def _toml_value(value: Any) -> str:
    """One TOML value; tables inline, so every key stays under its own section header."""
    if isinstance(value, dict):
        inner = ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    return tomli_w.dumps({"v": value}).strip().removeprefix("v = ")


def save(data_dir: Path, config: Config) -> Path:
    """Write ``outpost.toml`` atomically and durably (a power cut leaves the old or the new)."""
    from node.durable import write_atomic

    path = data_dir / CONFIG_FILE
    write_atomic(path, render(config))
    return path


@functools.cache
def field_docs(cls: Any) -> dict[str, str]:
    """The attribute docstrings of a config dataclass (the string under each field)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, following in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def _wrap(text: str, width: int = 96) -> list[str]:
    lines: list[str] = []
    current = ""
    for word in text.split():
        if current and len(current) + 1 + len(word) > width:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}".strip()
    if current:
        lines.append(current)
    return lines


def default_data_dir() -> Path:
    """``$OUTPOST_DATA_DIR``, else ``$XDG_DATA_HOME/outpost``, else ``~/.local/share/outpost``."""
    env = os.environ.get("OUTPOST_DATA_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "outpost"
