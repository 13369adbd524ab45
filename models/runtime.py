"""The inference runtime seam and its in-process onnxruntime backend.

Owns ``RuntimeConfig``, the two interfaces the daemon programs against (``Backend`` loads
a model version, ``LoadedModel`` serves it) and ``OrtBackend``: one onnxruntime session
per model version, execution provider chosen per model at load, requests micro-batched on
a worker thread (``models.batcher``). A Ray backend implements the same two protocols
(and can reuse ``Batcher`` with a ``run`` that calls an actor). Never lets onnxruntime
write to the process's stdout/stderr.

Inline or worker (DESIGN §6): handing a request to the worker thread and the answer back
costs a few tens of microseconds here, more than a tiny model's whole run. At load the
backend measures both — the model's run on a one-row input, and a real loop -> thread ->
loop round trip — and runs the model on the event loop when its p50 is below the
hand-off's (``runtime.inline = "auto"``). The choice is checked again every
``REDECIDE_EVERY`` runs against the run times seen in service, and reported in the
model's metadata, ``outpost models list`` and ``status``.

Provider choice (DESIGN §6): onnxruntime-gpu lists CUDA and TensorRT as available even
with no GPU, and a session asked for CUDA then CPU silently runs on CPU after printing
errors on fd 2. So "auto" asks for CUDA then CPU with fds 1 and 2 redirected to a temp
file, reads ``session.get_providers()`` for the truth, logs one line, and remembers a
failed CUDA load so later loads go straight to CPU. TensorRT is not tried: its engine
build makes loads slow and prints a banner on fd 1.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from models._validate import check, check_int, check_num
from models.batcher import Batcher, Observer
from models.datatypes import from_oip
from models.errors import CodecError, InvalidModel
from models.names import validate_name, validate_version
from models.signature import ModelSignature, signature_of_session

__all__ = [
    "Backend",
    "InputCheck",
    "LoadedModel",
    "OrtBackend",
    "OrtModel",
    "RuntimeConfig",
    "SessionRunner",
]

log = logging.getLogger(__name__)

Tensor = np.ndarray[Any, Any]

REDECIDE_EVERY = 4096
"""Runs between two inline-or-worker decisions in service (a few seconds at full load)."""
_PROBE_RUNS = 31  # timed one-row runs at load (after warm-up): a stable median, ~ms total
_HANDOFF_ROUND_TRIPS = 31

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
_SECTION = "runtime"  # the node config section (outpost.toml) these settings live in


@dataclass(frozen=True)
class RuntimeConfig:
    """How loaded models are run. Every field trades latency, throughput or memory."""

    providers: str = "auto"
    """"auto": CUDA when it really loads, else CPU (costs one failed CUDA load, once per
    process, on GPU-less machines with onnxruntime-gpu). "cpu": never try a GPU, for
    predictable latency or when the GPU belongs to something else."""

    max_batch_size: int = 32
    """Most rows concatenated into one run for dynamic-batch models. Larger raises
    throughput under load (fewer, fuller runs) but each run takes longer, so the tail
    latency of the requests in it grows. 1 disables batching."""

    max_batch_delay_ms: float = 0.0
    """How long the worker waits for more requests before running a partial batch.
    0 = opportunistic: batch only what queued while the worker was busy, so a lone
    request never waits. A few ms can raise throughput at moderate load, at the cost of
    adding up to that much latency to every request."""

    max_queue: int = 256
    """Requests accepted and not yet answered, per model version; beyond it requests get
    Overloaded (HTTP 503 + Retry-After) at once. Bounds memory (max_queue x request size)
    and queueing delay (max_queue / throughput); too small sheds load that a short burst
    would have absorbed."""

    intra_op_threads: int = 1
    """onnxruntime threads inside one run; 0 lets onnxruntime use one per core. 1 is best
    for small models (no thread hand-off) and leaves cores to other model versions;
    larger models gain from 2+."""

    inline: str = "auto"
    """Run a model on the event loop instead of its worker thread: "auto" when its measured
    run (one row, p50) is shorter than the measured hand-off to the thread and back (tiny
    models: saves the hand-off, ~35 us each way on a small VM); "never" always uses the
    worker (the loop never runs a model); "always" inlines every model (only for tests and
    experiments: a slow model then stalls every other request)."""

    retry_after_s: float = 1.0
    """Seconds suggested to a client refused with Overloaded (the Retry-After header).
    Shorter retries sooner but adds load while the node is saturated."""

    def __post_init__(self) -> None:
        check(_SECTION, self.providers in ("auto", "cpu"), "providers", '"auto" or "cpu"', self.providers)
        check_int(_SECTION, self.max_batch_size, "max_batch_size", 1, 4096)
        check_num(_SECTION, self.max_batch_delay_ms, "max_batch_delay_ms", 0.0, 1000.0)
        check_int(_SECTION, self.max_queue, "max_queue", 1, 1_000_000)
        check_int(_SECTION, self.intra_op_threads, "intra_op_threads", 0, 256)
        check_num(_SECTION, self.retry_after_s, "retry_after_s", 0.001, 3600.0)
        check(_SECTION, self.inline in ("auto", "never", "always"), "inline",
              '"auto", "never" or "always"', self.inline)

    @classmethod
    def low_latency(cls) -> RuntimeConfig:
        """The defaults: never wait to fill a batch."""
        return cls()

    @classmethod
    def throughput(cls) -> RuntimeConfig:
        """For heavily loaded nodes: wait up to 2 ms to fill batches of up to 64 rows."""
        return cls(max_batch_size=64, max_batch_delay_ms=2.0, max_queue=1024)


class LoadedModel(Protocol):
    """One model version ready to serve. Safe to use from one event loop."""

    name: str
    version: str

    @property
    def signature(self) -> ModelSignature: ...

    @property
    def provider(self) -> str:
        """The execution provider actually in use, e.g. ``CPUExecutionProvider``."""
        ...

    @property
    def execution(self) -> dict[str, Any]:
        """Where runs happen: ``{"mode": "inline" | "worker" | "ray", ...figures}``."""
        ...

    @property
    def queue_depth(self) -> int:
        """Requests accepted and not yet answered; readable from any thread."""
        ...

    def infer(self, inputs: dict[str, Tensor], *, alone: bool = False
              ) -> asyncio.Future[dict[str, Tensor]]:
        """Check and queue one request (every input, signature dtypes; BYTES as object arrays
        of bytes) now, on the event loop; the future resolves to every output once it ran.
        Raises at once CodecError (inputs that do not fit the model), Overloaded or
        ModelUnavailable; the future fails with InferenceFailed. ``alone``: no other request
        is in flight (see ``Batcher.submit``)."""
        ...

    async def close(self) -> None:
        """Stop accepting, finish every accepted request, release the model."""
        ...


class Backend(Protocol):
    """Something that can load model versions."""

    async def load(
        self, name: str, version: str, path: Path, signature: ModelSignature
    ) -> LoadedModel:
        """Load the model file ``path`` whose manifest says ``signature``.

        Raises InvalidModel when the file cannot be loaded or does not match.
        """
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-able facts for status and adverts (backend, providers, settings). Cheap and
        non-blocking: status calls it on the event loop."""
        ...

    def health(self) -> dict[str, Any]:
        """``{"degraded": bool, "reason": str | None}``: degraded means the node serves, but
        with less than it was configured for (e.g. Ray is down and models run in-process).
        Cheap and non-blocking, like ``describe``."""
        ...

    async def close(self) -> None:
        """Release what the backend holds beyond its models (close the models first)."""
        ...


