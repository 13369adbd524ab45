"""``outpost audit`` commands for checking and exporting the trail (added to the ``audit``
group by ``cli.main``): verify-proof, verify-log, export, verify against witnesses, and the
filters ``tail`` and ``export`` share. Thin: parse, call ``node.trail_ops``, print."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from cli import _output as out
from cli._options import data_dir_option, json_option


def filter_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--since/--until/--kind/--model/--caller/--outcome, shared by tail and export."""
    for opt in reversed([
        click.option("--since", help="Entries at or after this time (2026-01-02 or RFC 3339)."),
        click.option("--until", help="Entries before this time."),
        click.option("--kind", help="Only this entry kind (infer, forward, model.add, ...)."),
        click.option("--model", help="Only this model (NAME or NAME:VERSION)."),
        click.option("--caller", help="Only this caller (e.g. App::\"anonymous\" or a node)."),
        click.option("--outcome", help="Only this outcome (ok, error, refused, ...)."),
    ]):
        f = opt(f)
    return f


def make_filter(since: str | None, until: str | None, kind: str | None, model: str | None,
                caller: str | None, outcome: str | None, app: str | None = None) -> Any:
    from federation.verify import EntryFilter, parse_time

    return EntryFilter(
        since=parse_time(since, "--since") if since else None,
        until=parse_time(until, "--until") if until else None,
        kind=kind, model=model, caller=caller, outcome=outcome, app=app)


@click.command("verify-proof")
@click.option("--vkey", required=True, help="The log's verifier key (text or file).")
@click.option("--checkpoint", "checkpoint", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The signed checkpoint (note) file.")
@click.option("--entry", required=True, type=click.Path(exists=True, dir_okay=False,
                                                         path_type=Path),
              help="The entry's exact bytes (canonical JSON, as logged).")
@click.option("--proof", required=True, type=click.Path(exists=True, dir_okay=False,
                                                         path_type=Path),
              help="The inclusion proof JSON (`outpost audit proof`).")
def verify_proof(vkey: str, checkpoint: Path, entry: Path, proof: Path) -> None:
    """Check one entry against a signed checkpoint, offline (no data directory). Exit 0 or 1."""
    from node.trail_ops import TrailError
    from node.trail_ops import verify_proof as run

    try:
        result = run(vkey, checkpoint, entry, proof)
    except TrailError as exc:
        click.echo(f"outpost: proof FAILED: {exc}", err=True)
        sys.exit(1)
    click.echo(f"ok: entry {result['leaf_index']} is in {result['origin']} at tree size "
               f"{result['tree_size']}")


@click.command("verify-log")
@click.argument("url")
@click.option("--vkey", required=True, help="The log's verifier key (text or file).")
@click.option("--witness", "witnesses", multiple=True,
              help="A witness's cosignature/v1 verifier key (text or file); repeatable.")
@click.option("--quorum", type=int, help="Cosignatures required (default: every --witness).")
@click.option("--state", type=click.Path(dir_okay=False, path_type=Path),
              help="Where the last verified checkpoint per origin is remembered (default "
                   "$XDG_STATE_HOME/outpost/verified-logs.json).")
@json_option
def verify_log(url: str, vkey: str, witnesses: tuple[str, ...], quorum: int | None,
               state: Path | None, as_json: bool) -> None:
    """Verify a log served as C2SP tiles: every entry and hash, its cosignatures, and that it
    extends the checkpoint verified last time (a rollback or fork fails). Exit 0 or 1."""
    from node.trail_ops import TrailError
    from node.trail_ops import verify_log as run

    try:
        result = run(url, vkey, list(witnesses), quorum, state)
    except TrailError as exc:
        if as_json:
            out.print_json({"ok": False, "problem": str(exc)})
        click.echo(f"outpost: log FAILED verification: {exc}", err=True)
        sys.exit(1)
    if as_json:
        out.print_json(result)
        return
    since = (f"; extends size {result['previous_size']} verified before"
             if result["previous_size"] is not None else "; first verification, remembered")
    cos = f", cosigned by {', '.join(result['cosignatures'])}" if result["cosignatures"] else ""
    click.echo(f"ok: {result['origin']} size {result['size']}: every entry and tile "
               f"recomputed{cos}{since}")


@click.command("export")
@data_dir_option
@click.option("--format", "fmt", type=click.Choice(["jsonl", "parquet"]), default="jsonl",
              show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Output file (default stdout; required for parquet).")
@filter_options
def export(data_dir: Path, fmt: str, output: Path | None, since: str | None,
           until: str | None, kind: str | None, model: str | None, caller: str | None,
           outcome: str | None) -> None:
    """Export the trail for a SIEM or warehouse: one row per entry with its index and leaf
    hash (ties a row to `outpost audit proof --index`)."""
    from node.trail_ops import export as run

    with out.errors():
        count = run(data_dir, fmt, output, make_filter(since, until, kind, model, caller,
                                                       outcome))
    if output is not None:
        click.echo(f"exported {count} entries to {output}", err=True)


def cosigned_checkpoint(data_dir: Path) -> None:
    from node.trail_ops import cosigned

    with out.errors():
        result = cosigned(data_dir)
    click.echo(result["note"], nl=False)
    state = "witnessed" if result["witnessed"] else "NOT witnessed"
    click.echo(f"# {result['cosignatures']} cosignature(s), quorum {result['quorum']}: {state}",
               err=True)


COMMANDS = [verify_proof, verify_log, export]


@click.command("witness-key")
@data_dir_option
def witness_key(data_dir: Path) -> None:
    """Print this node's witness verifier key (cosignature/v1 vkey, for `verify-log --witness`
    and other logs' witness lists)."""
    from node.trail_ops import witness_vkey

    with out.errors():
        click.echo(witness_vkey(data_dir))


COMMANDS.append(witness_key)


@click.command("entry")
@data_dir_option
@click.option("--index", type=int, required=True, help="Leaf index.")
def entry(data_dir: Path, index: int) -> None:
    """Print one entry's exact bytes as logged (canonical JSON, no newline): the --entry file
    of `verify-proof`."""
    from node.trail_ops import entry_bytes

    with out.errors():
        data = entry_bytes(data_dir, index)
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


COMMANDS.append(entry)
