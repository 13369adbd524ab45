"""The app socket (``node.app_socket``): the OIP API on a Unix socket where the caller is its uid.

Owns binding the socket (mode 0660, group ``node.app_socket_group``), reading each
connection's peer credentials (``SO_PEERCRED``: the kernel's word for the connecting process's
uid, which no client can forge) into the ASGI scope as ``scope["extensions"]["outpost.uid"]``,
and resolving ``node.app_uids`` (uids or user names) to uids. It never decides who may do what:
``node.tokens.AppAuth`` maps the uid to an app and policy judges the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import pwd
import socket
import struct
from collections.abc import Mapping
from pathlib import Path

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from node.errors import OperatorError

log = logging.getLogger("outpost.appsock")

UID_KEY = "outpost.uid"
_UCRED = struct.Struct("3i")  # struct ucred {pid_t pid; uid_t uid; gid_t gid;}


class AppSocketError(OperatorError, RuntimeError):
    """The app socket cannot be set up; the message names the config key and the fix."""


def resolve_uids(mapping: Mapping[str, str]) -> dict[int, str]:
    """``node.app_uids`` with user names turned into uids."""
    out: dict[int, str] = {}
    for who, app in mapping.items():
        if who.isdigit():
            out[int(who)] = app
            continue
        try:
            out[pwd.getpwnam(who).pw_uid] = app
        except KeyError:
            raise AppSocketError(f"node.app_uids names user {who!r}, which does not exist on "
                                 "this machine; use its numeric uid or create the user") from None
    return out


def bind_app_socket(path: Path, group: str) -> socket.socket:
    """Listen on ``path`` (a stale socket file is replaced), mode 0660, group ``group``."""
    gid = -1
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise AppSocketError(f"node.app_socket_group {group!r} is not a group on this "
                                 "machine; create it or leave the key empty") from None
    if path.exists() and not path.is_socket():
        raise AppSocketError(f"node.app_socket {path} exists and is not a socket; choose "
                             "another path")
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o117)  # never world-connectable, not even for a moment
    try:
        sock.bind(str(path))
        os.chmod(path, 0o660)
        if gid >= 0:
            os.chown(path, -1, gid)
    except OSError as exc:
        sock.close()
        raise AppSocketError(f"cannot listen on node.app_socket {path}: {exc.strerror}; check "
                             "the directory exists and that this user may give the socket "
                             f"group {group or '(own)'}") from None
    finally:
        os.umask(old)
    sock.listen(256)
    sock.setblocking(False)
    return sock


def peer_uid(sock: socket.socket) -> int:
    _pid, uid, _gid = _UCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return int(uid)


class UidProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, plus the connecting process's uid in every scope."""

    uid: int | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        try:
            self.uid = peer_uid(sock) if sock is not None else None
        except OSError as exc:
            log.warning("app socket: cannot read peer credentials (%s); closing", exc)
            transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        # -1: credentials unknown, so no app; never None, which would read as "not the socket"
        self.scope["extensions"] = {UID_KEY: self.uid if self.uid is not None else -1}  # type: ignore[dict-item]
