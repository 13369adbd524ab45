"""Wire codec: round trips, canonical form, and refusal of malformed or oversized input."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from federation import limits
from federation.errors import MalformedInput
from federation.messages import (
    WIRE_VERSION,
    Ack,
    Alive,
    Compound,
    Dead,
    DigestEntry,
    Item,
    ItemKind,
    ItemRef,
    Left,
    MemberPushPull,
    MemberStatus,
    Message,
    MessageType,
    Nack,
    Ping,
    PingReq,
    Send,
    StateDigest,
    StatePush,
    StateRequest,
    Suspect,
    decode,
    encode,
    encoded_size,
    part_size,
    send_effects,
)
from federation.testing import MemoryNetwork, VirtualClock

# --- strategies ---------------------------------------------------------------------------

uint = st.integers(min_value=0, max_value=limits.MAX_UINT)
small_uint = st.integers(min_value=0, max_value=10**6)
text = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=12)
node_id = text
address = st.builds(lambda h, p: f"{h}:{p}", text, st.integers(1, 65535))
meta = st.binary(max_size=24)
h32 = st.binary(min_size=32, max_size=32)
kind = st.sampled_from(list(ItemKind))
status = st.sampled_from(list(MemberStatus))

sig = st.sampled_from([b"", b"\x01" * 64])
pings = st.builds(Ping, uint, node_id, address, node_id, st.sampled_from(["", "relay-for"]))
ping_reqs = st.builds(PingReq, uint, node_id, address, node_id, address, st.booleans())
acks = st.builds(Ack, uint, node_id, st.sampled_from(["", "x"]), sig)
nacks = st.builds(Nack, uint, node_id)
alives = st.builds(Alive, node_id, address, uint, meta, sig)
suspects = st.builds(Suspect, node_id, uint, node_id, sig)
deads = st.builds(Dead, node_id, uint, node_id, sig)
lefts = st.builds(Left, node_id, uint, sig)
statements = st.one_of(alives, suspects, deads, lefts)
push_pulls = st.builds(MemberPushPull, node_id, address, st.booleans(), st.booleans(),
                       st.lists(statements, max_size=5).map(tuple))
items = st.builds(Item, node_id, kind, text, uint, st.binary(max_size=64))
refs = st.builds(ItemRef, node_id, kind, text)
entries = st.builds(DigestEntry, node_id, kind, text, uint, h32)
digests = st.builds(StateDigest, node_id, address, st.none() | refs, st.none() | refs,
                    st.lists(entries, max_size=4).map(tuple))
requests = st.builds(StateRequest, node_id, address, st.lists(entries, max_size=4).map(tuple))
pushes = st.builds(StatePush, node_id, st.lists(items, max_size=4).map(tuple))
simple = st.one_of(pings, ping_reqs, acks, nacks, alives, suspects, deads, lefts, push_pulls,
                   items, digests, requests, pushes)
compounds = st.builds(Compound, st.lists(simple, min_size=0, max_size=6).map(tuple))
messages = st.one_of(simple, compounds)

BIG = limits.MAX_STREAM_MESSAGE_BYTES


# --- properties ---------------------------------------------------------------------------


@given(messages)
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_round_trip_and_size(msg: Message) -> None:
    """Invariant: decode(encode(m)) == m for every message, and encoded_size/part_size
    predict the encoding's length exactly (the datagram budget relies on it)."""
    data = encode(msg)
    assert decode(data, max_bytes=BIG) == msg
    assert len(data) == encoded_size(msg)
    if not isinstance(msg, Compound):
        body = len(data) - 2  # version byte + one-byte type id
        assert part_size(msg) == body + 1 + len(_uvarint(body))


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


@given(st.binary(max_size=200))
@settings(max_examples=1000)
def test_arbitrary_bytes_only_raise_malformed(data: bytes) -> None:
    """Invariant: decoding any bytes either yields a message whose encoding is exactly
    those bytes (one encoding per message), or raises MalformedInput - nothing else."""
    try:
        msg = decode(data, max_bytes=BIG)
    except MalformedInput:
        return
    assert encode(msg) == data


@given(messages, st.data())
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_encodings_are_refused_or_canonical(msg: Message, data: st.DataObject) -> None:
    """Invariant: flipping, truncating or extending a valid encoding never crashes the
    decoder, and anything it still accepts re-encodes to the same bytes."""
    raw = bytearray(encode(msg))
    op = data.draw(st.sampled_from(["flip", "truncate", "extend"]))
    if op == "flip":
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] ^= data.draw(st.integers(1, 255))
    elif op == "truncate":
        del raw[data.draw(st.integers(0, len(raw) - 1)):]
    else:
        raw += data.draw(st.binary(min_size=1, max_size=4))
    try:
        out = decode(bytes(raw), max_bytes=BIG)
    except MalformedInput:
        return
    assert op == "flip"  # truncation and trailing bytes must always be refused
    assert encode(out) == bytes(raw)


# --- specific refusals -----------------------------------------------------------------------

PING = Ping(7, "node-a", "10.0.0.1:8471", "node-b")


def _bad(data: bytes, fragment: str, max_bytes: int = limits.MAX_DATAGRAM_PAYLOAD) -> None:
    with pytest.raises(MalformedInput) as info:
        decode(data, max_bytes=max_bytes)
    assert fragment in str(info.value)


