"""Outpost's model layer: a pure library the daemon drives (no HTTP, no SQLite).

- ``blobs``      content-addressed ONNX files (``BlobStore``)
- ``signature``  inputs/outputs of a model, and the check that a file is servable
- ``names``      allowed model names and versions
- ``datatypes``  OIP <-> numpy <-> onnxruntime types
- ``codec``      Open Inference Protocol bodies <-> tensors (JSON + binary extension)
- ``runtime``    ``Backend``/``LoadedModel`` interfaces and the onnxruntime backend
- ``ray_backend`` the Ray backend (actor pools, in-process fallback) and ``create_backend``
- ``batcher``    the queue + worker thread that micro-batches requests
- ``errors``     the one exception tree (``ModelError`` and children)

onnxruntime is imported lazily (when a model is inspected or loaded), and Ray only when a
``RayBackend`` connects, so importing this package stays cheap for CLI commands that only
talk to a running daemon.
"""

from pathlib import Path

from models.batcher import Batcher, Observer
from models.blobs import BlobInfo, BlobStore
from models.codec import (
    InferRequest,
    RequestedOutput,
    decode_infer_request,
    decode_infer_response,
    encode_infer_request,
    encode_infer_response,
)
from models.datatypes import DATATYPES, Datatype
from models.errors import (
    CodecError,
    DecodedTooLarge,
    InferenceFailed,
    InvalidConfig,
    InvalidModel,
    InvalidName,
    ModelError,
    ModelUnavailable,
    Overloaded,
)
from models.names import parse_ref, validate_name, validate_version
from models.ray_backend import RayBackend, RayConfig, RayModel, create_backend
from models.runtime import Backend, LoadedModel, OrtBackend, OrtModel, RuntimeConfig
from models.signature import DYNAMIC, ModelSignature, TensorSpec, inspect_model

SAMPLE_MODEL = Path(__file__).parent / "sample" / "digits.onnx"
"""The bundled sample model ``digits`` version ``1`` (see models/sample/build.py)."""
SAMPLE_MANIFEST = SAMPLE_MODEL.with_suffix(".json")
"""Its sidecar: name, version, signature, accuracy and example inputs."""

__all__ = [
    "DATATYPES",
    "DYNAMIC",
    "SAMPLE_MANIFEST",
    "SAMPLE_MODEL",
    "Backend",
    "Batcher",
    "BlobInfo",
    "BlobStore",
    "CodecError",
    "Datatype",
    "DecodedTooLarge",
    "InferRequest",
    "InferenceFailed",
    "InvalidConfig",
    "InvalidModel",
    "InvalidName",
    "LoadedModel",
    "ModelError",
    "ModelSignature",
    "ModelUnavailable",
    "Observer",
    "OrtBackend",
    "OrtModel",
    "Overloaded",
    "RayBackend",
    "RayConfig",
    "RayModel",
    "RequestedOutput",
    "RuntimeConfig",
    "TensorSpec",
    "create_backend",
    "decode_infer_request",
    "decode_infer_response",
    "encode_infer_request",
    "encode_infer_response",
    "inspect_model",
    "parse_ref",
    "validate_name",
    "validate_version",
]
