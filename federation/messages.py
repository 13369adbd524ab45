"""Wire messages for membership and state sync, their codec, and the transport seam.

Owns: one frozen dataclass per wire message; the append-only type ids; a compact
deterministic tag-length encoding (:func:`encode` / :func:`decode`); the ``Send`` effect
the cores return; and the :class:`Transport` protocol that ``node/`` (UDP + HTTPS) and
``federation.testing`` (memory) implement.

Must never: sign, verify, open sockets or read the clock. Signing is the I/O layer's job:
it signs the bytes :func:`encode` returns with the node key and verifies before calling
:func:`decode`, so the cores deal only in messages.

Encoding (every message; all integers unsigned LEB128, minimal form)::

    message  = WIRE_VERSION  type:uvarint  body
    body     = field*                       fields in dataclass order, no names
    uint     = uvarint                      0 .. 2**64-1
    bool     = 0x00 | 0x01
    str      = len:uvarint  utf-8           len bounded per field (see ``limits``)
    bytes    = len:uvarint  raw
    enum     = uvarint                      must be a known member
    struct   = body                         nested dataclass, untagged
    optional = 0x00 | 0x01 struct
    tuple    = count:uvarint element*       count bounded per field
    part     = type:uvarint len:uvarint body   compound parts only; no nested compounds

The encoding is canonical: every message has exactly one encoding, and :func:`decode`
refuses anything else (non-minimal varints, bools other than 0/1, invalid UTF-8,
trailing bytes, unknown types or enum values, over-long fields), so
``encode(decode(b)) == b`` for every ``b`` that decodes.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Annotated, Any, ClassVar, NamedTuple, Protocol, Union

from federation.errors import MalformedInput
from federation.limits import (
    DIGEST_HASH_BYTES,
    MAX_ADDRESS_BYTES,
    MAX_COMPOUND_PARTS,
    MAX_DATAGRAM_PAYLOAD,
    MAX_DIGEST_ENTRIES,
    MAX_ITEM_KEY_BYTES,
    MAX_ITEM_VALUE_BYTES,
    MAX_META_BYTES,
    MAX_NODE_ID_BYTES,
    MAX_PUSH_ITEMS,
    MAX_REQUEST_ENTRIES,
    MAX_TABLE_STATEMENTS,
    MAX_UINT,
    SIGNATURE_BYTES,
)

__all__ = [
    "WIRE_VERSION",
    "Ack",
    "Alive",
    "Compound",
    "Dead",
    "DigestEntry",
    "Effect",
    "Event",
    "Item",
    "ItemKind",
    "ItemRef",
    "Left",
    "Member",
    "MemberPushPull",
    "MemberStatus",
    "Message",
    "MessageType",
    "Nack",
    "Ping",
    "PingReq",
    "Send",
    "StateDigest",
    "StatePush",
    "StateRequest",
    "Suspect",
    "Transport",
    "compound_overhead",
    "decode",
    "encode",
    "encoded_size",
    "part_size",
    "send_effects",
    "sources_match",
]

#: First byte of every encoded message. Bump only for an incompatible change of the
#: framing itself; new messages get new type ids instead.
WIRE_VERSION = 1


class MessageType(IntEnum):
    """Wire type ids. ONLY APPEND: ids are on the wire; never renumber or reuse one."""

    PING = 1
    PING_REQ = 2
    ACK = 3
    NACK = 4
    ALIVE = 5
    SUSPECT = 6
    DEAD = 7
    LEFT = 8
    COMPOUND = 9
    MEMBER_PUSH_PULL = 10
    ITEM = 11
    STATE_DIGEST = 12
    STATE_REQUEST = 13
    STATE_PUSH = 14


class MemberStatus(IntEnum):
    """A member's state as one node sees it. ONLY APPEND (carried in push-pull tables)."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


class ItemKind(IntEnum):
    """Kinds of signed items state sync carries. ONLY APPEND (part of item identity)."""

    CAPABILITY_ADVERT = 1
    POLICY_BUNDLE = 2
    REVOCATION_LIST = 3
    AUDIT_CHECKPOINT = 4
    EQUIVOCATION_EVIDENCE = 5