def test_refuses_wrong_version_unknown_type_and_empty() -> None:
    good = encode(PING)
    _bad(b"", "empty")
    _bad(bytes([WIRE_VERSION + 1]) + good[1:], "wire version")
    _bad(bytes([WIRE_VERSION, 99]) + good[2:], "unknown message type")


def test_refuses_truncated_and_trailing() -> None:
    good = encode(PING)
    for cut in range(1, len(good)):
        with pytest.raises(MalformedInput):
            decode(good[:cut])
    _bad(good + b"\x00", "trailing")


def test_refuses_non_minimal_varint_and_bad_flag() -> None:
    # seq 7 written as 0x87 0x00 instead of 0x07
    body = encode(PING)
    _bad(body[:2] + b"\x87\x00" + body[3:], "minimally")
    req = encode(PingReq(1, "a", "a:1", "b", "b:1", True))
    assert req[-1] == 1
    _bad(req[:-1] + b"\x02", "flag")


def test_refuses_invalid_utf8_unknown_enum_and_bad_hash_length() -> None:
    nack = encode(Nack(1, "ab"))
    _bad(nack[:-2] + b"\xff\xfe", "UTF-8")
    item = encode(Item("o", ItemKind.POLICY_BUNDLE, "k", 1, b""))
    kind_at = item.index(bytes([int(ItemKind.POLICY_BUNDLE)]), 4)
    _bad(item[:kind_at] + b"\x63" + item[kind_at + 1:], "ItemKind")
    entry = DigestEntry("o", ItemKind.POLICY_BUNDLE, "k", 1, b"h" * 32)
    req = encode(StateRequest("a", "a:1", (entry,)))
    short = req.replace(b"\x20" + b"h" * 32, b"\x1f" + b"h" * 31)
    _bad(short, "exactly 32")


def test_refuses_oversized_fields_counts_and_datagrams() -> None:
    long_id = "x" * (limits.MAX_NODE_ID_BYTES + 1)
    with pytest.raises(ValueError, match="at most"):
        encode(Ack(1, long_id))
    # Hand-built: an id one byte over the limit.
    data = bytes([WIRE_VERSION, MessageType.ACK, 1]) + _uvarint(len(long_id)) + long_id.encode()
    _bad(data, "at most")
    # A compound claiming more parts than allowed.
    data = bytes([WIRE_VERSION, MessageType.COMPOUND]) + _uvarint(limits.MAX_COMPOUND_PARTS + 1)
    _bad(data, "at most")
    # Datagram path: a valid message larger than one datagram is refused there...
    big = encode(Item("o", ItemKind.POLICY_BUNDLE, "k", 1, b"v" * 2000))
    _bad(big, "exceeds")
    # ...and accepted on the reliable path.
    assert decode(big, max_bytes=BIG).value == b"v" * 2000  # type: ignore[union-attr]


def test_refuses_nested_compound_and_lying_part_length() -> None:
    inner = Compound((PING,))
    with pytest.raises(ValueError, match="compound"):
        encode(Compound((inner,)))
    data = bytes([WIRE_VERSION, MessageType.COMPOUND, 1, MessageType.COMPOUND, 1, 0])
    _bad(data, "nested")
    good = encode(Compound((Ack(1, "a"), Ack(2, "b"))))
    # Part 1 length byte sits after version, type, count, part type.
    lying = bytearray(good)
    lying[4] += 1
    with pytest.raises(MalformedInput):
        decode(bytes(lying))


def test_type_ids_are_append_only() -> None:
    # Changing any of these breaks every deployed peer: add new ids, never renumber.
    assert {t.name: t.value for t in MessageType} == {
        "PING": 1, "PING_REQ": 2, "ACK": 3, "NACK": 4, "ALIVE": 5, "SUSPECT": 6, "DEAD": 7,
        "LEFT": 8, "COMPOUND": 9, "MEMBER_PUSH_PULL": 10, "ITEM": 11, "STATE_DIGEST": 12,
        "STATE_REQUEST": 13, "STATE_PUSH": 14,
    }
    assert {s.name: s.value for s in MemberStatus} == {
        "ALIVE": 0, "SUSPECT": 1, "DEAD": 2, "LEFT": 3}
    assert [k.value for k in ItemKind] == [1, 2, 3, 4, 5]


def test_send_effects_uses_the_transport_seam() -> None:
    clock = VirtualClock()
    import random

    net = MemoryNetwork(random.Random(1), latency=0.01)
    a = net.endpoint("a:1", clock)
    b = net.endpoint("b:1", clock)
    marker = object()
    events = send_effects([Send("b:1", PING), Send("b:1", Ack(1, "a"), reliable=True),
                           marker], a)  # type: ignore[list-item]
    assert events == [marker]
    assert b.poll() == []  # not yet arrived
    clock.advance(0.02)
    got = b.poll()
    assert [(d.sender, decode(d.payload, max_bytes=BIG), d.reliable) for d in got] == [
        ("a:1", PING, False), ("a:1", Ack(1, "a"), True)]
    with pytest.raises(ValueError, match="MAX_DATAGRAM_PAYLOAD"):
        a.send_datagram("b:1", b"x" * (limits.MAX_DATAGRAM_PAYLOAD + 1))
