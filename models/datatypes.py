"""Tensor datatypes: Open Inference Protocol names <-> numpy dtypes <-> onnxruntime types.

Owns the one table of datatypes Outpost serves, their wire element sizes, and the wire
form of BYTES elements (4-byte little-endian length, then the bytes). Must never decide
anything about requests or models beyond "which type is this and how is it laid out".

BYTES tensors are numpy ``object`` arrays whose elements are ``bytes`` (``str`` elements
are accepted wherever we encode, as UTF-8). BF16 is refused: numpy and the Python clients
have no bfloat16 type, so such a tensor could be neither built nor read by callers.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.errors import CodecError, InvalidModel

__all__ = [
    "DATATYPES",
    "Datatype",
    "from_numpy",
    "from_oip",
    "from_ort",
    "pack_bytes",
    "unpack_bytes",
]

_BF16_FIX = (
    "BF16 is not supported: numpy and the Open Inference Protocol Python clients have no "
    "bfloat16 type; export the model with FP16 or FP32 inputs and outputs (insert a Cast)"
)


@dataclass(frozen=True, slots=True)
class Datatype:
    """One servable tensor element type."""

    name: str
    """Open Inference Protocol name, e.g. ``FP32``."""
    dtype: np.dtype[Any]
    """numpy dtype in native byte order (``object`` for BYTES)."""
    ort: str
    """onnxruntime type string, e.g. ``tensor(float)``."""
    itemsize: int
    """Bytes per element on the wire; 0 for BYTES (variable, length-prefixed)."""

    @property
    def is_bytes(self) -> bool:
        return self.itemsize == 0

    @property
    def wire_dtype(self) -> np.dtype[Any]:
        """The little-endian dtype binary tensor data is laid out in."""
        return self.dtype.newbyteorder("<") if self.itemsize > 1 else self.dtype


def _dt(name: str, np_type: Any, ort: str) -> Datatype:
    dtype = np.dtype(np_type)
    return Datatype(name, dtype, ort, 0 if dtype.kind == "O" else dtype.itemsize)


DATATYPES: tuple[Datatype, ...] = (
    _dt("BOOL", np.bool_, "tensor(bool)"),
    _dt("UINT8", np.uint8, "tensor(uint8)"),
    _dt("UINT16", np.uint16, "tensor(uint16)"),
    _dt("UINT32", np.uint32, "tensor(uint32)"),
    _dt("UINT64", np.uint64, "tensor(uint64)"),
    _dt("INT8", np.int8, "tensor(int8)"),
    _dt("INT16", np.int16, "tensor(int16)"),
    _dt("INT32", np.int32, "tensor(int32)"),
    _dt("INT64", np.int64, "tensor(int64)"),
    _dt("FP16", np.float16, "tensor(float16)"),
    _dt("FP32", np.float32, "tensor(float)"),
    _dt("FP64", np.float64, "tensor(double)"),
    _dt("BYTES", np.object_, "tensor(string)"),
)
"""Every datatype Outpost serves, in the order the OIP specification lists them."""

_BY_OIP = {d.name: d for d in DATATYPES}
_BY_ORT = {d.ort: d for d in DATATYPES}
_BY_NUMPY: dict[np.dtype[Any], Datatype] = {d.dtype: d for d in DATATYPES if not d.is_bytes}
_NAMES = ", ".join(_BY_OIP)


def from_oip(name: object) -> Datatype:
    """The datatype called ``name`` in the protocol; CodecError if we do not serve it."""
    try:
        return _BY_OIP[name]  # type: ignore[index]
    except (KeyError, TypeError):
        if name == "BF16":
            raise CodecError(_BF16_FIX) from None
        raise CodecError(f"unknown datatype {name!r}; use one of {_NAMES}") from None


def from_ort(type_str: str, *, what: str) -> Datatype:
    """The datatype of an onnxruntime tensor type; InvalidModel naming ``what`` if unsupported."""
    found = _BY_ORT.get(type_str)
    if found is not None:
        return found
    if type_str == "tensor(bfloat16)":
        raise InvalidModel(f"{what} has type {type_str}; {_BF16_FIX}")
    if not type_str.startswith("tensor("):
        raise InvalidModel(
            f"{what} has type {type_str}, but only tensors are served; for scikit-learn "
            "models convert with skl2onnx options={id(model): {'zipmap': False}}, otherwise "
            "export tensor outputs"
        )
    raise InvalidModel(f"{what} has type {type_str}, which is not served; use one of {_NAMES}")


def from_numpy(dtype: np.dtype[Any]) -> Datatype:
    """The datatype for a numpy array; text and object arrays are BYTES."""
    found = _BY_NUMPY.get(dtype) or _BY_NUMPY.get(dtype.newbyteorder("="))
    if found is not None:
        return found
    if dtype.kind in "OSU":
        return _BY_OIP["BYTES"]
    raise CodecError(
        f"numpy dtype {dtype} has no Open Inference Protocol datatype; use one of {_NAMES}"
    )


_LEN = struct.Struct("<I")


def pack_bytes(array: np.ndarray[Any, Any]) -> bytes:
    """BYTES elements in C order, each as a 4-byte little-endian length then the bytes.

    Elements may be ``bytes`` or ``str`` (encoded as UTF-8).
    """
    parts: list[bytes] = []
    pack = _LEN.pack
    for item in array.ravel(order="C").tolist():
        raw = item if isinstance(item, bytes) else str(item).encode("utf-8")
        parts.append(pack(len(raw)))
        parts.append(raw)
    return b"".join(parts)


def unpack_bytes(chunk: memoryview, count: int, *, what: str) -> np.ndarray[Any, Any]:
    """Exactly ``count`` length-prefixed BYTES elements filling ``chunk``, as a 1-D object array.

    CodecError names ``what`` when an element overruns the chunk or bytes are left over.
    """
    items: list[bytes] = []
    offset, end = 0, len(chunk)
    unpack = _LEN.unpack_from
    for index in range(count):
        if offset + 4 > end:
            raise CodecError(
                f"{what}: binary data ends inside the length prefix of BYTES element {index} "
                f"of {count}; each element is a 4-byte little-endian length then the bytes"
            )
        (length,) = unpack(chunk, offset)
        offset += 4
        if offset + length > end:
            raise CodecError(
                f"{what}: BYTES element {index} claims {length} bytes but only "
                f"{end - offset} remain in its binary_data_size"
            )
        items.append(bytes(chunk[offset : offset + length]))
        offset += length
    if offset != end:
        raise CodecError(
            f"{what}: {end - offset} bytes left over after {count} BYTES elements; "
            "binary_data_size must cover exactly the length-prefixed elements"
        )
    out = np.empty(count, dtype=object)
    out[:] = items
    return out
