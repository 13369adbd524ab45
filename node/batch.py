"""``outpost batch run``: offline inference over a file with a model from this node's store.

Owns the job: find the model (through the daemon's admin socket when it runs, else in the
store under the data-dir lock), run it over the input chunk by chunk — in this process with
onnxruntime, or on Ray Data when Ray is configured (``--ray`` or the node config's ``[ray]
address``) — and, per chunk, append one audit entry and write the output (``node.batchio``).

Audit: one entry per chunk, the same kind as online inference: ``kind=infer``,
``caller=batch``, the model and version, data class, ``outcome=ok``, the SHA-256 of the
chunk's inputs, and ``detail`` {rows, start, chunk, job, engine}. The log has one writer:

- daemon running: the entry goes through its admin socket (``POST /batch/audit``, served by
  :func:`admin_route`), and the daemon appends it (adding its policy version). A daemon
  without that route refuses with a message saying so; nothing is run.
- no daemon: this process appends under the data-dir lock, taken per chunk (a daemon that
  starts mid-job is used from the next chunk on).

Order per chunk: run → audit entry durable → output file durable → manifest lists it. A
crash after the entry and before the manifest makes the re-run audit that chunk again (the
log may hold a chunk twice, with the same input hash); a result is never delivered
unaudited. Must never write the audit log while a daemon owns it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
import tomllib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np

from models import BlobStore, ModelSignature, RuntimeConfig, parse_ref, validate_name
from models.names import validate_version
from models.ray_backend import RayConfig
from node import config as cfg
from node import control
from node.batchio import BatchError, BatchInput, BatchOutput, Manifest, input_sha256
from node.client import DaemonError, connect
from node.limits import OFFLINE_LOCK_RETRY_S, OFFLINE_LOCK_WAIT_S

if TYPE_CHECKING:
    from node.ports import AuditSink


class AuditingNode(Protocol):
    """What the daemon's batch route needs: its audit log and the policy version in force."""

    @property
    def audit(self) -> AuditSink: ...

    @property
    def policy_version(self) -> int | None: ...

__all__ = ["AUDIT_ROUTE", "BatchError", "BatchSettings", "admin_route", "node_ray_config",
           "run_batch"]

log = logging.getLogger("outpost.batch")

T = TypeVar("T")
Tensor = np.ndarray[Any, Any]
Progress = Callable[[int, int], None]
"""``(rows_done, rows_total)`` after every chunk (and once before the first)."""

#: Admin-socket route of a running daemon that appends one batch chunk's audit entry.
AUDIT_ROUTE = "/batch/audit"
ENGINES = ("onnxruntime", "ray-data")
_LOCK_RETRY_S = OFFLINE_LOCK_RETRY_S
_LOCK_WAIT_S = OFFLINE_LOCK_WAIT_S  # another CLI command (or a starting daemon) holds the lock


@dataclass(frozen=True)
class BatchSettings:
    """How a batch job splits its input. The CLI's defaults come from here."""

    batch_size: int = 1024
    """Rows per model run. Larger amortises per-run overhead (large for Ray: a remote call
    per batch); smaller bounds memory per run. For the sample model, 1024 is where
    onnxruntime's throughput levels off on this machine."""

    chunk_rows: int = 100_000
    """Rows per output file, audit entry and resume step. Smaller loses less work to an
    interruption and writes more files and entries; a re-run must use the same value."""

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= 10_000_000:
            raise BatchError("--batch-size must be between 1 and 10000000")
        if not 1 <= self.chunk_rows <= 100_000_000:
            raise BatchError("--chunk-rows must be between 1 and 100000000")


def node_ray_config(data_dir: Path) -> RayConfig:
    """The ``[ray]`` section of the node's config file (Ray off when there is none)."""
    raw = _raw_config(data_dir)
    section = raw.get("ray", {})
    if not isinstance(section, dict):
        raise cfg.ConfigError(f"{data_dir / cfg.CONFIG_FILE}: [ray] must be a table")
    try:
        return RayConfig(**section)
    except TypeError as exc:
        raise cfg.ConfigError(f"{data_dir / cfg.CONFIG_FILE}: [ray] {exc}") from None


def _node_config(data_dir: Path) -> cfg.Config:
    raw = _raw_config(data_dir)
    raw.pop("ray", None)  # read by node_ray_config, whether or not Config knows the section
    return cfg.from_dict(raw, source=str(data_dir / cfg.CONFIG_FILE))


