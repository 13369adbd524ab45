"""Clock skew: offsets are estimated from peers, judged against the stated tolerances, and a
node whose clock is hours off says so (log, status, metric) while a good one stays quiet."""

from __future__ import annotations

import json

import pytest

from node import clock
from tests.conftest import start_daemon
from tests.fedharness import Fed, eventually, peers, status


def test_offset_is_peer_time_minus_the_midpoint() -> None:
    assert clock.offset_from(100.0, 100.2, 3700.1) == pytest.approx(3600.0)
    assert clock.offset_from(100.0, 100.0, 90.0) == -10.0


def test_judge_names_the_tolerance_it_exceeds() -> None:
    assert clock.judge({})["warning"] is None
    assert clock.judge({"a": 2.0, "b": -1.0})["warning"] is None
    minutes = clock.judge({"a": 600.0})["warning"]
    assert "600 s behind" in minutes and "audit entry times" in minutes
    hours = clock.judge({"a": -3 * 3600.0, "b": -3 * 3600.0 + 1, "c": 5.0})
    assert "3.0 h ahead of" in hours["warning"] and "1 h certificate tolerance" in hours["warning"]
    # one peer with a bad clock is outvoted by the median
    assert clock.judge({"a": 7200.0, "b": 0.5, "c": -0.5})["warning"] is None


@pytest.mark.integration
@pytest.mark.slow
def test_a_node_hours_behind_warns_and_a_good_one_does_not(
        fed: Fed, monkeypatch: pytest.MonkeyPatch) -> None:
    fed.add("good")
    fed.add("skewed", seed="good")
    fed.start("good")
    monkeypatch.setenv("OUTPOST_TEST_SKEW_S", str(-3 * 3600))
    fed.procs["skewed"] = start_daemon(
        fed.dirs["skewed"], "--peer-listen", f"127.0.0.1:{fed.ports['skewed']}",
        module="tests.node._skewed_daemon")
    monkeypatch.delenv("OUTPOST_TEST_SKEW_S")
    for name in fed.dirs:
        eventually(lambda n=name: len([p for p in peers(fed.dirs[n]).values()
                                       if p["state"] == "alive" and p["tier"]]) == 2,
                   what="adverts")
    skewed = eventually(lambda: (s := status(fed.dirs["skewed"]))["clock"]["offset_s"] and s,
                        timeout=60, what="an offset measured")
    assert skewed["clock"]["offset_s"] == pytest.approx(3 * 3600, abs=60)
    assert "3.0 h behind" in skewed["clock"]["warning"]
    eventually(lambda: any("3.0 h behind" in line for line in fed.procs["skewed"].log),
               what="the warning logged")
    with fed.procs["skewed"].http() as http:
        metrics = http.get("/metrics").text
    assert any(line.startswith("outpost_clock_offset_seconds 10") for line in
               metrics.splitlines())
    good = eventually(lambda: (s := status(fed.dirs["good"]))["clock"]["offset_s"] is not None
                      and s, timeout=60, what="good node measured")
    assert abs(good["clock"]["offset_s"]) < 5 and good["clock"]["warning"] is None
    assert not any("clock is" in line for line in fed.procs["good"].log)
    assert json.dumps(good)  # status stays JSON-able
