"""C2SP signed notes and checkpoints, checked against the reference implementation's vectors.

Invariant: a note opens only if a signature from a key we were given verifies over the
exact text; anything else — unknown key, wrong key id, one changed byte, a malformed
line — is refused with BadSignature.
"""

from __future__ import annotations

import re

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.canonical import b64decode, b64encode
from federation.errors import BadSignature, MalformedInput
from federation.note import Checkpoint, Signer, Verifier, open_note, sign_note, vkey

# The example in golang.org/x/mod/sumdb/note's package documentation.
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
PETER_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
PETER_SIG = (
    "\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfq"
    "dngotpRZb6KE6RyyBwJnAM=\n"
)
PETER_NOTE = PETER_TEXT + "\n" + PETER_SIG
ENOCH_SIG = (
    "\u2014 EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGw"
    "nWLox33WWd1RvMc+QQ=\n"
)


def signer(name: str = "outpost/acme/node-a") -> Signer:
    return Signer(name, Ed25519PrivateKey.generate())


# --- known answers -----------------------------------------------------------------------


def test_reference_key_encodings() -> None:
    s = Signer.from_skey(PETER_SKEY)
    assert s.vkey == PETER_VKEY
    v = Verifier.from_vkey(PETER_VKEY)
    assert v.key_id.hex() == "c74f20a3"
    assert vkey("PeterNeumann", v.public_key) == PETER_VKEY


def test_reference_note_is_reproduced_byte_for_byte() -> None:
    # Ed25519 is deterministic, so signing the reference text must give the reference note.
    assert sign_note(PETER_TEXT, [Signer.from_skey(PETER_SKEY)]) == PETER_NOTE
    text, names = open_note(PETER_NOTE, [Verifier.from_vkey(PETER_VKEY)])
    assert (text, names) == (PETER_TEXT, ["PeterNeumann"])


def test_reference_doubly_signed_note_ignores_the_unknown_key() -> None:
    note = PETER_NOTE + ENOCH_SIG
    text, names = open_note(note.encode(), [Verifier.from_vkey(PETER_VKEY)])
    assert text == PETER_TEXT and names == ["PeterNeumann"]


def test_reference_checkpoint_body_from_the_c2sp_spec() -> None:
    body = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    cp = Checkpoint.parse(body)
    assert cp.origin == "example.com/behind-the-sofa" and cp.size == 20852163
    assert cp.to_text() == body


# --- round trips -------------------------------------------------------------------------


def test_vkey_format() -> None:
    s = signer()
    text = s.vkey
    name, hex_id, key = text.split("+", 2)
    assert name == "outpost/acme/node-a"
    assert re.fullmatch(r"[0-9a-f]{8}", hex_id)
    raw = b64decode(key)
    assert raw[0] == 0x01 and len(raw) == 33
    assert Verifier.from_vkey(text).vkey == text


def test_round_trip_with_two_signers_and_blank_lines_in_text() -> None:
    a, b = signer("a.example/log"), signer("b.example/witness")
    text = "line one\n\nline three after a blank line\n"
    note = sign_note(text, [a, b])
    assert open_note(note, [a.verifier, b.verifier]) == (
        text,
        ["a.example/log", "b.example/witness"],
    )
    assert open_note(note, [b.verifier]) == (text, ["b.example/witness"])


def test_checkpoint_round_trip_and_open() -> None:
    s = signer()
    cp = Checkpoint(s.name, 42, bytes(range(32)), ("ext one",))
    note = cp.sign([s])
    assert Checkpoint.open(note, s.verifier) == cp
    assert Checkpoint.parse(cp.to_text()) == cp


# --- refusals ------------------------------------------------------------------------------


def test_unknown_key_is_refused() -> None:
    note = sign_note("hello\n", [signer()])
    with pytest.raises(BadSignature, match="no signature from a known key"):
        open_note(note, [signer().verifier])  # same name, another key: another key id
    with pytest.raises(BadSignature):
        open_note(note, [])


def test_wrong_key_hash_is_refused() -> None:
    s = signer()
    note = sign_note("hello\n", [s])
    prefix, b64 = note.rsplit(" ", 1)
    raw = bytearray(b64decode(b64.strip()))
    raw[0] ^= 0xFF
    with pytest.raises(BadSignature):
        open_note(f"{prefix} {b64encode(bytes(raw))}\n", [s.verifier])


