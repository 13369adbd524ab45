"""Open Inference Protocol (KServe v2) REST codec with the binary tensor data extension.

Owns the bytes <-> tensors translation of ``.../infer`` bodies, both directions, server
side (``decode_infer_request``, ``encode_infer_response``) and client side
(``encode_infer_request``, ``decode_infer_response``, used to forward to peers and by the
CLI). Validates everything a caller controls and raises ``CodecError`` with a message
that names the tensor, what was expected and what came (the daemon answers 400). Must
never do I/O, look at HTTP headers other than the header length it is given, or run a
model.

Wire rules (see /work/shared/OIP.md):

- ``header_length`` is ``Inference-Header-Content-Length``; None means the whole body is
  JSON. Otherwise the first ``header_length`` bytes are JSON and the rest are the binary
  tensors, in the order their entries appear, each ``parameters.binary_data_size`` long.
- Numeric binary data is C order, little-endian; BYTES elements are a 4-byte little-endian
  length then the bytes. JSON ``data`` is flat or nested, row-major.
- Output selection: ``outputs`` (when given and non-empty) picks outputs and their order;
  an output is binary when its ``parameters.binary_data`` says so, else when the request's
  ``parameters.binary_data_output`` does (default false).
- BYTES outputs sent as JSON are strings: UTF-8 text as is; bytes that are not UTF-8 are
  decoded with ``surrogateescape`` (each bad byte 0xNN becomes the lone surrogate
  U+DCNN, written ``\\udcNN`` in JSON), which never fails and which
  ``decode_infer_response`` turns back into the exact bytes. Ask for binary outputs when
  the bytes are not text.

This is on the request hot path: numeric tensors are converted with numpy in one call,
never element by element.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from models.datatypes import Datatype, from_numpy, from_oip, pack_bytes, unpack_bytes
from models.errors import CodecError, DecodedTooLarge, ModelError
from models.signature import DYNAMIC, ModelSignature, TensorSpec

__all__ = [
    "InferRequest",
    "RequestedOutput",
    "decode_infer_request",
    "decode_infer_response",
    "encode_infer_request",
    "encode_infer_response",
]

Tensor = np.ndarray[Any, Any]

_LITTLE = sys.byteorder == "little"
_EMPTY = memoryview(b"")

#: Estimated memory of one decoded BYTES element beyond its data: the ``bytes`` object header
#: (33), its slot in the object array (8), the list built while unpacking (8) and the
#: ``std::string`` onnxruntime copies it into (32), rounded up. An estimate, used to refuse a
#: request before decoding it (``max_decoded_bytes``), not a limit itself.
BYTES_ELEMENT_OVERHEAD = 96


class _Budget:
    """Bytes of decoded tensor memory a request may still take (None: unbounded)."""

    __slots__ = ("left", "limit")

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.left = limit

    def take(self, cost: int, what: str) -> None:
        if self.left is None:
            return
        self.left -= cost
        if self.left < 0:
            raise DecodedTooLarge(
                f"{what}: decoding would take more than {self.limit} bytes of memory (about "
                f"{cost} for this tensor); BYTES elements cost ~{BYTES_ELEMENT_OVERHEAD} bytes "
                "each beyond their data: send fewer, larger elements or split the batch"
            )


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    """One entry of a request's ``outputs`` list."""

    name: str
    binary: bool | None = None
    """``parameters.binary_data``; None = follow the request's ``binary_data_output``."""


@dataclass(frozen=True, slots=True, eq=False)
class InferRequest:
    """A decoded, validated inference request."""

    id: str | None
    inputs: dict[str, Tensor]
    """Every model input, in signature order; BYTES as object arrays of ``bytes``."""
    outputs: tuple[RequestedOutput, ...] | None
    """Outputs asked for, in the order asked; None = all, in model order."""
    binary_data_output: bool
    parameters: dict[str, Any]
    """Request-level parameters exactly as sent (``outpost.data_class`` etc.)."""

    def output_plan(self, available: Sequence[str]) -> list[tuple[str, bool]]:
        """``(name, binary)`` for every output the response must carry, in order."""
        if self.outputs is None:
            return [(name, self.binary_data_output) for name in available]
        default = self.binary_data_output
        return [(o.name, default if o.binary is None else o.binary) for o in self.outputs]


