"""App identity on the local endpoint: bearer tokens, socket uids, and who a request is from.

Owns the ``app_token`` table (one row per token: name, SHA-256 of the secret, attributes,
creation, expiry, revocation, last use, and a MAC over the row), the in-memory index the
request path reads, and :class:`AppAuth`, which turns a request's credentials into an
:class:`AppIdentity` or an :class:`AuthFailure`. It never answers HTTP and never writes the
audit log itself (``node.app`` does both with what this module returns), and it never keeps a
secret: the secret is printed once by ``outpost token add`` and only its hash is stored.

Choices, and why:

- **Token format** ``opt_<id>_<secret>``: a 12-hex-digit public id (named in the audit trail,
  used to find the row) and 256 random bits. Secrets that random need no slow KDF: one SHA-256
  of the presented token, compared with the stored hash by ``hmac.compare_digest`` (constant
  time). An unknown id is compared against a dummy hash, so timing does not tell ids apart.
- **Rows are MACed** with a key derived from the node key, so a row edited by hand (an
  attribute raised, an expiry pushed back, a revocation undone) is refused with 401 and a
  message saying how to re-issue it, instead of being believed. ``last_used`` is outside the
  MAC: it is bookkeeping, written in batches, not a credential.
- **Live**: the daemon holds every row in memory; ``add`` and ``revoke`` go through the admin
  socket when the daemon runs (so revocation takes effect on the next request) or straight to
  the database under the data-directory lock when it does not. Last use is kept in memory and
  flushed every :data:`LAST_USE_FLUSH_S` seconds, on ``token list`` and at stop.
- **Failures are throttled per source** (an IP, or ``uid:N`` on the socket): each source may
  fail :data:`FAILURE_BURST` times, then one more per :data:`FAILURE_REFILL_S`; beyond that it
  gets 429 and no audit entry (one entry says it started). Valid tokens are never throttled:
  every app on the box shares 127.0.0.1, and one misconfigured app must not lock out the rest;
  with 256-bit secrets the throttle protects the audit trail and the CPU, not the secret.

Exceptions: :class:`TokenError` (bad ``token add``/``revoke`` input: the operator's mistake,
a ``ValueError`` so the CLI prints it) and :class:`AuthFailure` (a request's credentials are
refused: status, message, outcome).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from federation.policy_engine import ANONYMOUS, AppAttrs
from node.errors import OperatorError
from node.store import Store

# -- limits (each bounds something a caller or an operator can grow) ---------------------------

#: Longest ``Authorization`` header read; a token is 60 characters, so anything near this is
#: not ours, and the bound keeps hashing and logging of junk cheap.
MAX_AUTHORIZATION_BYTES = 512
#: Attributes per token and their sizes: they become a Cedar entity built per decision and a
#: label forwarded with every request, so they stay small.
MAX_ATTRS = 16
MAX_ATTR_VALUE = 256
#: Failures a source may have in a burst, and how often it earns one more (seconds).
FAILURE_BURST = 20
FAILURE_REFILL_S = 1.0
#: Sources tracked by the failure throttle; beyond this the quietest are forgotten (a flood of
#: distinct sources cannot grow memory).
MAX_SOURCES = 4096
#: How often remembered last-use times are written to the database.
LAST_USE_FLUSH_S = 10.0
#: Longest ``--expires``: ten years (longer is "never", say so explicitly).
MAX_EXPIRY_S = 3650 * 86400

TOKEN_PREFIX = "opt_"
_ID_HEX = 12
_TOKEN_RE = re.compile(r"opt_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_ATTR_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_EXPIRES_RE = re.compile(r"(\d{1,9})([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DUMMY_HASH = hashlib.sha256(b"outpost: no such token").digest()
_MAC_LABEL = b"outpost app-token rows v1"

AUTH_MODES = ("optional", "required")


class TokenError(OperatorError, ValueError):
    """``token add``/``revoke`` input is wrong; the message names the fix."""


class AuthFailure(OperatorError):
    """A request's credentials are refused.

    ``status`` is 401 (no, malformed, unknown, revoked, expired or tampered credentials), 403
    (a socket uid mapped to no app) or 429 (the source failed too often); ``outcome`` is the
    audit outcome; ``app`` the app the credentials named, when they named one; ``audit`` is
    False when the throttle already said so.
    """

    def __init__(self, status: int, message: str, *, outcome: str = "unauthenticated",
                 app: str | None = None, token_id: str | None = None, audit: bool = True,
                 retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.outcome = outcome
        self.app = app
        self.token_id = token_id
        self.audit = audit
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class AppIdentity:
    """Who a request is from: the policy principal plus how it proved it."""

    principal: AppAttrs
    token_id: str | None = None  # None: anonymous, or known by its socket uid
    _label: list[str] = field(default_factory=list, compare=False, repr=False)

    @property
    def name(self) -> str:
        return self.principal.name

    def label(self) -> str:
        """The attested label a forward carries (``Outpost-App`` header), built once."""
        if not self._label:
            self._label.append(json.dumps(
                {"name": self.name, "attrs": dict(self.principal.attrs),
                 "token": self.token_id}, separators=(",", ":"), sort_keys=True))
        return self._label[0]


ANONYMOUS_APP = AppIdentity(ANONYMOUS)


def parse_label(raw: bytes) -> AppIdentity:
    """An ``Outpost-App`` label from a peer: validated as strictly as a local token's data."""
    if len(raw) > MAX_AUTHORIZATION_BYTES + MAX_ATTRS * (MAX_ATTR_VALUE + 80):
        raise ValueError("Outpost-App label is too large")
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"Outpost-App label is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("name"), str):
        raise ValueError("Outpost-App label must be an object with a 'name'")
    name = doc["name"]
    if name != ANONYMOUS.name:
        check_name(name)
    attrs = doc.get("attrs", {})
    if not isinstance(attrs, dict):
        raise ValueError("Outpost-App label 'attrs' must be an object")
    check_attrs(attrs)
    token = doc.get("token")
    if token is not None and (not isinstance(token, str) or not re.fullmatch(r"[0-9a-f]{12}", token)):
        raise ValueError("Outpost-App label 'token' must be a token id")
    if name == ANONYMOUS.name:
        if attrs or token is not None:
            raise ValueError('Outpost-App label: App::"anonymous" has no attributes or token')
        return ANONYMOUS_APP
    return AppIdentity(AppAttrs(name, attrs), token)


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name == ANONYMOUS.name:
        raise TokenError(
            f"app name {name!r} is invalid: use 1-63 characters a-z, 0-9, '.', '_' and '-', "
            "starting with a letter or digit ('anonymous' is reserved for requests without "
            "credentials)")
    return name


