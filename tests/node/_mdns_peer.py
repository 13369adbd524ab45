"""A fake node for the mDNS tests: runs node.discovery and prints what it sees as JSON lines.

Run inside a test namespace (``host.run([sys.executable, "-m", "tests.node._mdns_peer", ...])``).
Prints one JSON object per line on stdout::

    {"event": "ready", "t": 1.62, "addresses": [...]}     after start() returned
    {"event": "found", "t": ..., "candidate": {...}}    on_found
    {"event": "lost", "t": ..., "node_id": "b"}         on_lost
    {"event": "stopped", "t": ...}                      after a clean stop() (goodbye sent)
    {"event": "error", "message": "..."}                start() failed; exit code 3

``t`` is seconds since the process started. Stops cleanly on SIGTERM, on a ``stop`` line on
stdin, or when stdin closes. A line ``fp <hex>`` on stdin re-advertises with that fingerprint
(``Discovery.update``) and prints ``{"event": "updated", ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import signal
import sys
import threading
import time

from node.discovery import Advert, Candidate, Discovery, DiscoveryError

T0 = time.monotonic()


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, "t": round(time.monotonic() - T0, 3), **fields}),
          flush=True)


async def main(args: argparse.Namespace) -> int:
    advert = Advert(node_id=args.id, peer_port=args.peer_port, udp_port=args.udp_port,
                    tier=args.tier, fingerprint=args.fp, federation=args.fed)
    discovery = Discovery(
        advert,
        on_found=lambda c: emit("found", candidate=Candidate.as_dict(c)),
        on_lost=lambda node_id: emit("lost", node_id=node_id),
        interfaces=args.interface or None,
        record_ttl_s=args.record_ttl,
        confirm_interval_s=args.confirm_interval,
    )
    try:
        await discovery.start()
    except DiscoveryError as exc:
        emit("error", message=str(exc))
        return 3
    emit("ready", addresses=discovery.addresses)

    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, done.set)

    updates: list[asyncio.Task[None]] = []

    async def update(fingerprint: str) -> None:
        await discovery.update(dataclasses.replace(discovery.advert, fingerprint=fingerprint))
        emit("updated", fingerprint=fingerprint)

    def on_line(line: str) -> None:
        updates.append(loop.create_task(update(line.split()[1])))

    def read_stdin() -> None:
        for line in sys.stdin:
            if line.strip() == "stop":
                break
            if line.startswith("fp "):
                loop.call_soon_threadsafe(on_line, line)
        loop.call_soon_threadsafe(done.set)

    # A daemon thread, not the default executor: asyncio.run would wait for it at exit.
    threading.Thread(target=read_stdin, daemon=True).start()
    await done.wait()
    await asyncio.gather(*updates)
    await discovery.stop()
    emit("stopped")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--id", required=True)
    p.add_argument("--interface", action="append", default=[], help="IP to bind; repeatable")
    p.add_argument("--peer-port", type=int, default=8471)
    p.add_argument("--udp-port", type=int, default=8471)
    p.add_argument("--tier", default="")
    p.add_argument("--fp", default="")
    p.add_argument("--fed", default="")
    p.add_argument("--record-ttl", type=int, default=120)
    p.add_argument("--confirm-interval", type=float, default=5.0)
    p.add_argument("--debug", action="store_true")
    return p.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    logging.basicConfig(level=logging.DEBUG if arguments.debug else logging.INFO,
                        stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    sys.exit(asyncio.run(main(arguments)))
