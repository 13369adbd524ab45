"""Invariant: every refusal is on the trail — itemised up to the per-source rate, counted in
aggregate entries beyond it — and a flood costs a bounded number of entries whatever its size."""

from __future__ import annotations

import asyncio
from typing import Any

from node import limits
from node.refusals import RefusalTrail


def test_refusals_beyond_the_rate_are_aggregated_and_all_counted() -> None:
    entries: list[dict[str, Any]] = []
    now = [0.0]

    async def append(kind: str, **fields: Any) -> int:
        entries.append({"kind": kind, **fields})
        return len(entries)

    async def flood() -> None:
        trail = RefusalTrail(append, clock=lambda: now[0])
        for i in range(5000):  # 5,000 refusals from one peer within a tenth of a second
            now[0] = i / 50_000
            await trail.refused("node:evil", status=400, reason="bad json", model="m",
                                outcome="bad_request", data_class="public")
        await trail.refused("app@127.0.0.1", status=404, reason="no model", model="x",
                            outcome="not_found", data_class="restricted")
        now[0] = 10.0
        trail.flush(force=True)
        await asyncio.sleep(0)  # let the aggregate appends run

    asyncio.run(flood())
    evil = [e for e in entries if e["caller"] == "node:evil"]
    counted = sum(int(e["detail"].get("aggregated", 1)) for e in evil)
    assert counted == 5000
    assert len(evil) <= limits.REFUSAL_BURST + 5, len(evil)
    aggregate = [e for e in evil if "aggregated" in e["detail"]]
    assert aggregate and aggregate[0]["outcome"] == "bad_request"
    assert aggregate[0]["data_class"] == "public" and aggregate[0]["detail"]["status"] == 400
    # Another source keeps its own budget: its refusal is itemised.
    [other] = [e for e in entries if e["caller"] == "app@127.0.0.1"]
    assert "aggregated" not in other["detail"] and other["outcome"] == "not_found"
