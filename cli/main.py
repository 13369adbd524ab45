"""The ``outpost`` command: parse, build config, call into ``node`` — nothing else.

Every command takes ``--data-dir`` (or ``$OUTPOST_DATA_DIR``); every listing takes ``--json``.
Errors are one line on stderr and a non-zero exit code (3 when the daemon cannot start).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from cli import _output as out
from cli import audit as audit_cli
from cli._options import data_dir_option, json_option
from node.config import ConfigError

F = TypeVar("F", bound=Callable[..., Any])


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="outpost")
def main() -> None:
    """Outpost: an edge-first federated node for governed local inference."""


# -- node ------------------------------------------------------------------------------------


@main.command()
@data_dir_option
@click.option("--name", help="Node id (default: the host name). Bound into the certificate.")
@click.option("--no-sample", is_flag=True, help="Do not add the bundled sample model.")
@json_option
def init(data_dir: Path, name: str | None, no_sample: bool, as_json: bool) -> None:
    """Create the node: data directory, Ed25519 key (0600), config, database, sample model."""
    import dataclasses

    from node.ops import init_node

    with out.errors():
        result = init_node(data_dir, name=name, sample=not no_sample)
    if as_json:
        out.print_json({**dataclasses.asdict(result), "data_dir": str(data_dir)})
        return
    for line in result.messages:
        click.echo(line)


@main.command()
@data_dir_option
@click.option("--listen", help="App endpoint HOST:PORT (config node.listen, default 127.0.0.1:8470).")
@click.option("--peer-listen", help="Peer endpoint HOST:PORT (config node.peer_listen).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              help="Log level (default: config log.level, info).")
@click.option("--log-format", type=click.Choice(["text", "json"]),
              help="Log lines as text or JSON (default: config log.format, text).")
def run(data_dir: Path, listen: str | None, peer_listen: str | None, log_level: str | None,
        log_format: str | None) -> None:
    """Run the daemon until SIGTERM/SIGINT (then drain and exit 0); SIGHUP reloads."""
    from models.errors import MissingExtra
    from node import logs
    from node.config_sources import effective
    from node.daemon import EXIT_STARTUP_FAILURE
    from node.daemon import run as run_daemon
    from node.errors import StartupError

    flags = {key: v for key, v in ((("node", "listen"), listen),
                                   (("node", "peer_listen"), peer_listen),
                                   (("log", "level"), log_level),
                                   (("log", "format"), log_format)) if v}
    logs.setup(log_level or "info", log_format or "text")
    try:
        config, sources = effective(data_dir, flags)  # defaults < file < OUTPOST_* env < flags
        # what env or flags set stays set across SIGHUP reloads of the file
        overrides = {k: getattr(config.log, k) for k in ("level", "format")
                     if sources[f"log.{k}"] in ("env", "flag")}
        logs.setup(overrides.get("level", config.log.level),
                   overrides.get("format", config.log.format), node_id=config.node.name)
        if config.otel.endpoint:
            from node import otel

            otel.setup(config.otel.endpoint, config.otel.service_name, config.node.name)
        try:
            code = _event_loop_runner()(run_daemon(data_dir, config, log_overrides=overrides))
        finally:
            if config.otel.endpoint:
                otel.shutdown()  # flush the last spans
    except (StartupError, ConfigError, MissingExtra) as exc:
        click.echo(f"outpost: cannot start: {exc}", err=True)
        sys.exit(EXIT_STARTUP_FAILURE)
    sys.exit(code)


def _event_loop_runner() -> Callable[..., int]:
    """uvloop where it is installed (its C transports roughly halve the per-request cost of
    the event loop), the standard loop elsewhere."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


@main.command()
@data_dir_option
@json_option
def status(data_dir: Path, as_json: bool) -> None:
    """Show the node: identity, daemon state, models and providers, capabilities, uptime."""
    from node.ops import node_status
    from node.opstatus import details

    with out.errors():
        info = details(data_dir, node_status(data_dir))
    if as_json:
        out.print_json(info)
    else:
        out.print_status(info)


# -- models ----------------------------------------------------------------------------------


