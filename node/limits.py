"""Every bound of ``node`` in one place, each with the reason for its value.

Owns constants only: the numbers for the I/O shell — peer requests, audit, admin and files,
shutdown, connections, read deadlines, decoded memory, JSON depth, hop counts, the rate at
which refusals are written to the audit log, and the file modes of the data directory. Must
never do I/O or import another node module (everything may import this). Limits of the
protocol cores are in ``federation.limits``; settings an operator may change are in
``node.config`` (with their trade-offs), not here. mDNS limits stay beside the DNS-SD code in
``node.discovery`` (they follow RFC 6762/6763, not our choices).
"""

from __future__ import annotations

from typing import Final

# -- peer requests ------------------------------------------------------------------------

#: Peer header names, defined once (the sender in ``node.forward``, the receiver in
#: ``node.federate``). ``Outpost-Hops`` counts forwards so a request cannot loop.
HEADER_HOPS: Final = "outpost-hops"
HEADER_REQUEST_ID: Final = "outpost-request-id"
#: The app a forwarded request came from, as the sending node attests it (node.tokens).
HEADER_APP: Final = "outpost-app"
#: The Open Inference Protocol's binary-extension header (JSON head length).
HEADER_JSON_LENGTH: Final = "inference-header-content-length"
#: Request ids travel into audit entries: long enough for a UUID plus a prefix, no longer.
MAX_REQUEST_ID_CHARS: Final = 64

#: Outgoing reliable gossip exchanges in flight at once; beyond it new ones are dropped (the
#: protocol retries by itself) rather than piling up tasks behind a slow or dead peer.
MAX_INFLIGHT_EXCHANGES: Final = 64
#: How long one reliable exchange may take before it counts as failed: a few WAN round trips.
EXCHANGE_TIMEOUT_S: Final = 5.0
#: Pause of the cluster timer loop when a core's deadline stays in the past after a tick:
#: keeps a stuck deadline from spinning a core at 100 %.
STUCK_DEADLINE_PAUSE_S: Final = 0.02
#: Connection set-up bound for peer calls (TLS handshake included): a LAN or WAN peer answers
#: well within it; a dead one should fail over to the next candidate fast.
PEER_CONNECT_TIMEOUT_S: Final = 2.0
#: Warm forwarding connections to all peers together: one per concurrent forwarded request.
FORWARD_POOL_CONNECTIONS: Final = 256
#: Idle keep-alive connections kept for replication and control calls.
CONTROL_POOL_KEEPALIVE: Final = 64
#: Idle peer connections live this long: longer than the advert interval, so a busy pair
#: never pays a handshake per request.
PEER_KEEPALIVE_S: Final = 60.0

# -- audit ------------------------------------------------------------------------------------

#: Entries per peer audit response and per replication request: bounds one response
#: (~1 KiB an entry) while keeping a long catch-up to a few hundred requests per million.
AUDIT_PAGE_ENTRIES: Final = 2000
#: Earlier published checkpoints a witness is handed consistency proofs from: covers a
#: witness that missed a few checkpoint rounds without growing the gossip item.
PROOF_HISTORY: Final = 8
#: Store the signed head once no entry arrived for this long after a commit: a burst of
#: requests shares one signature, a lone request waits ~2 ms more for its checkpoint.
AUDIT_HEAD_IDLE_S: Final = 0.002
#: Under sustained load, store a signed head at least this often: bounds how far the
#: stored checkpoint trails the log (what witnesses and a crash recovery see).
AUDIT_HEAD_MAX_LAG_S: Final = 0.05
#: How often the audit writer is asked to store its signed head when idle (it does so only
#: when the head moved).
AUDIT_TICK_S: Final = 1.0

# -- admin and files -------------------------------------------------------------------------

#: Admin requests carry small JSON (paths, documents, filters), never models: 1 MiB is far
#: above the largest policy bundle and keeps a bad client from growing the daemon's memory.
ADMIN_MAX_BODY_BYTES: Final = 1024 * 1024
#: Read size when streaming model blobs and bundle files: large enough for few syscalls,
#: small enough that many concurrent transfers stay cheap in memory.
FILE_CHUNK_BYTES: Final = 1 << 20
#: How long a CLI command waits for another command to release the data-directory lock.
OFFLINE_LOCK_WAIT_S: Final = 30.0
OFFLINE_LOCK_RETRY_S: Final = 0.2

# -- shutdown ---------------------------------------------------------------------------------
# Every wait at shutdown has a bound, so a stuck component cannot keep the process from
# exiting (systemd would otherwise SIGKILL it, losing the final audit head).

#: One component's stop (mDNS goodbye, cluster, a listener after its drain).
STOP_COMPONENT_S: Final = 10.0
#: Background work (documents from gossip, equivocation entries) finishing by itself.
BACKGROUND_DRAIN_S: Final = 5.0
#: Cancelled tasks acknowledging the cancellation.
TASK_CANCEL_S: Final = 5.0
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
