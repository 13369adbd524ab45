"""Closed-loop HTTP/1.1 load generator for bench/serve.py: one process, C keep-alive connections.

Run as a separate process (``python bench/_loadgen.py ...``) so it never shares an interpreter
(or a GIL) with the server under test; ``bench/serve.py`` starts one process per cell, two at
high concurrency, and merges their results.

Why it is cheap per request:

* the request is built once, by the caller, as the exact bytes to write (request line, headers,
  body) and read from a file: nothing is formatted per request;
* every connection is an ``asyncio.Protocol`` (uvloop when installed): the response is handled
  inside ``data_received`` and the next request is written from there — no tasks, no futures,
  no stream readers per request;
* the response is parsed only as far as the framing needs: status code and Content-Length
  (chunked bodies are followed too, for servers that stream).

Protocol with the parent: connect every connection, print ``ready`` on stdout, wait for a line
on stdin (so two processes start together), run, write the measured latencies (float64,
seconds) to ``--out`` and print one JSON line with the counts and the measurement window
(``time.monotonic()``, which is system-wide on Linux, so windows of several processes merge).

Bounds: the measurement stops issuing requests after ``--requests`` requests or ``--duration``
seconds, whichever comes first; requests started during the warm-up (``--warmup-requests``
completed or ``--warmup-s`` elapsed, whichever first) are never measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import socket
import sys
import time
from array import array

_perf = time.perf_counter


class Run:
    """Shared counters for every connection of this process."""

    def __init__(self, requests: int, duration: float, warmup_requests: int, warmup_s: float):
        self.max_requests = requests
        self.duration = duration
        self.warmup_requests = warmup_requests
        self.warmup_s = warmup_s
        self.latencies = array("d")
        self.errors = 0
        self.statuses: dict[int, int] = {}
        self.issued = 0  # measured requests issued
        self.warm_done = 0
        self.measuring = False
        self.stopping = False
        self.t_start = 0.0  # perf_counter at the start of warm-up
        self.t_measure = 0.0  # perf_counter when measurement began
        self.t_last = 0.0  # perf_counter of the last measured completion
        self.active = 0
        self.done: asyncio.Future[None] | None = None
        self.error_sample = b""

    def may_issue(self, now: float) -> bool:
        if self.stopping:
            return False
        if not self.measuring:
            return True
        if self.issued >= self.max_requests or now - self.t_measure >= self.duration:
            self.stopping = True
            return False
        self.issued += 1
        return True


class Conn(asyncio.Protocol):
    __slots__ = ("_status", "buf", "measured", "need", "request", "run", "t0", "transport")

    def __init__(self, run: Run, request: bytes) -> None:
        self.run = run
        self.request = request
        self.buf = bytearray()
        self.need = -1
        self.t0 = 0.0
        self.measured = False
        self.transport: asyncio.Transport | None = None
        self._status = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        run = self.run
        if self.t0 and not run.stopping:
            run.errors += 1
            run.error_sample = run.error_sample or b"connection closed by server"
        if self.t0:
            self.t0 = 0.0
            self._idle()

    def fire(self) -> None:
        run = self.run
        now = _perf()
        if not run.may_issue(now):
            self._idle()
            return
        self.measured = run.measuring
        self.t0 = now
        self.transport.write(self.request)  # type: ignore[union-attr]

    def _idle(self) -> None:
        run = self.run
        run.active -= 1
        if run.active == 0 and run.done is not None and not run.done.done():
            run.done.set_result(None)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            if self.need < 0:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(buf[:end]).lower()
                status = int(head[9:12])
                pos = head.find(b"\ncontent-length:")
                if pos >= 0:
                    stop = head.find(b"\r", pos + 16)
                    length = int(head[pos + 16: stop if stop >= 0 else len(head)])
                    self.need = end + 4 + length
                elif b"transfer-encoding: chunked" in head:
                    total = _chunked_end(buf, end + 4)
                    if total < 0:
                        return
                    self.need = total
                else:
                    self.need = end + 4  # no body
                self._status = status
            if len(buf) < self.need:
                return
            now = _perf()
            body_end = self.need
            status = self._status
            if status != 200:
                self.run.errors += 1
                if not self.run.error_sample:
                    self.run.error_sample = bytes(buf[:min(body_end, 600)])
            del buf[:body_end]
            self.need = -1
            self._complete(now, status)
            if not buf:
                return

    def _complete(self, now: float, status: int) -> None:
        run = self.run
        run.statuses[status] = run.statuses.get(status, 0) + 1
        if self.measured:
            run.latencies.append(now - self.t0)
            run.t_last = now
        elif not run.measuring:
            run.warm_done += 1
            if run.warm_done >= run.warmup_requests or now - run.t_start >= run.warmup_s:
                run.measuring = True
                run.t_measure = now
        self.t0 = 0.0
        self.fire()



def _chunked_end(buf: bytearray, pos: int) -> int:
    """Index just past a complete chunked body starting at ``pos``, or -1 if incomplete."""
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return -1
        size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
        pos = eol + 2 + size + 2
        if pos > len(buf):
            return -1
        if size == 0:
            return pos


async def connect_all(host: str, port: int, conns: int, run: Run, request: bytes) -> list[Conn]:
    loop = asyncio.get_running_loop()
    out = []
    for _ in range(conns):
        _, proto = await loop.create_connection(lambda: Conn(run, request), host, port)
        out.append(proto)
    return out


async def drive(run: Run, protos: list[Conn]) -> None:
    run.done = asyncio.get_running_loop().create_future()
    run.active = len(protos)
    run.t_start = _perf()
    if run.warmup_requests <= 0 or run.warmup_s <= 0:
        run.measuring = True
        run.t_measure = run.t_start
    for proto in protos:
        proto.fire()
    await run.done
    for proto in protos:
        if proto.transport is not None:
            proto.transport.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--request", required=True, help="file with the exact request bytes")
    p.add_argument("--connections", type=int, default=1)
    p.add_argument("--requests", type=int, default=10000)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup-requests", type=int, default=200)
    p.add_argument("--warmup-s", type=float, default=0.5)
    p.add_argument("--out", required=True, help="where to write the latencies (float64 s)")
    p.add_argument("--no-uvloop", action="store_true")
    p.add_argument("--no-sync", action="store_true", help="start at once, without ready/go")
    args = p.parse_args(argv)

    loop_name = "asyncio"
    if not args.no_uvloop:
        try:
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
            loop_name = "uvloop"
        except ImportError:
            pass
    with open(args.request, "rb") as fh:
        request = fh.read()
    run = Run(args.requests, args.duration, args.warmup_requests, args.warmup_s)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    protos = loop.run_until_complete(
        connect_all(args.host, args.port, args.connections, run, request)
    )
    if not args.no_sync:
        print("ready", flush=True)
        if not sys.stdin.readline():
            return 1
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    mono_offset = time.monotonic() - _perf()
    loop.run_until_complete(drive(run, protos))
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    loop.close()
    run.latencies.tofile(open(args.out, "wb"))  # noqa: SIM115 — closed at exit
    measured = len(run.latencies)
    window = (run.t_last - run.t_measure) if measured else 0.0
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    wall = _perf() - run.t_start
    print(json.dumps({
        "measured": measured,
        "errors": run.errors,
        "statuses": {str(k): v for k, v in run.statuses.items()},
        "error_sample": run.error_sample.decode("latin-1")[:600],
        "t_measure": run.t_measure + mono_offset,
        "t_last": run.t_last + mono_offset,
        "window_s": window,
        "cpu_s": cpu,
        "wall_s": wall,
        "loop": loop_name,
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