@main.group()
def models() -> None:
    """Manage the models this node serves."""


@models.command("add")
@data_dir_option
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="Model name used in /v2/models/{name}.")
@click.option("--version", "version", help="Version (default: one more than the highest).")
@json_option
def models_add(data_dir: Path, path: Path, name: str, version: str | None, as_json: bool) -> None:
    """Add an ONNX model (validated by loading it; loaded live if the daemon runs)."""
    from node.ops import models_add as add

    with out.errors():
        record = add(data_dir, path.resolve(), name, version)
    if as_json:
        out.print_json(record)
    else:
        click.echo(f"added {record['name']}:{record['version']} (sha256 {record['sha256'][:16]}…)")


@models.command("pull")
@data_dir_option
@click.argument("ref")
@click.option("--from", "from_node", help="Node id to pull from (default: the closest holder).")
@json_option
def models_pull(data_dir: Path, ref: str, from_node: str | None, as_json: bool) -> None:
    """Fetch NAME[:VERSION] from a peer (if policy allows model.pull), verified by SHA-256;
    an interrupted transfer resumes when run again."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    from node.ops import models_pull as pull
    from node.pull import PullError

    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), console=out.console, disable=as_json,
                  transient=True) as bar:
        task = bar.add_task(f"pull {ref}", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        with out.errors():
            try:
                record = pull(data_dir, ref, from_node, progress)
            except PullError as exc:
                raise out.CliError(str(exc)) from None
    if as_json:
        out.print_json(record)
    else:
        click.echo(f"pulled {record['name']}:{record['version']} from {record['source']} "
                   f"(sha256 {record['sha256'][:16]}… verified)")


@models.command("list")
@data_dir_option
@json_option
def models_list(data_dir: Path, as_json: bool) -> None:
    """List the models in the store."""
    from node.ops import models_list as listing

    with out.errors():
        records = listing(data_dir)
    if as_json:
        out.print_json(records)
    else:
        out.print_models(records)


@models.command("rm")
@data_dir_option
@click.argument("ref")
@json_option
def models_rm(data_dir: Path, ref: str, as_json: bool) -> None:
    """Remove NAME (all versions) or NAME:VERSION (unloaded live if the daemon runs)."""
    from node.ops import models_rm as rm

    with out.errors():
        removed = rm(data_dir, ref)
    if as_json:
        out.print_json(removed)
    else:
        for record in removed:
            click.echo(f"removed {record['name']}:{record['version']}")


# -- inference -------------------------------------------------------------------------------


@main.command()
@data_dir_option
@click.argument("name")
@click.option("--input", "input_", required=True,
              help="Inputs: a JSON file or JSON text — a full OIP request, or {input: data}; "
                   "or a .npy file for a one-input model.")
@click.option("--version", "version", help="Model version (default: latest).")
@click.option("--data-class", help="Data class label (parameter outpost.data_class).")
@click.option("--jurisdiction", help="Data jurisdiction label (outpost.jurisdiction).")
@click.option("--token", envvar="OUTPOST_TOKEN", help="Bearer token of the app to call as "
              "(default $OUTPOST_TOKEN; none = App::\"anonymous\").")
@json_option
def infer(data_dir: Path, name: str, input_: str, version: str | None,
          data_class: str | None, jurisdiction: str | None, token: str | None,
          as_json: bool) -> None:
    """Call the local endpoint of the running daemon, for quick checks."""
    from node.ops import infer as do_infer

    with out.errors():
        response = do_infer(data_dir, name, input_, version, data_class, jurisdiction, token)
    if as_json:
        out.print_json(response)
    else:
        out.print_infer(response)


# -- audit -----------------------------------------------------------------------------------


@main.group()
def audit() -> None:
    """The node's signed, Merkle-chained audit log (RFC 9162 proofs, C2SP checkpoints)."""


@audit.command("tail")
@data_dir_option
@click.option("-n", "count", default=20, show_default=True, help="How many entries.")
@click.option("-f", "follow", is_flag=True, help="Keep printing new entries (Ctrl-C stops).")
@click.option("--all", "all_", is_flag=True,
              help="Also the other nodes' logs this node holds (a collector's estate trail).")
