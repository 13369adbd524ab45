"""Exceptions raised by the federation core.

The tree separates "a peer or a document misbehaved" (the input is bad; drop it, count it,
maybe record it as evidence) from "we misused the API" (a bug or a bad local setting)::

    FederationError
    ├── VerificationError          a signature, proof, certificate or document did not verify
    │   ├── BadSignature           signature does not verify under the expected key
    │   ├── BadProof               an inclusion or consistency proof does not verify
    │   ├── BadCertificate         certificate does not chain to the authority / expired / wrong use
    │   ├── Revoked                the subject is on the authority's revocation list
    │   └── Equivocation           two different signed statements where only one may exist
    │       └── CheckpointEquivocation  two signed checkpoints, one origin and size; carries evidence
    ├── MalformedInput             bytes or fields that do not parse (wrong format, sizes, types)
    ├── RollbackRefused            a versioned document older than or equal to the one held
    └── PolicyError                Cedar text that does not parse or validate, or cannot be evaluated

Every message says what was wrong and what to do about it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from federation.audit import EquivocationEvidence


class FederationError(Exception):
    """Base of every error raised by ``federation``."""


class VerificationError(FederationError):
    """Something that claims to be signed or proven did not verify."""


class BadSignature(VerificationError):
    """A signature does not verify under the key it names."""


class BadProof(VerificationError):
    """An RFC 9162 inclusion or consistency proof does not verify."""


class BadCertificate(VerificationError):
    """A certificate does not chain to the federation authority, is expired or is misused."""


class Revoked(VerificationError):
    """The subject is listed on the authority's revocation list."""


class Equivocation(VerificationError):
    """Two different signed statements exist where the protocol allows only one."""


class MalformedInput(FederationError):
    """Input bytes or fields do not parse; the sender is at fault, not us."""


class RollbackRefused(FederationError):
    """A versioned document is not newer than the one already held."""


class PolicyError(FederationError):
    """Cedar policy text does not parse or validate, or a decision could not be evaluated."""


class CheckpointEquivocation(Equivocation):
    """A log signed two checkpoints with the same origin and size but different roots.

    Unlike its parent, it carries ``evidence`` (both signed notes), which is
    self-proving: anyone holding the log's verifier key can check it, so it is gossiped
    and shown to the admin rather than merely dropped.
    """

    def __init__(self, message: str, evidence: EquivocationEvidence) -> None:
        super().__init__(message)
        self.evidence = evidence
