"""Operator commands: config show/check with value sources, --json on every command that
prints a result, applying a document twice, policy explain for every action (version shown,
exit 1 on deny), human status, and certificate renewal applied live.

Real CLI subprocesses and real daemons.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT, init_node, outpost, write_config
from tests.fedharness import Fed, eventually, peers, status

POLICY = """
@id("infer-anywhere")
permit(principal, action == Action::"infer", resource);
@id("public-anywhere")
permit(principal, action == Action::"forward", resource)
  when { resource.data_class == "public" };
@id("pull-on-prem")
permit(principal, action == Action::"model.pull", resource)
  when { context.target.tier == "onprem" };
@id("collect-on-prem")
permit(principal, action == Action::"audit.replicate", resource)
  when { context.target.tier == "onprem" };
"""


def _env_outpost(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*__import__("tests.conftest").conftest.OUTPOST, *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, **env})


def test_config_show_names_each_source(node_dir: Path) -> None:
    write_config(node_dir, "node", drain_timeout_s=3.0)
    result = _env_outpost({"OUTPOST_LOG_FORMAT": "json", "OUTPOST_PLACEMENT_MAX_HOPS": "2"},
                          "config", "show", "--json", "--data-dir", str(node_dir))
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["config"]["node"]["drain_timeout_s"] == 3.0
    assert shown["sources"]["node.drain_timeout_s"] == "file"
    assert shown["sources"]["node.name"] == "file"
    assert shown["sources"]["node.listen"] == "default"
    assert shown["config"]["log"]["format"] == "json"
    assert shown["sources"]["log.format"] == "env"
    assert shown["config"]["placement"]["max_hops"] == 2  # TOML-typed, not the string "2"
    human = outpost("config", "show", data_dir=node_dir).stdout
    assert "drain_timeout_s = 3.0    # file" in human
    # a bad variable is named, and `run` refuses with the same message
    bad = _env_outpost({"OUTPOST_LOG_FORMAT": "xml"}, "config", "show",
                       "--data-dir", str(node_dir))
    assert bad.returncode == 1 and "log.format" in bad.stderr and "Traceback" not in bad.stderr
    bad = _env_outpost({"OUTPOST_LOG_FORMAT": "xml"}, "run", "--data-dir", str(node_dir))
    assert bad.returncode == 3 and "log.format" in bad.stderr


def test_config_check(tmp_path: Path, node_dir: Path) -> None:
    good = outpost("config", "check", str(node_dir / "outpost.toml"), "--json")
    assert json.loads(good.stdout)["ok"] is True
    bad = tmp_path / "bad.toml"
    bad.write_text('[node]\nlisten = "nowhere"\n')
    result = outpost("config", "check", str(bad), check=False)
    assert result.returncode == 1 and "node.listen" in result.stderr
    result = outpost("config", "check", str(bad), "--json", check=False)
    assert result.returncode == 1 and json.loads(result.stdout)["ok"] is False
    typo = tmp_path / "typo.toml"
    typo.write_text('[log]\nlevl = "debug"\n')
    result = outpost("config", "check", str(typo), check=False)
    assert result.returncode == 1 and "levl" in result.stderr
    missing = outpost("config", "check", str(tmp_path / "none.toml"), check=False)
    assert missing.returncode == 1 and "does not exist" in missing.stderr


def test_json_everywhere_and_applying_twice_is_a_no_op(tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    made = json.loads(outpost("federation", "init", "--dir", str(ca), "--name", "acme",
                              "--json").stdout)
    assert made["federation"] == "acme"
    node = tmp_path / "n"
    init = json.loads(outpost("init", "--name", "n", "--no-sample", "--json",
                              data_dir=node).stdout)
    assert init["node_id"] == "n" and init["created"] is True
    req = json.loads(outpost("join", "request", "-o", str(tmp_path / "n.req"), "--json",
                             data_dir=node).stdout)
    assert req["node_id"] == "n"
    enrolled = json.loads(outpost(
        "federation", "enroll", str(tmp_path / "n.req"), "--ca", str(ca), "--tier", "edge",
        "--site", "s", "--jurisdiction", "DE", "-o", str(tmp_path / "n.pem"), "--json").stdout)
    assert enrolled["node_id"] == "n"
    joined = json.loads(outpost("join", str(tmp_path / "n.pem"), "--json", data_dir=node).stdout)
    assert joined["federation"] == "acme" and joined["tier"] == "edge"
    (tmp_path / "p.cedar").write_text(POLICY)
    signed = json.loads(outpost("policy", "sign", str(tmp_path / "p.cedar"), "--version", "1",
                                "--ca", str(ca), "-o", str(tmp_path / "b.json"),
                                "--json").stdout)
    assert signed["version"] == 1
    first = json.loads(outpost("policy", "apply", str(tmp_path / "b.json"), "--json",
                               data_dir=node).stdout)
    assert first == {"kind": "policy", "version": 1, "summary": "policy bundle v1",
                     "unchanged": False}
    again = outpost("policy", "apply", str(tmp_path / "b.json"), data_dir=node)
    assert "already in force" in again.stdout  # exit 0 (outpost() checks)
    crl = json.loads(outpost("federation", "revoke", "x", "--ca", str(ca),
                             "-o", str(tmp_path / "crl.pem"), "--json").stdout)
    assert crl["version"] == 1
    assert not json.loads(outpost("apply", str(tmp_path / "crl.pem"), "--json",
                                  data_dir=node).stdout)["unchanged"]
    assert json.loads(outpost("apply", str(tmp_path / "crl.pem"), "--json",
                              data_dir=node).stdout)["unchanged"]
    kinds = [json.loads(line)["entry"]["kind"] for line in
             outpost("audit", "tail", "--json", data_dir=node).stdout.splitlines()]
    assert kinds.count("policy.apply") == 1 and kinds.count("revocation.apply") == 1


@pytest.mark.integration
@pytest.mark.slow
def test_explain_every_action_status_and_live_renewal(fed: Fed) -> None:
    fed.add("edge-a", tier="edge")
    fed.add("prem-b", tier="onprem", seed="edge-a")
    for name in fed.dirs:
        fed.start(name)
    for name in fed.dirs:
        eventually(lambda n=name: [p for p in peers(fed.dirs[n]).values()
                                   if p["state"] == "alive" and p["tier"]], what="adverts")
    edge = fed.dirs["edge-a"]
    # a fresh node: judged with no policy, fail closed, exit 1
    result = outpost("policy", "explain", "--data-class", "public", "--to", "prem-b",
                     data_dir=edge, check=False)
    assert result.returncode == 1
    assert "no policy (fail closed)" in result.stdout and "None" not in result.stdout
    (fed.tmp / "p.cedar").write_text(POLICY)
    outpost("policy", "sign", str(fed.tmp / "p.cedar"), "--version", "3", "--ca", str(fed.ca),
            "-o", str(fed.tmp / "b.json"))
    outpost("policy", "apply", str(fed.tmp / "b.json"), data_dir=edge)
    eventually(lambda: status(edge)["policy_version"] == 3, what="policy in force")

    def explain(*args: str) -> tuple[int, dict]:
        r = outpost("policy", "explain", *args, "--json", data_dir=edge, check=False)
        return r.returncode, json.loads(r.stdout)

    code, answer = explain("--data-class", "public", "--to", "prem-b")
    assert code == 0 and answer["allowed"] and answer["policy_version"] == 3
    assert answer["policies"] == ["public-anywhere"]
    code, answer = explain("--data-class", "personal", "--to", "prem-b")
    assert code == 1 and not answer["allowed"]
    code, answer = explain("--action", "infer", "--data-class", "personal")
    assert code == 0 and answer["policies"] == ["infer-anywhere"]
    code, answer = explain("--action", "model.pull", "--from", "prem-b", "--model", "digits:1")
    assert code == 0 and answer["policies"] == ["pull-on-prem"]
    code, answer = explain("--action", "audit.replicate", "--from", "prem-b")
    assert code == 0 and answer["policies"] == ["collect-on-prem"]
    code, answer = explain("--action", "audit.replicate", "--from", "edge-a")
    assert code == 1 and answer["policy_version"] == 3
    human = outpost("policy", "explain", "--action", "model.pull", "--from", "prem-b",
                    "--model", "digits:1", data_dir=edge).stdout
    assert "judged with policy version 3" in human
    missing = outpost("policy", "explain", "--action", "model.pull", data_dir=edge, check=False)
    assert missing.returncode == 1 and "--from" in missing.stderr

    # human status: federation, members, policy, audit, certificate
    shown = outpost("status", data_dir=edge).stdout
    assert "federation acme" in shown and "members: 2 alive" in shown, shown
    assert "policy: v3" in shown and "audit:" in shown and "certificate: serial" in shown
    before = json.loads(outpost("status", "--json", data_dir=edge).stdout)["certificate"]
    assert before["warning"] is None and before["days_left"] > 300

    # renewal: request, enroll (short validity: inside the warning horizon), apply live
    renewal = json.loads(outpost("join", "renew", "-o", str(fed.tmp / "renew.req"), "--json",
                                 data_dir=edge).stdout)
    assert "--tier edge" in renewal["enroll_command"]
    outpost("federation", "enroll", str(fed.tmp / "renew.req"), "--ca", str(fed.ca), "--tier",
            "edge", "--site", "site-edge-a", "--jurisdiction", "DE", "--days", "20",
            "-o", str(fed.tmp / "renewed.pem"))
    pid = fed.procs["edge-a"].proc.pid
    renewed = json.loads(outpost("join", str(fed.tmp / "renewed.pem"), "--json",
                                 data_dir=edge).stdout)
    assert renewed["renewed"] is True
    after = json.loads(outpost("status", "--json", data_dir=edge).stdout)
    assert after["pid"] == pid  # no restart
    cert = after["certificate"]
    assert cert["serial"] != before["serial"] and cert["days_left"] < 21
    assert "renew it" in cert["warning"]
    assert "warning" in outpost("status", data_dir=edge).stdout
    eventually(lambda: any("WARNING" in line and "renew it" in line
                           for line in fed.procs["edge-a"].log), what="expiry warning logged")
    # the peer accepts new handshakes with the renewed certificate: forward still works
    outpost("policy", "apply", str(fed.tmp / "b.json"), data_dir=fed.dirs["prem-b"],
            check=False)
    eventually(lambda: peers(fed.dirs["prem-b"])["edge-a"]["state"] == "alive",
               what="edge still alive at its peer")
    entries = [json.loads(line)["entry"] for line in
               outpost("audit", "tail", "--json", data_dir=edge).stdout.splitlines()]
    assert [e for e in entries if e["kind"] == "enroll" and e["detail"].get("renewal")]


def test_renew_needs_an_enrolled_node(tmp_path: Path) -> None:
    init_node(tmp_path / "n", "n", "--no-sample")
    result = outpost("join", "renew", "-o", str(tmp_path / "r.req"), data_dir=tmp_path / "n",
                     check=False)
    assert result.returncode == 1 and "join request" in result.stderr
