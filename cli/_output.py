"""Human and JSON output for the CLI, and the one-line error convention."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from typing import Any

import click
from rich.console import Console
from rich.table import Table

# Not a terminal (pipes, CI, `make demo` logs): wide enough that tables stay readable.
console = Console(width=None if sys.stdout.isatty() else 160)


class CliError(Exception):
    """An error to print as one line, with an exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@contextlib.contextmanager
def errors() -> Iterator[None]:
    """Turn every expected failure into one line on stderr and a non-zero exit."""
    from federation.errors import FederationError
    from models import ModelError
    from node.errors import NodeError

    try:
        yield
    except CliError as exc:
        click.echo(f"outpost: error: {exc}", err=True)
        sys.exit(exc.code)
    except (NodeError, FederationError, ModelError) as exc:
        # The three packages' roots: every error they raise on purpose names its fix. A bug
        # (anything else) keeps its traceback.
        click.echo(f"outpost: error: {exc}", err=True)
        sys.exit(1)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def print_models(records: list[dict[str, Any]]) -> None:
    if not records:
        click.echo("no models; add one with `outpost models add PATH --name NAME`")
        return
    table = Table("name", "version", "size", "sha256", "inputs", "outputs", "provider", "runs")
    for r in records:
        sig = r["signature"]
        table.add_row(
            r["name"], r["version"], _size(r["size"]), r["sha256"][:16] + "…",
            ", ".join(f"{t['name']} {t['datatype']}{t['shape']}" for t in sig["inputs"]),
            ", ".join(f"{t['name']} {t['datatype']}{t['shape']}" for t in sig["outputs"]),
            r.get("provider") or "-",
            _execution(r.get("execution")),
        )
    console.print(table)


def _execution(execution: dict[str, Any] | None) -> str:
    """``inline (run 12.0 us < hand-off 70.1 us)``, ``worker``, or ``-`` when not loaded."""
    if not execution:
        return "-"
    mode = str(execution["mode"])
    run, handoff = execution.get("run_p50_us"), execution.get("handoff_p50_us")
    if run is not None and handoff is not None:
        op = "<" if mode == "inline" else ">="
        return f"{mode} (run {run:g} us {op} hand-off {handoff:g} us)"
    return mode


def print_status(info: dict[str, Any]) -> None:
    daemon = "running" if info.get("running") else "stopped"
    console.print(f"[bold]node[/bold] {info['node_id']}   daemon: {daemon}"
                  + (f"   pid {info['pid']}   uptime {info['uptime_s']:.0f}s" if info.get("running") else ""))
    if info.get("listen"):
        console.print(f"app endpoint: http://{info['listen']}")
    caps = info.get("capabilities", {})
    if caps:
        cpu, mem = caps["cpu"], caps["memory"]
        console.print(
            f"cpu {cpu['logical']} logical, load {cpu['load']}   memory "
            f"{_size(mem['available'])} free of {_size(mem['total'])}   disk "
            f"{_size(caps['disk']['free'])} free   gpus {len(caps['gpus'])}   "
            f"onnxruntime {caps['onnxruntime']}"
        )
        console.print(f"runtime: {caps.get('onnxruntime_package', 'onnxruntime')} on "
                      f"{caps.get('machine', '?')}, providers "
                      f"{', '.join(caps.get('providers_installed', []))}", highlight=False)
    _print_runtime(info.get("runtime"))
    _print_witness(info.get("witness"))
    _print_operator(info)
    table = Table("model", "version", "provider", "queue", "batching", "sha256")
    for m in info.get("models", []):
        table.add_row(m["name"], m["version"], m.get("provider", "-"),
                      str(m.get("queue_depth", "-")), "dynamic" if m.get("dynamic_batching") else "off",
                      m["sha256"][:16] + "…")
    console.print(table)


def _print_operator(info: dict[str, Any]) -> None:
    """Federation, members, policy, audit, evidence, certificate (node.opstatus)."""
    fed = info.get("federation")
    if fed:
        members = info.get("members_by_state")
        counts = (", ".join(f"{n} {state}" for state, n in sorted(members.items()))
                  if members else "members: daemon not running")
        console.print(f"federation {fed['federation']}: {fed.get('tier')}, site "
                      f"{fed.get('site')}, {fed.get('jurisdiction')}   members: {counts}",
                      highlight=False)
    else:
        console.print("federation: not enrolled (`outpost join request`)")
    version = info.get("policy_version")
    console.print(f"policy: {f'v{version}' if version is not None else 'none in force'}"
                  f"   revocation list: "
                  f"{'v' + str(info['revocation_version']) if info.get('revocation_version') is not None else 'none'}",
                  highlight=False)
    audit = info.get("audit") or {}
    if audit:
        age = audit.get("head_age_s")
        console.print(f"audit: {audit.get('size', 0)} entries, database "
                      f"{_size(audit.get('database_bytes', 0))}, newest "
                      f"{f'{age:.0f}s ago' if age is not None else 'never'}", highlight=False)
    evidence = info.get("evidence") or {}
    if evidence.get("equivocations"):
        console.print(f"[bold red]evidence[/bold red]: {evidence['equivocations']} "
                      "equivocation(s) (see `outpost audit tail`)")
    clock = info.get("clock") or {}
    if clock.get("warning"):
        console.print(f"[bold yellow]warning[/bold yellow]: {clock['warning']}", highlight=False)
    elif clock.get("offset_s") is not None:
        console.print(f"clock: {clock['offset_s']:+.3f} s from peers", highlight=False)
    cert = info.get("certificate")
    if cert:
        if cert.get("error"):
            console.print(f"[bold red]certificate[/bold red]: {cert['error']}", highlight=False)
        else:
            console.print(f"certificate: serial {cert['serial']}, valid until "
                          f"{cert['not_valid_after']} ({cert['days_left']:.0f} days)",
                          highlight=False)
            if cert.get("warning"):
                console.print(f"[bold yellow]warning[/bold yellow]: {cert['warning']}",
                              highlight=False)


