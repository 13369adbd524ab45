"""Fixtures for the models tests: real ONNX files built with onnx.helper, real sessions."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from models import SAMPLE_MANIFEST, SAMPLE_MODEL, ModelSignature, inspect_model
from models.batcher import Batcher

# OIP datatype -> ONNX element type, for every datatype we serve.
ONNX_TYPES = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}

Dims = Sequence[int | str]


def write_model(
    path: Path,
    nodes: list[onnx.NodeProto],
    inputs: list[tuple[str, int, Dims]],
    outputs: list[tuple[str, int, Dims]],
    initializers: Sequence[onnx.TensorProto] = (),
    opset: int = 17,
) -> Path:
    graph = helper.make_graph(
        nodes,
        "test",
        [helper.make_tensor_value_info(n, t, list(s)) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, list(s)) for n, t, s in outputs],
        initializer=list(initializers),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


class ModelFactory:
    """Builds small ONNX models in a temp directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def identity(self, datatype: str = "FP32", shape: Dims = ("N", 3), name: str = "") -> Path:
        """``x`` -> Identity -> ``y`` of one datatype."""
        t = ONNX_TYPES[datatype]
        path = self.root / f"identity_{name or datatype}_{len(shape)}.onnx"
        return write_model(
            path, [helper.make_node("Identity", ["x"], ["y"])], [("x", t, shape)], [("y", t, shape)]
        )

    def add_mul(self) -> Path:
        """Two inputs ``a``, ``b`` FP32 [N, 4] -> ``sum`` = a + b, ``product`` = a * b."""
        t = TensorProto.FLOAT
        return write_model(
            self.root / "add_mul.onnx",
            [
                helper.make_node("Add", ["a", "b"], ["sum"]),
                helper.make_node("Mul", ["a", "b"], ["product"]),
            ],
            [("a", t, ["N", 4]), ("b", t, ["N", 4])],
            [("sum", t, ["N", 4]), ("product", t, ["N", 4])],
        )

    def gather(self) -> Path:
        """``index`` INT64 [N] -> ``value`` FP32 [N] looked up in a 10-entry table.

        An index outside 0..9 makes onnxruntime raise at run time.
        """
        table = helper.make_tensor(
            "table", TensorProto.FLOAT, [10], [float(i) * 10 for i in range(10)]
        )
        return write_model(
            self.root / "gather.onnx",
            [helper.make_node("Gather", ["table", "index"], ["value"], axis=0)],
            [("index", TensorProto.INT64, ["N"])],
            [("value", TensorProto.FLOAT, ["N"])],
            initializers=[table],
        )

    def column_sum(self) -> Path:
        """``x`` FP32 [N, 3] -> ``total`` [K, 3] = sum over rows (K is always 1).

        Dynamic first dims everywhere, yet the output does not follow the batch: batching
        must not split it across requests.
        """
        # ``axes`` is also a graph input (an overridable initializer), so onnxruntime cannot
        # infer that the output's first dim is 1 and reports it as dynamic.
        axes = helper.make_tensor("axes", TensorProto.INT64, [1], [0])
        return write_model(
            self.root / "column_sum.onnx",
            [helper.make_node("ReduceSum", ["x", "axes"], ["total"], keepdims=1)],
            [("x", TensorProto.FLOAT, ["N", 3]), ("axes", TensorProto.INT64, [1])],
            [("total", TensorProto.FLOAT, ["K", 3])],
            initializers=[axes],
            opset=17,
        )

    def constant(self) -> Path:
        """No inputs at all: one constant output."""
        value = helper.make_tensor("value", TensorProto.FLOAT, [1], [1.0])
        return write_model(
            self.root / "constant.onnx",
            [helper.make_node("Constant", [], ["c"], value=value)],
            [],
            [("c", TensorProto.FLOAT, [1])],
        )

    def bf16(self) -> Path:
        t = TensorProto.BFLOAT16
        return write_model(
            self.root / "bf16.onnx",
            [helper.make_node("Identity", ["x"], ["y"])],
            [("x", t, ["N"])],
            [("y", t, ["N"])],
        )

    def sequence_output(self) -> Path:
        """An output of type seq(tensor(float)), like skl2onnx's default zipmap output."""
        t = TensorProto.FLOAT
        graph = helper.make_graph(
            [helper.make_node("SequenceConstruct", ["x"], ["seq"])],
            "seq",
            [helper.make_tensor_value_info("x", t, ["N"])],
            [helper.make_tensor_sequence_value_info("seq", t, ["N"])],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        path = self.root / "seq.onnx"
        path.write_bytes(model.SerializeToString())
        return path


@pytest.fixture
def models_dir(tmp_path: Path) -> ModelFactory:
    return ModelFactory(tmp_path)


@pytest.fixture(scope="session")
def digits_path() -> Path:
    return SAMPLE_MODEL


@pytest.fixture(scope="session")
def digits_signature(digits_path: Path) -> ModelSignature:
    return inspect_model(digits_path)


@pytest.fixture(scope="session")
def digits_examples() -> np.ndarray[Any, Any]:
    """40 images: the sidecar's labelled examples, then random grey levels 0..16.

    (scikit-learn is a dev dependency only, so the dataset itself is not used here.)"""
    sidecar = json.loads(SAMPLE_MANIFEST.read_text())
    known = np.asarray([e["input"] for e in sidecar["examples"]], dtype=np.float32)
    noise = np.random.default_rng(7).integers(0, 17, (40 - len(known), 64)).astype(np.float32)
    return np.concatenate([known, noise])


class Gate:
    """Holds a batcher's worker inside its next run until released: makes queueing and
    batching deterministic without timing."""

    def __init__(self, batcher: Batcher) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self._real: Callable[..., Any] = batcher._run
        self._armed = True
        batcher._run = self._run  # type: ignore[method-assign]

    def _run(self, feed: Any) -> Any:
        if self._armed:
            self._armed = False
            self.entered.set()
            self.release.wait(timeout=30)
        return self._real(feed)

    async def wait_entered(self) -> None:
        await asyncio.to_thread(self.entered.wait, 30)

    def open(self) -> None:
        self.release.set()


@pytest.fixture
def gate() -> type[Gate]:
    return Gate
