"""The comparison servers of bench/serve.py, each run as its own process.

``python bench/_servers.py KIND --model NAME=PATH ...`` prints ``ready PORT`` on stdout once it
accepts connections, and stops on SIGTERM or when stdin closes.

* ``bare``   — the protocol floor: a raw ASGI app (no framework) under uvicorn with httptools and
  no access log. ``POST /v2/models/{m}/infer`` parses the OIP JSON or JSON+binary request
  (``Inference-Header-Content-Length``), runs onnxruntime inline on the event loop and answers a
  valid OIP response (JSON or binary outputs, as ``binary_data_output`` asks). ``GET /ping``
  answers 200 with two bytes and no work: the load generator's ceiling through uvicorn.
* ``canned`` — a raw asyncio protocol that answers every request with a fixed 200 and parses
  only the framing: the load generator's ceiling with (almost) no server cost.
* ``ray``    — Ray Serve (``ray.init(num_cpus=2)``): one deployment per model holding an
  onnxruntime session, HTTP ingress through Serve's proxy on ``/v2/models/{m}``, the same
  request parsing and response encoding as ``bare``.

Every onnxruntime session here uses the daemon's settings (``models.RuntimeConfig`` defaults):
CPU provider, 1 intra-op thread, 1 inter-op thread, sequential execution.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import threading
from typing import Any

import numpy as np

_OIP_OF_NUMPY = {
    np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64", np.dtype(np.float16): "FP16",
    np.dtype(np.int64): "INT64", np.dtype(np.int32): "INT32", np.dtype(np.int8): "INT8",
    np.dtype(np.uint8): "UINT8", np.dtype(np.bool_): "BOOL",
}
_NUMPY_OF_ORT = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}


def open_session(path: str) -> Any:
    """An onnxruntime CPU session with the daemon's default settings."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


class BadRequest(ValueError):
    pass


class MiniModel:
    """The least an OIP server must do for one numeric model: parse, check, run, encode."""

    def __init__(self, name: str, path: str, version: str = "1") -> None:
        self.name, self.version = name, version
        self.session = open_session(path)
        self.inputs = {
            i.name: (np.dtype(_NUMPY_OF_ORT[i.type]), len(i.shape)) for i in self.session.get_inputs()
        }
        self.output_names = [o.name for o in self.session.get_outputs()]

    def handle(self, body: bytes, header_length: int | None) -> tuple[bytes, int | None]:
        """Answer one infer request; returns the body and its JSON header length (None: JSON)."""
        header = body if header_length is None else body[:header_length]
        try:
            doc = json.loads(header)
            feed: dict[str, np.ndarray] = {}
            offset = header_length or 0
            for entry in doc["inputs"]:
                name = entry["name"]
                dtype, rank = self.inputs[name]
                shape = entry["shape"]
                if _OIP_OF_NUMPY[dtype] != entry["datatype"] or len(shape) != rank:
                    raise BadRequest(f"input {name!r}: wrong datatype or rank")
                count = 1
                for d in shape:
                    count *= d
                params = entry.get("parameters")
                if params and "binary_data_size" in params:
                    size = params["binary_data_size"]
                    if size != count * dtype.itemsize or offset + size > len(body):
                        raise BadRequest(f"input {name!r}: binary size does not fit its shape")
                    array = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
                    offset += size
                else:
                    array = np.asarray(entry["data"], dtype=dtype)
                    if array.size != count:
                        raise BadRequest(f"input {name!r}: data does not fit its shape")
                feed[name] = array.reshape(shape)
            if feed.keys() != self.inputs.keys():
                raise BadRequest(f"inputs must be {sorted(self.inputs)}")
        except (KeyError, TypeError, ValueError) as exc:
            raise BadRequest(f"bad infer request: {exc!r}") from None
        results = self.session.run(self.output_names, feed)
        binary = bool((doc.get("parameters") or {}).get("binary_data_output", False))
        outputs = []
        chunks = []
        for name, array in zip(self.output_names, results, strict=True):
            entry = {"name": name, "datatype": _OIP_OF_NUMPY[array.dtype], "shape": list(array.shape)}
            if binary:
                raw = np.ascontiguousarray(array).tobytes()
                entry["parameters"] = {"binary_data_size": len(raw)}
                chunks.append(raw)
            else:
                entry["data"] = array.ravel().tolist()
            outputs.append(entry)
        out: dict[str, Any] = {"model_name": self.name, "model_version": self.version}
        if "id" in doc:
            out["id"] = doc["id"]
        out["outputs"] = outputs
        head = json.dumps(out, separators=(",", ":")).encode()
        if not chunks:
            return head, None
        return b"".join([head, *chunks]), len(head)


def parse_models(specs: list[str]) -> dict[str, MiniModel]:
    models = {}
    for spec in specs:
        name, _, path = spec.partition("=")
        models[name] = MiniModel(name, path)
    return models


# -- bare ASGI ---------------------------------------------------------------------------------

