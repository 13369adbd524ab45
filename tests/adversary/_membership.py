"""A scripted hostile enrolled node for the membership attacks of issue 10 (rows 1-3, 5, 12).

It holds only what a stolen box holds: its own key and certificate (``node.key``,
``node.crt`` in its data directory, enrolled but never started as a daemon). It talks to
real daemons the way a node does: signed UDP datagrams (``federation.envelope``) and
``POST /peer/v1/gossip`` over mutual TLS with its own certificate.
"""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

import httpx

from federation import envelope
from federation.messages import Message, encode
from federation.statements import Ed25519Signer, sign
from node.keys import load_key
from node.tls import client_context


class Mallory:
    def __init__(self, data_dir: Path, node_id: str) -> None:
        self.node_id = node_id
        self.key = load_key(data_dir)
        self.signer = Ed25519Signer(self.key)
        self.ctx: ssl.SSLContext = client_context(
            (data_dir / "node.crt").read_bytes(), (data_dir / "node.key").read_bytes(),
            (data_dir / "federation.crt").read_bytes())
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp.settimeout(0.05)
        self.address = f"127.0.0.1:{self.udp.getsockname()[1]}"
        self.boot = time.time_ns()
        self.seq = 0

    def sign(self, msg: Message) -> Message:
        return sign(self.signer, msg)  # type: ignore[type-var]

    def post(self, peer_address: str, msg: Message) -> httpx.Response:
        """One reliable-path message over mutual TLS with Mallory's own certificate."""
        with httpx.Client(verify=self.ctx, timeout=30) as http:
            return http.post(f"https://{peer_address}/peer/v1/gossip", content=encode(msg))

    def datagram(self, peer_address: str, msg: Message) -> None:
        """One datagram sealed with Mallory's key (what any enrolled node can send)."""
        self.seq += 1
        host, _, port = peer_address.rpartition(":")
        self.udp.sendto(envelope.seal(self.key, self.node_id, self.boot, self.seq, encode(msg)),
                        (host, int(port)))

    def drain(self) -> int:
        """Datagrams that arrived at Mallory's own (signed) address, discarded."""
        n = 0
        while True:
            try:
                self.udp.recv(65536)
            except (TimeoutError, BlockingIOError):
                return n
            n += 1

    def close(self) -> None:
        self.udp.close()


class Listener:
    """A bystander's UDP and TCP sockets: reflection would land here."""

    def __init__(self) -> None:
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp.setblocking(False)
        self.tcp = socket.socket()
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen(16)
        self.tcp.setblocking(False)
        self.udp_address = f"127.0.0.1:{self.udp.getsockname()[1]}"
        self.tcp_address = f"127.0.0.1:{self.tcp.getsockname()[1]}"

    def hits(self) -> int:
        n = 0
        while True:
            try:
                self.udp.recv(65536)
            except BlockingIOError:
                break
            n += 1
        while True:
            try:
                conn, _ = self.tcp.accept()
            except BlockingIOError:
                break
            conn.close()
            n += 1
        return n

    def close(self) -> None:
        self.udp.close()
        self.tcp.close()