class OrtBackend:
    """Models run in this process, one onnxruntime session each."""

    def __init__(
        self, config: RuntimeConfig | None = None, observer: Observer | None = None
    ) -> None:
        self.config = config or RuntimeConfig()
        self._observer = observer
        self._cuda = "not tried" if self.config.providers == "auto" else "disabled"
        self._handoff_s: float | None = None  # measured at the first load

    async def handoff_cost(self) -> float:
        """Median seconds of a real event loop -> thread -> event loop round trip."""
        if self._handoff_s is None:
            samples = []
            for _ in range(_HANDOFF_ROUND_TRIPS):
                start = time.perf_counter()
                await asyncio.to_thread(int)
                samples.append(time.perf_counter() - start)
            self._handoff_s = statistics.median(samples)
        return self._handoff_s

    async def load(
        self, name: str, version: str, path: Path, signature: ModelSignature
    ) -> OrtModel:
        validate_name(name)
        validate_version(version)
        session, provider = await asyncio.to_thread(self._open, name, version, path)
        actual = signature_of_session(session)
        if actual != signature:
            raise InvalidModel(
                f"model {name}:{version} ({path}) has signature {actual.to_json()} but its "
                f"manifest says {signature.to_json()}; add the model again"
            )
        model = OrtModel(name, version, session, signature, provider, self.config, self._observer)
        if self.config.inline != "never":
            run_s = await asyncio.to_thread(model.probe_run)
            model.decide(run_s, await self.handoff_cost(), force=self.config.inline == "always")
        return model

    def describe(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {
            "backend": "onnxruntime",
            "onnxruntime_version": ort.__version__,
            "providers_listed": list(ort.get_available_providers()),
            "cuda": self._cuda,
            "config": dataclasses.asdict(self.config),
        }

    def health(self) -> dict[str, Any]:
        return {"degraded": False, "reason": None}

    async def close(self) -> None:
        return None

    def _plan(self) -> list[str]:
        import onnxruntime as ort

        if self.config.providers == "cpu" or self._cuda.startswith("failed"):
            return [CPU]
        if CUDA in ort.get_available_providers():
            return [CUDA, CPU]
        return [CPU]

    def _open(self, name: str, version: str, path: Path) -> tuple[Any, str]:
        """On a worker thread: create the session, quietly, and find its real provider."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = self.config.intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        plan = self._plan()
        noise = _Captured()
        try:
            with _native_output_captured(enabled=plan[0] != CPU) as noise:
                session = ort.InferenceSession(str(path), options, providers=plan)
        except Exception as exc:
            raise InvalidModel(
                f"model {name}:{version} ({path}) cannot be loaded by onnxruntime: {exc}"
                f"{noise.summary(' (onnxruntime said: ', ')')}; add the model again or "
                "check that it loads with onnxruntime"
            ) from exc
        provider: str = session.get_providers()[0]
        if plan[0] == CUDA and provider != CUDA:
            reason = noise.summary() or "no reason given"
            if self._cuda == "loaded":  # CUDA works; this one model could not use it
                log.warning(
                    "model %s:%s runs on %s: CUDA refused it (%s)", name, version, provider, reason
                )
            else:  # CUDA does not work in this process: stop trying (and printing)
                self._cuda = f"failed: {reason}"
                # INFO: expected on a machine without a GPU (onnxruntime-gpu on x86_64).
                log.info(
                    "CUDA execution provider did not load (%s); %s:%s and later models run on %s",
                    reason,
                    name,
                    version,
                    provider,
                )
        else:
            if plan[0] == CUDA:
                self._cuda = "loaded"
            log.debug(  # node.modelhost logs the one INFO "loaded" line
                "session for %s:%s on %s%s",
                name,
                version,
                provider,
                noise.summary(" (onnxruntime said: ", ")"),
            )
        return session, provider


class OrtModel:
    """One model version in an onnxruntime session behind a micro-batching worker."""

    def __init__(
        self,
        name: str,
        version: str,
        session: Any,
        signature: ModelSignature,
        provider: str,
        config: RuntimeConfig,
        observer: Observer | None,
    ) -> None:
        self.name, self.version = name, version
        self._session: SessionRunner | None = SessionRunner(session, signature)
        self._signature = signature
        self._provider = provider
        self._check = InputCheck(name, version, signature)
        self._max_batch_size = config.max_batch_size
        self._observer = observer
        self._batcher = Batcher(
            self._run,
            name=name,
            version=version,
            batchable=signature.batch_dynamic,
            max_batch_size=config.max_batch_size,
            max_batch_delay_s=config.max_batch_delay_ms / 1000.0,
            max_queue=config.max_queue,
            retry_after_s=config.retry_after_s,
            observer=self._observe,
        )
        # Inline or worker: decided at load (``decide``), checked again in service.
        self._forced = False
        self._handoff_s: float | None = None
        self._run_s: float | None = None
        self._probe_elements = 0
        self._recent: collections.deque[float] = collections.deque(maxlen=255)
        self._runs = 0

    def probe_run(self) -> float | None:
        """On a worker thread at load: median seconds of a one-row run on zeros, or None
        when the model cannot be probed (text inputs, or a run that fails on zeros)."""
        feed: dict[str, Tensor] = {}
        for spec in self._signature.inputs:
            if spec.datatype == "BYTES":
                return None
            shape = tuple(1 if d < 0 else d for d in spec.shape)
            feed[spec.name] = np.zeros(shape, dtype=from_oip(spec.datatype).dtype)
        self._probe_elements = sum(a.size for a in feed.values())
        try:
            for _ in range(3):
                self._run(feed)
            samples = []
            for _ in range(_PROBE_RUNS):
                start = time.perf_counter()
                self._run(feed)
                samples.append(time.perf_counter() - start)
        except Exception as exc:  # e.g. a Gather that zeros index out of range: worker it is
            log.debug("model %s:%s could not be probed on zeros: %s", self.name, self.version, exc)
            return None
        return statistics.median(samples)

    def decide(self, run_s: float | None, handoff_s: float, *, force: bool = False) -> None:
        """Inline when the run is shorter than the hand-off (or ``force``); else the worker.
        Jobs up to ``max_batch_size`` times the probe's size run inline, larger ones go to
        the worker, so one big request cannot stall the loop."""
        self._forced, self._handoff_s = force, handoff_s
        if run_s is not None:
            self._run_s = run_s
        inline = force or (self._run_s is not None and self._run_s < handoff_s)
        was = self._batcher.inline
        self._batcher.set_inline(
            max(1, self._probe_elements) * self._max_batch_size if inline else 0)
        if inline != was:
            log.info("model %s:%s runs %s (run p50 %.1f us, hand-off %.1f us)", self.name,
                     self.version, "inline on the event loop" if inline else "on its worker thread",
                     (self._run_s or 0) * 1e6, handoff_s * 1e6)

    @property
    def execution(self) -> dict[str, Any]:
        """The inline-or-worker choice and the figures it was made on (for metadata)."""
        return {
            "mode": "inline" if self._batcher.inline else "worker",
            "run_p50_us": None if self._run_s is None else round(self._run_s * 1e6, 1),
            "handoff_p50_us": None if self._handoff_s is None else round(self._handoff_s * 1e6, 1),
        }

    def _observe(self, name: str, version: str, requests: int, seconds: float) -> None:
        if self._observer is not None:
            self._observer(name, version, requests, seconds)
        if requests != 1 or self._handoff_s is None or self._forced:
            return
        self._recent.append(seconds)
        self._runs += 1
        if self._runs % REDECIDE_EVERY == 0:  # the model's cost in service may differ
            self.decide(statistics.median(self._recent), self._handoff_s)

    @property
    def signature(self) -> ModelSignature:
        return self._signature

    @property
    def provider(self) -> str:
        return self._provider

    @property
    def queue_depth(self) -> int:
        return self._batcher.queue_depth

    def infer(self, inputs: dict[str, Tensor], *, alone: bool = False
              ) -> asyncio.Future[dict[str, Tensor]]:
        return self._batcher.submit(self._check(inputs), alone=alone)

    async def close(self) -> None:
        await self._batcher.close()
        self._session = None  # frees the session (and its device memory) now

    def _run(self, feed: dict[str, Tensor]) -> dict[str, Tensor]:
        assert self._session is not None, "closed models run nothing (the batcher drained)"
        return self._session(feed)


class InputCheck:
    """A request's tensors against a model's signature, on the event loop before queueing:
    every input present with the signature's numpy dtype (CodecError otherwise), and BYTES
    inputs turned into the UTF-8 text onnxruntime wants. Shared by every backend, so a
    request is refused the same way wherever the model runs."""

    def __init__(self, name: str, version: str, signature: ModelSignature) -> None:
        self._ref = f"{name}:{version}"
        self._dtypes = {s.name: from_oip(s.datatype).dtype for s in signature.inputs}
        self._text_inputs = [s.name for s in signature.inputs if s.datatype == "BYTES"]

    def __call__(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        if inputs.keys() != self._dtypes.keys():
            raise CodecError(
                f"model {self._ref} takes inputs {list(self._dtypes)}, got {list(inputs)}"
            )
        for name, dtype in self._dtypes.items():
            array = inputs[name]
            if not isinstance(array, np.ndarray) or array.dtype != dtype:
                got = array.dtype if isinstance(array, np.ndarray) else type(array).__name__
                raise CodecError(f"input {name!r} must be a numpy {dtype} array, got {got}")
        if self._text_inputs:
            inputs = dict(inputs)
            for name in self._text_inputs:
                inputs[name] = _to_text(inputs[name], name)
        return inputs


class SessionRunner:
    """``run(feed) -> every output`` on one onnxruntime session (BYTES outputs as bytes):
    the function a ``Batcher`` calls, in this process or inside a Ray actor."""

    def __init__(self, session: Any, signature: ModelSignature) -> None:
        self.session = session
        self._output_names = [s.name for s in signature.outputs]
        self._text_outputs = [s.name for s in signature.outputs if s.datatype == "BYTES"]

    def __call__(self, feed: dict[str, Tensor]) -> dict[str, Tensor]:
        results = self.session.run(self._output_names, feed)
        outputs = dict(zip(self._output_names, results, strict=True))
        for name in self._text_outputs:
            outputs[name] = _to_bytes(outputs[name])
        return outputs


def _to_text(array: Tensor, name: str) -> Tensor:
    # onnxruntime string tensors hold UTF-8 text; handed bytes it would store their repr.
    out = np.empty(array.size, dtype=object)
    try:
        out[:] = [x.decode("utf-8") if isinstance(x, bytes) else x for x in array.ravel().tolist()]
    except UnicodeDecodeError as exc:
        raise CodecError(
            f"input {name!r}: an element is not valid UTF-8 ({exc.reason} at byte {exc.start}); "
            "ONNX string tensors hold UTF-8 text, so encode binary data (e.g. base64) first"
        ) from exc
    if not all(isinstance(x, str) for x in out):
        raise CodecError(f"input {name!r}: BYTES elements must be bytes or str")
    return out.reshape(array.shape)


def _to_bytes(array: Tensor) -> Tensor:
    out = np.empty(array.size, dtype=object)
    out[:] = [x.encode("utf-8") if isinstance(x, str) else x for x in array.ravel().tolist()]
    return out.reshape(array.shape)


# -- keeping onnxruntime's native output out of our stdout/stderr -----------------------

_NATIVE_OUTPUT_LOCK = threading.Lock()
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_PATH = re.compile(r"(?<![:/\w])/[^\s:]+/([^\s/:]+)")  # /long/dir/lib.so -> lib.so, not URLs


class _Captured:
    def __init__(self) -> None:
        self.text = ""

    def summary(self, prefix: str = "", suffix: str = "") -> str:
        """The telling part of what was printed (its "Failed to ..." sentences, paths cut
        to file names), or "" if nothing was."""
        lines = [ln.strip() for ln in _ANSI.sub("", self.text).splitlines() if ln.strip()]
        if not lines:
            return ""
        picked = [ln[ln.index("Failed to") :] for ln in lines if "Failed to" in ln][:2]
        if not picked:  # unknown shape: keep the first line, minus its log prefix
            picked = [lines[0].rsplit("] ", 1)[-1]]
        parts = [_PATH.sub(r"\1", part) for part in picked]
        text = "; ".join(_shorten(p, 400) for p in parts)
        return f"{prefix}{text}{suffix}"


def _shorten(text: str, limit: int) -> str:
    """At most about ``limit`` characters, cut at a space: never mid-word or mid-URL."""
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit)
    return (text[:cut] if cut > 0 else text) + " ..."


@contextlib.contextmanager
def _native_output_captured(*, enabled: bool = True) -> Iterator[_Captured]:
    """Send fds 1 and 2 to a temp file for the duration; the text is on the yielded object.

    Process-wide (native code writes to the fds directly), so serialised by a lock and
    kept around one call; anything another thread prints meanwhile lands in the summary.
    """
    captured = _Captured()
    if not enabled:
        yield captured
        return
    with _NATIVE_OUTPUT_LOCK, tempfile.TemporaryFile() as sink:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        try:
            saved = (os.dup(1), os.dup(2))
        except OSError:  # no fds 1/2 (daemonised without them): nothing to protect
            saved = None
        if saved is None:
            yield captured
            return
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield captured
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            sink.seek(0)
            captured.text = sink.read().decode("utf-8", "replace")


if TYPE_CHECKING:  # mypy proves the onnxruntime backend fits the seam

    def _fits(backend: OrtBackend, model: OrtModel) -> tuple[Backend, LoadedModel]:
        return backend, model
