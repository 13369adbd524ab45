"""Signed policy bundles: the format, signing, verification and the no-rollback rule.

This module owns the policy bundle file format (a contract: the CLI writes it, every node reads
it, gossip and sync bundles carry it byte for byte). It must never do I/O, read the clock or
evaluate a decision; ``issued_at`` is passed in and evaluation lives in ``policy_engine``.

Bundle file format (``outpost.policy-bundle/1``) — the file is the RFC 8785 canonical JSON of::

    {
      "bundle": {                                  # the signed document
        "format": "outpost.policy-bundle/1",
        "federation": "<federation name>",
        "version": <int, 1 .. 2**53-1; strictly increasing per federation>,
        "issued_at": "<RFC 3339 UTC, e.g. 2025-01-31T12:00:00Z>",
        "policies": "<Cedar policy text>",
        "schema": "<Cedar schema text>" | {<Cedar JSON schema>},   # optional, absent if none
        "entities": [<Cedar JSON entities>, ...]                   # optional, absent if none
      },
      "key_id": "<hex SHA-256 of the authority's 32-byte raw Ed25519 public key>",
      "signature": "<standard base64 of the Ed25519 signature over RFC8785(bundle)>"
    }

The signature covers exactly the canonical bytes of the ``bundle`` object; ``format`` inside it
separates bundle signatures from other authority-signed documents. Readers refuse a file that is
not itself in canonical form (one encoding per bundle, so gossip digests agree), unknown or
duplicate keys, non-canonical base64, a ``key_id`` other than the expected authority's, and
files over :data:`MAX_BUNDLE_BYTES`. The Cedar text must parse (and validate against ``schema`` when one
is given) before a bundle is signed or accepted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from federation.canonical import b64decode, b64encode, canonical_json, parse_json_object, sha256_hex
from federation.errors import BadSignature, MalformedInput, RollbackRefused
from federation.identity import validate_federation_name
from federation.policy_cedar import CompiledPolicies, EntitiesDoc, Schema, compile_policies

__all__ = [
    "BUNDLE_FORMAT",
    "MAX_BUNDLE_BYTES",
    "PolicyBundle",
    "authority_key_id",
    "read_bundle",
    "sign_bundle",
]

BUNDLE_FORMAT = "outpost.policy-bundle/1"

#: Bundles arrive from peers and sync media and are held in memory on every node. An estate's
#: Cedar text, schema and group entities are kilobytes; 1 MiB is ample headroom while bounding
#: what one forged or runaway file can make every node parse before the signature check.
MAX_BUNDLE_BYTES = 1 << 20

_MAX_VERSION = 2**53 - 1  # largest integer RFC 8785 (I-JSON) numbers carry exactly
_RFC3339_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z")
_REQUIRED = frozenset({"format", "federation", "version", "issued_at", "policies"})
_OPTIONAL = frozenset({"schema", "entities"})
_ENVELOPE = frozenset({"bundle", "key_id", "signature"})


@dataclass(frozen=True, slots=True)
class PolicyBundle:
    """A verified bundle. Build it with :func:`read_bundle`; ``raw`` is the file to gossip."""

    federation: str
    version: int
    issued_at: str
    policies: str
    schema: Schema | None
    entities: tuple[Mapping[str, Any], ...] | None
    key_id: str
    #: hex SHA-256 of the signed canonical ``bundle`` bytes; two bundles with one version and
    #: different digests are the authority equivocating.
    digest: str
    raw: bytes = field(repr=False)
    compiled: CompiledPolicies = field(repr=False, compare=False)

    def accepts_update(self, new: PolicyBundle) -> None:
        """Raise :class:`RollbackRefused` unless ``new`` is strictly newer than this bundle."""
        if new.version <= self.version:
            raise RollbackRefused(
                f"bundle version {new.version} is not newer than the version {self.version} "
                f"in force; sign it with --version {self.version + 1} or higher"
            )


def authority_key_id(public_key: Ed25519PublicKey) -> str:
    """Hex SHA-256 of the raw 32-byte public key: the ``key_id`` a bundle names."""
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return sha256_hex(raw)


def sign_bundle(
    authority_key: Ed25519PrivateKey,
    policies: str,
    version: int,
    issued_at: str,
    federation: str,
    schema: Schema | None = None,
    entities: EntitiesDoc | None = None,
) -> bytes:
    """Return the signed bundle file; refuse (PolicyError) Cedar that would not be accepted."""
    document: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "federation": federation,
        "version": version,
        "issued_at": issued_at,
        "policies": policies,
    }
    if schema is not None:
        document["schema"] = schema if isinstance(schema, str) else dict(schema)
    if entities is not None:
        document["entities"] = [dict(e) for e in entities]
    _check_fields(document)
    compile_policies(policies, schema, entities)
    body = canonical_json(document)
    envelope = {
        "bundle": document,
        "key_id": authority_key_id(authority_key.public_key()),
        "signature": b64encode(authority_key.sign(body)),
    }
    return canonical_json(envelope)


def read_bundle(
    data: bytes, authority_public_key: Ed25519PublicKey, *, federation: str | None = None
) -> PolicyBundle:
    """Verify and parse a bundle file.

    Raises MalformedInput (not a bundle), BadSignature (not signed by this authority) or
    PolicyError (signed, but the Cedar does not parse or validate). ``federation``, when
    given, must match the bundle's federation name.
    """
    if len(data) > MAX_BUNDLE_BYTES:
        raise MalformedInput(
            f"policy bundle is {len(data)} bytes, over the {MAX_BUNDLE_BYTES}-byte limit; "
            "split large entity sets out of the bundle"
        )
    envelope = parse_json_object(data, "policy bundle")
    if set(envelope) != _ENVELOPE:
        raise MalformedInput(
            "not a policy bundle: expected a JSON object with exactly the keys "
            "bundle, key_id, signature; produce it with `outpost policy sign`"
        )
    if canonical_json(envelope) != data:
        # One encoding per bundle: gossip digests hash the bytes, and a re-encoded copy of the
        # same bundle must not look like a conflicting value.
        raise MalformedInput(
            "policy bundle is not in RFC 8785 canonical form (re-encoded or hand-edited); "
            "apply the file exactly as `outpost policy sign` wrote it"
        )
    document, key_id, signature = envelope["bundle"], envelope["key_id"], envelope["signature"]
    if not isinstance(document, dict) or not isinstance(key_id, str):
        raise MalformedInput("policy bundle: 'bundle' must be an object and 'key_id' a string")
    expected = authority_key_id(authority_public_key)
    if key_id != expected:
        raise BadSignature(
            f"policy bundle is signed by key {key_id[:16]}…, not this federation's authority "
            f"{expected[:16]}…; sign it with the federation authority key"
        )
    body = canonical_json(document)
    signature_bytes = b64decode(signature, length=64, what="policy bundle signature")
    try:
        authority_public_key.verify(signature_bytes, body)
    except InvalidSignature as exc:
        raise BadSignature(
            "policy bundle signature does not verify (altered or forged); "
            "re-sign it with `outpost policy sign` and apply the new file"
        ) from exc
    _check_fields(document)
    if federation is not None and document["federation"] != federation:
        raise MalformedInput(
            f"policy bundle is for federation {document['federation']!r}, this node is in "
            f"{federation!r}; apply a bundle signed for {federation!r}"
        )
    entities = document.get("entities")
    compiled = compile_policies(document["policies"], document.get("schema"), entities)
    return PolicyBundle(
        federation=document["federation"],
        version=document["version"],
        issued_at=document["issued_at"],
        policies=document["policies"],
        schema=document.get("schema"),
        entities=None if entities is None else tuple(entities),
        key_id=key_id,
        digest=sha256_hex(body),
        raw=bytes(data),
        compiled=compiled,
    )


def _check_fields(document: Mapping[str, Any]) -> None:
    keys = set(document)
    if not keys >= _REQUIRED or not keys <= _REQUIRED | _OPTIONAL:
        missing, unknown = _REQUIRED - keys, keys - _REQUIRED - _OPTIONAL
        raise MalformedInput(
            f"policy bundle fields wrong (missing {sorted(missing)}, unknown {sorted(unknown)}); "
            "produce bundles with `outpost policy sign`"
        )
    if document["format"] != BUNDLE_FORMAT:
        raise MalformedInput(
            f"policy bundle format {document['format']!r} is not {BUNDLE_FORMAT!r}; "
            "upgrade this node or sign the bundle in the supported format"
        )
    federation, version, issued_at = (
        document["federation"],
        document["version"],
        document["issued_at"],
    )
    try:
        validate_federation_name(federation)
    except MalformedInput as exc:
        raise MalformedInput(
            f"bundle federation name {federation!r} is invalid; use the lowercase DNS name "
            "given to `outpost federation init`"
        ) from exc
    if (
        isinstance(version, bool)
        or not isinstance(version, int)
        or not 1 <= version <= _MAX_VERSION
    ):
        raise MalformedInput(
            f"bundle version {version!r} must be an integer from 1 to {_MAX_VERSION}"
        )
    if not isinstance(issued_at, str) or not _is_rfc3339_utc(issued_at):
        raise MalformedInput(
            f"issued_at {issued_at!r} is not an RFC 3339 UTC time; write e.g. 2025-01-31T12:00:00Z"
        )
    if not isinstance(document["policies"], str):
        raise MalformedInput("policy bundle 'policies' must be Cedar policy text (a string)")
    schema = document.get("schema")
    if schema is not None and not isinstance(schema, str | dict):
        raise MalformedInput("policy bundle 'schema' must be Cedar schema text or a JSON object")
    entities = document.get("entities")
    if entities is not None and (
        not isinstance(entities, list) or not all(isinstance(e, dict) for e in entities)
    ):
        raise MalformedInput("policy bundle 'entities' must be a list of Cedar JSON entities")


def _is_rfc3339_utc(text: str) -> bool:
    if not _RFC3339_UTC.fullmatch(text):
        return False
    try:
        datetime.fromisoformat(text[:19])
    except ValueError:
        return False
    return True