def _raw_config(data_dir: Path) -> dict[str, Any]:
    path = data_dir / cfg.CONFIG_FILE
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise cfg.ConfigError(
            f"no node in {data_dir}: {cfg.CONFIG_FILE} is missing; run `outpost init --data-dir "
            f"{data_dir}`"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise cfg.ConfigError(f"{path} is not valid TOML ({exc}); fix or delete it") from exc


# -- the job ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Model:
    name: str
    version: str
    sha256: str
    path: Path
    signature: ModelSignature


def run_batch(
    data_dir: Path,
    ref: str,
    input_path: Path,
    output: Path,
    *,
    version: str | None = None,
    settings: BatchSettings | None = None,
    ray_address: str | None = None,
    data_class: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run model ``ref`` (NAME or NAME:VERSION) over ``input_path`` into ``output``.

    ``ray_address``: None = the node config's ``[ray] address``; "" or "off" = in-process.
    Returns a summary (rows, chunks, engine, seconds, ...).
    """
    from models.extras import require

    require("pyarrow", "outpost batch run (it writes a Parquet dataset)")
    settings = settings or BatchSettings()
    config = _node_config(data_dir)
    ray_config = node_ray_config(data_dir)
    if ray_address is not None:
        address = "" if ray_address in ("", "off") else ray_address
        ray_config = dataclasses.replace(ray_config, address=address)
    name, ref_version = parse_ref(ref)
    if ref_version and version and ref_version != version:
        raise BatchError(f"{ref} names version {ref_version} but --version says {version}")
    model = _find_model(data_dir, name, version or ref_version)
    data_class = data_class or config.node.default_data_class
    source = BatchInput(input_path, model.signature)
    fresh = Manifest(model.name, model.version, model.sha256, source.identity, source.rows,
                     settings.chunk_rows, [])
    out = BatchOutput(output, fresh)
    engine = "ray-data" if ray_config.enabled else "onnxruntime"
    done = out.manifest.rows_done
    job = hashlib.sha256(
        f"{model.sha256}|{source.identity}|{settings.chunk_rows}".encode()).hexdigest()[:16]
    summary: dict[str, Any] = {
        "model": model.name, "version": model.version, "input": str(input_path),
        "output": str(output), "rows": source.rows, "resumed_at": done, "engine": engine,
        "job": job, "chunk_rows": settings.chunk_rows, "batch_size": settings.batch_size,
    }
    if progress is not None:
        progress(done, source.rows)
    started = time.perf_counter()
    audit = _Audit(data_dir, model, data_class, job, engine)
    if done < source.rows:
        chunks = source.chunks(done, settings.chunk_rows)
        results = (_run_ray(model, chunks, settings, config.runtime, ray_config)
                   if ray_config.enabled
                   else _run_here(model, chunks, settings, config.runtime, summary))
        for first, inputs, outputs in results:
            rows = next(iter(inputs.values())).shape[0]
            index = len(out.manifest.chunks)
            digest = input_sha256(inputs, model.signature)
            audit.record(index, first, rows, digest)
            out.write(first, outputs, model.signature, {"input_sha256": digest})
            if progress is not None:
                progress(out.manifest.rows_done, source.rows)
    seconds = time.perf_counter() - started
    computed = out.manifest.rows_done - done
    summary.update(
        chunks=len(out.manifest.chunks), computed=computed, complete=out.manifest.complete,
        seconds=round(seconds, 3),
        rows_per_s=round(computed / seconds) if computed and seconds > 0 else None,
        audit=audit.where,
    )
    return summary


def _run_here(model: _Model, chunks: Iterator[tuple[int, dict[str, Tensor]]],
              settings: BatchSettings, runtime: RuntimeConfig, facts: dict[str, Any],
              ) -> Iterator[tuple[int, dict[str, Tensor], dict[str, Tensor]]]:
    """In this process: the session the daemon would open (same provider choice and
    ``[runtime]`` settings), batch by batch."""
    from models import InvalidModel, OrtBackend
    from models.runtime import InputCheck, SessionRunner
    from models.signature import signature_of_session

    backend = OrtBackend(runtime)
    session, facts["provider"] = backend._open(model.name, model.version, model.path)
    if signature_of_session(session) != model.signature:
        raise InvalidModel(f"model {model.name}:{model.version} does not match its manifest; "
                           "add the model again")
    check = InputCheck(model.name, model.version, model.signature)
    runner = SessionRunner(session, model.signature)
    step = settings.batch_size if model.signature.batch_dynamic else 1
    for first, inputs in chunks:
        rows = next(iter(inputs.values())).shape[0]
        parts = [runner(check({k: v[i:i + step] for k, v in inputs.items()}))
                 for i in range(0, rows, step)]
        yield first, inputs, {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _run_ray(model: _Model, chunks: Iterator[tuple[int, dict[str, Tensor]]],
             settings: BatchSettings, runtime: RuntimeConfig, ray_config: RayConfig,
             ) -> Iterator[tuple[int, dict[str, Tensor], dict[str, Tensor]]]:
    """On Ray Data: the remaining rows as one dataset (blocks of a chunk each, so every
    replica has work), ``map_batches`` over an actor pool of ``min..max_replicas``, results
    streamed back in order, one chunk at a time."""
    from models import _ray_driver

    ray = _ray_driver.import_ray()
    driver = _ray_driver.driver()
    job = object()  # owns the connection if this job starts it: shut down when done
    try:
        driver.connect(ray_config.address,
                       _ray_driver.init_kwargs(ray_config.address, ray_config.num_cpus,
                                               ray_config.namespace, ray_config.ship_code),
                       ray_config.connect_timeout_s, owner=job)
    except _ray_driver.RayDown as exc:
        raise BatchError(f"{exc}; run in-process with --ray off, or start Ray") from None
    try:
        yield from _ray_data(ray, model, chunks, settings, runtime, ray_config)
    finally:
        driver.release(job, ray_config.connect_timeout_s)


def _ray_data(ray: Any, model: _Model, chunks: Iterator[tuple[int, dict[str, Tensor]]],
              settings: BatchSettings, runtime: RuntimeConfig, ray_config: RayConfig,
              ) -> Iterator[tuple[int, dict[str, Tensor], dict[str, Tensor]]]:
    import pyarrow as pa
    from ray.data.extensions import ArrowTensorArray

    from models._ray_replica import BatchPredictor

    # Ray Data narrates every execution (INFO/WARNING lines on stderr); ours is the progress
    # bar and the summary. Its errors still show.
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # outputs line up with input chunks
    context.enable_progress_bars = False  # ours is on the terminal already
    pending = list(chunks)  # (first_row, inputs) of every remaining chunk, in order
    if not pending:
        return
    blocks = [pa.table({n: _arrow_column(a, ArrowTensorArray) for n, a in inputs.items()})
              for _first, inputs in pending]
    gpus = ray_config.num_gpus_per_replica if ray.cluster_resources().get("GPU") else 0
    sized = dataclasses.replace(runtime, intra_op_threads=max(1, int(
        ray_config.num_cpus_per_replica)))
    dataset = ray.data.from_arrow(blocks).map_batches(
        BatchPredictor,
        fn_constructor_args=(model.name, model.version, [ray.put(model.path.read_bytes())],
                             model.signature, sized, gpus > 0),
        batch_size=settings.batch_size if model.signature.batch_dynamic else 1,
        compute=ray.data.ActorPoolStrategy(min_size=ray_config.min_replicas,
                                           max_size=ray_config.max_replicas),
        num_cpus=ray_config.num_cpus_per_replica,
        num_gpus=gpus,
        batch_format="numpy",
        zero_copy_batch=True,
    )
    results = dataset.iter_batches(batch_size=settings.chunk_rows, batch_format="numpy",
                                   prefetch_batches=1)
    for (first, inputs), outputs in zip(pending, results, strict=True):
        yield first, inputs, {k: np.asarray(v) for k, v in outputs.items()}


def _arrow_column(array: Tensor, tensor_array: Any) -> Any:
    import pyarrow as pa

    if array.ndim == 1:
        return pa.array(array.tolist() if array.dtype == object else array)
    return tensor_array.from_numpy(array)


# -- finding the model ------------------------------------------------------------------------


def _find_model(data_dir: Path, name: str, version: str | None) -> _Model:
    validate_name(name)
    if version is not None:
        validate_version(version)
    client = connect(data_dir)
    if client is not None:
        with client:
            records: list[dict[str, Any]] = client.request("GET", "/models")
    else:
        from node.offline import read_store

        records = read_store(data_dir, _list_models)
    mine = [r for r in records if r["name"] == name]
    if version is not None:
        mine = [r for r in mine if r["version"] == version]
    if not mine:
        from node.modelhost import ModelNotFound

        what = f"{name}:{version}" if version else name
        raise ModelNotFound(f"no model {what!r} here; `outpost models list` shows what is")
    record = max(mine, key=lambda r: r["added_at"])  # "latest" as the endpoint means it
    path = BlobStore(data_dir / "blobs").path(record["sha256"])
    return _Model(record["name"], record["version"], record["sha256"], path,
                  ModelSignature.from_json(record["signature"]))


async def _list_models(store: Any) -> list[dict[str, Any]]:
    return [r.to_json() for r in await store.list_models()]


def _offline(data_dir: Path, holder: str, fn: Callable[[Any, Any], Awaitable[T]]) -> T:
    """Run ``fn(store, audit_log)`` with no daemon, under the data-dir lock (waiting a
    little if another command holds it). Raises _DaemonStarted if a daemon took it."""
    from node.offline import OfflineNode, run_offline  # the job's process stays light

    async def go(node: OfflineNode) -> T:
        return await fn(node.store, node.audit)

    try:
        return run_offline(data_dir, holder, go, config=_node_config, wait_s=_LOCK_WAIT_S)
    except control.Busy:
        if control.read_runtime(data_dir) is not None:
            raise _DaemonStarted() from None
        raise


class _DaemonStarted(Exception):
    """A daemon took the data directory while the job ran: send entries to it instead."""


# -- audit ------------------------------------------------------------------------------------


class _Audit:
    """One entry per chunk, written by whoever owns the log right now."""

    def __init__(self, data_dir: Path, model: _Model, data_class: str, job: str,
                 engine: str) -> None:
        self.data_dir = data_dir
        self.payload = {"model": model.name, "version": model.version,
                        "data_class": data_class, "job": job, "engine": engine}
        self.where = "none"

    def record(self, index: int, first: int, rows: int, sha256: str) -> None:
        payload = {**self.payload, "chunk": index, "start": first, "rows": rows,
                   "input_sha256": sha256}
        while True:
            client = connect(self.data_dir)
            if client is not None:
                with client:
                    try:
                        client.request("POST", AUDIT_ROUTE, payload)
                    except DaemonError as exc:
                        if exc.status == 404 and "no admin endpoint" in str(exc):
                            raise BatchError(
                                "the running daemon does not take batch audit entries (no admin "
                                f"route POST {AUDIT_ROUTE}); stop it (`outpost run` then "
                                "continues) and run the batch again: it resumes"
                            ) from None
                        raise
                self.where = "daemon"
                return
            try:
                _offline(self.data_dir, "outpost batch run", _append(payload))
            except _DaemonStarted:
                continue
            self.where = "offline"
            return


def _append(payload: dict[str, Any]) -> Callable[[Any, Any], Awaitable[int]]:
    async def append(store: Any, audit: Any) -> int:
        from node.store import get_doc

        held = await get_doc(store, "policy")
        index: int = await audit.append(_entry(audit.record, payload, held[0] if held else None))
        return index

    return append


def _entry(record: Callable[..., Any], payload: dict[str, Any],
           policy_version: int | None) -> Any:
    """The audit entry of one chunk; BatchError if the payload is malformed."""
    try:
        texts = {k: payload[k] for k in ("model", "version", "data_class", "job",
                                         "input_sha256")}
        if not all(isinstance(v, str) for v in texts.values()):
            raise BatchError(f"model, version, data_class, job and input_sha256 must be "
                             f"strings, got {texts}")
        name, version = texts["model"], texts["version"]
        validate_name(name)
        validate_version(version)
        ints = {k: payload[k] for k in ("chunk", "start", "rows")}
        if not all(type(v) is int and v >= 0 for v in ints.values()):
            raise BatchError(f"chunk, start and rows must be integers >= 0, got {ints}")
        if payload["engine"] not in ENGINES:
            raise BatchError(f"engine must be one of {ENGINES}")
        return record(
            "infer", model=name, version=version, caller="batch",
            data_class=texts["data_class"][:64], outcome="ok",
            input_sha256=texts["input_sha256"], policy_version=policy_version,
            detail={**ints, "job": texts["job"][:32], "engine": payload["engine"]},
        )
    except KeyError as exc:
        raise BatchError(f"batch audit entry lacks {exc}") from None
    except Exception as exc:
        if isinstance(exc, BatchError):
            raise
        raise BatchError(f"bad batch audit entry: {exc}") from exc


def admin_route(daemon: AuditingNode) -> Callable[[dict[str, Any], str], Awaitable[tuple[int, Any]]]:
    """The daemon's handler of ``POST /batch/audit``: appends one chunk's entry (durably,
    before answering) with the policy version in force. Register it with
    ``admin.route("POST", batch.AUDIT_ROUTE, batch.admin_route(daemon))``."""

    async def handler(payload: dict[str, Any], _rest: str) -> tuple[int, Any]:
        entry = _entry(daemon.audit.record, payload, daemon.policy_version)
        return 200, {"index": await daemon.audit.append(entry)}

    return handler
