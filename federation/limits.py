"""Every bound on state or input that a peer can make us grow, each with its reason.

Owns: the numbers. The membership, state-sync and codec modules import them from here so
that a reviewer can see in one place how much memory and bandwidth a hostile or broken peer
can cost us. A peer that hits a limit is refused or its input is dropped and counted; we
never evict signed state to make room (see ``statesync``).

Must never: hold tunables that trade speed for cost (those are ``config``), do I/O, or
depend on other federation modules.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ACCUSATION_BURST",
    "ACCUSATION_REFILL_PER_S",
    "DATAGRAM_ENVELOPE_BYTES",
    "DIGEST_HASH_BYTES",
    "MAX_ADDRESS_BYTES",
    "MAX_COMPOUND_PARTS",
    "MAX_CONFLICT_KEYS",
    "MAX_CONFLICT_VALUES_PER_KEY",
    "MAX_DATAGRAM_BYTES",
    "MAX_DATAGRAM_PAYLOAD",
    "MAX_DIGEST_ENTRIES",
    "MAX_ITEMS",
    "MAX_ITEMS_PER_ORIGIN",
    "MAX_ITEM_KEY_BYTES",
    "MAX_ITEM_RUMOR_QUEUE",
    "MAX_ITEM_VALUE_BYTES",
    "MAX_MEMBERS",
    "MAX_MEMBER_RUMOR_QUEUE",
    "MAX_META_BYTES",
    "MAX_NODE_ID_BYTES",
    "MAX_PENDING_PER_INTRODUCER",
    "MAX_PENDING_RELAYS",
    "MAX_PENDING_STATEMENTS",
    "MAX_PUSH_ITEMS",
    "MAX_REQUEST_ENTRIES",
    "MAX_RUMOR_ITEM_BYTES",
    "MAX_SEEDS",
    "MAX_STREAM_MESSAGE_BYTES",
    "MAX_TABLE_STATEMENTS",
    "MAX_UINT",
    "MAX_VERIFIED_CACHE",
    "SIGNATURE_BYTES",
]

# --- wire sizes --------------------------------------------------------------------------

#: Largest UDP datagram we send or accept, signature included. 1400 bytes fits the
#: 1500-byte Ethernet MTU minus IPv6 (40) and UDP (8) headers with room for a tunnel
#: (WireGuard, IPsec, VXLAN add 60-80 bytes), so gossip never relies on IP fragmentation,
#: which firewalls drop and which turns one lost fragment into a lost datagram.
MAX_DATAGRAM_BYTES: Final = 1400

#: Bytes the I/O layer adds around the encoded message: Ed25519 signature (64), signer key
#: id (32), replay counter/timestamp (16) and framing (16). The core never sees them but
#: must leave room for them.
DATAGRAM_ENVELOPE_BYTES: Final = 128

#: Budget for an encoded message (with piggybacked rumors) on the UDP path.
MAX_DATAGRAM_PAYLOAD: Final = MAX_DATAGRAM_BYTES - DATAGRAM_ENVELOPE_BYTES

#: Largest message on the reliable (HTTPS/mTLS) path: push-pull member tables, digests and
#: pushed items. Bounds what one exchange can make us buffer and parse in memory; a full
#: member table (MAX_MEMBERS x ~80 bytes) and a policy bundle both fit comfortably.
MAX_STREAM_MESSAGE_BYTES: Final = 4 << 20

#: Integers on the wire (incarnations, versions, sequence numbers) are unsigned 64-bit, so
#: a peer cannot make us do bignum arithmetic or store unbounded ints.
MAX_UINT: Final = (1 << 64) - 1

#: Parts in one compound datagram. A 1272-byte payload cannot hold more than ~60 useful
#: parts; the cap stops a peer from making us loop over thousands of empty parts.
MAX_COMPOUND_PARTS: Final = 64

# --- identifiers and member records --------------------------------------------------------

#: Node ids are certificate-bound names (a hex key hash or a short name); 128 bytes holds a
#: hex SHA-512 and keeps a member record small enough for ~15 rumors per datagram.
MAX_NODE_ID_BYTES: Final = 128

#: Opaque "host:port" strings: a DNS name is at most 253 characters, plus ":" and a
#: 5-digit port (bracketed IPv6 literals are shorter).
MAX_ADDRESS_BYTES: Final = 259

#: Member metadata piggybacks on alive rumors, which must fit a datagram with others.
#: memberlist uses the same 512-byte cap (MetaMaxSize).
MAX_META_BYTES: Final = 512

#: Member table size, tombstones (dead, left) included. Bounds memory (~200 bytes per
#: member) and the push-pull table, which must fit MAX_STREAM_MESSAGE_BYTES. Outpost
#: targets estates of thousands of nodes, not tens of thousands in one gossip pool.
MAX_MEMBERS: Final = 10_000

#: Statements in one push-pull member table: each member's signed alive plus at most one
#: status statement (left, suspect or dead) behind it.
MAX_TABLE_STATEMENTS: Final = 2 * MAX_MEMBERS

#: Length of an Ed25519 signature: the signature field of membership statements.
SIGNATURE_BYTES: Final = 64

#: Signed alive statements held back because their subject's certificate is not known yet
#: (admission waits for it), in total and per introducer (the authenticated sender that
#: handed them to us). A node can only be admitted with a certificate the authority
#: signed, so invented members never leave this pen, and one introducer filling its share
#: cannot push out the statements others introduced.
MAX_PENDING_STATEMENTS: Final = 1024
MAX_PENDING_PER_INTRODUCER: Final = 64

#: Lifeguard-style budget of new accusations per accuser: a suspicion (or dead) about a
#: member we hold alive costs one token; ACCUSATION_BURST tokens, refilled at
#: ACCUSATION_REFILL_PER_S. An honest node accuses at most one member per failed probe
#: (about one per probe interval while failures are happening); a hostile one that accuses
#: everyone at full rate would otherwise make the whole cluster refute in a loop.
ACCUSATION_BURST: Final = 4
ACCUSATION_REFILL_PER_S: Final = 0.1

#: Verified-statement cache entries: each distinct signed statement is verified once (a
#: rumor reaches a node ~retransmit_limit times, and every push-pull repeats the table).
#: Sized for a full table of alive statements plus their accusations.
MAX_VERIFIED_CACHE: Final = 2 * MAX_MEMBERS + 4096

#: Membership rumors waiting to be piggybacked. Each member has at most one (newer news
#: replaces older), so this only bites on tables near MAX_MEMBERS; when full, the rumors
#: with the most transmissions already done are dropped first (push-pull backs them up).
MAX_MEMBER_RUMOR_QUEUE: Final = 4096

#: Ping-req relays we keep on behalf of other members (each holds a timer and an address).
#: A legitimate member sends at most IndirectChecks per probe interval; past this cap a
#: peer is flooding us and further requests are dropped.
MAX_PENDING_RELAYS: Final = 256

#: Seed addresses we keep retrying; more than this is a configuration mistake.
MAX_SEEDS: Final = 64

# --- state sync ---------------------------------------------------------------------------

#: Item keys are short names ("policy", "checkpoint", a model name); 256 bytes is plenty and
#: keeps digest entries small.
MAX_ITEM_KEY_BYTES: Final = 256

#: Largest item value: the largest signed document we carry is a policy bundle, capped at
#: 1 MiB by ``policy_bundle.MAX_BUNDLE_BYTES``; twice that leaves room for wrapping.
MAX_ITEM_VALUE_BYTES: Final = 2 << 20

#: Items whose encoded size is at most this are rumored over UDP (piggybacked); larger ones
#: travel only by anti-entropy over the reliable path, because a rumor must fit one
#: datagram next to a ping and membership news.
MAX_RUMOR_ITEM_BYTES: Final = 1024

#: Items held in total. Nothing signed is garbage-collected, so this is a hard ceiling:
#: past it new keys are refused (existing keys still advance) and the operator is told.
MAX_ITEMS: Final = 100_000

#: Items held per origin, so one enrolled-but-hostile node cannot use up MAX_ITEMS with
#: its own adverts. Legitimate origins publish a handful of kinds with a few keys each;
#: the authority (policy, revocations) is one origin among the others.
MAX_ITEMS_PER_ORIGIN: Final = 4096

#: Item rumors waiting to be piggybacked; one per key, oldest-most-sent dropped first
#: (anti-entropy delivers anything dropped here).
MAX_ITEM_RUMOR_QUEUE: Final = 1024

#: Conflicting values kept per (origin, kind, key) at the current version. Two are enough
#: to prove equivocation; a few more tolerate a peer that forges garbage alongside.
MAX_CONFLICT_VALUES_PER_KEY: Final = 4

#: Keys that may hold conflicting values at once; each conflict is also surfaced as an
#: event for the caller to turn into a signed evidence item.
MAX_CONFLICT_KEYS: Final = 1024

#: Entries in one digest page (~100 bytes each: ~50 KiB). Digests are paged so an
#: exchange costs the same whatever the store size; the cursor walks the key space.
MAX_DIGEST_ENTRIES: Final = 512

#: Items requested in one state-request message.
MAX_REQUEST_ENTRIES: Final = 512

#: Items in one state-push message (also bounded by MAX_STREAM_MESSAGE_BYTES).
MAX_PUSH_ITEMS: Final = 256

#: Length of the value hash in digests (SHA-256).
DIGEST_HASH_BYTES: Final = 32
