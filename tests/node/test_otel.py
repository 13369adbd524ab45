"""OpenTelemetry: with ``[otel] endpoint`` a node exports its spans over OTLP/HTTP to a
collector (here a receiver of our own that decodes the real OTLP protobuf), in the app's
trace, with the stage spans as children of the request span."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from tests.conftest import outpost, start_daemon, write_config

pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)

pytestmark = pytest.mark.integration

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


class Collector(BaseHTTPRequestHandler):
    spans: ClassVar[list[Any]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                Collector.spans.extend(scope.spans)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_spans_reach_an_otlp_collector_in_the_apps_trace(node_dir: Path,
                                                          sample_digits: dict) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        write_config(node_dir, "otel",
                     endpoint=f"http://127.0.0.1:{server.server_port}/v1/traces")
        daemon = start_daemon(node_dir)
        example = sample_digits["examples"][0]  # type: ignore[index]
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                            "data": example["input"]}]}
        with daemon.http() as http:
            r = http.post("/v2/models/digits/infer", json=body,
                          headers={"traceparent": f"00-{TRACE_ID}-b7ad6b7169203331-01"})
            assert r.status_code == 200
        assert daemon.stop() == 0  # shutdown flushes the batch
    finally:
        server.shutdown()
    spans = {s.name: s for s in Collector.spans}
    assert {"outpost.infer", "decode", "run", "audit"} <= set(spans), sorted(spans)
    root = spans["outpost.infer"]
    assert root.trace_id.hex() == TRACE_ID and root.parent_span_id.hex() == "b7ad6b7169203331"
    for stage in ("decode", "run", "audit"):
        assert spans[stage].trace_id == root.trace_id
        assert spans[stage].parent_span_id == root.span_id


def test_bad_endpoint_is_refused_at_start(node_dir: Path) -> None:
    write_config(node_dir, "otel", endpoint="collector:4318")
    result = outpost("run", data_dir=node_dir, check=False)
    assert result.returncode == 3 and "otel.endpoint" in result.stderr