# --- field bounds ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _MaxLen:
    limit: int
    exact: bool = False


NodeId = Annotated[str, _MaxLen(MAX_NODE_ID_BYTES)]
Address = Annotated[str, _MaxLen(MAX_ADDRESS_BYTES)]
ItemKey = Annotated[str, _MaxLen(MAX_ITEM_KEY_BYTES)]
Meta = Annotated[bytes, _MaxLen(MAX_META_BYTES)]
Value = Annotated[bytes, _MaxLen(MAX_ITEM_VALUE_BYTES)]
Hash = Annotated[bytes, _MaxLen(DIGEST_HASH_BYTES, exact=True)]
#: An Ed25519 signature (64 bytes), or empty where the format allows an unsigned form.
Sig = Annotated[bytes, _MaxLen(SIGNATURE_BYTES)]


# --- membership messages -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ping:
    """Direct probe. ``target_id`` lets a node that now holds the address ignore a probe
    meant for its predecessor instead of acking for it. ``for_id`` is set when a relay
    probes on behalf of ``for_id`` (SWIM ping-req): the target then answers with an ack
    it signs for ``for_id``, which the relay forwards unchanged. ``source_addr`` is
    informational only: answers go to the address the pinger signed."""

    TYPE: ClassVar[MessageType] = MessageType.PING
    seq: int
    source_id: NodeId
    source_addr: Address
    target_id: NodeId
    for_id: Annotated[str, _MaxLen(MAX_NODE_ID_BYTES)] = ""


@dataclass(frozen=True, slots=True)
class PingReq:
    """Ask the receiver to probe ``target`` for us and relay the ack (SWIM indirect probe).
    With ``want_nack`` the relay also answers if the target stays silent (Lifeguard).
    ``target_addr`` is never used as a destination: the relay probes the address the
    target signed (no reflection)."""

    TYPE: ClassVar[MessageType] = MessageType.PING_REQ
    seq: int
    source_id: NodeId
    source_addr: Address
    target_id: NodeId
    target_addr: Address
    want_nack: bool


@dataclass(frozen=True, slots=True)
class Ack:
    """Answer to a ping, or relayed answer to a ping-req (same ``seq`` as the request).

    A direct ack is unsigned: the datagram envelope proves ``source_id`` sent it. An ack
    for a relayed probe names the node it is ``for_id`` and carries ``source_id``'s
    signature, so the relay can forward it byte for byte and cannot forge one."""

    TYPE: ClassVar[MessageType] = MessageType.ACK
    seq: int
    source_id: NodeId
    for_id: Annotated[str, _MaxLen(MAX_NODE_ID_BYTES)] = ""
    sig: Sig = b""


@dataclass(frozen=True, slots=True)
class Nack:
    """A relay's "I asked, the target did not answer": proves the relay is healthy, so a
    missing nack counts against our own health (Lifeguard)."""

    TYPE: ClassVar[MessageType] = MessageType.NACK
    seq: int
    source_id: NodeId


@dataclass(frozen=True, slots=True)
class Alive:
    """Statement by ``node_id`` (``sig`` is its signature): alive at ``incarnation``,
    reachable at ``address``. Relayers carry it unchanged."""

    TYPE: ClassVar[MessageType] = MessageType.ALIVE
    node_id: NodeId
    address: Address
    incarnation: int
    meta: Meta
    sig: Sig = b""


@dataclass(frozen=True, slots=True)
class Suspect:
    """Accusation signed by ``from_id``: it suspects ``node_id`` at ``incarnation``."""

    TYPE: ClassVar[MessageType] = MessageType.SUSPECT
    node_id: NodeId
    incarnation: int
    from_id: NodeId
    sig: Sig = b""


@dataclass(frozen=True, slots=True)
class Dead:
    """Accusation signed by ``from_id``: its suspicion of ``node_id`` at ``incarnation``
    expired. Receivers count it as a suspicion by ``from_id`` and decide for themselves."""

    TYPE: ClassVar[MessageType] = MessageType.DEAD
    node_id: NodeId
    incarnation: int
    from_id: NodeId
    sig: Sig = b""


