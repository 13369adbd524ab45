"""Model signatures: the names, datatypes and shapes of a model's inputs and outputs.

Owns ``TensorSpec``/``ModelSignature``, their JSON form (the same ``{name, datatype,
shape}`` objects the Open Inference Protocol metadata endpoint returns, so a stored
manifest can be served as is) and ``inspect_model``, which is the one place that decides
whether a file is a model we can serve. Must never keep a session open or run inference.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.datatypes import from_oip, from_ort
from models.errors import CodecError, InvalidModel

__all__ = ["DYNAMIC", "ModelSignature", "TensorSpec", "inspect_model", "signature_of_session"]

DYNAMIC = -1
"""Shape entry for a dimension whose size is chosen per request (symbolic or unknown)."""

_EXPORT_HINT = (
    "export it with torch.onnx.export / tf2onnx / skl2onnx (opset <= 21), or check that "
    "the file was copied completely"
)


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output: name, OIP datatype and shape (``-1`` for dynamic dims)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> TensorSpec:
        try:
            name, datatype, shape = obj["name"], obj["datatype"], obj["shape"]
            from_oip(datatype)
        except (KeyError, TypeError, CodecError) as exc:
            raise InvalidModel(f"malformed tensor spec {obj!r} in a model manifest: {exc}") from exc
        if (
            not isinstance(name, str)
            or not isinstance(shape, list)
            or not all(type(d) is int and d >= DYNAMIC for d in shape)
        ):
            raise InvalidModel(
                f"malformed tensor spec {obj!r} in a model manifest: need a string name and "
                "a list of integer dims >= -1"
            )
        return cls(name, datatype, tuple(shape))


@dataclass(frozen=True)
class ModelSignature:
    """A model's inputs and outputs, in the model's declared order."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @functools.cached_property
    def batch_dynamic(self) -> bool:
        """True when every input and output has a dynamic first dimension.

        Only such models can have concurrent requests concatenated along axis 0.
        """
        return all(
            spec.shape and spec.shape[0] == DYNAMIC for spec in (*self.inputs, *self.outputs)
        )

    @functools.cached_property
    def input_map(self) -> dict[str, TensorSpec]:
        return {spec.name: spec for spec in self.inputs}

    @functools.cached_property
    def output_map(self) -> dict[str, TensorSpec]:
        return {spec.name: spec for spec in self.outputs}

    def to_json(self) -> dict[str, Any]:
        return {
            "inputs": [spec.to_json() for spec in self.inputs],
            "outputs": [spec.to_json() for spec in self.outputs],
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ModelSignature:
        try:
            inputs: Sequence[Mapping[str, Any]] = obj["inputs"]
            outputs: Sequence[Mapping[str, Any]] = obj["outputs"]
            return cls(
                tuple(TensorSpec.from_json(item) for item in inputs),
                tuple(TensorSpec.from_json(item) for item in outputs),
            )
        except (KeyError, TypeError) as exc:
            raise InvalidModel(
                f"malformed model signature in a manifest: {exc!r}; expected "
                '{"inputs": [...], "outputs": [...]}'
            ) from exc


def _spec(arg: Any, what: str) -> TensorSpec:
    datatype = from_ort(arg.type, what=f"{what} {arg.name!r}")
    raw_shape = arg.shape if isinstance(arg.shape, list) else []
    shape = tuple(d if isinstance(d, int) and d >= 0 else DYNAMIC for d in raw_shape)
    return TensorSpec(arg.name, datatype.name, shape)


def signature_of_session(session: Any) -> ModelSignature:
    """The signature of an open ``onnxruntime.InferenceSession``; InvalidModel if unservable."""
    inputs = tuple(_spec(arg, "input") for arg in session.get_inputs())
    outputs = tuple(_spec(arg, "output") for arg in session.get_outputs())
    if not inputs or not outputs:
        raise InvalidModel(
            f"the model has {len(inputs)} inputs and {len(outputs)} outputs; a served model "
            "needs at least one of each"
        )
    return ModelSignature(inputs, outputs)


def inspect_model(path: Path) -> ModelSignature:
    """Load ``path`` with a CPU onnxruntime session and return its signature.

    Raises InvalidModel, naming the file and the fix, for anything onnxruntime cannot load
    (not ONNX, truncated, empty, missing external data, unknown ops) or that we cannot
    serve (non-tensor or BF16 inputs/outputs, no inputs or outputs).
    """
    import onnxruntime as ort  # heavy import kept off the module import path

    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InvalidModel(f"{path} cannot be read: {exc.strerror}; check the path") from exc
    if size == 0:
        raise InvalidModel(f"{path} is empty, not an ONNX model; {_EXPORT_HINT}")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # Inspection only needs the graph and kernel resolution, not an optimised plan.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Exception subclasses
        reason = str(exc).split(" failed:", 1)[-1].strip() or type(exc).__name__
        raise InvalidModel(
            f"{path} is not an ONNX model onnxruntime can load: {reason}; {_EXPORT_HINT}"
        ) from exc
    try:
        return signature_of_session(session)
    except InvalidModel as exc:
        raise InvalidModel(f"{path}: {exc}") from exc