def check_attrs(attrs: Mapping[str, Any]) -> dict[str, str]:
    if len(attrs) > MAX_ATTRS:
        raise TokenError(f"{len(attrs)} attributes given; an app token holds at most {MAX_ATTRS}")
    out: dict[str, str] = {}
    for key, value in attrs.items():
        if not isinstance(key, str) or not _ATTR_KEY_RE.fullmatch(key):
            raise TokenError(
                f"attribute name {key!r} is invalid: use a Cedar identifier (letters, digits, "
                "'_', not starting with a digit) so policies can write principal.NAME")
        if not isinstance(value, str) or len(value) > MAX_ATTR_VALUE:
            raise TokenError(f"attribute {key} must be a string of at most {MAX_ATTR_VALUE} "
                             "characters")
        out[key] = value
    return out


def parse_attrs(pairs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``--attr KEY=VALUE`` values."""
    attrs: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise TokenError(f"--attr {pair!r} is not KEY=VALUE (e.g. --attr purpose=diagnosis)")
        if key in attrs:
            raise TokenError(f"--attr {key} is given twice")
        attrs[key] = value
    return check_attrs(attrs)


def parse_expires(text: str | None) -> float | None:
    """``90d``, ``12h``, ``30m``, ``3600s`` → seconds; ``None``/``never`` → no expiry."""
    if text is None or text == "never":
        return None
    match = _EXPIRES_RE.fullmatch(text.strip())
    if match is None:
        raise TokenError(f"--expires {text!r} is not a duration: write e.g. 90d, 12h, 30m, "
                         "3600s or never")
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if not 0 < seconds <= MAX_EXPIRY_S:
        raise TokenError(f"--expires {text} must be between 1s and 3650d (or never)")
    return float(seconds)


def mac_key(private_raw: bytes) -> bytes:
    """The row-MAC key, derived from the node's private key bytes (never stored)."""
    return hmac.new(private_raw, _MAC_LABEL, hashlib.sha256).digest()


@dataclass(frozen=True)
class TokenRow:
    id: str
    name: str
    hash: bytes
    attrs: Mapping[str, str]
    created: float
    expires: float | None
    revoked: float | None
    last_used: float | None
    intact: bool  # the MAC verifies and every field parses
    identity: AppIdentity

    def state(self, now: float) -> str:
        if not self.intact:
            return "tampered"
        if self.revoked is not None:
            return "revoked"
        if self.expires is not None and now >= self.expires:
            return "expired"
        return "active"

    def to_json(self, now: float) -> dict[str, Any]:
        return {"name": self.name, "token_id": self.id, "attrs": dict(self.attrs),
                "created": self.created, "expires": self.expires, "revoked": self.revoked,
                "last_used": self.last_used, "state": self.state(now)}


def _mac(key: bytes, tid: str, name: str, digest: bytes, attrs_json: str, created: float,
         expires: float | None, revoked: float | None) -> bytes:
    message = json.dumps([tid, name, digest.hex(), attrs_json, created, expires, revoked])
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


class Tokens:
    """The token table and its in-memory index. One per process and database."""

    def __init__(self, store: Store, key: bytes, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self._key = key
        self.clock = clock
        self.by_id: dict[str, TokenRow] = {}
        self._last_use: dict[str, float] = {}  # not yet written
        self.version = 0  # bumped on every change, so derived caches know to rebuild

    async def load(self) -> None:
        async with self.store.conn.execute(
            "SELECT id, name, hash, attrs, created, expires, revoked, last_used, mac "
            "FROM app_token"
        ) as cur:
            rows = await cur.fetchall()
        self.by_id = {}
        for row in rows:
            parsed = self._row(row)
            self.by_id[parsed.id] = parsed
        self.version += 1

    def _row(self, row: Any) -> TokenRow:
        tid, name = str(row[0]), str(row[1])
        try:
            digest, attrs_json = bytes(row[2]), str(row[3])
            created = float(row[4])
            expires = None if row[5] is None else float(row[5])
            revoked = None if row[6] is None else float(row[6])
            last_used = None if row[7] is None else float(row[7])
            attrs = check_attrs(json.loads(attrs_json))
            expected = _mac(self._key, tid, name, digest, attrs_json, created, expires, revoked)
            intact = hmac.compare_digest(expected, bytes(row[8]))
            identity = AppIdentity(AppAttrs(name, attrs), tid)
        except (TypeError, ValueError):  # a hand-edited row that does not even parse
            # Keep the hash when it is one, so its holder hears why the token stopped working.
            kept = row[2] if isinstance(row[2], bytes) and len(row[2]) == 32 else _DUMMY_HASH
            return TokenRow(tid, name, kept, {}, 0.0, None, None, None, False,
                            AppIdentity(AppAttrs(name or "?"), tid))
        return TokenRow(tid, name, digest, attrs, created, expires, revoked, last_used,
                        intact, identity)

    def active(self, name: str) -> TokenRow | None:
        now = self.clock()
        for row in self.by_id.values():
            if row.name == name and row.state(now) == "active":
                return row
        return None

    async def add(self, name: str, attrs: Mapping[str, str], expires_in: float | None
                  ) -> tuple[str, TokenRow]:
        """A new token for ``name``; returns the secret (shown once) and the stored row."""
        check_name(name)
        attrs = check_attrs(attrs)
        if self.active(name) is not None:
            raise TokenError(f"app {name!r} already has an active token; revoke it first with "
                             f"`outpost token revoke {name}`")
        tid = secrets.token_hex(_ID_HEX // 2)
        secret = f"{TOKEN_PREFIX}{tid}_{secrets.token_urlsafe(32)}"
        digest = hashlib.sha256(secret.encode()).digest()
        attrs_json = json.dumps(attrs, sort_keys=True, separators=(",", ":"))
        created = round(self.clock(), 3)
        expires = None if expires_in is None else round(created + expires_in, 3)
        mac = _mac(self._key, tid, name, digest, attrs_json, created, expires, None)
        await self.store.conn.execute(
            "INSERT INTO app_token(id, name, hash, attrs, created, expires, revoked, last_used,"
            " mac) VALUES(?, ?, ?, ?, ?, ?, NULL, NULL, ?)",
            (tid, name, digest, attrs_json, created, expires, mac))
        await self.load()
        return secret, self.by_id[tid]

    async def revoke(self, name: str) -> list[TokenRow]:
        """Revoke every unrevoked token of ``name`` (tampered ones too: revoking is safe)."""
        targets = [r for r in self.by_id.values() if r.name == name and r.revoked is None]
        if not targets:
            known = sorted({r.name for r in self.by_id.values()})
            raise TokenError(f"app {name!r} has no unrevoked token; `outpost token list` shows "
                             f"the apps ({', '.join(known) or 'none yet'})")
        now = round(self.clock(), 3)
        for row in targets:
            attrs_json = json.dumps(dict(row.attrs), sort_keys=True, separators=(",", ":"))
            if row.intact:
                mac = _mac(self._key, row.id, row.name, row.hash, attrs_json, row.created,
                           row.expires, now)
                await self.store.conn.execute(
                    "UPDATE app_token SET revoked=?, mac=? WHERE id=?", (now, mac, row.id))
            else:  # keep the evidence as it is, but make sure it can never verify
                await self.store.conn.execute(
                    "UPDATE app_token SET revoked=? WHERE id=?", (now, row.id))
        await self.load()
        return [self.by_id[r.id] for r in targets]

    def listing(self) -> list[dict[str, Any]]:
        now = self.clock()
        rows = sorted(self.by_id.values(), key=lambda r: (r.name, r.created))
        out = []
        for row in rows:
            item = row.to_json(now)
            item["last_used"] = self._last_use.get(row.id, row.last_used)
            out.append(item)
        return out

    # -- the request path ----------------------------------------------------------------------

    def verify(self, token: str) -> AppIdentity:
        """The app a presented token belongs to, or :class:`AuthFailure` (401)."""
        match = _TOKEN_RE.fullmatch(token)
        tid = match.group(1) if match else None
        row = self.by_id.get(tid) if tid else None
        presented = hashlib.sha256(token.encode()).digest()
        if not hmac.compare_digest(presented, row.hash if row is not None else _DUMMY_HASH) \
                or row is None:
            why = ("is not an Outpost token (they look like opt_<id>_<secret>)" if match is None
                   else "is not known on this node (wrong secret, or issued by another node)")
            raise AuthFailure(401, f"the bearer token {why}; ask the operator for one "
                                   "(`outpost token add NAME`)", token_id=tid)
        now = self.clock()
        if not row.intact:
            raise AuthFailure(401, f"the stored record of app {row.name!r}'s token {row.id} "
                                   "fails its integrity check (edited by hand?); revoke it and "
                                   f"issue a new one: `outpost token revoke {row.name}` then "
                                   f"`outpost token add {row.name}`", app=row.name, token_id=row.id)
        if row.revoked is not None:
            raise AuthFailure(401, f"app {row.name!r}'s token {row.id} was revoked at "
                                   f"{_iso(row.revoked)}; ask the operator for a new one",
                              app=row.name, token_id=row.id)
        if row.expires is not None and now >= row.expires:
            raise AuthFailure(401, f"app {row.name!r}'s token {row.id} expired at "
                                   f"{_iso(row.expires)}; ask the operator for a new one "
                                   f"(`outpost token revoke {row.name}` then `outpost token "
                                   f"add {row.name}`)", app=row.name, token_id=row.id)
        self._last_use[row.id] = now
        return row.identity

    async def flush_last_use(self) -> None:
        if not self._last_use:
            return
        pending, self._last_use = self._last_use, {}
        await self.store.conn.executemany(
            "UPDATE app_token SET last_used=? WHERE id=?",
            [(round(t, 3), tid) for tid, t in pending.items()])
        await self.load()


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class FailureThrottle:
    """Token bucket per source over authentication failures only (see the module header)."""

    def __init__(self, burst: int = FAILURE_BURST, refill_s: float = FAILURE_REFILL_S,
                 max_sources: int = MAX_SOURCES) -> None:
        self.burst = burst
        self.refill_s = refill_s
        self.max_sources = max_sources
        self._buckets: dict[str, tuple[float, float, bool]] = {}  # source -> (tokens, t, noted)

    def fail(self, source: str, now: float) -> tuple[bool, bool, float]:
        """Record a failure: (allowed, first refusal since allowed, seconds until the next)."""
        tokens, then, noted = self._buckets.pop(source, (float(self.burst), now, False))
        tokens = min(float(self.burst), tokens + (now - then) / self.refill_s)
        if tokens >= 1.0:
            self._remember(source, (tokens - 1.0, now, False))
            return True, False, 0.0
        self._remember(source, (tokens, now, True))
        return False, not noted, (1.0 - tokens) * self.refill_s

    def _remember(self, source: str, value: tuple[float, float, bool]) -> None:
        if len(self._buckets) >= self.max_sources:
            del self._buckets[next(iter(self._buckets))]  # least recently failed first
        self._buckets[source] = value


class AppAuth:
    """Request credentials → :class:`AppIdentity`, per ``node.app_auth`` and ``node.app_uids``."""

    def __init__(self, tokens: Tokens, mode: str, uids: Mapping[int, str]) -> None:
        if mode not in AUTH_MODES:
            raise ValueError(f"node.app_auth must be one of {', '.join(AUTH_MODES)}")
        self.tokens = tokens
        self.mode = mode
        self.uids = dict(uids)
        self.throttle = FailureThrottle()
        self._by_uid: dict[int, AppIdentity] = {}
        self._by_uid_version = -1

    def authenticate(self, authorization: bytes | None, uid: int | None, source: str
                     ) -> AppIdentity:
        """The caller, or :class:`AuthFailure`. ``uid``: the peer uid on the app socket."""
        try:
            if authorization is not None:
                return self.tokens.verify(_bearer(authorization))
            if uid is not None:
                return self._uid_app(uid)
            if self.mode == "required":
                raise AuthFailure(401, "this node requires app credentials (node.app_auth = "
                                       "\"required\"): send Authorization: Bearer <token>; the "
                                       "operator issues one with `outpost token add NAME`")
            return ANONYMOUS_APP
        except AuthFailure as failure:
            allowed, first, wait = self.throttle.fail(source, self.tokens.clock())
            if not allowed:
                failure.status, failure.outcome = 429, "throttled"
                failure.message = (f"too many failed authentications from {source}; retry in "
                                   f"{max(1, round(wait))} s with valid credentials")
                failure.audit, failure.retry_after = first, wait
            raise

    def _uid_app(self, uid: int) -> AppIdentity:
        if self._by_uid_version != self.tokens.version:
            self._by_uid.clear()
            self._by_uid_version = self.tokens.version
        known = self._by_uid.get(uid)
        if known is not None:
            return known
        name = self.uids.get(uid)
        if name is None:
            raise AuthFailure(403, f"uid {uid} is not mapped to an app on this node's socket; "
                                   f"map it in outpost.toml (node.app_uids = {{ \"{uid}\" = "
                                   "\"APP-NAME\" }) and restart, or send a bearer token",
                              outcome="forbidden")
        # An app known by its uid carries the attributes of its active token, if it has one.
        row = self.tokens.active(name)
        identity = AppIdentity(AppAttrs(name, dict(row.attrs) if row else {}), None)
        self._by_uid[uid] = identity
        return identity


def _bearer(raw: bytes) -> str:
    if len(raw) > MAX_AUTHORIZATION_BYTES:
        raise AuthFailure(401, f"Authorization header of {len(raw)} bytes is too long (at most "
                               f"{MAX_AUTHORIZATION_BYTES}); send Authorization: Bearer <token>")
    scheme, _, credentials = raw.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        shown = scheme[:20].decode("ascii", "replace")
        raise AuthFailure(401, f"Authorization scheme {shown!r} is not supported; send "
                               "Authorization: Bearer <token>")
    credentials = credentials.strip()
    if not credentials or b" " in credentials or not credentials.isascii():
        raise AuthFailure(401, "Authorization header is malformed; send exactly "
                               "Authorization: Bearer <token>")
    return credentials.decode("ascii")