_JSON = (b"content-type", b"application/json")
_OCTET = (b"content-type", b"application/octet-stream")
_HDR = b"inference-header-content-length"


class BareApp:
    def __init__(self, models: dict[str, MiniModel]) -> None:
        self.models = models

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path == "/ping":
            await _respond(send, 200, b"ok", [])
            return
        if not (path.startswith("/v2/models/") and path.endswith("/infer")):
            await _respond(send, 404, b'{"error":"no such endpoint"}', [_JSON])
            return
        model = self.models.get(path[11:-6])
        if model is None:
            await _respond(send, 404, b'{"error":"no such model"}', [_JSON])
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        header_length = None
        for key, value in scope["headers"]:
            if key == _HDR:
                header_length = int(value)
        try:
            out, json_len = model.handle(body, header_length)
        except BadRequest as exc:
            await _respond(send, 400, json.dumps({"error": str(exc)}).encode(), [_JSON])
            return
        if json_len is None:
            await _respond(send, 200, out, [_JSON])
        else:
            await _respond(send, 200, out, [_OCTET, (_HDR, str(json_len).encode())])


async def _respond(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _listen() -> socket.socket:
    # IPPROTO_TCP, not 0: CPython's asyncio sets TCP_NODELAY on accepted connections only when
    # the socket's proto says TCP (uvloop always does). Without it, a response written in two
    # pieces (uvicorn writes headers, then body) waits for the client's delayed ACK: ~40 ms.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def _stop_on_stdin_eof(callback: Any) -> None:
    def watch() -> None:
        while sys.stdin.readline():
            pass
        callback()

    threading.Thread(target=watch, daemon=True).start()


def serve_bare(models: dict[str, MiniModel], loop: str) -> None:
    import uvicorn

    sock = _listen()
    config = uvicorn.Config(
        BareApp(models), http="httptools", loop=loop, lifespan="off", access_log=False,
        log_level="warning", timeout_keep_alive=60,
    )
    server = uvicorn.Server(config)
    _stop_on_stdin_eof(lambda: setattr(server, "should_exit", True))

    async def main() -> None:
        config.load()
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[sock])
        print(f"ready {sock.getsockname()[1]}", flush=True)
        await server.main_loop()
        await server.shutdown(sockets=[sock])

    if loop == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


# -- canned ------------------------------------------------------------------------------------

_CANNED = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok"


class _Canned(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        out = []
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = bytes(buf[:end]).lower()
            pos = head.find(b"\ncontent-length:")
            length = 0
            if pos >= 0:
                stop = head.find(b"\r", pos)
                length = int(head[pos + 16: stop if stop >= 0 else len(head)])
            if len(buf) < end + 4 + length:
                break
            del buf[: end + 4 + length]
            out.append(_CANNED)
        if out:
            self.transport.write(b"".join(out))


def serve_canned() -> None:
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        _stop_on_stdin_eof(lambda: loop.call_soon_threadsafe(stop.set_result, None))
        sock = _listen()
        server = await loop.create_server(_Canned, sock=sock)
        print(f"ready {sock.getsockname()[1]}", flush=True)
        await stop
        server.close()

    asyncio.run(main())


# -- Ray Serve ---------------------------------------------------------------------------------


def serve_ray(specs: list[str], max_ongoing: int) -> None:
    import ray
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import Response

    @serve.deployment(
        num_replicas=1,
        max_ongoing_requests=max_ongoing,
        ray_actor_options={"num_cpus": 0.5},
    )
    class OipModel:
        def __init__(self, name: str, path: str) -> None:
            self.model = MiniModel(name, path)

        async def __call__(self, request: Request) -> Response:
            body = await request.body()
            raw = request.headers.get("inference-header-content-length")
            try:
                out, json_len = self.model.handle(body, int(raw) if raw else None)
            except BadRequest as exc:
                return Response(json.dumps({"error": str(exc)}), status_code=400,
                                media_type="application/json")
            if json_len is None:
                return Response(out, media_type="application/json")
            return Response(out, media_type="application/octet-stream",
                            headers={"inference-header-content-length": str(json_len)})

    probe = _listen()
    port = probe.getsockname()[1]
    probe.close()
    # address="local": always a fresh private cluster, never one someone else started here.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=True, logging_level="warning")
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    for spec in specs:
        name, _, path = spec.partition("=")
        serve.run(OipModel.bind(name, path), name=name, route_prefix=f"/v2/models/{name}",
                  blocking=False)
    print(f"ready {port}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    _stop_on_stdin_eof(done.set)
    done.wait()
    serve.shutdown()
    ray.shutdown()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=["bare", "canned", "ray"])
    p.add_argument("--model", action="append", default=[], help="NAME=PATH (repeat)")
    p.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio"])
    p.add_argument("--max-ongoing", type=int, default=64)
    args = p.parse_args()
    if args.kind == "bare":
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        serve_bare(parse_models(args.model), args.loop)
    elif args.kind == "canned":
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        serve_canned()
    else:
        serve_ray(args.model, args.max_ongoing)


if __name__ == "__main__":
    main()