@click.option("--app", help="Only entries naming this app (both ends of a forward).")
@json_option
@audit_cli.filter_options
def audit_tail(data_dir: Path, count: int, follow: bool, all_: bool, app: str | None,
               as_json: bool, **filters: Any) -> None:
    """Print the newest entries (those matching the filters, if given)."""
    import time

    from node.ops_federation import audit_tail as tail
    from node.ops_federation import audit_tail_all

    if app is not None and all_:
        raise click.UsageError("--app reads this node's own log; drop --all")
    with out.errors():
        flt = audit_cli.make_filter(**filters, app=app)
        if not flt.empty:
            from node.trail_ops import filtered

            rows = filtered(data_dir, flt, limit=count)
            out.print_audit(rows, as_json)
            next_index = rows[-1][0] + 1 if rows else 0
            while follow:
                time.sleep(0.5)
                rows = filtered(data_dir, flt, start=next_index)
                if rows:
                    out.print_audit(rows, as_json)
                    next_index = rows[-1][0] + 1
            return
        if all_:
            for origin, index, entry in audit_tail_all(data_dir, count):
                if as_json:
                    out.print_json_line({"origin": origin, "index": index, "entry": entry})
                else:
                    out.print_audit([(index, entry)], False, origin=origin)
            return
        rows = tail(data_dir, count)
        out.print_audit(rows, as_json)
        next_index = rows[-1][0] + 1 if rows else 0
        while follow:
            time.sleep(0.5)
            rows = tail(data_dir, count, start=next_index)
            if rows:
                out.print_audit(rows, as_json)
                next_index = rows[-1][0] + 1


@audit.command("checkpoint")
@data_dir_option
@click.option("--size", type=int, help="A kept checkpoint of this tree size (default: newest).")
@click.option("--all", "all_", is_flag=True, help="List every kept checkpoint.")
@click.option("--cosigned", is_flag=True,
              help="The newest checkpoint witnesses cosigned, with their cosignature/v1 lines.")
def audit_checkpoint(data_dir: Path, size: int | None, all_: bool, cosigned: bool) -> None:
    """Print the newest signed checkpoint (C2SP tlog-checkpoint, signed note)."""
    from node.ops_federation import audit_checkpoint as checkpoint
    from node.ops_federation import audit_checkpoints

    if cosigned:
        audit_cli.cosigned_checkpoint(data_dir)
        return
    with out.errors():
        if all_:
            for kept_size, note in audit_checkpoints(data_dir):
                click.echo(f"# size {kept_size}\n{note}")
        else:
            click.echo(checkpoint(data_dir, size), nl=False)


@audit.command("vkey")
@data_dir_option
def audit_vkey(data_dir: Path) -> None:
    """Print the log's verifier key (note vkey format: name+hash+base64)."""
    from node.ops_federation import audit_vkey as vkey

    with out.errors():
        click.echo(vkey(data_dir))


@audit.command("proof")
@data_dir_option
@click.option("--index", type=int, required=True, help="Leaf index.")
@click.option("--size", type=int, help="Tree size (default: current).")
def audit_proof(data_dir: Path, index: int, size: int | None) -> None:
    """Print an RFC 9162 inclusion proof as JSON."""
    from node.ops_federation import audit_proof as proof

    with out.errors():
        out.print_json(proof(data_dir, index, size))


@audit.command("consistency")
@data_dir_option
@click.option("--old", type=int, required=True, help="Older tree size.")
@click.option("--new", type=int, help="Newer tree size (default: current).")
def audit_consistency(data_dir: Path, old: int, new: int | None) -> None:
    """Print an RFC 9162 consistency proof as JSON."""
    from node.ops_federation import audit_consistency as consistency

    with out.errors():
        out.print_json(consistency(data_dir, old, new))


