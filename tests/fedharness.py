"""A federation of real daemons on loopback, built through the CLI, for integration tests.

Kept for the tests that import it from here: the helpers live in ``node.testing``.
"""

from __future__ import annotations

from node.testing import (  # noqa: F401  (re-exported)
    Federation,
    configure,
    eventually,
    free_port,
    peers,
    status,
)

Fed = Federation
