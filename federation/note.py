"""C2SP signed notes and transparency-log checkpoints, Ed25519 only.

Owns: the ``signed-note`` wire format (c2sp.org/signed-note, reference implementation
golang.org/x/mod/sumdb/note), the verifier key text ``<name>+<hex key id>+<base64(0x01
|| pubkey)>``, and the ``tlog-checkpoint`` body (c2sp.org/tlog-checkpoint). These are the
formats third-party transparency tools read, so they follow the specs to the byte.

Must never: read keys from files, look at the clock, or accept a note whose only
verifiable signatures are from keys we were not given. Signature type 0x01 (Ed25519)
is the only one supported; other types are unknown keys and are ignored, as the spec
requires.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from federation.canonical import b64decode, b64encode, sha256
from federation.errors import BadSignature, MalformedInput

__all__ = [
    "ALG_ED25519",
    "Checkpoint",
    "Signer",
    "Verifier",
    "key_id",
    "open_note",
    "sign_note",
    "valid_key_name",
    "vkey",
]

ALG_ED25519 = 0x01
SIG_PREFIX = "\u2014 "  # em dash, space
# The spec asks verifiers for a limit of at least 16; the Go reference uses 100.
MAX_SIGNATURES = 100
# Notes are small (a checkpoint is ~150 bytes); the cap bounds work on hostile input.
MAX_NOTE_BYTES = 64 * 1024
_SIZE_RE = re.compile(r"0|[1-9][0-9]{0,19}")


def valid_key_name(name: str) -> bool:
    """A key name is non-empty, has no Unicode space, no '+' and no control character."""
    return (
        bool(name)
        and "+" not in name
        and not any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name)
        and _encodable(name)
    )


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        return False
    return True


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(name: str, public_key: Ed25519PublicKey) -> bytes:
    """4-byte key id: SHA-256(name || 0x0A || 0x01 || pubkey)[:4]."""
    return sha256(name.encode("utf-8") + b"\n" + bytes([ALG_ED25519]) + _raw_public(public_key))[:4]


def vkey(name: str, public_key: Ed25519PublicKey) -> str:
    """Verifier key text ``<name>+<8 hex>+<base64(0x01 || pubkey)>``."""
    if not valid_key_name(name):
        raise ValueError(
            f"key name {name!r} is invalid; use a non-empty name without spaces or '+'"
        )
    encoded = b64encode(bytes([ALG_ED25519]) + _raw_public(public_key))
    return f"{name}+{key_id(name, public_key).hex()}+{encoded}"


@dataclass(frozen=True)
class Verifier:
    """A named Ed25519 public key that can check note signatures."""

    name: str
    public_key: Ed25519PublicKey

    def __post_init__(self) -> None:
        if not valid_key_name(self.name):
            raise ValueError(f"key name {self.name!r} is invalid; use a name without spaces or '+'")

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.public_key)

    @property
    def vkey(self) -> str:
        return vkey(self.name, self.public_key)

    @classmethod
    def from_vkey(cls, text: str) -> Verifier:
        """Parse ``<name>+<hex>+<base64>``; raises MalformedInput naming the bad part."""
        name, _, rest = text.strip().partition("+")
        hex_id, _, key_b64 = rest.partition("+")
        if not valid_key_name(name):
            raise MalformedInput(f"verifier key name {name!r} is empty or has spaces or '+'")
        if not re.fullmatch(r"[0-9a-fA-F]{8}", hex_id):
            raise MalformedInput("verifier key id must be 8 hex digits after the name")
        raw = b64decode(key_b64, what="verifier public key")
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise MalformedInput(
                "verifier key must be base64 of 0x01 followed by a 32-byte Ed25519 public key"
            )
        verifier = cls(name, Ed25519PublicKey.from_public_bytes(raw[1:]))
        if verifier.key_id.hex() != hex_id.lower():
            raise MalformedInput(
                f"verifier key id {hex_id} does not match the name and key "
                f"(expected {verifier.key_id.hex()}); copy the vkey line whole"
            )
        return verifier

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            self.public_key.verify(signature, message)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class Signer:
    """A named Ed25519 private key that signs notes (the name is the checkpoint origin)."""

    name: str
    key: Ed25519PrivateKey

    def __post_init__(self) -> None:
        if not valid_key_name(self.name):
            raise ValueError(f"key name {self.name!r} is invalid; use a name without spaces or '+'")

    @classmethod
    def from_skey(cls, text: str) -> Signer:
        """Parse the reference ``PRIVATE+KEY+<name>+<hex>+<base64(0x01 || seed)>`` form."""
        parts = text.strip().split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise MalformedInput("signer key must look like PRIVATE+KEY+<name>+<hex>+<base64>")
        raw = b64decode(parts[4], what="signer key")
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise MalformedInput("signer key must be base64 of 0x01 and a 32-byte Ed25519 seed")
        signer = cls(parts[2], Ed25519PrivateKey.from_private_bytes(raw[1:]))
        if signer.verifier.key_id.hex() != parts[3]:
            raise MalformedInput("signer key id does not match its key; the key text is damaged")
        return signer

    @property
    def verifier(self) -> Verifier:
        return Verifier(self.name, self.key.public_key())

    @property
    def vkey(self) -> str:
        return self.verifier.vkey

    def signature_line(self, text: str) -> str:
        """``— <name> <base64(key id || signature)>`` with its newline."""
        sig = self.key.sign(text.encode("utf-8"))
        return f"{SIG_PREFIX}{self.name} {b64encode(self.verifier.key_id + sig)}\n"


def _check_note_chars(text: str, what: str) -> None:
    if not _encodable(text):
        raise MalformedInput(f"{what} is not valid UTF-8")
    for ch in text:
        if ord(ch) < 0x20 and ch != "\n":
            raise MalformedInput(
                f"{what} contains control character {ord(ch):#04x}; only newline is allowed"
            )


def sign_note(text: str, signers: Sequence[Signer]) -> str:
    """Sign ``text`` (which must end in a newline) with each signer; return the note."""
    if not text.endswith("\n"):
        raise ValueError("note text must end with a newline")
    if not signers:
        raise ValueError("sign_note needs at least one signer")
    _check_note_chars(text, "note text")
    return text + "\n" + "".join(s.signature_line(text) for s in signers)


def open_note(note: str | bytes, verifiers: Iterable[Verifier]) -> tuple[str, list[str]]:
    """Verify a signed note; return its text and the names whose signatures verified.

    Follows the spec: signatures from unknown keys (name or key id not among
    ``verifiers``) are ignored; a known key's bad signature rejects the whole note; a
    note with no verified signature is rejected. Every rejection — malformed note,
    unknown key, wrong key id, altered text — raises BadSignature, so callers need one
    ``except``.
    """
    known: dict[tuple[str, bytes], Verifier] = {}
    for v in verifiers:
        previous = known.setdefault((v.name, v.key_id), v)
        if _raw_public(previous.public_key) != _raw_public(v.public_key):
            raise ValueError(f"two different keys share name and id {v.name}+{v.key_id.hex()}")
    try:
        text, lines = _split_note(note)
    except MalformedInput as exc:
        raise BadSignature(f"malformed signed note: {exc}") from exc

    message = text.encode("utf-8")
    verified: list[str] = []
    seen: set[tuple[str, bytes]] = set()
    for line in lines:
        name, raw = _parse_signature_line(line)
        ident = (name, raw[:4])
        verifier = known.get(ident)
        if verifier is None or ident in seen:
            continue  # unknown keys must be ignored; repeats add nothing
        seen.add(ident)
        if not verifier.verify(message, raw[4:]):
            raise BadSignature(
                f"signature by {name}+{raw[:4].hex()} does not verify: the note text was "
                "altered or signed by another key; fetch it again from its origin"
            )
        verified.append(name)
    if not verified:
        names = ", ".join(sorted({v.name for v in known.values()})) or "none"
        raise BadSignature(
            f"note has no signature from a known key (known: {names}); check that the "
            "verifier key (vkey) matches the signer's name and key"
        )
    return text, verified


def _split_note(note: str | bytes) -> tuple[str, list[str]]:
    if isinstance(note, bytes):
        if len(note) > MAX_NOTE_BYTES:
            raise MalformedInput(f"note is larger than {MAX_NOTE_BYTES} bytes")
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedInput("note is not valid UTF-8") from exc
    if len(note) > MAX_NOTE_BYTES:
        raise MalformedInput(f"note is larger than {MAX_NOTE_BYTES} bytes")
    _check_note_chars(note, "note")
    split = note.rfind("\n\n")
    if split < 0:
        raise MalformedInput("no blank line before the signatures")
    text, sigs = note[: split + 1], note[split + 2 :]
    if not sigs or not sigs.endswith("\n"):
        raise MalformedInput("signature block is empty or does not end with a newline")
    lines = sigs[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise MalformedInput(f"more than {MAX_SIGNATURES} signatures")
    for line in lines:
        _parse_signature_line(line)  # validate all lines before trusting any
    return text, lines


def _parse_signature_line(line: str) -> tuple[str, bytes]:
    if not line.startswith(SIG_PREFIX):
        raise BadSignature("malformed signed note: signature line must start with '\u2014 '")
    name, _, b64 = line[len(SIG_PREFIX) :].partition(" ")
    if not valid_key_name(name) or not b64:
        raise BadSignature("malformed signed note: signature line needs '<name> <base64>'")
    try:
        raw = b64decode(b64, what="signature")
    except MalformedInput as exc:
        raise BadSignature(f"malformed signed note: {exc}") from exc
    if len(raw) < 5:
        raise BadSignature("malformed signed note: signature shorter than key id + 1 byte")
    return name, raw


@dataclass(frozen=True)
class Checkpoint:
    """A tlog-checkpoint body: origin, tree size, root hash, optional extension lines."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin:
            raise ValueError("checkpoint origin must be one non-empty line")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise ValueError(f"checkpoint size must be an integer >= 0, got {self.size!r}")
        if len(self.root_hash) != 32:
            raise ValueError(f"checkpoint root hash must be 32 bytes, got {len(self.root_hash)}")
        for ext in self.extensions:
            if not ext or "\n" in ext:
                raise ValueError("checkpoint extension lines must be non-empty single lines")

    def to_text(self) -> str:
        """The note text: origin, size, base64 root, extensions, each ending in newline."""
        lines = [self.origin, str(self.size), b64encode(self.root_hash), *self.extensions]
        return "".join(line + "\n" for line in lines)

    def sign(self, signers: Sequence[Signer]) -> str:
        """The signed note for this checkpoint."""
        return sign_note(self.to_text(), signers)

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """Parse a checkpoint note text (not a signed note); raises MalformedInput."""
        if not text.endswith("\n"):
            raise MalformedInput("checkpoint text must end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise MalformedInput("checkpoint needs origin, size and root hash lines")
        origin, size, root_b64, *extensions = lines
        if not origin:
            raise MalformedInput("checkpoint origin line is empty")
        if not _SIZE_RE.fullmatch(size):
            raise MalformedInput(f"checkpoint size {size!r} is not a decimal without leading zeros")
        root_hash = b64decode(root_b64, length=32, what="checkpoint root hash")
        if any(not ext for ext in extensions):
            raise MalformedInput("checkpoint extension lines must be non-empty")
        return cls(origin, int(size), root_hash, tuple(extensions))

    @classmethod
    def open(cls, note: str | bytes, verifier: Verifier) -> Checkpoint:
        """Verify a signed checkpoint from ``verifier`` and parse it.

        The origin must equal the key name, so one log's key cannot vouch for another
        log's checkpoint.
        """
        text, _ = open_note(note, [verifier])
        checkpoint = cls.parse(text)
        if checkpoint.origin != verifier.name:
            raise BadSignature(
                f"checkpoint origin {checkpoint.origin!r} is not the signer's name "
                f"{verifier.name!r}; use the origin's own verifier key"
            )
        return checkpoint