@dataclass(frozen=True, slots=True)
class Left:
    """Statement by ``node_id`` (signed): it left gracefully at ``incarnation``."""

    TYPE: ClassVar[MessageType] = MessageType.LEFT
    node_id: NodeId
    incarnation: int
    sig: Sig = b""


@dataclass(frozen=True, slots=True)
class Member:
    """One row of a member table: also the record ``membership`` keeps and reports."""

    node_id: NodeId
    address: Address
    incarnation: int
    status: MemberStatus
    meta: Meta


@dataclass(frozen=True, slots=True)
class MemberPushPull:
    """Full member table, sent over the reliable path (join, anti-entropy, reconnect):
    the signed statements the sender holds (each member's ``Alive``, and the ``Left``,
    ``Suspect`` or ``Dead`` behind a non-alive status), carried unchanged. The receiver
    merges it and, unless ``reply`` is set, answers with its own."""

    TYPE: ClassVar[MessageType] = MessageType.MEMBER_PUSH_PULL
    source_id: NodeId
    source_addr: Address
    join: bool
    reply: bool
    statements: Annotated[tuple[Message, ...], _MaxLen(MAX_TABLE_STATEMENTS)]


# --- state sync messages -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Item:
    """A versioned signed item, opaque here but for its identity and version. As a
    compound part it is a rumor; nested in :class:`StatePush` it is an anti-entropy push."""

    TYPE: ClassVar[MessageType] = MessageType.ITEM
    origin: NodeId
    kind: ItemKind
    key: ItemKey
    version: int
    value: Value

    @property
    def ref(self) -> ItemRef:
        return ItemRef(self.origin, self.kind, self.key)


@dataclass(frozen=True, slots=True, order=True)
class ItemRef:
    """Identity of an item slot: (origin, kind, key). Orders the digest key space."""

    origin: NodeId
    kind: ItemKind
    key: ItemKey


@dataclass(frozen=True, slots=True)
class DigestEntry:
    """One held value: its slot, version and SHA-256, so equal versions with different
    values (equivocation) are visible in digests."""

    origin: NodeId
    kind: ItemKind
    key: ItemKey
    version: int
    value_hash: Hash


@dataclass(frozen=True, slots=True)
class StateDigest:
    """One page of the sender's store: every held value with ``lower < ref <= upper``
    (None = unbounded). Absence inside the range means "I do not hold it"."""

    TYPE: ClassVar[MessageType] = MessageType.STATE_DIGEST
    source_id: NodeId
    source_addr: Address
    lower: ItemRef | None
    upper: ItemRef | None
    entries: Annotated[tuple[DigestEntry, ...], _MaxLen(MAX_DIGEST_ENTRIES)]


@dataclass(frozen=True, slots=True)
class StateRequest:
    """Values the sender lacks, by exact (slot, version, hash)."""

    TYPE: ClassVar[MessageType] = MessageType.STATE_REQUEST
    source_id: NodeId
    source_addr: Address
    wants: Annotated[tuple[DigestEntry, ...], _MaxLen(MAX_REQUEST_ENTRIES)]


@dataclass(frozen=True, slots=True)
class StatePush:
    """Items the receiver lacks or holds older, sent over the reliable path."""

    TYPE: ClassVar[MessageType] = MessageType.STATE_PUSH
    source_id: NodeId
    items: Annotated[tuple[Item, ...], _MaxLen(MAX_PUSH_ITEMS)]


@dataclass(frozen=True, slots=True)
class Compound:
    """Several messages in one datagram: a probe plus piggybacked rumors, or a gossip
    round's rumors. Parts are never compounds themselves."""

    TYPE: ClassVar[MessageType] = MessageType.COMPOUND
    parts: Annotated[tuple[Message, ...], _MaxLen(MAX_COMPOUND_PARTS)]


Message = (
    Ping | PingReq | Ack | Nack | Alive | Suspect | Dead | Left | MemberPushPull
    | Item | StateDigest | StateRequest | StatePush | Compound
)


# --- effects and the transport seam --------------------------------------------------------


