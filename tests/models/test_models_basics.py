"""errors, names, datatypes and signatures."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from models import (
    DATATYPES,
    CodecError,
    InferenceFailed,
    InvalidConfig,
    InvalidModel,
    InvalidName,
    ModelError,
    ModelSignature,
    ModelUnavailable,
    Overloaded,
    TensorSpec,
    inspect_model,
    parse_ref,
    validate_name,
    validate_version,
)
from models.datatypes import from_numpy, from_oip, from_ort, pack_bytes, unpack_bytes

# -- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        InvalidModel("m"),
        InvalidName("n"),
        InvalidConfig("c"),
        CodecError("c"),
        ModelUnavailable("u"),
        InferenceFailed("f"),
        Overloaded("full", retry_after=2.5),
    ],
)
def test_every_error_is_a_model_error_and_pickles(exc: ModelError) -> None:
    assert isinstance(exc, ModelError)
    copy = pickle.loads(pickle.dumps(exc))
    assert type(copy) is type(exc) and str(copy) == str(exc)
    if isinstance(exc, Overloaded):
        assert isinstance(copy, Overloaded) and copy.retry_after == 2.5


def test_invalid_config_is_also_a_value_error() -> None:
    assert issubclass(InvalidConfig, ValueError)


# -- names ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["digits", "a", "A-b_c.d", "resnet50", "9lives", "x" * 128])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".hidden",
        "..",
        "a..b",
        "../etc/passwd",
        "a/b",
        "/abs",
        "a\\b",
        "..\\x",
        "a\x00b",
        "digits\n",
        "-flag",
        "_x",
        "a b",
        "a:b",
        "é",
        "x" * 129,
        None,
        7,
    ],
)
def test_invalid_names_name_the_pattern(name: object) -> None:
    with pytest.raises(InvalidName, match=r"A-Za-z0-9"):
        validate_name(name)


@pytest.mark.parametrize("version", ["1", "2024-06-01", "v1.2", "x" * 64])
def test_valid_versions(version: str) -> None:
    assert validate_version(version) == version


@pytest.mark.parametrize("version", ["", "..", "1/2", ".1", "x" * 65, "1\n", 1])
def test_invalid_versions(version: object) -> None:
    with pytest.raises(InvalidName):
        validate_version(version)


@pytest.mark.parametrize(
    ("ref", "expected"),
    [("digits", ("digits", None)), ("digits:1", ("digits", "1")), ("a.b:v2.0", ("a.b", "v2.0"))],
)
def test_parse_ref(ref: str, expected: tuple[str, str | None]) -> None:
    assert parse_ref(ref) == expected


@pytest.mark.parametrize("ref", ["", ":1", "digits:", "digits:1:2", "../x:1", "digits:../1"])
def test_parse_ref_refuses(ref: str) -> None:
    with pytest.raises(InvalidName):
        parse_ref(ref)


# -- datatypes ------------------------------------------------------------------------


def test_datatype_table_is_consistent() -> None:
    assert [d.name for d in DATATYPES] == [
        "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
        "FP16", "FP32", "FP64", "BYTES",
    ]  # fmt: skip
    for d in DATATYPES:
        assert from_oip(d.name) is d
        assert from_ort(d.ort, what="x") is d
        if d.is_bytes:
            assert d.dtype == np.dtype(object) and d.itemsize == 0
        else:
            assert d.itemsize == d.dtype.itemsize
            assert from_numpy(d.dtype) is d
            assert from_numpy(d.dtype.newbyteorder(">")) is d


def test_ort_type_strings_are_what_onnxruntime_reports(models_dir) -> None:  # type: ignore[no-untyped-def]
    for d in DATATYPES:
        session = ort.InferenceSession(
            str(models_dir.identity(d.name)), providers=["CPUExecutionProvider"]
        )
        assert session.get_inputs()[0].type == d.ort


@pytest.mark.parametrize("dtype", [np.dtype(object), np.dtype("U3"), np.dtype("S3")])
def test_text_numpy_dtypes_are_bytes(dtype: np.dtype) -> None:  # type: ignore[type-arg]
    assert from_numpy(dtype).name == "BYTES"


def test_unknown_and_bf16_datatypes_are_refused_with_the_fix() -> None:
    with pytest.raises(CodecError, match="use one of BOOL"):
        from_oip("FP8")
    with pytest.raises(CodecError, match=r"BF16 is not supported.*FP16 or FP32"):
        from_oip("BF16")
    with pytest.raises(InvalidModel, match="BF16 is not supported"):
        from_ort("tensor(bfloat16)", what="input 'x'")
    with pytest.raises(InvalidModel, match="zipmap"):
        from_ort("seq(map(int64,tensor(float)))", what="output 'p'")
    with pytest.raises(CodecError, match="complex"):
        from_numpy(np.dtype(np.complex64))


def test_bytes_pack_unpack_round_trip() -> None:
    items = np.array([b"", b"abc", b"\xff\x00", "text"], dtype=object)
    packed = pack_bytes(items)
    assert packed == (
        b"\x00\x00\x00\x00" + b"\x03\x00\x00\x00abc" + b"\x02\x00\x00\x00\xff\x00"
        + b"\x04\x00\x00\x00text"
    )  # fmt: skip
    back = unpack_bytes(memoryview(packed), 4, what="x")
    assert back.tolist() == [b"", b"abc", b"\xff\x00", b"text"]


@pytest.mark.parametrize(
    ("data", "count", "message"),
    [
        (b"\x01\x00", 1, "inside the length prefix"),
        (b"\x05\x00\x00\x00ab", 1, "claims 5 bytes but only 2 remain"),
        (b"\x01\x00\x00\x00ab", 1, "1 bytes left over"),
        (b"", 1, "inside the length prefix"),
    ],
)
def test_bytes_unpack_errors(data: bytes, count: int, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        unpack_bytes(memoryview(data), count, what="input 'x'")


# -- signatures -----------------------------------------------------------------------


def test_inspect_the_sample_model(digits_signature: ModelSignature) -> None:
    assert digits_signature == ModelSignature(
        inputs=(TensorSpec("input", "FP32", (-1, 64)),),
        outputs=(
            TensorSpec("label", "INT64", (-1,)),
            TensorSpec("probabilities", "FP32", (-1, 10)),
        ),
    )
    assert digits_signature.batch_dynamic


def test_every_datatype_and_dims_are_inspected(models_dir) -> None:  # type: ignore[no-untyped-def]
    for d in DATATYPES:
        sig = inspect_model(models_dir.identity(d.name, shape=("batch", 2, "width")))
        assert sig.inputs == (TensorSpec("x", d.name, (-1, 2, -1)),)
        assert sig.outputs == (TensorSpec("y", d.name, (-1, 2, -1)),)


def test_batch_dynamic_needs_a_dynamic_first_dim_everywhere(models_dir) -> None:  # type: ignore[no-untyped-def]
    assert not inspect_model(models_dir.identity("FP32", shape=(2, 3))).batch_dynamic
    assert not inspect_model(models_dir.identity("FP32", shape=(), name="scalar")).batch_dynamic
    assert inspect_model(models_dir.add_mul()).batch_dynamic
    mixed = ModelSignature(
        inputs=(TensorSpec("x", "FP32", (-1, 3)),), outputs=(TensorSpec("y", "FP32", (3,)),)
    )
    assert not mixed.batch_dynamic


def test_signature_json_round_trip(digits_signature: ModelSignature) -> None:
    doc = digits_signature.to_json()
    assert doc["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert ModelSignature.from_json(doc) == digits_signature


@pytest.mark.parametrize(
    "doc",
    [
        {},
        {"inputs": []},
        {"inputs": [{"name": "x"}], "outputs": []},
        {"inputs": [{"name": "x", "datatype": "FP99", "shape": [1]}], "outputs": []},
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-2]}], "outputs": []},
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": "1"}], "outputs": []},
        {"inputs": [{"name": 1, "datatype": "FP32", "shape": [1]}], "outputs": []},
    ],
)
def test_signature_from_json_refuses_malformed(doc: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(InvalidModel, match="malformed"):
        ModelSignature.from_json(doc)


def _truncated(digits_path: Path, tmp_path: Path) -> Path:
    data = digits_path.read_bytes()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("kind", ["empty", "text", "truncated", "missing", "directory"])
def test_inspect_refuses_files_that_are_not_models(
    kind: str, tmp_path: Path, digits_path: Path
) -> None:
    path = tmp_path / f"{kind}.onnx"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not a model\n" * 10)
    elif kind == "truncated":
        path = _truncated(digits_path, tmp_path)
    elif kind == "directory":
        path.mkdir()
    with pytest.raises(InvalidModel) as info:
        inspect_model(path)
    message = str(info.value)
    assert str(path) in message
    if kind == "empty":
        assert "is empty" in message
    if kind in ("text", "truncated", "directory"):
        assert "is not an ONNX model onnxruntime can load" in message
        assert "export it with" in message


def test_inspect_refuses_types_we_cannot_serve(models_dir) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidModel, match="BF16"):
        inspect_model(models_dir.bf16())
    with pytest.raises(InvalidModel, match=r"seq\(tensor\(float\)\).*zipmap"):
        inspect_model(models_dir.sequence_output())


def test_inspect_refuses_models_without_inputs(models_dir) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidModel, match="0 inputs and 1 outputs; a served model needs"):
        inspect_model(models_dir.constant())
