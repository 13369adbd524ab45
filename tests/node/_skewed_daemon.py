"""`python -m tests.node._skewed_daemon run ...`: the real CLI with this node's clock
(``node.clock.wall``) set $OUTPOST_TEST_SKEW_S seconds off: an injected clock."""

import os
import time

from node import clock

_skew = float(os.environ.get("OUTPOST_TEST_SKEW_S", "0"))
clock.wall = lambda: time.time() + _skew  # type: ignore[assignment]

if __name__ == "__main__":
    from cli.main import entry

    entry()