@audit.command("verify")
@data_dir_option
@json_option
def audit_verify(data_dir: Path, as_json: bool) -> None:
    """Recompute the whole tree and check every stored checkpoint, and the checkpoints
    witnesses hold of this log (asked live when the daemon runs); exit 1 on tampering."""
    from node.trail_ops import audit_verify as verify

    with out.errors():
        report = verify(data_dir)
    if as_json:
        out.print_json(report)
    elif report["ok"]:
        click.echo(f"ok: {report['entries']} entries, {report['checkpoints']} signed checkpoints "
                   f"verified (up to size {report['verified_size']})")
    else:
        for problem in report["problems"]:
            click.echo(f"outpost: audit log FAILED verification: {problem}", err=True)
    if not report["ok"]:
        sys.exit(1)


for _command in audit_cli.COMMANDS:
    audit.add_command(_command)


# -- federation ------------------------------------------------------------------------------


@main.group()
def federation() -> None:
    """The federation authority (kept offline by the admin): create, enroll, revoke."""


@federation.command("init")
@click.option("--dir", "ca_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for the authority key and certificate (keep it offline).")
@click.option("--name", required=True, help="Federation name.")
@json_option
def federation_init(ca_dir: Path, name: str, as_json: bool) -> None:
    """Create a federation authority (Ed25519 key, self-signed root certificate)."""
    from node.ops_federation import federation_init as fed_init

    with out.errors():
        result = fed_init(ca_dir, name)
    if _json_result(as_json, result):
        return
    click.echo(f"federation {result['federation']} created in {result['dir']} "
               f"(authority key fingerprint {result['fingerprint'][:16]}…); keep the key offline")


def _labels(values: tuple[str, ...]) -> dict[str, str]:
    labels = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r} is not KEY=VALUE", param_hint="--label")
        labels[key] = val
    return labels


