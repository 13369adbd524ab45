"""A hostile enrolled node for the connection attacks of issue 10 (rows 1, 4, 15).

The attacker holds only what a stolen edge box holds: its own node key and its enrolled
certificate (an enrolled data directory that never runs a daemon). :class:`Interposer` puts it on
the network path to a victim node — it owns the address the federation has for the victim, as
with a spoofed ARP entry or a hijacked port — and can do two things there:

* ``impersonate``: terminate TLS with its own (valid, enrolled) certificate and answer as if it
  were the victim: a forged inference answer "served by" the victim, a model blob of its own
  with a matching hash, 204 to gossip. It counts the TLS handshakes and the application bytes
  that reached it (the payload a fooled node would send).
* ``relay``: pass the TCP bytes to the victim untouched (the victim then answers itself).

UDP datagrams are always relayed byte for byte to the victim's real port: they are signed by the
victim, so the attacker can neither forge nor alter them; relaying them keeps the victim a live
member at the attacker's address, the state a fooled membership would be in.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import select
import socket
import ssl
import threading
from pathlib import Path

from node.tls import server_context


class Hostile:
    """An enrolled node's own key and certificate, nothing else."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.node_id = data_dir.name

    def server_context(self) -> ssl.SSLContext:
        d = self.data_dir
        return server_context((d / "node.crt").read_bytes(), (d / "node.key").read_bytes(),
                              (d / "federation.crt").read_bytes())

    def client_context(self) -> ssl.SSLContext:
        from node.tls import client_context

        d = self.data_dir
        return client_context((d / "node.crt").read_bytes(), (d / "node.key").read_bytes(),
                              (d / "federation.crt").read_bytes())


class Interposer:
    """The attacker at ``127.0.0.1:listen_port``, in front of the victim at ``victim_port``."""

    def __init__(self, hostile: Hostile, listen_port: int, victim_port: int, victim: str,
                 blob: bytes) -> None:
        self.hostile = hostile
        self.listen_port = listen_port
        self.victim_port = victim_port
        self.victim = victim
        self.blob = blob
        self.mode = "relay"
        self.claim: str | None = None  # the sha256 its metadata claims (default: the blob's)
        self.connections = 0  # TCP connections it took while impersonating
        self.handshakes = 0  # of those, TLS handshakes that completed on its side
        self.app_bytes = 0  # application bytes that reached it while impersonating
        self.requests: list[str] = []  # request lines it was sent while impersonating
        self._ctx = hostile.server_context()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._relayed: list[socket.socket] = []
        self._tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._tcp.bind(("127.0.0.1", listen_port))
        self._tcp.listen(64)
        self._tcp.settimeout(0.2)
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp.bind(("127.0.0.1", listen_port))
        self._udp.settimeout(0.2)
        self._upstream: dict[tuple[str, int], socket.socket] = {}
        self._threads: list[threading.Thread] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.listen_port}"

    def start(self) -> Interposer:
        for target in (self._accept_loop, self._udp_loop):
            t = threading.Thread(target=target, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def set_mode(self, mode: str) -> None:
        """Switch, and cut every relayed connection (as an attacker who takes over the path
        resets what was open), so the next request opens a new connection."""
        assert mode in ("relay", "impersonate")
        self.mode = mode
        with self._lock:
            relayed, self._relayed = self._relayed, []
        for s in relayed:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def stop(self) -> None:
        self._stop.set()
        self.set_mode("relay")
        for t in self._threads:
            t.join(timeout=2)
        self._tcp.close()
        self._udp.close()
        for s in self._upstream.values():
            s.close()

    # -- UDP: relay signed datagrams both ways ---------------------------------------------------

    def _udp_loop(self) -> None:
        while not self._stop.is_set():
            try:
                data, client = self._udp.recvfrom(65536)
            except (TimeoutError, OSError):
                continue
            up = self._upstream.get(client)
            if up is None:
                up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                up.bind(("127.0.0.1", 0))
                up.settimeout(0.2)
                self._upstream[client] = up
                t = threading.Thread(target=self._udp_back, args=(up, client), daemon=True)
                t.start()
                self._threads.append(t)
            with contextlib.suppress(OSError):
                up.sendto(data, ("127.0.0.1", self.victim_port))

    def _udp_back(self, up: socket.socket, client: tuple[str, int]) -> None:
        while not self._stop.is_set():
            try:
                data, _ = up.recvfrom(65536)
            except (TimeoutError, OSError):
                continue
            with contextlib.suppress(OSError):
                self._udp.sendto(data, client)

    # -- TCP ---------------------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._tcp.accept()
            except (TimeoutError, OSError):
                continue
            target = self._relay if self.mode == "relay" else self._impersonate
            t = threading.Thread(target=target, args=(conn,), daemon=True)
            t.start()

    def _relay(self, conn: socket.socket) -> None:
        try:
            up = socket.create_connection(("127.0.0.1", self.victim_port), timeout=5)
        except OSError:
            conn.close()
            return
        with self._lock:
            self._relayed += [conn, up]
        conn.settimeout(None)
        up.settimeout(None)
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([conn, up], [], [], 0.5)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    (up if s is conn else conn).sendall(data)
        except (OSError, ValueError):
            return
        finally:
            conn.close()
            up.close()

    def _impersonate(self, conn: socket.socket) -> None:
        with self._lock:
            self.connections += 1
        conn.settimeout(5)
        try:
            tls = self._ctx.wrap_socket(conn, server_side=True)
        except (OSError, ssl.SSLError):
            conn.close()
            return
        with self._lock:
            self.handshakes += 1
        try:
            while True:
                head, body = self._read_request(tls)
                if head is None:
                    return
                line = head.split(b"\r\n", 1)[0].decode(errors="replace")
                with self._lock:
                    self.requests.append(line)
                tls.sendall(self._answer(line, body))
        except (OSError, ssl.SSLError):
            return
        finally:
            with contextlib.suppress(OSError):
                tls.close()

    def _read_request(self, tls: ssl.SSLSocket) -> tuple[bytes | None, bytes]:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = tls.recv(65536)
            if not chunk:
                return None, b""
            with self._lock:
                self.app_bytes += len(chunk)
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for raw in head.split(b"\r\n")[1:]:
            name, _, value = raw.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(body) < length:
            chunk = tls.recv(65536)
            if not chunk:
                break
            with self._lock:
                self.app_bytes += len(chunk)
            body += chunk
        return head, body

    def _answer(self, line: str, body: bytes) -> bytes:
        path = line.split(" ")[1]
        if path.startswith("/peer/v1/infer/"):
            forged = {"model_name": "digits", "model_version": "1", "id": "forged",
                      "outputs": [{"name": "logits", "datatype": "FP32", "shape": [1, 10],
                                   "data": [9.0] * 10}],
                      "parameters": {"outpost.served_by": self.victim}}
            return _http(200, json.dumps(forged).encode(), "application/json")
        if path.startswith("/peer/v1/models/") and path.endswith("/blob"):
            return _http(200, self.blob, "application/octet-stream")
        if path.startswith("/peer/v1/models/"):
            meta = {"name": "digits", "version": "1",
                    "sha256": self.claim or hashlib.sha256(self.blob).hexdigest(),
                    "size": len(self.blob)}
            return _http(200, json.dumps(meta).encode(), "application/json")
        if path.startswith("/peer/v1/gossip"):
            return b"HTTP/1.1 204 No Content\r\n\r\n"
        return _http(404, b'{"error": "no such peer endpoint"}', "application/json")


def _http(status: int, body: bytes, content_type: str) -> bytes:
    reason = {200: "OK", 404: "Not Found"}.get(status, "OK")
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body
