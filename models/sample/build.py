"""Build the bundled sample model ``digits`` (version ``1``): ``digits.onnx`` + ``digits.json``.

A scikit-learn pipeline (StandardScaler, then LogisticRegression) trained on the digits
dataset that ships inside scikit-learn (8x8 grey-level images, values 0..16, 10 classes),
converted with skl2onnx. The ONNX contract, kept stable because docs and tests use it:

- input  ``input``          FP32  [-1, 64]   the 8x8 image, row-major, values 0..16
- output ``label``          INT64 [-1]       the predicted digit
- output ``probabilities``  FP32  [-1, 10]   class probabilities, columns = digits 0..9

Deterministic (fixed split and solver, no randomness in training), so rebuilding with the
same library versions gives the same bytes. Dev-only: needs scikit-learn and skl2onnx,
which the daemon never imports. Run from the repository root::

    .venv/bin/python models/sample/build.py
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

HERE = Path(__file__).resolve().parent
NAME, VERSION = "digits", "1"
INPUT, LABEL, PROBABILITIES = "input", "label", "probabilities"
OPSET = 17
SEED = 0
EXAMPLES = 4


def build(out_dir: Path = HERE) -> dict[str, Any]:
    """Train, convert, check with onnxruntime, write both files; returns the sidecar."""
    import onnxruntime as ort

    digits = load_digits()
    x = digits.data.astype(np.float32)
    y = digits.target
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=SEED, stratify=y
    )
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    model.fit(x_train, y_train)

    onx = to_onnx(
        model,
        initial_types=[(INPUT, FloatTensorType([None, 64]))],
        target_opset={"": OPSET, "ai.onnx.ml": 3},
        options={id(model): {"zipmap": False}},
    )
    names = [o.name for o in onx.graph.output]
    if names != [LABEL, PROBABILITIES]:  # skl2onnx's names for a classifier, pinned here
        raise SystemExit(f"skl2onnx produced outputs {names}; update the renaming in build.py")
    onx.doc_string = (
        "Outpost sample: scikit-learn digits classifier (see models/sample/digits.json)"
    )
    blob = onx.SerializeToString()
    onnx_path = out_dir / f"{NAME}.onnx"
    onnx_path.write_bytes(blob)

    session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    labels, _ = session.run(None, {INPUT: x_test})
    accuracy = float(np.mean(labels == y_test))
    sklearn_accuracy = float(model.score(x_test, y_test))
    if abs(accuracy - sklearn_accuracy) > 1e-9:
        raise SystemExit(f"ONNX accuracy {accuracy} != scikit-learn accuracy {sklearn_accuracy}")

    sidecar: dict[str, Any] = {
        "name": NAME,
        "version": VERSION,
        "description": "Handwritten digit classifier: 8x8 grey-level image (values 0..16, "
        "row-major) -> digit 0..9. StandardScaler + LogisticRegression on scikit-learn's "
        "bundled digits dataset.",
        "file": onnx_path.name,
        "sha256": hashlib.sha256(blob).hexdigest(),
        "inputs": [{"name": INPUT, "datatype": "FP32", "shape": [-1, 64]}],
        "outputs": [
            {"name": LABEL, "datatype": "INT64", "shape": [-1]},
            {"name": PROBABILITIES, "datatype": "FP32", "shape": [-1, 10]},
        ],
        "accuracy": round(accuracy, 4),
        "evaluation": f"held-out 25% stratified split (random_state={SEED}), {len(y_test)} images",
        "opset": OPSET,
        "examples": [
            {"input": x_test[i].astype(int).tolist(), "label": int(y_test[i])}
            for i in range(EXAMPLES)
        ],
    }
    (out_dir / f"{NAME}.json").write_text(_readable_json(sidecar))
    return sidecar


def _readable_json(doc: dict[str, Any]) -> str:
    """One key per line and one list item per line, each value compact (diff-friendly)."""

    def value(v: Any) -> str:
        if isinstance(v, list) and v and isinstance(v[0], dict):
            return "[\n" + ",\n".join(f"    {json.dumps(item)}" for item in v) + "\n  ]"
        return json.dumps(v)

    body = ",\n".join(f"  {json.dumps(k)}: {value(v)}" for k, v in doc.items())
    return "{\n" + body + "\n}\n"


if __name__ == "__main__":
    info = build()
    print(f"wrote {info['file']} ({info['sha256'][:12]}...), accuracy {info['accuracy']:.4f}")