def print_json_line(data: Any) -> None:
    click.echo(json.dumps(data, sort_keys=True))


def _print_witness(witness: dict[str, Any] | None) -> None:
    """The trail lines of `outpost status`: what this node witnesses, and any rollback."""
    if not witness:
        return
    cosigned = witness.get("cosigned") or {}
    console.print(f"witnessing {len(witness.get('held') or {})} log(s); this log cosigned by "
                  f"{sum(1 for s in cosigned.values() if s)} witness(es)"
                  + (f"; tiles on http://{witness['tiles_listen']}"
                     if witness.get("tiles_listen") else ""))
    for r in witness.get("rollbacks") or []:
        console.print(f"[bold red]ROLLBACK[/bold red] {r['origin']} ({r['kind']}, seen by "
                      f"{r['reporter']})", highlight=False)
    for key, size in (witness.get("cut_back") or {}).items():
        console.print(f"[bold red]CUT BACK[/bold red] witness {key} holds size {size} of this "
                      "log, more than it has; run `outpost audit verify`", highlight=False)


def _print_runtime(runtime: dict[str, Any] | None) -> None:
    """The runtime line of `outpost status`: the Ray cluster, and DEGRADED with its reason."""
    if not runtime:
        return
    if runtime.get("backend") == "ray":
        cluster = runtime.get("cluster")
        where = (f"{cluster['nodes']} node(s), {cluster['cpus']:g} CPU, {cluster['gpus']:g} GPU, "
                 f"{_size(cluster['memory'])}, {cluster['replicas']} replica(s)"
                 if cluster else "no cluster facts yet")
        console.print(f"runtime: ray at {runtime.get('address')!r}: {where}")
    if runtime.get("degraded"):
        console.print(f"[bold red]DEGRADED[/bold red] since {runtime.get('since') or '?'}: "
                      f"{runtime.get('reason')}", highlight=False)


def print_audit(rows: list[tuple[int, dict[str, Any]]], as_json: bool,
                origin: str | None = None) -> None:
    for index, entry in rows:
        if as_json:
            click.echo(json.dumps({"index": index, "entry": entry}, sort_keys=True))
            continue
        extra = " ".join(
            f"{k}={entry[k]}" for k in ("model", "version", "caller", "data_class", "decision",
                                        "outcome", "peer", "policy_version", "reason")
            if k in entry
        )
        detail = entry.get("detail") or {}
        if detail.get("token") and entry["kind"] != "infer":  # token.add/revoke: which app
            extra += f" app={detail.get('app')} token={detail['token']}"
        where = f"{origin.rsplit('/', 1)[-1]:<12} " if origin else ""
        click.echo(f"{where}{index:>8}  {entry['time']}  {entry['kind']:<16} {extra}")


def print_peers(rows: list[dict[str, Any]]) -> None:
    if not rows:
        click.echo("no peers known yet (no seeds answered, nothing discovered)")
        return
    table = Table("node", "state", "tier", "site", "jur.", "models", "queue", "rtt ms",
                  "policy", "checkpoint", "address")
    for r in rows:
        models = ", ".join(f"{m['name']}:{m['version']}" for m in r.get("models", []))
        state = r["state"] + (" EQUIVOCATED" if r.get("equivocated") else "") + (
            " ROLLED-BACK" if r.get("rolled_back") else "")
        table.add_row(r["node_id"], state, r.get("tier") or "?", r.get("site") or "?",
                      r.get("jurisdiction") or "?", models or "-", str(r.get("queue", "-")),
                      str(r.get("rtt_ms") or "-"),
                      str(r.get("policy_version") or "-"), str(r.get("checkpoint_size") or "-"),
                      r["address"])
    console.print(table)


def print_infer(response: dict[str, Any]) -> None:
    params = response.get("parameters", {})
    console.print(f"{response.get('model_name')}:{response.get('model_version')} served by "
                  f"{params.get('outpost.served_by', '?')} ({params.get('outpost.route', '?')})")
    for output in response.get("outputs", []):
        data = output.get("data")
        text = json.dumps(data)
        if len(text) > 400:
            text = text[:400] + "…"
        console.print(f"[bold]{output['name']}[/bold] {output['datatype']}{output['shape']}: {text}")
