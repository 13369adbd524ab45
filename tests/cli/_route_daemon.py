"""`outpost run` with the batch audit route registered, for daemons whose node/daemon.py does
not register it yet (a no-op once it does). Run as ``python -m tests.cli._route_daemon run ...``."""

from __future__ import annotations

from typing import Any

import node.daemon as daemon_module
from node import batch

_start = daemon_module.start


async def start(data_dir: Any, config: Any) -> Any:
    daemon = await _start(data_dir, config)
    assert daemon.admin is not None
    if ("POST", batch.AUDIT_ROUTE) not in daemon.admin.routes:
        daemon.admin.route("POST", batch.AUDIT_ROUTE, batch.admin_route(daemon))
    return daemon


daemon_module.start = start  # type: ignore[assignment]

if __name__ == "__main__":
    from cli.main import main

    main()
