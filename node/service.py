"""The daemon under a service manager: readiness and stop notices, watchdog, SIGHUP reload.

Owns what happens around the lifecycle in ``node.daemon.run``, not the lifecycle itself:

- ``started()``: ``READY=1`` to systemd (``node.notify``) once every listener accepts, the
  watchdog pinger when ``WatchdogSec=`` is set, and the SIGHUP handler;
- ``stopping()``: ``STOPPING=1`` as the drain starts;
- SIGHUP: read ``outpost.toml`` again and apply what can change live — ``[log] level`` and
  ``format``, the policy bundle and revocation list held in the store (put there by an offline
  ``outpost apply``) — and log, key by key, what needs a restart.

Must never stop the node: a reload that fails (bad TOML) logs why and keeps the old settings.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
from typing import TYPE_CHECKING, Any

from node import config as cfg
from node import logs, notify

if TYPE_CHECKING:
    from node.ports import RunningNode

log = logging.getLogger("outpost.service")

# Keys that take effect on SIGHUP; every other changed key is logged as needing a restart.
LIVE_KEYS = frozenset({("log", "level"), ("log", "format")})


def changed_keys(old: cfg.Config, new: cfg.Config) -> list[tuple[str, str]]:
    """``(section, key)`` of every setting that differs between two configs."""
    changed = []
    for sec in dataclasses.fields(old):
        before, after = getattr(old, sec.name), getattr(new, sec.name)
        for f in dataclasses.fields(before):
            if getattr(before, f.name) != getattr(after, f.name):
                changed.append((sec.name, f.name))
    return changed


class Service:
    """Hooks ``node.daemon.run`` calls around one running daemon."""

    def __init__(self, daemon: RunningNode, *, log_overrides: dict[str, str] | None = None) -> None:
        self.daemon = daemon
        # `outpost run --log-level/--log-format` win over the file, on reload too.
        self.log_overrides = log_overrides or {}
        self._watchdog: asyncio.Task[None] | None = None
        self._expiry: asyncio.Task[None] | None = None
        self._clock: asyncio.Task[None] | None = None
        self.clock_report: dict[str, Any] = {"offset_s": None, "warning": None}
        self._reloading: asyncio.Task[Any] | None = None
        # What the file said at start (the running config also holds `run` flags, which a
        # reload must not report as changes).
        self._file: cfg.Config | None = None
        self._running: cfg.Config = daemon.config  # the settings in force (log: reloaded)

    def started(self) -> None:
        report = self.clock_report

        async def clock_route(_payload: dict[str, Any], _rest: str) -> tuple[int, Any]:
            return 200, report

        if self.daemon.admin is not None:
            self.daemon.admin.route("GET", "/clock", clock_route)
        from node.obs import clock_gauge

        clock_gauge(self.daemon, report)
        try:
            self._file = cfg.load(self.daemon.data_dir)
        except cfg.ConfigError:
            self._file = self.daemon.config
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        interval = notify.watchdog_interval()
        if interval is not None:
            self._watchdog = asyncio.create_task(notify.watchdog_forever(interval),
                                                 name="sd-watchdog")
            log.info("systemd watchdog: pinging every %.1f s", interval)
        if self.daemon.identity is not None:
            from node.renew import warn_forever

            self._expiry = asyncio.create_task(warn_forever(self.daemon), name="cert-expiry")
        if self.daemon.cluster is not None:
            from node.clock import watch_forever

            self._clock = asyncio.create_task(watch_forever(self.daemon, self.clock_report),
                                              name="clock-check")
        notify.ready(f"serving on {self.daemon.listen}")

    def stopping(self) -> None:
        notify.stopping()
        asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        for task in (self._watchdog, self._expiry, self._clock):
            if task is not None:
                task.cancel()

    def _on_hup(self) -> None:
        if self._reloading is not None and not self._reloading.done():
            log.info("SIGHUP: a reload is already running")
            return
        self._reloading = asyncio.create_task(self.reload(), name="reload")

    async def reload(self) -> dict[str, Any]:
        """Apply the live part of the config file and the store's documents; return a report
        (also logged): ``applied`` keys, ``restart`` keys, ``error`` if the file is bad."""
        notify.reloading()
        report: dict[str, Any] = {"applied": [], "restart": [], "error": None}
        try:
            try:
                new = cfg.load(self.daemon.data_dir)
            except cfg.ConfigError as exc:
                report["error"] = str(exc)
                log.warning("SIGHUP: config not reloaded (%s); the running settings stay", exc)
                return report
            old = self._running
            for section, key in changed_keys(self._file or old, new):
                (report["applied"] if (section, key) in LIVE_KEYS
                 else report["restart"]).append(f"{section}.{key}")
            level = self.log_overrides.get("level", new.log.level)
            fmt = self.log_overrides.get("format", new.log.format)
            logs.setup(level, fmt, node_id=self.daemon.node_id)
            self._running = dataclasses.replace(old, log=new.log)
            self._file = dataclasses.replace(self._file or old, log=new.log)
            report["documents"] = await self._reload_documents()
            version = self.daemon.policy_version
            log.info("SIGHUP: reloaded %s; %s%s",
                     ", ".join(report["applied"]) or "no live settings changed",
                     f"policy v{version} in force" if version is not None else "no policy",
                     "; changed but need a restart: " + ", ".join(report["restart"])
                     if report["restart"] else "")
            return report
        finally:
            notify.notify("READY=1", f"STATUS=serving on {self.daemon.listen}")

    async def _reload_documents(self) -> dict[str, Any]:
        """The policy bundle and revocation list in the store, put in force if newer."""
        from node.enrollment import revocations
        from node.store import get_doc

        daemon = self.daemon
        held = await get_doc(daemon.store, "policy")
        if held is not None and daemon.identity is not None and held[0] != daemon.policy_version:
            daemon.policy.use(held[0])
        if daemon.credentials is not None:
            revoked = await revocations(daemon.store, daemon.data_dir)
            if revoked is not None:
                daemon.credentials.update_revocations(revoked)
                if daemon.cluster is not None:
                    daemon.cluster.update_revocations(revoked)
        return {"policy_version": held[0] if held else None}
