"""Signed membership statements: what is signed, by whom, and the cache of verified ones.

Owns: the bytes a membership statement's signature covers (:func:`signed_bytes`), who must
have signed each kind (:func:`signer_of`), signing our own statements
(:class:`StatementSigner`), and :class:`StatementVerifier`, which checks a statement
against its signer's attested key once and remembers the verdict (a rumor reaches a node
many times and every push-pull repeats the table: each distinct statement costs one
Ed25519 verification).

Must never: read files, the clock or the network. Which public key belongs to which node
comes from the caller (``node/`` knows certificates from adverts and TLS handshakes).

Who signs what::

    Alive(node_id, address, incarnation, meta)   node_id     (the subject)
    Left(node_id, incarnation)                   node_id     (the subject)
    Suspect(node_id, incarnation, from_id)       from_id     (the accuser)
    Dead(node_id, incarnation, from_id)          from_id     (the accuser)
    Ack(seq, source_id, for_id)                  source_id   (only relayed acks are signed)

The signature covers ``DOMAIN`` followed by the canonical wire encoding of the message with
an empty ``sig``; the domain separates these signatures from the node key's other uses
(datagram envelopes, adverts, checkpoints).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from federation.limits import MAX_VERIFIED_CACHE, SIGNATURE_BYTES
from federation.messages import Ack, Alive, Dead, Left, Message, Suspect, encode

__all__ = [
    "DOMAIN",
    "SIGNED_TYPES",
    "Ed25519Signer",
    "StatementSigner",
    "StatementVerifier",
    "sign",
    "signed_bytes",
    "signer_of",
]

DOMAIN = b"outpost.member-statement/1\x00"
SIGNED_TYPES = frozenset({Alive, Left, Suspect, Dead, Ack})
Signable = Alive | Left | Suspect | Dead | Ack
M = TypeVar("M", Alive, Left, Suspect, Dead, Ack)


def signer_of(msg: Signable) -> str:
    """The node whose key must have signed ``msg``."""
    if type(msg) is Suspect or type(msg) is Dead:
        return msg.from_id
    if type(msg) is Ack:
        return msg.source_id
    return msg.node_id  # type: ignore[union-attr]


def signed_bytes(msg: Signable) -> bytes:
    """What the signature of ``msg`` covers."""
    return DOMAIN + encode(dataclasses.replace(msg, sig=b""))


class StatementSigner(Protocol):
    """Signs this node's own statements (the membership core holds one)."""

    def sign(self, data: bytes) -> bytes:
        ...


@dataclasses.dataclass(frozen=True)
class Ed25519Signer:
    """A :class:`StatementSigner` over the node's Ed25519 key."""

    key: Ed25519PrivateKey

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data)


def sign(signer: StatementSigner | None, msg: M) -> M:
    """``msg`` with its signature (unchanged when ``signer`` is None: unsigned mode)."""
    if signer is None:
        return msg
    return dataclasses.replace(msg, sig=signer.sign(signed_bytes(msg)))


#: node id -> its attested public key, or None while no valid certificate is known.
KeyLookup = Callable[[str], Ed25519PublicKey | None]
#: (signer, signed bytes, signature) -> valid? None when the signer's key is unknown.
RawVerify = Callable[[str, bytes, bytes], bool | None]


class StatementVerifier:
    """Checks statements against their signers' keys; each distinct statement once.

    :meth:`check` answers True (valid), False (bad or missing signature: drop it) or None
    (no certificate known for the signer yet: admission waits). Valid verdicts are cached
    (bounded LRU); unknown-key verdicts are not, so a statement is re-checked once the
    certificate arrives. ``stats`` counts real verifications, cache hits and failures.
    """

    def __init__(self, lookup: KeyLookup | None = None, *, raw: RawVerify | None = None,
                 cache_size: int = MAX_VERIFIED_CACHE) -> None:
        if (lookup is None) == (raw is None):
            raise ValueError("give exactly one of lookup (public keys) or raw (a verifier)")
        self._lookup = lookup
        self._raw = raw
        self._cache: OrderedDict[Message, bool] = OrderedDict()
        self._max = cache_size
        self.stats: dict[str, int] = dict.fromkeys(
            ("verifications", "cache_hits", "invalid", "unknown_key"), 0)

    def check(self, msg: Signable) -> bool | None:
        cache = self._cache
        verdict = cache.get(msg)
        if verdict is not None:
            cache.move_to_end(msg)
            self.stats["cache_hits"] += 1
            return verdict
        sig = msg.sig
        if len(sig) != SIGNATURE_BYTES:
            self.stats["invalid"] += 1
            return False
        signer = signer_of(msg)
        result = self._verify(signer, msg, sig)
        if result is None:
            self.stats["unknown_key"] += 1
            return None
        self.stats["verifications"] += 1
        if not result:
            self.stats["invalid"] += 1
        cache[msg] = result
        if len(cache) > self._max:
            cache.popitem(last=False)
        return result

    def forget(self, node_id: str) -> None:
        """Drop cached verdicts signed by ``node_id`` (its certificate was revoked)."""
        for msg in [m for m in self._cache if signer_of(m) == node_id]:  # type: ignore[arg-type]
            del self._cache[msg]

    def _verify(self, signer: str, msg: Signable, sig: bytes) -> bool | None:
        if self._raw is not None:
            return self._raw(signer, signed_bytes(msg), sig)
        assert self._lookup is not None
        key = self._lookup(signer)
        if key is None:
            return None
        try:
            key.verify(sig, signed_bytes(msg))
        except InvalidSignature:
            return False
        return True
