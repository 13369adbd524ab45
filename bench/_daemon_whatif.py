"""Run the real ``outpost`` CLI with diagnostic patches, to measure a proposed fix before it is
made. bench/serve.py uses it only for rows labelled ``daemon+<patch>``; budget lines always use
the unpatched daemon.

    python bench/_daemon_whatif.py PATCHES outpost-args...      # PATCHES: comma list or "none"

Patches (each applied in this process only, no file is changed):

* ``nodelay`` — set TCP_NODELAY on every accepted TCP connection. CPython's asyncio
  (``base_events._set_nodelay``, 3.11) only does so when the socket's ``proto`` is
  ``IPPROTO_TCP``; a listening socket made with ``socket.socket(family, SOCK_STREAM)`` has
  proto 0, and so have the connections it accepts. The fix in the daemon would be one argument:
  ``socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)`` in ``node/daemon.py``
  ``bind_tcp`` (or setting the option per connection).
* ``uvloop`` — run the daemon on uvloop (which sets TCP_NODELAY itself) instead of the stock
  asyncio loop.
* ``auditnowait`` — answer an inference without waiting for its audit entry to be durable (the
  entry is still appended and group-committed, just not awaited). This breaks DESIGN §3
  ("durable before the caller is answered"); it only measures what that wait costs.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def apply(patches: set[str]) -> None:
    unknown = patches - {"nodelay", "uvloop", "auditnowait"}
    if unknown:
        raise SystemExit(f"unknown patches {sorted(unknown)}")
    if "nodelay" in patches:
        import asyncio.base_events as base_events

        def _set_nodelay(sock: socket.socket) -> None:
            if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        base_events._set_nodelay = _set_nodelay  # type: ignore[attr-defined]
    if "uvloop" in patches:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if "auditnowait" in patches:
        from node.forward import Router

        async def _not_withheld(appended):  # type: ignore[no-untyped-def]
            # Still appended (and still durable soon): only the answer stops waiting for it.
            if isinstance(appended, asyncio.Future):
                appended.add_done_callback(lambda f: f.cancelled() or f.exception())

        Router._withheld = staticmethod(_not_withheld)  # type: ignore[method-assign]

if __name__ == "__main__":
    apply({p for p in sys.argv[1].split(",") if p and p != "none"})
    sys.argv = ["outpost", *sys.argv[2:]]
    from cli.main import main

    main()
