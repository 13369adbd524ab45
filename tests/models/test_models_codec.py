"""Open Inference Protocol codec.

Invariants: (1) whatever a client encodes — our own client side or tritonclient —
decodes to the same arrays (values, dtype, shape), JSON or binary, for every datatype;
(2) every request that breaks the protocol or the model's signature is refused with a
CodecError that says which tensor and what was expected, never with another exception.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from hypothesis import given, settings
from hypothesis import strategies as st

from models import (
    DATATYPES,
    CodecError,
    InferRequest,
    ModelSignature,
    RequestedOutput,
    TensorSpec,
    decode_infer_request,
    decode_infer_response,
    encode_infer_request,
    encode_infer_response,
)
from models.datatypes import from_oip

Array = np.ndarray[Any, Any]
NAMES = [d.name for d in DATATYPES]


def sig(
    datatype: str = "FP32", shape: tuple[int, ...] = (-1, 2), inputs: tuple[str, ...] = ("x",)
) -> ModelSignature:
    return ModelSignature(
        inputs=tuple(TensorSpec(n, datatype, shape) for n in inputs),
        outputs=(TensorSpec("y", datatype, shape), TensorSpec("z", "INT64", (-1,))),
    )


def sample(datatype: str, shape: tuple[int, ...], seed: int = 0, text: bool = False) -> Array:
    rng = np.random.default_rng(seed)
    dt = from_oip(datatype)
    if datatype == "BYTES":
        flat = [
            (f"é{i}" * (i % 3)).encode()
            if text
            else bytes(rng.integers(0, 256, i % 5, dtype=np.uint8))
            for i in range(int(np.prod(shape)))
        ]
        out = np.empty(len(flat), dtype=object)
        out[:] = flat
        return out.reshape(shape)
    if datatype == "BOOL":
        return rng.integers(0, 2, shape).astype(bool)
    if dt.dtype.kind in "iu":
        info = np.iinfo(dt.dtype)
        return rng.integers(info.min, info.max, shape, dtype=dt.dtype, endpoint=True)
    return (rng.standard_normal(shape) * 100).astype(dt.dtype)


def assert_same(got: Array, want: Array) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    if want.dtype == object:
        assert got.tolist() == want.tolist()
    else:
        np.testing.assert_array_equal(got, want)


def body_of(doc: object, binary: bytes = b"") -> tuple[bytes, int | None]:
    header = json.dumps(doc).encode()
    return header + binary, (len(header) if binary else None)


# -- round trips ----------------------------------------------------------------------


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("datatype", NAMES)
def test_request_round_trip_every_datatype(datatype: str, binary: bool) -> None:
    array = sample(datatype, (3, 2), text=not binary)
    body, header_length = encode_infer_request(
        {"x": array},
        binary_inputs=binary,
        request_id="r1",
        parameters={"outpost.data_class": "public"},
    )
    assert (header_length is not None) == binary
    request = decode_infer_request(body, header_length, sig(datatype))
    assert_same(request.inputs["x"], array)
    assert request.id == "r1"
    assert request.parameters == {"outpost.data_class": "public", "binary_data_output": True}
    assert request.binary_data_output is True and request.outputs is None


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("datatype", NAMES)
def test_response_round_trip_every_datatype(datatype: str, binary: bool) -> None:
    y = sample(datatype, (2, 2), seed=1, text=not binary)
    z = np.array([7, -7], dtype=np.int64)
    request = InferRequest(
        id="abc", inputs={}, outputs=None, binary_data_output=binary, parameters={}
    )
    body, header_length = encode_infer_response(
        model_name="m",
        model_version="1",
        request=request,
        outputs={"y": y, "z": z},
        parameters={"outpost.route": "local"},
    )
    assert (header_length is not None) == binary
    outputs, header = decode_infer_response(body, header_length)
    assert_same(outputs["y"], y)
    assert_same(outputs["z"], z)
    assert list(outputs) == ["y", "z"]
    assert header["model_name"] == "m" and header["model_version"] == "1" and header["id"] == "abc"
    assert header["parameters"] == {"outpost.route": "local"}


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("datatype", NAMES)
def test_tritonclient_bodies_decode_and_our_responses_parse(datatype: str, binary: bool) -> None:
    array = sample(datatype, (2, 2), seed=2, text=True)
    tensor = triton.InferInput("x", list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    wanted = [
        triton.InferRequestedOutput("y", binary_data=binary),
        triton.InferRequestedOutput("z"),
    ]
    body, header_length = triton.InferenceServerClient.generate_request_body(
        [tensor], outputs=wanted, request_id="t1", parameters={"outpost.data_class": "public"}
    )
    request = decode_infer_request(bytes(body), header_length, sig(datatype))
    assert_same(request.inputs["x"], array)
    assert request.outputs == (RequestedOutput("y", binary), RequestedOutput("z", True))
    assert request.parameters["outpost.data_class"] == "public"

    z = np.array([1, 2], dtype=np.int64)
    out_body, out_length = encode_infer_response(
        model_name="m",
        model_version="1",
        request=request,
        outputs={"y": request.inputs["x"], "z": z},
        parameters={},
    )
    result = triton.InferResult.from_response_body(out_body, header_length=out_length)
    got = result.as_numpy("y")
    if datatype == "BYTES" and not binary:  # tritonclient keeps JSON strings as str
        assert got.tolist() == [[b.decode() for b in row] for row in array.tolist()]
    else:
        assert_same(got, array)
    np.testing.assert_array_equal(result.as_numpy("z"), z)
    assert result.get_response()["id"] == "t1"


def test_nested_and_flat_json_data_decode_alike() -> None:
    flat = {
        "inputs": [{"name": "x", "datatype": "INT32", "shape": [2, 3], "data": [1, 2, 3, 4, 5, 6]}]
    }
    nested = {
        "inputs": [
            {"name": "x", "datatype": "INT32", "shape": [2, 3], "data": [[1, 2, 3], [4, 5, 6]]}
        ]
    }
    a = decode_infer_request(*body_of(flat), sig("INT32", (-1, 3))).inputs["x"]
    b = decode_infer_request(*body_of(nested), sig("INT32", (-1, 3))).inputs["x"]
    assert_same(a, np.arange(1, 7, dtype=np.int32).reshape(2, 3))
    assert_same(b, a)


def test_json_data_accepts_integers_for_floats_and_special_values() -> None:
    doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2.5]}]}
    assert_same(
        decode_infer_request(*body_of(doc), sig()).inputs["x"], np.array([[1, 2.5]], np.float32)
    )
    doc["inputs"][0]["data"] = [float("nan"), float("inf")]
    got = decode_infer_request(*body_of(doc), sig()).inputs["x"]
    assert np.isnan(got[0, 0]) and np.isinf(got[0, 1])


def test_empty_tensors() -> None:
    doc: dict[str, Any] = {
        "inputs": [{"name": "x", "datatype": "INT8", "shape": [0, 2], "data": []}]
    }
    assert_same(
        decode_infer_request(*body_of(doc), sig("INT8")).inputs["x"], np.empty((0, 2), np.int8)
    )
    doc = {
        "inputs": [
            {
                "name": "x",
                "datatype": "INT8",
                "shape": [0, 2],
                "parameters": {"binary_data_size": 0},
            }
        ]
    }
    header = json.dumps(doc).encode()
    assert decode_infer_request(header, len(header), sig("INT8")).inputs["x"].shape == (0, 2)


def test_binary_inputs_at_unaligned_offsets_and_in_order() -> None:
    a = np.arange(4, dtype=np.float64).reshape(2, 2)
    b = -a
    doc = {
        "id": "x" * 3,  # makes the header length odd
        "inputs": [
            {
                "name": "b",
                "datatype": "FP64",
                "shape": [2, 2],
                "parameters": {"binary_data_size": 32},
            },
            {
                "name": "a",
                "datatype": "FP64",
                "shape": [2, 2],
                "parameters": {"binary_data_size": 32},
            },
        ],
    }
    header = json.dumps(doc).encode()
    assert len(header) % 8
    request = decode_infer_request(
        header + b.tobytes() + a.tobytes(), len(header), sig("FP64", inputs=("a", "b"))
    )
    assert list(request.inputs) == ["a", "b"]  # signature order, whatever the body's order
    assert_same(request.inputs["a"], a)
    assert_same(request.inputs["b"], b)
    assert all(x.flags.aligned for x in request.inputs.values())


def test_outputs_filter_order_and_per_output_binary_flags() -> None:
    doc = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}],
        "outputs": [{"name": "z", "parameters": {"binary_data": True}}, {"name": "y"}],
        "parameters": {"binary_data_output": False},
    }
    request = decode_infer_request(*body_of(doc), sig())
    assert request.outputs == (RequestedOutput("z", True), RequestedOutput("y", None))
    y, z = np.array([[1, 2]], np.float32), np.array([5], np.int64)
    body, header_length = encode_infer_response(
        model_name="m", model_version="1", request=request, outputs={"y": y, "z": z}, parameters={}
    )
    assert header_length is not None
    header = json.loads(body[:header_length])
    assert [o["name"] for o in header["outputs"]] == ["z", "y"]
    assert (
        header["outputs"][0]["parameters"] == {"binary_data_size": 8}
        and "data" not in header["outputs"][0]
    )
    assert header["outputs"][1]["data"] == [1.0, 2.0]
    assert body[header_length:] == z.tobytes()
    outputs, _ = decode_infer_response(body, header_length)
    assert_same(outputs["z"], z)
    assert_same(outputs["y"], y)

    only_y = dict(doc, outputs=[{"name": "y"}])
    request = decode_infer_request(*body_of(only_y), sig())
    body, header_length = encode_infer_response(
        model_name="m", model_version="1", request=request, outputs={"y": y, "z": z}, parameters={}
    )
    assert header_length is None  # all JSON: no header length, the body is JSON
    assert [o["name"] for o in json.loads(body)["outputs"]] == ["y"]


def test_request_level_binary_output_and_output_without_flag_follow_it() -> None:
    doc = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}],
        "outputs": [{"name": "y"}, {"name": "z", "parameters": {"binary_data": False}}],
        "parameters": {"binary_data_output": True},
    }
    request = decode_infer_request(*body_of(doc), sig())
    body, header_length = encode_infer_response(
        model_name="m",
        model_version="1",
        request=request,
        outputs={"y": np.zeros((1, 2), np.float32), "z": np.zeros(1, np.int64)},
        parameters={},
    )
    assert header_length is not None
    y_entry, z_entry = json.loads(body[:header_length])["outputs"]
    assert "binary_data_size" in y_entry["parameters"] and z_entry["data"] == [0]


def test_empty_outputs_list_means_all_outputs() -> None:
    doc = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}],
        "outputs": [],
    }
    assert decode_infer_request(*body_of(doc), sig()).outputs is None


def test_bytes_outputs_in_json_are_text_and_survive_non_utf8() -> None:
    values = np.array([b"plain", "caf\u00e9".encode(), b"\xff\xfe raw"], dtype=object)
    request = InferRequest(
        id=None, inputs={}, outputs=None, binary_data_output=False, parameters={}
    )
    body, header_length = encode_infer_response(
        model_name="m", model_version="1", request=request, outputs={"s": values}, parameters={}
    )
    assert header_length is None
    entry = json.loads(body)["outputs"][0]
    assert entry["datatype"] == "BYTES" and entry["data"][:2] == ["plain", "caf\u00e9"]
    assert entry["data"][2] == "\udcff\udcfe raw"  # surrogateescape: documented, lossless
    assert "id" not in json.loads(body)
    outputs, _ = decode_infer_response(body, None)
    assert outputs["s"].tolist() == values.tolist()


def test_bytes_binary_output_is_length_prefixed_and_str_outputs_are_utf8() -> None:
    values = np.array(["ab", "é"], dtype=object)  # onnxruntime hands back str
    request = InferRequest(id=None, inputs={}, outputs=None, binary_data_output=True, parameters={})
    body, header_length = encode_infer_response(
        model_name="m", model_version="1", request=request, outputs={"s": values}, parameters={}
    )
    assert header_length is not None
    assert body[header_length:] == b"\x02\x00\x00\x00ab\x02\x00\x00\x00\xc3\xa9"


# -- request errors -------------------------------------------------------------------


def _x(**entry: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3, 4]}
    base.update(entry)
    return {"inputs": [{k: v for k, v in base.items() if v is not ...}]}


def _bin(size: object = 16, **entry: Any) -> dict[str, Any]:
    return _x(data=..., parameters={"binary_data_size": size}, **entry)


F32x4 = np.arange(4, dtype=np.float32).tobytes()

# (id, signature, doc, binary part, header length override, expected message fragment)
ERROR_CASES: list[tuple[str, ModelSignature, Any, bytes, Any, str]] = [
    ("not-json", sig(), b"{nope", b"", None, "request JSON is not valid"),
    ("bad-utf8", sig(), b'{"inputs": "\xff"}', b"", None, "request JSON is not valid"),
    ("json-list", sig(), [1], b"", None, "must be an object, not list"),
    ("no-inputs", sig(), {}, b"", None, 'no "inputs" list'),
    ("inputs-object", sig(), {"inputs": {}}, b"", None, 'no "inputs" list'),
    ("entry-not-object", sig(), {"inputs": [1]}, b"", None, 'object with a string "name"'),
    ("entry-no-name", sig(), _x(name=...), b"", None, 'object with a string "name"'),
    ("header-too-long", sig(), _x(), b"", "+1", "Inference-Header-Content-Length is"),
    ("header-zero", sig(), _x(), b"", 0, "Inference-Header-Content-Length is 0"),
    ("header-negative", sig(), _x(), b"", -5, "Inference-Header-Content-Length is -5"),
    ("header-cuts-json", sig(), _x(), b"", "-1", "request JSON is not valid"),
    (
        "unknown-input",
        sig(),
        _x(name="q"),
        b"",
        None,
        "unknown input 'q'; the model's inputs are ['x']",
    ),
    ("missing-input", sig(inputs=("x", "w")), _x(), b"", None, "missing inputs ['w']"),
    (
        "duplicate-input",
        sig(),
        {"inputs": _x()["inputs"] * 2},
        b"",
        None,
        "input 'x' is given twice",
    ),
    (
        "datatype-mismatch",
        sig(),
        _x(datatype="FP64"),
        b"",
        None,
        "input 'x': datatype 'FP64' does not match the model's FP32",
    ),
    (
        "datatype-missing",
        sig(),
        _x(datatype=...),
        b"",
        None,
        "datatype None does not match the model's FP32",
    ),
    (
        "rank-mismatch",
        sig(),
        _x(shape=[4]),
        b"",
        None,
        "shape [4] does not fit the model's [-1, 2]",
    ),
    (
        "static-dim-mismatch",
        sig(),
        _x(shape=[1, 4]),
        b"",
        None,
        "shape [1, 4] does not fit the model's [-1, 2]",
    ),
    (
        "shape-not-ints",
        sig(),
        _x(shape=[2, "2"]),
        b"",
        None,
        "shape must be a list of non-negative integers",
    ),
    (
        "shape-negative",
        sig(),
        _x(shape=[-1, 2]),
        b"",
        None,
        "shape must be a list of non-negative integers",
    ),
    (
        "shape-bool",
        sig(),
        _x(shape=[True, 2]),
        b"",
        None,
        "shape must be a list of non-negative integers",
    ),
    ("shape-missing", sig(), _x(shape=...), b"", None, "shape must be a list"),
    ("data-not-list", sig(), _x(data=5), b"", None, '"data" must be a JSON array'),
    (
        "flat-count",
        sig(),
        _x(data=[1, 2, 3]),
        b"",
        None,
        "data has 3 elements but shape [2, 2] needs 4",
    ),
    (
        "nested-count",
        sig(),
        _x(data=[[1, 2], [3, 4], [5, 6]]),
        b"",
        None,
        "data has 6 elements but shape [2, 2] needs 4",
    ),
    ("ragged", sig(), _x(data=[[1, 2], [3]]), b"", None, "data is ragged"),
    (
        "strings-for-floats",
        sig(),
        _x(data=["1", "2", "3", "4"]),
        b"",
        None,
        "FP32 data must be JSON numbers, got strings",
    ),
    (
        "bools-for-floats",
        sig(),
        _x(data=[True, False, True, False]),
        b"",
        None,
        "FP32 data must be JSON numbers, got true/false",
    ),
    ("null-in-data", sig(), _x(data=[None, 1, 2, 3]), b"", None, "got mixed or non-numeric values"),
    (
        "floats-for-ints",
        sig("INT32"),
        _x(datatype="INT32", data=[1.5, 2, 3, 4]),
        b"",
        None,
        "INT32 data must be JSON integers, got non-integer numbers",
    ),
    (
        "uint8-overflow",
        sig("UINT8"),
        _x(datatype="UINT8", data=[300, 0, 0, 0]),
        b"",
        None,
        "values from 0 to 300 do not fit UINT8 (0..255)",
    ),
    (
        "uint32-negative",
        sig("UINT32"),
        _x(datatype="UINT32", data=[-1, 0, 0, 0]),
        b"",
        None,
        "do not fit UINT32",
    ),
    (
        "int64-overflow",
        sig("INT64"),
        _x(datatype="INT64", data=[2**64, 0, 0, 0]),
        b"",
        None,
        "values do not fit INT64",
    ),
    (
        "ints-for-bool",
        sig("BOOL"),
        _x(datatype="BOOL", data=[1, 0, 1, 0]),
        b"",
        None,
        "BOOL data must be JSON true/false",
    ),
    (
        "bytes-json-number",
        sig("BYTES"),
        _x(datatype="BYTES", data=[1, "a", "b", "c"]),
        b"",
        None,
        "BYTES data must be JSON strings",
    ),
    (
        "bytes-json-count",
        sig("BYTES"),
        _x(datatype="BYTES", data=["a", "b", "c"]),
        b"",
        None,
        "data has 3 elements but shape [2, 2] needs 4",
    ),
    (
        "bytes-json-lone-surrogate",
        sig("BYTES"),
        _x(datatype="BYTES", data=["\ud800", "a", "b", "c"]),
        b"",
        None,
        "BYTES data must be JSON strings",
    ),
    (
        "no-data",
        sig(),
        _x(data=...),
        b"",
        None,
        'has neither "data" nor parameters.binary_data_size',
    ),
    (
        "data-and-binary",
        sig(),
        _x(parameters={"binary_data_size": 16}),
        F32x4,
        None,
        'has both "data" and parameters.binary_data_size',
    ),
    (
        "input-params-not-object",
        sig(),
        _x(parameters=[1]),
        b"",
        None,
        "input 'x': \"parameters\" must be a JSON object",
    ),
    (
        "binary-size-negative",
        sig(),
        _bin(-1),
        F32x4,
        None,
        "binary_data_size must be a non-negative integer, got -1",
    ),
    (
        "binary-size-string",
        sig(),
        _bin("16"),
        F32x4,
        None,
        "binary_data_size must be a non-negative integer, got '16'",
    ),  # type: ignore[arg-type]
    (
        "binary-size-wrong",
        sig(),
        _bin(8),
        F32x4[:8],
        None,
        "binary_data_size is 8 bytes but shape [2, 2] of FP32 needs 4 x 4 = 16",
    ),
    (
        "binary-short",
        sig(),
        _bin(16),
        F32x4[:12],
        None,
        "binary_data_size is 16 but only 12 binary bytes remain",
    ),
    ("binary-without-header-length", sig(), _bin(16), b"", None, "only 0 binary bytes remain"),
    (
        "binary-trailing",
        sig(),
        _bin(16),
        F32x4 + b"xyz",
        None,
        "3 bytes follow the last binary tensor",
    ),
    (
        "trailing-after-json-inputs",
        sig(),
        _x(),
        b"\0\0",
        None,
        "2 bytes follow the last binary tensor",
    ),
    (
        "bool-binary-not-0-1",
        sig("BOOL"),
        _bin(4, datatype="BOOL"),
        b"\x00\x01\x02\x00",
        None,
        "BOOL binary elements must be bytes 0 or 1",
    ),
    (
        "bytes-binary-overrun",
        sig("BYTES", (-1,)),
        _bin(6, datatype="BYTES", shape=[1]),
        b"\x09\x00\x00\x00ab",
        None,
        "claims 9 bytes but only 2 remain",
    ),
    (
        "bytes-binary-leftover",
        sig("BYTES", (-1,)),
        _bin(7, datatype="BYTES", shape=[1]),
        b"\x02\x00\x00\x00abc",
        None,
        "1 bytes left over after 1 BYTES elements",
    ),
    (
        "outputs-not-list",
        sig(),
        {**_x(), "outputs": {"name": "y"}},
        b"",
        None,
        'request "outputs" must be a list',
    ),
    (
        "output-not-object",
        sig(),
        {**_x(), "outputs": ["y"]},
        b"",
        None,
        'every output must be a JSON object with a string "name"',
    ),
    (
        "unknown-output",
        sig(),
        {**_x(), "outputs": [{"name": "q"}]},
        b"",
        None,
        "unknown output 'q'; the model's outputs are ['y', 'z']",
    ),
    (
        "duplicate-output",
        sig(),
        {**_x(), "outputs": [{"name": "y"}, {"name": "y"}]},
        b"",
        None,
        "output 'y' is requested twice",
    ),
    (
        "classification",
        sig(),
        {**_x(), "outputs": [{"name": "y", "parameters": {"classification": 3}}]},
        b"",
        None,
        "classification extension is not supported",
    ),
    (
        "binary-data-not-bool",
        sig(),
        {**_x(), "outputs": [{"name": "y", "parameters": {"binary_data": 1}}]},
        b"",
        None,
        "output 'y': parameter \"binary_data\" must be true or false",
    ),
    (
        "output-params-not-object",
        sig(),
        {**_x(), "outputs": [{"name": "y", "parameters": 1}]},
        b"",
        None,
        "output 'y': \"parameters\" must be a JSON object",
    ),
    (
        "params-not-object",
        sig(),
        {**_x(), "parameters": [1]},
        b"",
        None,
        'request "parameters" must be a JSON object',
    ),
    (
        "binary-output-not-bool",
        sig(),
        {**_x(), "parameters": {"binary_data_output": "yes"}},
        b"",
        None,
        '"binary_data_output" must be true or false',
    ),
    ("id-not-string", sig(), {**_x(), "id": 5}, b"", None, 'request "id" must be a string'),
]


@pytest.mark.parametrize(
    ("signature", "doc", "binary", "header_length", "message"),
    [case[1:] for case in ERROR_CASES],
    ids=[case[0] for case in ERROR_CASES],
)
def test_request_errors(
    signature: ModelSignature, doc: Any, binary: bytes, header_length: Any, message: str
) -> None:
    header = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    if header_length is None:
        header_length = len(header) if binary else None
    elif isinstance(header_length, str):
        header_length = len(header) + int(header_length)
    with pytest.raises(CodecError) as info:
        decode_infer_request(header + binary, header_length, signature)
    assert message in str(info.value)


def test_deeply_nested_json_is_a_codec_error() -> None:
    deep = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(CodecError, match="not valid"):
        decode_infer_request(deep, None, sig())


# -- response errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "binary", "message"),
    [
        ({"error": "model not found"}, b"", "the server answered an error: model not found"),
        ({"model_name": "m"}, b"", 'response has no "outputs" list'),
        (
            {
                "outputs": [
                    {
                        "name": "y",
                        "datatype": "BF16",
                        "shape": [1],
                        "parameters": {"binary_data_size": 2},
                    }
                ]
            },
            b"\0\0",
            "BF16 is not supported",
        ),
        (
            {
                "outputs": [
                    {
                        "name": "y",
                        "datatype": "FP32",
                        "shape": [1],
                        "parameters": {"binary_data_size": 4},
                    }
                ]
            },
            b"\0\0\0\0\0",
            "1 bytes follow the last binary tensor",
        ),
        (
            {"outputs": [{"name": "y", "datatype": "FP32", "shape": [2], "data": [1]}]},
            b"",
            "output 'y': data has 1 elements but shape [2] needs 2",
        ),
    ],
)
def test_response_errors(doc: Any, binary: bytes, message: str) -> None:
    with pytest.raises(CodecError, match=message.replace("[", r"\[").replace("]", r"\]")):
        decode_infer_response(*body_of(doc, binary))


# -- property ---------------------------------------------------------------------------

shapes = st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple)


@settings(max_examples=150, deadline=None)
@given(
    datatype=st.sampled_from(NAMES), shape=shapes, binary=st.booleans(), seed=st.integers(0, 2**16)
)
def test_any_tensor_round_trips_through_request_and_response(
    datatype: str, shape: tuple[int, ...], binary: bool, seed: int
) -> None:
    """Invariant: encode -> decode is the identity for every datatype, shape and encoding."""
    array = sample(datatype, shape, seed, text=not binary)
    signature = ModelSignature(
        inputs=(TensorSpec("x", datatype, tuple(-1 for _ in shape)),),
        outputs=(TensorSpec("x", datatype, tuple(-1 for _ in shape)),),
    )
    request = decode_infer_request(
        *encode_infer_request({"x": array}, binary_inputs=binary), signature
    )
    assert_same(request.inputs["x"], array)
    body, header_length = encode_infer_response(
        model_name="m", model_version="1", request=request, outputs=request.inputs, parameters={}
    )
    assert_same(decode_infer_response(body, header_length)[0]["x"], array)
