"""Build a larger float32 MLP as ONNX, for benchmarks and tests that need real compute.

``build_dense(path, width=1024, layers=4)`` writes a model with input ``input`` FP32
[-1, width] and output ``output`` FP32 [-1, width]: ``layers`` x (MatMul + Add + Relu),
weights from a fixed seed (same arguments, same bytes). ``width * width * layers * 4``
bytes of weights: 16 MiB at the defaults.

Dev-only: uses the ``onnx`` package (a test/dev dependency); the daemon never imports it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["build_dense"]

OPSET = 17


def build_dense(path: Path, width: int = 1024, layers: int = 4, *, seed: int = 0) -> Path:
    """Write the MLP to ``path`` and return it."""
    if width < 1 or layers < 1:
        raise ValueError(f"width and layers must be >= 1, got {width} and {layers}")
    rng = np.random.default_rng(seed)
    scale = np.float32(1.0 / np.sqrt(width))  # keeps activations O(1) through the layers
    nodes, initializers = [], []
    current = "input"
    for i in range(layers):
        weight = (rng.standard_normal((width, width), dtype=np.float32) * scale).astype(np.float32)
        bias = np.zeros(width, dtype=np.float32)
        initializers += [
            numpy_helper.from_array(weight, f"w{i}"),
            numpy_helper.from_array(bias, f"b{i}"),
        ]
        last = i == layers - 1
        out = "output" if last else f"h{i}"
        nodes += [
            helper.make_node("MatMul", [current, f"w{i}"], [f"mm{i}"]),
            helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"pre{i}"]),
            helper.make_node("Relu", [f"pre{i}"], [out]),
        ]
        current = out
    graph = helper.make_graph(
        nodes,
        f"dense_{width}x{layers}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", width])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # readable by onnxruntime >= 1.10
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path