class Event:
    """Base of every event the cores report (member and item events). Events are facts
    for the caller to act on (log, persist, re-evaluate placement); they never need a
    reply to the core."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Send:
    """Effect: deliver ``msg`` to the peer at ``to``.

    ``reliable=False``: one signed UDP datagram; loss is expected and tolerated.
    ``reliable=True``: the HTTPS/mTLS path (full-state exchanges, large items); the I/O
    layer retries nothing, the protocol's periodic exchanges make up for failures.
    """

    to: str
    msg: Message
    reliable: bool = False


Effect = Send | Event


class Transport(Protocol):
    """How ``node/`` (or the in-memory twin) carries encoded messages.

    The cores never call it: they return :class:`Send` effects, :func:`send_effects`
    encodes them and calls these methods. Incoming bytes are verified by the transport,
    passed through :func:`decode` and handed to ``Membership.receive``.
    """

    def send_datagram(self, to: str, payload: bytes) -> None:
        """Send ``payload`` (at most ``limits.MAX_DATAGRAM_PAYLOAD`` bytes) as one signed
        UDP datagram to ``to`` (``host:port``). Must not block; drop on a full buffer."""
        ...

    def send_stream(self, to: str, payload: bytes) -> None:
        """Deliver ``payload`` (at most ``limits.MAX_STREAM_MESSAGE_BYTES``) over the
        authenticated reliable path (HTTPS with mutual TLS) to ``to``. Must not block the
        caller: schedule the request and report failures to the log, not to the core."""
        ...


def sources_match(msg: Message, node_id: str) -> bool:
    """Every part that names its sender names ``node_id`` (the authenticated one: the
    datagram envelope's signer or the TLS peer). Relayed acks are the exception: they name
    the probed node and carry its own signature, which the membership core checks."""
    parts = msg.parts if type(msg) is Compound else (msg,)
    for part in parts:
        source = getattr(part, "source_id", None)
        if source is None or source == node_id:
            continue
        if type(part) is Ack and part.for_id and part.sig:
            continue
        return False
    return True


def send_effects(effects: Iterable[Effect], transport: Transport) -> list[Event]:
    """Encode and send every :class:`Send` through ``transport``; return the events."""
    events: list[Event] = []
    for effect in effects:
        if isinstance(effect, Send):
            if effect.reliable:
                transport.send_stream(effect.to, encode(effect.msg))
            else:
                transport.send_datagram(effect.to, encode(effect.msg))
        else:
            events.append(effect)
    return events


# --- codec ---------------------------------------------------------------------------------

_Encoder = Callable[[Any, bytearray], None]
_Decoder = Callable[[bytes, int], tuple[Any, int]]
_Sizer = Callable[[Any], int]


class _Codec(NamedTuple):
    enc: _Encoder
    dec: _Decoder
    size: _Sizer  # == len of what enc writes, computed without building bytes


def _put_uvarint(value: int, out: bytearray) -> None:
    if value < 0 or value > MAX_UINT:
        raise ValueError(f"integer {value} is outside the wire range 0 .. 2**64-1")
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _uvarint_len(value: int) -> int:
    if value < 0x80:
        return 1
    return (value.bit_length() + 6) // 7


def _get_uvarint(buf: bytes, pos: int) -> tuple[int, int]:
    if pos >= len(buf):
        raise MalformedInput("message is truncated (expected an integer); drop the datagram")
    byte = buf[pos]
    if byte < 0x80:
        return byte, pos + 1
    result = byte & 0x7F
    shift = 7
    pos += 1
    while True:
        if pos >= len(buf):
            raise MalformedInput("message is truncated inside an integer; drop it")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            if byte == 0:
                raise MalformedInput("integer is not minimally encoded; drop the message")
            break
        shift += 7
        if shift > 63:
            raise MalformedInput("integer longer than 10 bytes; drop the message")
    if result > MAX_UINT:
        raise MalformedInput("integer exceeds 2**64-1; drop the message")
    return result, pos


def _enc_bool(value: bool, out: bytearray) -> None:
    out.append(1 if value else 0)


def _dec_bool(buf: bytes, pos: int) -> tuple[bool, int]:
    if pos >= len(buf):
        raise MalformedInput("message is truncated (expected a flag); drop it")
    byte = buf[pos]
    if byte > 1:
        raise MalformedInput(f"flag byte must be 0 or 1, got {byte}; drop the message")
    return byte == 1, pos + 1


def _size_one(value: Any) -> int:
    return 1


_UINT = _Codec(_put_uvarint, _get_uvarint, _uvarint_len)
_BOOL = _Codec(_enc_bool, _dec_bool, _size_one)


def _bytes_codec(limit: int, exact: bool, what: str) -> _Codec:
    def check(n: int) -> bool:
        return n == limit if exact else n <= limit

    rule = f"exactly {limit}" if exact else f"at most {limit}"

    def enc_bytes(value: bytes, out: bytearray) -> None:
        if not check(len(value)):
            raise ValueError(f"{what} must be {rule} bytes, got {len(value)}")
        _put_uvarint(len(value), out)
        out += value

    def dec_bytes(buf: bytes, pos: int) -> tuple[bytes, int]:
        n, pos = _get_uvarint(buf, pos)
        if not check(n):
            raise MalformedInput(f"{what} must be {rule} bytes, got {n}; drop the message")
        end = pos + n
        if end > len(buf):
            raise MalformedInput(f"message is truncated inside {what}; drop it")
        return buf[pos:end], end

    def size_bytes(value: bytes) -> int:
        n = len(value)
        return n + _uvarint_len(n)

    return _Codec(enc_bytes, dec_bytes, size_bytes)


def _str_codec(limit: int, what: str) -> _Codec:
    raw = _bytes_codec(limit, False, what)

    def enc_str(value: str, out: bytearray) -> None:
        try:
            data = value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"{what} is not encodable as UTF-8: {exc}") from exc
        raw.enc(data, out)

    def dec_str(buf: bytes, pos: int) -> tuple[str, int]:
        data, pos = raw.dec(buf, pos)
        try:
            return data.decode("utf-8"), pos
        except UnicodeDecodeError as exc:
            raise MalformedInput(f"{what} is not valid UTF-8; drop the message") from exc

    def size_str(value: str) -> int:
        n = len(value) if value.isascii() else len(value.encode("utf-8"))
        return n + _uvarint_len(n)

    return _Codec(enc_str, dec_str, size_str)


def _enum_codec(cls: type[IntEnum]) -> _Codec:
    known = {int(m): m for m in cls}

    def enc_enum(value: IntEnum, out: bytearray) -> None:
        _put_uvarint(int(value), out)

    def dec_enum(buf: bytes, pos: int) -> tuple[IntEnum, int]:
        raw, pos = _get_uvarint(buf, pos)
        member = known.get(raw)
        if member is None:
            raise MalformedInput(f"unknown {cls.__name__} value {raw}; drop the message")
        return member, pos

    def size_enum(value: IntEnum) -> int:
        return _uvarint_len(int(value))

    return _Codec(enc_enum, dec_enum, size_enum)


_STRUCTS: dict[type, _Codec] = {}
_BY_TYPE: dict[int, type] = {}


def _struct_codec(cls: type) -> _Codec:
    cached = _STRUCTS.get(cls)
    if cached is not None:
        return cached
    hints = typing.get_type_hints(cls, include_extras=True)
    names = [f.name for f in dataclasses.fields(cls)]
    codecs = [_field_codec(hints[name], f"{cls.__name__}.{name}") for name in names]
    enc_pairs = [(name, c.enc) for name, c in zip(names, codecs, strict=True)]
    size_pairs = [(name, c.size) for name, c in zip(names, codecs, strict=True)]
    decoders = [c.dec for c in codecs]

    def enc_struct(value: Any, out: bytearray) -> None:
        for name, enc in enc_pairs:
            enc(getattr(value, name), out)

    def dec_struct(buf: bytes, pos: int) -> tuple[Any, int]:
        values = []
        for dec in decoders:
            value, pos = dec(buf, pos)
            values.append(value)
        return cls(*values), pos

    def size_struct(value: Any) -> int:
        return sum(size(getattr(value, name)) for name, size in size_pairs)

    codec = _STRUCTS[cls] = _Codec(enc_struct, dec_struct, size_struct)
    return codec


def _field_codec(hint: Any, what: str) -> _Codec:
    limit: _MaxLen | None = None
    if typing.get_origin(hint) is Annotated:
        base, *extras = typing.get_args(hint)
        limit = next((e for e in extras if isinstance(e, _MaxLen)), None)
        hint = base
    origin = typing.get_origin(hint)
    if hint is bool:
        return _BOOL
    if hint is int:
        return _UINT
    if hint is str:
        if limit is None:
            raise TypeError(f"{what}: str fields need a length bound")
        return _str_codec(limit.limit, what)
    if hint is bytes:
        if limit is None:
            raise TypeError(f"{what}: bytes fields need a length bound")
        return _bytes_codec(limit.limit, limit.exact, what)
    if isinstance(hint, type) and issubclass(hint, IntEnum):
        return _enum_codec(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _struct_codec(hint)
    if origin is tuple:
        args = typing.get_args(hint)
        if limit is None or len(args) != 2 or args[1] is not Ellipsis:
            raise TypeError(f"{what}: tuples must be tuple[X, ...] with a count bound")
        return _tuple_codec(args[0], limit.limit, what)
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        if len(args) == 2 and type(None) in args:
            inner = args[0] if args[1] is type(None) else args[1]
            return _optional_codec(inner, what)
        return _Codec(_enc_part, _dec_part, part_size)
    raise TypeError(f"{what}: no wire encoding for {hint!r}")


def _optional_codec(inner: Any, what: str) -> _Codec:
    codec = _field_codec(inner, what)

    def enc_opt(value: Any, out: bytearray) -> None:
        if value is None:
            out.append(0)
        else:
            out.append(1)
            codec.enc(value, out)

    def dec_opt(buf: bytes, pos: int) -> tuple[Any, int]:
        present, pos = _dec_bool(buf, pos)
        if not present:
            return None, pos
        return codec.dec(buf, pos)

    def size_opt(value: Any) -> int:
        return 1 if value is None else 1 + codec.size(value)

    return _Codec(enc_opt, dec_opt, size_opt)


def _tuple_codec(element: Any, limit: int, what: str) -> _Codec:
    el = _field_codec(element, what)

    def enc_tuple(value: Sequence[Any], out: bytearray) -> None:
        if len(value) > limit:
            raise ValueError(f"{what} holds at most {limit} entries, got {len(value)}")
        _put_uvarint(len(value), out)
        for v in value:
            el.enc(v, out)

    def dec_tuple(buf: bytes, pos: int) -> tuple[tuple[Any, ...], int]:
        count, pos = _get_uvarint(buf, pos)
        if count > limit:
            raise MalformedInput(f"{what} holds at most {limit} entries, got {count}; "
                                 "drop the message")
        # Every element takes at least one byte: refuse impossible counts before looping.
        if count > len(buf) - pos:
            raise MalformedInput(f"message is truncated inside {what}; drop it")
        items = []
        for _ in range(count):
            v, pos = el.dec(buf, pos)
            items.append(v)
        return tuple(items), pos

    def size_tuple(value: Sequence[Any]) -> int:
        size = el.size
        return _uvarint_len(len(value)) + sum(size(v) for v in value)

    return _Codec(enc_tuple, dec_tuple, size_tuple)


# Rumors are piggybacked on many datagrams; their encoded bodies are memoised (bounded, and
# only small ones) so budgeting and encoding do not re-encode the same frozen message.
_PART_CACHE: dict[Any, bytes] = {}
_PART_CACHE_MAX = 8192
_CACHEABLE = frozenset({Alive, Suspect, Dead, Left, Item})


def _body(msg: Any) -> bytes:
    try:
        enc = _STRUCTS[type(msg)].enc
    except KeyError:
        raise TypeError(f"{type(msg).__name__} is not a wire message") from None
    out = bytearray()
    enc(msg, out)
    return bytes(out)


def _part_body(msg: Any) -> bytes:
    if type(msg) not in _CACHEABLE:
        return _body(msg)
    body = _PART_CACHE.get(msg)
    if body is None:
        body = _body(msg)
        if len(body) <= MAX_DATAGRAM_PAYLOAD:
            if len(_PART_CACHE) >= _PART_CACHE_MAX:
                _PART_CACHE.clear()
            _PART_CACHE[msg] = body
    return body


def _body_size(msg: Any) -> int:
    if type(msg) in _CACHEABLE:
        body = _PART_CACHE.get(msg)
        if body is not None:
            return len(body)
        if type(msg) is not Item:  # small rumors: encode once, reuse many times
            return len(_part_body(msg))
    try:
        size = _STRUCTS[type(msg)].size
    except KeyError:
        raise TypeError(f"{type(msg).__name__} is not a wire message") from None
    return size(msg)


def _enc_part(value: Any, out: bytearray) -> None:
    if type(value) is Compound:
        raise ValueError("a compound message cannot contain another compound")
    body = _part_body(value)
    _put_uvarint(int(value.TYPE), out)
    _put_uvarint(len(body), out)
    out += body


def _dec_part(buf: bytes, pos: int) -> tuple[Any, int]:
    type_id, pos = _get_uvarint(buf, pos)
    cls = _BY_TYPE.get(type_id)
    if cls is None or cls is Compound:
        raise MalformedInput(f"unknown or nested message type {type_id} in a compound; "
                             "drop the datagram")
    length, pos = _get_uvarint(buf, pos)
    end = pos + length
    if end > len(buf):
        raise MalformedInput("compound part is truncated; drop the datagram")
    # Decoding against the whole buffer (no copy) is safe: a body that strays past its
    # declared end cannot also stop exactly at it.
    value, stop = _STRUCTS[cls].dec(buf, pos)
    if stop != end:
        raise MalformedInput("compound part length does not match its body; drop it")
    return value, end


def encode(msg: Message) -> bytes:
    """Encode ``msg`` canonically. Raises ValueError if a field breaks a wire bound (a bug
    in the caller: the cores never build such messages)."""
    out = bytearray((WIRE_VERSION,))
    _put_uvarint(int(msg.TYPE), out)
    out += _part_body(msg)
    return bytes(out)


def decode(data: bytes, *, max_bytes: int = MAX_DATAGRAM_PAYLOAD) -> Message:
    """Decode one message, or raise MalformedInput saying what was wrong.

    ``max_bytes`` is the path's budget: the default suits datagrams; pass
    ``limits.MAX_STREAM_MESSAGE_BYTES`` for the reliable path.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedInput(f"expected bytes, got {type(data).__name__}")
    buf = bytes(data)
    if len(buf) > max_bytes:
        raise MalformedInput(f"message of {len(buf)} bytes exceeds the {max_bytes}-byte "
                             "limit for this path; drop it (large exchanges use HTTPS)")
    if not buf:
        raise MalformedInput("empty message; drop it")
    if buf[0] != WIRE_VERSION:
        raise MalformedInput(f"wire version {buf[0]} is not {WIRE_VERSION}; the peer runs an "
                             "incompatible release, upgrade one side")
    type_id, pos = _get_uvarint(buf, 1)
    cls = _BY_TYPE.get(type_id)
    if cls is None:
        raise MalformedInput(f"unknown message type {type_id}; drop it")
    value, pos = _STRUCTS[cls].dec(buf, pos)
    if pos != len(buf):
        raise MalformedInput(f"{len(buf) - pos} trailing bytes after the message; drop it")
    return typing.cast(Message, value)


def encoded_size(msg: Message) -> int:
    """Bytes :func:`encode` produces for ``msg``, computed without encoding it."""
    return 1 + _uvarint_len(int(msg.TYPE)) + _body_size(msg)


def part_size(msg: Message) -> int:
    """Bytes ``msg`` takes as one part of a :class:`Compound`."""
    n = _body_size(msg)
    return _uvarint_len(int(msg.TYPE)) + _uvarint_len(n) + n


def compound_overhead(parts: int) -> int:
    """Bytes a compound adds around its parts: version, type id and part count."""
    return 1 + _uvarint_len(int(MessageType.COMPOUND)) + _uvarint_len(parts)


def _register() -> None:
    for cls in typing.get_args(Message):
        _BY_TYPE[int(cls.TYPE)] = cls
    for cls in typing.get_args(Message):
        _struct_codec(cls)
    missing = set(MessageType) - {MessageType(t) for t in _BY_TYPE}
    if missing:
        raise TypeError(f"message types without a class: {sorted(missing)}")


_register()
