"""Every bound the node's listeners and request path put on what a caller can make it hold,
each with its reason.

Owns: the numbers for the I/O shell (``node/``): connections, read deadlines, decoded memory,
JSON depth, hop counts, the rate at which refusals are written to the audit log, and the file
modes of the data directory. Bounds on gossip state live in ``federation.limits``; operator
tunables that trade speed for cost live in ``node.config``.

Must never: do I/O or import other node modules (everything imports it).
"""

from __future__ import annotations

from typing import Final

# --- connections --------------------------------------------------------------------------

#: Seconds a peer may take to complete the TLS handshake after its TCP connection is
#: accepted. An honest peer on a WAN handshakes in a few round trips (< 1 s); without a
#: bound (asyncio's default is 60 s) a peer that never sends a ClientHello holds a file
#: descriptor for a minute, and 1,100 of them exhausted the daemon's fds (issue 10 row 7).
TLS_HANDSHAKE_TIMEOUT_S: Final = 5.0

#: Connections on the peer listener still in the TLS handshake. Beyond it the oldest pending
#: handshake is cut to admit the new one: an honest handshake takes milliseconds, so a flood
#: of silent connections evicts itself while a real peer's handshake completes.
MAX_PENDING_HANDSHAKES: Final = 128

#: Established (authenticated) connections on the peer listener, all peers together. A
#: federation of a few hundred nodes keeps one or two warm connections per peer; the cap
#: keeps the listener far below the process fd limit (see ``FD_RESERVE``).
MAX_PEER_CONNECTIONS: Final = 1024

#: Established connections one authenticated peer (by certificate node id) may hold. Its
#: forwarding pool keeps a handful; a hostile enrolled node gets no more than this.
MAX_CONNECTIONS_PER_PEER: Final = 64

#: Connections on the app endpoint. Local apps keep pools of tens of connections; beyond the
#: cap a new connection is closed at once, so the database, the model files and the peer
#: listener always have descriptors left.
MAX_APP_CONNECTIONS: Final = 1024

#: File descriptors kept free for the database, the audit writer, model blobs, outbound
#: forwards and gossip: the daemon raises its soft RLIMIT_NOFILE to the hard limit at start
#: and warns when the caps above plus this reserve do not fit.
FD_RESERVE: Final = 256

# --- request read deadlines ---------------------------------------------------------------

#: Seconds from a connection's start (or a request's first byte on a kept-alive connection)
#: until the request line and headers must be complete. Headers are a few hundred bytes; a
#: client that trickles them (slowloris) is cut here instead of being held for minutes.
HEADER_TIMEOUT_S: Final = 10.0

#: Base seconds for a request body to arrive once its headers are complete ...
BODY_TIMEOUT_S: Final = 30.0

#: ... plus one second per this many declared bytes. 1 MiB/s lets a 64 MiB body cross a slow
#: WAN link in about 1.5 minutes while 300 slow-body connections (issue 10 row 13) that send
#: one byte now and then are closed after ~30 s instead of being held for 150 s+.
MIN_BODY_RATE_BYTES_S: Final = 1 << 20

# --- decoding -----------------------------------------------------------------------------

#: A decoded request may take at most this many bytes of memory per byte of body (plus
#: ``DECODE_SLACK_BYTES``), else 413. Numeric binary tensors decode in place (ratio 1); a
#: BYTES element costs a Python object, an array slot and an onnxruntime string, so 57 MiB
#: of 1-byte elements once became 4.5 GiB (issue 10 row 8). 8x admits BYTES elements of
#: ~14 bytes and more, which is every real text or image payload.
DECODED_BYTES_PER_BODY_BYTE: Final = 8

#: Headroom for small requests (a few short strings cost more than 8x their few bytes).
DECODE_SLACK_BYTES: Final = 1 << 20

#: Bodies larger than this are parsed and decoded on a worker thread, not on the event loop:
#: a 63 MiB JSON body took 1.8 s to parse, during which gossip acks went unanswered and the
#: node flapped alive/suspect (issue 10 row 9). Below it a thread hop costs more than parsing.
OFFLOAD_DECODE_BYTES: Final = 256 << 10

#: JSON text larger than this is parsed in a separate decoding process: the JSON parsers (orjson,
#: the standard library) hold the GIL for a whole parse, so a worker thread would still stall
#: the loop (~10 ms per MiB here). The process hop costs a copy of the body and of the
#: decoded tensors, small next to parsing that much text.
OFFLOAD_JSON_PROCESS_BYTES: Final = 4 << 20

#: Decoding processes (started on the first large JSON body). Two keep one large JSON request
#: from queueing behind another without taking every core from the models.
JSON_DECODE_PROCESSES: Final = 2

#: JSON nesting is refused (400) beyond this depth: orjson's own bound, enforced while it
#: parses (the standard-library fallback for NaN/Infinity stops near Python's recursion limit,
#: ~1000, and is refused the same way). Tensors nest only as deep as their rank (ONNX models
#: stay under 10); before, 100,000 levels surfaced as a RecursionError and a 500 (issue 10
#: row 11). Checked by the parser, so it costs nothing on the hot path.
MAX_JSON_DEPTH: Final = 1024

#: The largest ``Outpost-Hops`` a forwarded request may carry; anything else, or anything
#: that is not a plain decimal number, is refused with 400 (issue 10 row 10: ``2^62`` and
#: ``10^30`` reached the policy engine and failed with 500). Placement forwards at most a
#: few hops; this leaves room without letting a peer feed huge integers to the engine.
MAX_HOPS: Final = 16

# --- the trail of refusals -----------------------------------------------------------------

#: Refusal entries (malformed, refused, denied requests) one source may write per second on
#: average, and in a burst. Beyond it refusals from that source are counted and written as
#: one ``infer`` entry with ``outcome = "refused-aggregate"`` per reason and window, so a
#: flood of garbage costs the log a few entries per second, not one per request.
REFUSAL_ENTRIES_PER_S: Final = 20.0
REFUSAL_BURST: Final = 100

#: Seconds between aggregate entries of one source that stays over its rate.
REFUSAL_AGGREGATE_S: Final = 1.0

#: Sources tracked by the refusal rate limiter. Sources are app addresses and peer node ids
#: (a few hundred); beyond it the least recently seen is flushed and forgotten.
MAX_REFUSAL_SOURCES: Final = 4096

# --- files --------------------------------------------------------------------------------

#: The data directory and the authority directory: owner only. They hold private keys, the
#: database (personal-data hashes, the audit trail) and tokens.
PRIVATE_DIR_MODE: Final = 0o700

#: Files the node writes for itself (database, WAL, keys, certificates, config, tokens).
PRIVATE_FILE_MODE: Final = 0o600
