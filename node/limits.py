"""Every bound of ``node`` in one place, each with the reason for its value.

Owns constants only; must never import another node module (everything may import this).
Limits of the protocol cores are in ``federation.limits``; settings an operator may change
are in ``node.config`` (with their trade-offs), not here. mDNS limits stay beside the DNS-SD
code in ``node.discovery`` (they follow RFC 6762/6763, not our choices).
"""

from __future__ import annotations

from typing import Final

# -- peer requests ------------------------------------------------------------------------

#: Peer header names, defined once (the sender in ``node.forward``, the receiver in
#: ``node.federate``). ``Outpost-Hops`` counts forwards so a request cannot loop.
HEADER_HOPS: Final = "outpost-hops"
HEADER_REQUEST_ID: Final = "outpost-request-id"
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
