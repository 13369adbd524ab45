"""Exceptions raised by ``models``.

The tree separates "the caller sent something bad" (answer 4xx and move on) from "the
model or this node cannot serve right now" (5xx, maybe retry) and from "the file we were
given is not a model we can serve"::

    ModelError
    ├── InvalidModel        a file is not an ONNX model onnxruntime can load, is truncated,
    │                       empty, oversized, or uses types we cannot serve
    ├── InvalidName         a model name, version or blob hash outside the allowed pattern
    ├── InvalidConfig       a RuntimeConfig field outside its allowed range (also ValueError)
    ├── CodecError          an inference request/response body that does not follow the Open
    │                       Inference Protocol, or tensors that do not fit the model's
    │                       signature  -> the daemon answers HTTP 400
    │   └── DecodedTooLarge a request whose tensors would take more memory decoded than the
    │                       caller's budget allows -> HTTP 413
    ├── Overloaded          the model's queue is full -> HTTP 503 with Retry-After
    ├── ModelUnavailable    the model version is closed or being unloaded -> HTTP 503
    ├── InferenceFailed     onnxruntime raised while running a (valid) request -> HTTP 500
    └── MissingExtra        an optional part (pip extra: ray, batch) is not installed; the
                            message names the extra (``models.extras``)

Third-party errors (onnxruntime, json, numpy) are translated at this package's boundary
with ``raise ... from exc``, so the daemon only ever catches ``ModelError``. Every message
says what was wrong and what to do about it.

Every exception pickles with its fields intact, so a backend running models in another
process (Ray) can raise them across the process boundary.
"""

from __future__ import annotations


class ModelError(Exception):
    """Base of every error raised by ``models``."""


class InvalidModel(ModelError):
    """A model file cannot be served: not ONNX, truncated, empty, oversized or unsupported.

    Raised when a model is added or inspected, never while serving; the file is refused
    and nothing is left in the store.
    """


class InvalidName(ModelError):
    """A model name, version or content hash does not match the allowed pattern."""


class InvalidConfig(ModelError, ValueError):
    """A configuration value is outside its allowed range; the message names the range."""


class CodecError(ModelError):
    """A request or response body does not follow the Open Inference Protocol, or its
    tensors do not match the model's signature. The sender is at fault, not the model."""


class DecodedTooLarge(CodecError):
    """A request whose decoded tensors would exceed the memory budget the caller set (a
    multiple of the body's size): refused before anything is allocated."""


class Overloaded(ModelError):
    """The model version's queue is full; try again after ``retry_after`` seconds.

    Unlike ``ModelUnavailable`` this is transient and expected under load: placement may
    send the request to a peer instead.
    """

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_overloaded, (str(self), self.retry_after))


def _rebuild_overloaded(message: str, retry_after: float) -> Overloaded:
    return Overloaded(message, retry_after=retry_after)


class ModelUnavailable(ModelError):
    """The model version is closed or being unloaded and accepts no more requests.

    Unlike ``Overloaded`` waiting will not help on this handle: load the model again.
    """


class InferenceFailed(ModelError):
    """onnxruntime raised while running a request that passed validation.

    The message names the model; the onnxruntime error is chained as ``__cause__``. The
    model stays loaded and keeps serving other requests.
    """


class MissingExtra(ModelError):
    """An optional dependency (a pip extra of outpost) is not installed. The message names
    the ``pip install 'outpost[EXTRA]'`` that fixes it."""