@federation.command("enroll")
@click.argument("request", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--ca", "ca_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--tier", required=True, type=click.Choice(["edge", "onprem", "cloud"]))
@click.option("--site", required=True)
@click.option("--jurisdiction", required=True, help="ISO 3166-1 alpha-2 code, e.g. DE.")
@click.option("--label", "labels", multiple=True, help="KEY=VALUE, repeatable.")
@click.option("--days", default=365, show_default=True, help="Certificate validity.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
@json_option
def federation_enroll(request: Path, ca_dir: Path, tier: str, site: str, jurisdiction: str,
                      labels: tuple[str, ...], days: int, output: Path, as_json: bool) -> None:
    """Sign a node certificate binding its key to attested attributes."""
    from node.ops_federation import federation_enroll as enroll

    with out.errors():
        result = enroll(ca_dir, request, output, tier=tier, site=site, jurisdiction=jurisdiction,
                        labels=_labels(labels), validity_days=days)
    if _json_result(as_json, result):
        return
    click.echo(f"enrolled {result['node_id']} (serial {result['serial']}): {result['certificate']}")


@federation.command("revoke")
@click.argument("node_ids", nargs=-1, required=True)
@click.option("--ca", "ca_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
@json_option
def federation_revoke(node_ids: tuple[str, ...], ca_dir: Path, output: Path,
                      as_json: bool) -> None:
    """Issue the next revocation list; put it into any node with `outpost apply FILE`."""
    from node.ops_federation import federation_revoke as revoke

    with out.errors():
        result = revoke(ca_dir, list(node_ids), output)
    if _json_result(as_json, result):
        return
    click.echo(f"revocation list v{result['version']} written to {result['file']}")


class _JoinGroup(click.Group):
    """`outpost join CERT` and `outpost join request`: a bare path means install."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not any(a in self.commands for a in args) and not {"-h", "--help"} & set(args):
            args = ["install", *args]
        return super().parse_args(ctx, args)


@main.group(cls=_JoinGroup)
def join() -> None:
    """Join a federation: `join request -o REQ`, then `join CERT` with the enrolled certificate."""


@join.command("request")
@data_dir_option
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
@json_option
def join_request(data_dir: Path, output: Path, as_json: bool) -> None:
    """Write this node's enrollment request (carry it to the authority)."""
    from node.ops_federation import join_request as request

    with out.errors():
        result = request(data_dir, output)
    if _json_result(as_json, result):
        return
    click.echo(f"enrollment request for {result['node_id']} written to {result['request']}")


@join.command("renew")
@data_dir_option
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
@json_option
def join_renew(data_dir: Path, output: Path, as_json: bool) -> None:
    """Write a renewal request for this enrolled node (same key and attributes); have the
    authority enroll it, then `outpost join CERT` applies it live, without a restart."""
    from node.renew import renewal_request

    with out.errors():
        result = renewal_request(data_dir, output)
    if _json_result(as_json, result):
        return
    expiry = result["expiry"]
    click.echo(f"renewal request for {result['node_id']} written to {result['request']} "
               f"(current certificate valid until {expiry['not_valid_after']}, "
               f"{expiry['days_left']:.0f} days left)")
    click.echo(f"at the authority: {result['enroll_command']}")
    click.echo(f"then here: outpost join {result['node_id']}.pem")


@join.command("install", hidden=True)
@data_dir_option
@click.argument("cert", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--seed", "seeds", multiple=True, help="Peer HOST:PORT to contact; repeatable.")
@json_option
def join_install(data_dir: Path, cert: Path, seeds: tuple[str, ...], as_json: bool) -> None:
    from node.client import connect
    from node.ops_federation import join as do_join
    from node.renew import RENEW_ROUTE, is_renewal

    with out.errors():
        client = connect(data_dir) if is_renewal(data_dir) and not seeds else None
        if client is not None:  # a renewal while the daemon runs: applied live
            with client:
                result = client.request("POST", RENEW_ROUTE,
                                        {"certificate": cert.read_text()})
        else:
            result = do_join(data_dir, cert, list(seeds))
    if _json_result(as_json, result):
        return
    verb = "renewed certificate in" if result.get("renewed") else "joined"
    click.echo(f"{verb} federation {result['federation']} as {result['node_id']} "
               f"({result['tier']}, site {result['site']}, {result['jurisdiction']})")


@main.command("apply")
@data_dir_option
@click.argument("document", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
def apply_cmd(data_dir: Path, document: Path, as_json: bool) -> None:
    """Put an authority-signed document (revocation list, policy bundle) into this node.
    Applying the one in force again changes nothing and exits 0."""
    _apply(data_dir, document, as_json)


def _apply(data_dir: Path, document: Path, as_json: bool) -> None:
    from node.ops_federation import apply

    with out.errors():
        result = apply(data_dir, document)
    if _json_result(as_json, result):
        return
    click.echo(result["summary"] if result.get("unchanged") else f"applied {result['summary']}")


def _json_result(as_json: bool, result: object) -> bool:
    if as_json:
        out.print_json(result)
    return as_json


@main.command()
@data_dir_option
@json_option
def peers(data_dir: Path, as_json: bool) -> None:
    """List federation members: state, attested attributes, models, load, RTT, policy, audit."""
    from node.ops_federation import peers as listing

    with out.errors():
        rows = listing(data_dir)
    if as_json:
        out.print_json(rows)
    else:
        out.print_peers(rows)


# -- policy ----------------------------------------------------------------------------------


@main.group()
def policy() -> None:
    """Cedar policy bundles signed by the federation authority."""


@policy.command("sign")
@click.argument("cedar", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--version", "version", type=int, required=True,
              help="Bundle version; must be higher than the one in force.")
@click.option("--ca", "ca_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--schema", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--entities", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
@json_option
def policy_sign(cedar: Path, version: int, ca_dir: Path, schema: Path | None,
                entities: Path | None, output: Path, as_json: bool) -> None:
    """Sign Cedar policies into a bundle (refused if the Cedar does not parse or validate)."""
    from node.ops_federation import policy_sign as sign

    with out.errors():
        result = sign(ca_dir, cedar, version, output, schema, entities)
    if _json_result(as_json, result):
        return
    click.echo(f"policy bundle v{result['version']} for {result['federation']}: {result['file']}")


@policy.command("apply")
@data_dir_option
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
def policy_apply(data_dir: Path, bundle: Path, as_json: bool) -> None:
    """Put a signed policy bundle into this node (it then spreads to its peers). Applying
    the one in force again changes nothing and exits 0."""
    _apply(data_dir, bundle, as_json)


@policy.command("explain")
@data_dir_option
@click.option("--action", type=click.Choice(["forward", "infer", "model.pull", "audit.replicate"]),
              help="The decision to explain (default: forward with --to, infer with --app "
                   "alone).")
@click.option("--data-class", help="Data class of the request, e.g. personal (forward, infer).")
@click.option("--jurisdiction", help="The data's jurisdiction (default: this node's).")
@click.option("--to", "target", help="forward: the target node; infer: the executor "
                                     "(default: this node).")
@click.option("--from", "source", help="infer: the calling node (default: an app); "
                                       "model.pull, audit.replicate: the node asking.")
@click.option("--app", help="infer: the calling app, judged with its token's attributes "
                            "(default: anonymous); with forward: also the target's infer "
                            "re-check for that app.")
@click.option("--model", default="*", show_default=True,
              help="Model the request is for; model.pull: NAME:VERSION.")
@json_option
def policy_explain(data_dir: Path, action: str | None, data_class: str | None,
                   jurisdiction: str | None, target: str | None, source: str | None,
                   app: str | None, model: str, as_json: bool) -> None:
    """Would this node allow ACTION? The decision, the policy version it was judged with, and
    the policies behind it. Exits 1 on deny (for scripts)."""
    from node.explain import ask

    with out.errors():
        result = ask(data_dir, {"action": action or "", "data_class": data_class or "",
                                "jurisdiction": jurisdiction or "", "to": target or "",
                                "from": source or "", "app": app or "", "model": model})
    if as_json:
        out.print_json(result)
    else:
        action = result["action"]
        version = result["policy_version"]
        t = result.get("target")
        what = f"{action}"
        if "data" in result:
            what += f" of {result['data']['data_class']} data ({result['data']['jurisdiction']})"
        if t:
            what += f" {'to' if action in ('forward', 'infer') else 'by'} {t['node_id']} " \
                    f"(tier {t['tier']}, site {t['site']}, {t['jurisdiction']})"
        click.echo(f"{what}: judged with "
                   f"{f'policy version {version}' if version is not None else 'no policy (fail closed)'}")
        click.echo(result["text"])
        if "app" in result and "infer" in result:
            attrs = ", ".join(f"{k}={v}" for k, v in sorted(result["app"]["attrs"].items()))
            click.echo(f"infer for App::\"{result['app']['name']}\" "
                       f"({attrs or 'no attributes'}):")
            click.echo(result["infer"]["text"])
    if not result["allowed"]:
        sys.exit(1)


@policy.command("show")
@data_dir_option
@json_option
def policy_show(data_dir: Path, as_json: bool) -> None:
    """Show the policy bundle in force."""
    from node.ops_federation import policy_show as show

    with out.errors():
        held = show(data_dir)
    if as_json:
        out.print_json(held)
    elif held is None:
        click.echo("no policy bundle in force: this node forwards nothing (fail closed); "
                   "apply one with `outpost policy apply BUNDLE`")
    else:
        click.echo(f"policy bundle v{held['version']} of {held['federation']}, issued "
                   f"{held['issued_at']} (digest {held['digest'][:16]}…)\n")
        click.echo(held["policies"])


def _register_groups() -> None:
    from cli.batch import batch
    from cli.bundle import bundle
    from cli.ops import backup, config_group, restore, stop
    from cli.token import token

    main.add_command(bundle)
    main.add_command(stop)
    main.add_command(config_group)
    main.add_command(backup)
    main.add_command(restore)
    main.add_command(batch)
    main.add_command(token)


_register_groups()


def entry() -> None:
    """The ``outpost`` script: :func:`main`, with a missing optional part (pip extra) as one
    line naming the extra instead of a traceback, wherever the import happened."""
    from models.extras import for_module

    try:
        main()
    except ModuleNotFoundError as exc:
        message = for_module(exc)
        if message is None:
            raise
        click.echo(f"outpost: error: {message}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    entry()