# -- server side ------------------------------------------------------------------------


def decode_infer_request(
    body: bytes, header_length: int | None, signature: ModelSignature, *,
    max_decoded_bytes: int | None = None,
) -> InferRequest:
    """Decode and validate an infer request body against the model's signature.

    ``max_decoded_bytes`` bounds the memory the decoded tensors may take (estimated from
    shapes and sizes before anything is allocated); beyond it ``DecodedTooLarge``.
    """
    header, binary = _split(body, header_length)
    try:
        return _decode_request(_load_json(header, "request"), binary, signature,
                               _Budget(max_decoded_bytes))
    except DecodedTooLarge:
        raise
    except CodecError:
        # orjson reads integers beyond 64 bits as floats; the standard library keeps them, so a
        # refused request is judged again on its exact values (and named precisely).
        return _decode_request(_load_json_slow(header, "request"), binary, signature,
                               _Budget(max_decoded_bytes))


def _decode_request(doc: dict[str, Any], binary: memoryview, signature: ModelSignature,
                    budget: _Budget) -> InferRequest:

    entries = doc.get("inputs")
    if not isinstance(entries, list):
        raise CodecError(
            'request has no "inputs" list; send {"inputs": [{"name", "datatype", "shape", "data"}]}'
        )
    specs = signature.input_map
    decoded: dict[str, Tensor] = {}
    offset = 0
    for entry in entries:
        name = _entry_name(entry, "input")
        spec = specs.get(name)
        if spec is None:
            raise CodecError(f"unknown input {name!r}; the model's inputs are {sorted(specs)}")
        if name in decoded:
            raise CodecError(f"input {name!r} is given twice; send each input once")
        decoded[name], offset = _decode_tensor(entry, f"input {name!r}", binary, offset, spec,
                                               budget)
    missing = [name for name in specs if name not in decoded]
    if missing:
        raise CodecError(f"missing inputs {missing}; the model needs {list(specs)}")
    _check_consumed(binary, offset)

    params = doc.get("parameters", {})
    if not isinstance(params, dict):
        raise CodecError('request "parameters" must be a JSON object')
    binary_output = params.get("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise CodecError('request parameter "binary_data_output" must be true or false')
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise CodecError('request "id" must be a string')
    return InferRequest(
        id=request_id,
        inputs=decoded if list(decoded) == list(specs) else {n: decoded[n] for n in specs},
        outputs=_requested_outputs(doc.get("outputs"), signature),
        binary_data_output=binary_output,
        parameters=params,
    )


def _requested_outputs(
    raw: object, signature: ModelSignature
) -> tuple[RequestedOutput, ...] | None:
    if raw is None or raw == []:
        return None
    if not isinstance(raw, list):
        raise CodecError('request "outputs" must be a list of {"name", "parameters"} objects')
    known = signature.output_map
    wanted: list[RequestedOutput] = []
    for entry in raw:
        name = _entry_name(entry, "output")
        if name not in known:
            raise CodecError(f"unknown output {name!r}; the model's outputs are {sorted(known)}")
        if any(o.name == name for o in wanted):
            raise CodecError(f"output {name!r} is requested twice; ask for each output once")
        params = entry.get("parameters", {})
        if not isinstance(params, dict):
            raise CodecError(f'output {name!r}: "parameters" must be a JSON object')
        if "classification" in params:
            raise CodecError(
                "classification extension is not supported; request the raw output and "
                "take the top classes on the client"
            )
        binary = params.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise CodecError(f'output {name!r}: parameter "binary_data" must be true or false')
        wanted.append(RequestedOutput(name, binary))
    return tuple(wanted)


def encode_infer_response(
    *,
    model_name: str,
    model_version: str,
    request: InferRequest,
    outputs: Mapping[str, Tensor],
    parameters: Mapping[str, Any],
) -> tuple[bytes, int | None]:
    """Encode a response body; returns it and the JSON header length (None: all JSON)."""
    chunks: list[bytes | memoryview] = []
    entries = []
    for name, binary in request.output_plan(list(outputs)):
        try:
            array = outputs[name]
        except KeyError:
            raise ModelError(f"the model produced no output {name!r}") from None
        entries.append(_encode_tensor(name, array, binary, chunks))
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        doc["id"] = request.id
    doc["parameters"] = dict(parameters)
    doc["outputs"] = entries
    return _assemble(doc, chunks)


# -- client side ------------------------------------------------------------------------


def encode_infer_request(
    inputs: Mapping[str, Tensor],
    *,
    request_id: str | None = None,
    outputs: Sequence[RequestedOutput] | None = None,
    binary_inputs: bool = True,
    binary_data_output: bool = True,
    parameters: Mapping[str, Any] | None = None,
) -> tuple[bytes, int | None]:
    """Encode a request body as a client would; returns it and the JSON header length.

    Datatypes follow the arrays' dtypes (object/str/bytes arrays are BYTES).
    ``binary_data_output`` is sent as the request-level parameter, as tritonclient does.
    """
    chunks: list[bytes | memoryview] = []
    entries = [_encode_tensor(name, array, binary_inputs, chunks) for name, array in inputs.items()]
    params = dict(parameters or {})
    params["binary_data_output"] = binary_data_output
    doc: dict[str, Any] = {}
    if request_id is not None:
        doc["id"] = request_id
    doc["inputs"] = entries
    if outputs is not None:
        doc["outputs"] = [
            {"name": o.name, "parameters": {"binary_data": o.binary}}
            if o.binary is not None
            else {"name": o.name}
            for o in outputs
        ]
    doc["parameters"] = params
    return _assemble(doc, chunks)


def decode_infer_response(
    body: bytes, header_length: int | None
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Decode a response body into its output tensors and its JSON header."""
    header, binary = _split(body, header_length)
    doc = _load_json(header, "response")
    if "error" in doc:
        raise CodecError(f"the server answered an error: {doc['error']}")
    entries = doc.get("outputs")
    if not isinstance(entries, list):
        raise CodecError('response has no "outputs" list')
    result: dict[str, Tensor] = {}
    offset = 0
    for entry in entries:
        name = _entry_name(entry, "output")
        result[name], offset = _decode_tensor(entry, f"output {name!r}", binary, offset, None)
    _check_consumed(binary, offset)
    return result, doc


# -- shared -----------------------------------------------------------------------------


def _split(body: bytes, header_length: int | None) -> tuple[bytes, memoryview]:
    if header_length is None:
        return body, _EMPTY
    if type(header_length) is not int or not 0 < header_length <= len(body):
        raise CodecError(
            f"Inference-Header-Content-Length is {header_length} but the body has "
            f"{len(body)} bytes; it must be the length of the JSON header alone"
        )
    return body[:header_length], memoryview(body)[header_length:]


def _load_json(header: bytes, kind: str) -> dict[str, Any]:
    try:
        doc = orjson.loads(header)
    except orjson.JSONDecodeError:
        doc = None  # the standard library also takes NaN/Infinity (tritonclient sends them)
    if doc is None:
        return _load_json_slow(header, kind)
    if not isinstance(doc, dict):
        raise CodecError(f"{kind} JSON must be an object, not {type(doc).__name__}")
    return doc


def _load_json_slow(header: bytes, kind: str) -> dict[str, Any]:
    try:
        doc = json.loads(header)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise CodecError(
            f"{kind} JSON is not valid: {exc}; when sending binary tensors set "
            "Inference-Header-Content-Length to the JSON length"
        ) from exc
    if not isinstance(doc, dict):
        raise CodecError(f"{kind} JSON must be an object, not {type(doc).__name__}")
    return doc


def _entry_name(entry: object, kind: str) -> str:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise CodecError(f'every {kind} must be a JSON object with a string "name"')
    name: str = entry["name"]
    return name


def _check_consumed(binary: memoryview, offset: int) -> None:
    if offset != len(binary):
        raise CodecError(
            f"{len(binary) - offset} bytes follow the last binary tensor; the binary part "
            "must be exactly the tensors' binary_data_size values added up"
        )


def _decode_tensor(
    entry: dict[str, Any], what: str, binary: memoryview, offset: int, spec: TensorSpec | None,
    budget: _Budget | None = None,
) -> tuple[Tensor, int]:
    datatype = entry.get("datatype")
    if spec is not None and datatype != spec.datatype:
        raise CodecError(
            f"{what}: datatype {datatype!r} does not match the model's {spec.datatype}"
        )
    dt = from_oip(datatype)
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise CodecError(f"{what}: shape must be a list of non-negative integers, got {shape!r}")
    if spec is not None:
        _check_shape(shape, spec, what)
    count = math.prod(shape)
    if budget is not None:
        budget.take(count * (BYTES_ELEMENT_OVERHEAD if dt.is_bytes else dt.itemsize), what)

    params = entry.get("parameters", {})
    if not isinstance(params, dict):
        raise CodecError(f'{what}: "parameters" must be a JSON object')
    size = params.get("binary_data_size")
    if size is None:
        if "data" not in entry:
            raise CodecError(f'{what}: has neither "data" nor parameters.binary_data_size')
        return _from_json(entry["data"], dt, count, shape, what), offset
    if "data" in entry:
        raise CodecError(f'{what}: has both "data" and parameters.binary_data_size; send one')
    if type(size) is not int or size < 0:
        raise CodecError(f"{what}: binary_data_size must be a non-negative integer, got {size!r}")
    end = offset + size
    if end > len(binary):
        raise CodecError(
            f"{what}: binary_data_size is {size} but only {len(binary) - offset} binary bytes "
            "remain after the JSON header and the earlier tensors (is "
            "Inference-Header-Content-Length set to the JSON length?)"
        )
    return _from_binary(binary[offset:end], dt, count, shape, what), end


def _check_shape(shape: list[int], spec: TensorSpec, what: str) -> None:
    expected = spec.shape
    fits = len(shape) == len(expected)
    if fits:
        for got, want in zip(shape, expected):  # noqa: B905 - lengths checked just above
            if want != got and want != DYNAMIC:
                fits = False
                break
    if not fits:
        raise CodecError(
            f"{what}: shape {shape} does not fit the model's {list(expected)} (-1 = any size)"
        )


def _from_binary(
    chunk: memoryview, dt: Datatype, count: int, shape: list[int], what: str
) -> Tensor:
    if dt.is_bytes:
        return unpack_bytes(chunk, count, what=what).reshape(shape)
    expected = count * dt.itemsize
    if len(chunk) != expected:
        raise CodecError(
            f"{what}: binary_data_size is {len(chunk)} bytes but shape {shape} of {dt.name} "
            f"needs {count} x {dt.itemsize} = {expected}"
        )
    array: Tensor = np.frombuffer(chunk, dtype=dt.wire_dtype)
    if dt.name == "BOOL":
        as_bytes = array.view(np.uint8)
        if count and int(as_bytes.max()) > 1:
            raise CodecError(f"{what}: BOOL binary elements must be bytes 0 or 1")
    if not _LITTLE:
        array = array.astype(dt.dtype)
    elif not array.flags.aligned:
        array = array.copy()  # kernels may assume aligned buffers; the copy is cheap
    return array.reshape(shape)


_NUMERIC_KINDS = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}
_KIND_WORDS = {
    "b": "true/false",
    "U": "strings",
    "f": "non-integer numbers",
    "O": "mixed or non-numeric values",
}


def _from_json(data: object, dt: Datatype, count: int, shape: list[int], what: str) -> Tensor:
    if not isinstance(data, list):
        raise CodecError(f'{what}: "data" must be a JSON array (flat or nested, row-major)')
    if dt.is_bytes:
        return _bytes_from_json(data, count, shape, what)
    # A flat list can be counted before numpy allocates anything for it.
    if data and not isinstance(data[0], list) and len(data) != count:
        raise CodecError(f"{what}: data has {len(data)} elements but shape {shape} needs {count}")
    try:
        raw = np.asarray(data)
    except (ValueError, TypeError, OverflowError) as exc:
        raise CodecError(f"{what}: data is ragged or not {dt.name} values: {exc}") from exc
    if raw.size != count:
        raise CodecError(f"{what}: data has {raw.size} elements but shape {shape} needs {count}")
    if count == 0:
        return np.empty(shape, dtype=dt.dtype)
    target_kind = dt.dtype.kind
    if target_kind in "iu" and raw.dtype.kind in "fO":
        exact = _exact_integers(data, dt, shape, what)
        if exact is not None:
            return exact
    if raw.dtype.kind not in _NUMERIC_KINDS[target_kind]:
        got = _KIND_WORDS.get(raw.dtype.kind, str(raw.dtype))
        want = (
            "true/false"
            if target_kind == "b"
            else ("integers" if target_kind in "iu" else "numbers")
        )
        raise CodecError(f"{what}: {dt.name} data must be JSON {want}, got {got}")
    if target_kind in "iu" and raw.dtype != dt.dtype:
        info = np.iinfo(dt.dtype)
        low, high = raw.min(), raw.max()
        if low < info.min or high > info.max:
            raise CodecError(
                f"{what}: values from {low} to {high} do not fit {dt.name} ({info.min}..{info.max})"
            )
    return raw.astype(dt.dtype, copy=False).reshape(shape)


def _exact_integers(data: list[Any], dt: Datatype, shape: list[int], what: str) -> Tensor | None:
    """Integers numpy could not infer a common integer type for (e.g. UINT64 values above
    2**63 next to small ones infer as float64); None if they are not all integers."""
    flat = np.asarray(data, dtype=object).ravel().tolist()
    if not all(type(v) is int for v in flat):
        return None
    try:
        return np.asarray(flat, dtype=dt.dtype).reshape(shape)
    except OverflowError as exc:
        info = np.iinfo(dt.dtype)
        raise CodecError(
            f"{what}: values do not fit {dt.name} ({info.min}..{info.max}): {exc}"
        ) from exc


def _bytes_from_json(data: list[Any], count: int, shape: list[int], what: str) -> Tensor:
    flat: list[Any] = []
    _flatten(data, flat)
    if len(flat) != count:
        raise CodecError(f"{what}: data has {len(flat)} elements but shape {shape} needs {count}")
    out = np.empty(count, dtype=object)
    try:
        out[:] = [item.encode("utf-8", "surrogateescape") for item in flat]
    except (AttributeError, UnicodeEncodeError) as exc:
        raise CodecError(f"{what}: BYTES data must be JSON strings: {exc}") from exc
    return out.reshape(shape)


def _flatten(data: list[Any], into: list[Any]) -> None:
    for item in data:
        if isinstance(item, list):
            _flatten(item, into)
        else:
            into.append(item)


def _encode_tensor(
    name: str, array: Tensor, binary: bool, chunks: list[bytes | memoryview]
) -> dict[str, Any]:
    array = np.asarray(array)
    dt = from_numpy(array.dtype)
    entry: dict[str, Any] = {"name": name, "datatype": dt.name, "shape": list(array.shape)}
    if not binary:
        flat = array.ravel().tolist()
        if dt.is_bytes:
            flat = [
                item.decode("utf-8", "surrogateescape") if isinstance(item, bytes) else str(item)
                for item in flat
            ]
        entry["data"] = flat
        return entry
    raw: bytes | memoryview
    if dt.is_bytes:
        raw = pack_bytes(array)
    else:
        contiguous = np.ascontiguousarray(array, dtype=dt.wire_dtype).reshape(-1)
        raw = contiguous.data.cast("B") if _LITTLE else contiguous.tobytes()
    entry["parameters"] = {"binary_data_size": len(raw)}
    chunks.append(raw)
    return entry


_COMPACT = json.JSONEncoder(separators=(",", ":"))  # json.dumps builds one per call otherwise


def _assemble(doc: dict[str, Any], chunks: list[bytes | memoryview]) -> tuple[bytes, int | None]:
    tensors = doc["outputs"] if "outputs" in doc else doc.get("inputs", ())
    if all("data" not in entry for entry in tensors):
        # No float data in the header: orjson (~10x faster) writes the same JSON. Float data
        # keeps the standard library, whose NaN/Infinity spelling JSON clients read back.
        header = orjson.dumps(doc)
    else:
        header = _COMPACT.encode(doc).encode()
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)