def test_altered_body_is_refused() -> None:
    s = signer()
    note = sign_note("size 10\n", [s])
    with pytest.raises(BadSignature, match="does not verify"):
        open_note(note.replace("size 10", "size 11"), [s.verifier])
    with pytest.raises(BadSignature):
        open_note(
            PETER_NOTE.replace("cryptography", "cryptographY"), [Verifier.from_vkey(PETER_VKEY)]
        )


def test_known_key_with_bad_signature_rejects_the_whole_note() -> None:
    a, b = signer("a"), signer("b")
    good = sign_note("text\n", [a])
    forged_b = b.signature_line("other text\n")
    with pytest.raises(BadSignature):
        open_note(good + forged_b, [a.verifier, b.verifier])


@pytest.mark.parametrize(
    "note",
    [
        PETER_TEXT + PETER_SIG,  # no blank line
        PETER_TEXT + "\n" + PETER_SIG.rstrip("\n"),  # no final newline
        PETER_TEXT + "\n",  # no signatures
        PETER_TEXT + "\n" + PETER_SIG.replace("\u2014", "-"),  # hyphen, not em dash
        PETER_TEXT + "\n" + PETER_SIG.replace("\u2014 ", "\u2014"),  # no space after dash
        PETER_TEXT + "\n" + PETER_SIG.replace("AM=", "AM"),  # bad padding
        PETER_TEXT + "\n" + PETER_SIG.replace("x08go", "x08g!"),  # not base64
        PETER_TEXT + "\n" + "\u2014 PeterNeumann AAAAAA==\n",  # shorter than id + 1
        PETER_TEXT + "\n" + "\u2014 Peter Neumann x08go/ZJ\n",  # space in name
        PETER_TEXT.replace("If", "If\t") + "\n" + PETER_SIG,  # control character
        PETER_TEXT + "\n" + PETER_SIG + "\n",  # blank line in the signature block
    ],
)
def test_malformed_notes_are_refused(note: str) -> None:
    with pytest.raises(BadSignature):
        open_note(note, [Verifier.from_vkey(PETER_VKEY)])


def test_invalid_utf8_is_refused() -> None:
    with pytest.raises(BadSignature):
        open_note(PETER_NOTE.encode() + b"\xff", [Verifier.from_vkey(PETER_VKEY)])


@pytest.mark.parametrize(
    "text",
    [
        "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # wrong id
        "PeterNeumann+c74f20a3+Apc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # damaged key
        "PeterNeumann+c74f20a+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # 7 hex digits
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # space
        "+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # empty name
        "PeterNeumann+c74f20a3+" + b64encode(b"\x02" + bytes(32)),  # not Ed25519
    ],
)
def test_bad_vkeys_are_refused(text: str) -> None:
    with pytest.raises(MalformedInput):
        Verifier.from_vkey(text)


def test_sign_refuses_text_without_final_newline_and_bad_names() -> None:
    with pytest.raises(ValueError):
        sign_note("no newline", [signer()])
    with pytest.raises(ValueError):
        Signer("has space", Ed25519PrivateKey.generate())
    with pytest.raises(ValueError):
        Signer("has+plus", Ed25519PrivateKey.generate())


@pytest.mark.parametrize(
    "body",
    [
        "origin\n01\n" + b64encode(bytes(32)) + "\n",  # leading zero
        "origin\n-1\n" + b64encode(bytes(32)) + "\n",
        "origin\n1\n",  # no root
        "\n1\n" + b64encode(bytes(32)) + "\n",  # empty origin
        "origin\n1\n" + b64encode(bytes(31)) + "\n",  # short root
        "origin\n1\n" + b64encode(bytes(32)) + "\n\n",  # empty extension line
        "origin\n1\n" + b64encode(bytes(32)),  # no final newline
    ],
)
def test_malformed_checkpoints_are_refused(body: str) -> None:
    with pytest.raises(MalformedInput):
        Checkpoint.parse(body)


def test_checkpoint_from_another_origin_is_refused() -> None:
    s = signer("outpost/acme/node-a")
    note = sign_note(Checkpoint("outpost/acme/node-b", 1, bytes(32)).to_text(), [s])
    with pytest.raises(BadSignature, match="origin"):
        Checkpoint.open(note, s.verifier)
