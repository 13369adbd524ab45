"""Code that runs inside Ray worker processes: one model version in one onnxruntime session.

``Replica`` is the actor behind ``RayBackend`` (online requests, one batch per call);
``BatchPredictor`` is the callable class Ray Data maps over a dataset (``outpost batch run``).
Both open the session the way the in-process backend does (``OrtBackend._open``: provider
chosen for real, native output kept off stdout/stderr) from the model's bytes, which come
through the object store, because a worker on another machine cannot read this node's
data directory.

Errors travel back as values, never as raised exceptions: a ``ModelError`` returned by
``run`` is the request's fault (a bad input), while anything Ray raises around the call is
the cluster's — the caller tells the two apart by type, with no unwrapping of Ray's
``RayTaskError``. Imports ``ray`` at module level: import this module only when Ray is on.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import ray

from models.errors import InferenceFailed, InvalidModel, ModelError
from models.runtime import OrtBackend, RuntimeConfig, SessionRunner
from models.signature import ModelSignature, signature_of_session

Tensor = np.ndarray[Any, Any]


def open_from_bytes(
    name: str, version: str, data: bytes, runtime: RuntimeConfig, use_gpu: bool
) -> tuple[Any, str]:
    """An onnxruntime session for the model ``data`` and the provider it really uses."""
    config = dataclasses.replace(runtime, providers="auto" if use_gpu else "cpu")
    fd, tmp = tempfile.mkstemp(prefix=f"outpost-{name}-{version}-", suffix=".onnx")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        return OrtBackend(config)._open(name, version, Path(tmp))
    finally:
        os.unlink(tmp)  # the session holds its own copy of the weights


def _as_value(name: str, version: str, exc: Exception) -> ModelError:
    # The same words the in-process batcher uses (Batcher._as_model_error).
    if isinstance(exc, ModelError):
        return exc
    return InferenceFailed(
        f"model {name}:{version} failed to run the request: {type(exc).__name__}: {exc}"
    )


@ray.remote(concurrency_groups={"health": 1})  # type: ignore[call-overload]
class Replica:
    """One session; ``run`` calls are served one at a time (the default concurrency group),
    ``ping`` in its own group so a long run never makes a replica look dead."""

    def __init__(
        self,
        name: str,
        version: str,
        data: bytes,
        signature: ModelSignature,
        runtime: RuntimeConfig,
        use_gpu: bool,
    ) -> None:
        self._name, self._version = name, version
        self._runner: SessionRunner | None = None
        try:
            session, provider = open_from_bytes(name, version, data, runtime, use_gpu)
            actual = signature_of_session(session)
            if actual != signature:
                raise InvalidModel(
                    f"model {name}:{version} has signature {actual.to_json()} but its manifest "
                    f"says {signature.to_json()}; add the model again"
                )
        except ModelError as exc:
            self._info: dict[str, Any] | ModelError = exc
            return
        self._runner = SessionRunner(session, signature)
        self._info = {
            "provider": provider,
            "node_id": ray.get_runtime_context().get_node_id(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }

    def info(self) -> dict[str, Any] | ModelError:
        """Where the replica runs and on which provider, or why it could not load."""
        return self._info

    def run(self, feed: dict[str, Tensor]) -> dict[str, Tensor] | ModelError:
        if self._runner is None:
            assert isinstance(self._info, ModelError)
            return self._info
        try:
            return self._runner(feed)
        except Exception as exc:
            return _as_value(self._name, self._version, exc)

    @ray.method(concurrency_group="health")
    def ping(self) -> bool:
        return True


class BatchPredictor:
    """For ``Dataset.map_batches``: outputs of a batch of rows (a dict of numpy arrays, one
    per model input) as a dict of numpy arrays, one per model output."""

    def __init__(
        self,
        name: str,
        version: str,
        data: Any,
        signature: ModelSignature,
        runtime: RuntimeConfig,
        use_gpu: bool,
    ) -> None:
        if isinstance(data, list):  # [ObjectRef]: nested, so Ray Data passes it untouched
            data = ray.get(data[0])
        session, _provider = open_from_bytes(name, version, data, runtime, use_gpu)
        self._runner = SessionRunner(session, signature)
        self._inputs = [(s.name, s.datatype) for s in signature.inputs]

    def __call__(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        feed = {}
        for name, datatype in self._inputs:
            array = np.asarray(batch[name])
            if datatype == "BYTES":
                array = np.asarray([x.decode("utf-8") if isinstance(x, bytes) else x
                                    for x in array.ravel().tolist()],
                                   dtype=object).reshape(array.shape)
            feed[name] = array
        return self._runner(feed)
