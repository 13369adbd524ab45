"""``outpost bundle export|import``: sync bundles carried by hand across an air gap (DESIGN §5).

Thin like ``cli.main``: parse, call ``node.sync``, print. Register with
``main.add_command(bundle)``. This module does not import ``cli.main`` (which imports it),
so the two option helpers below repeat ``cli.main``'s; the defaults still come from
``node.config``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from cli import _output as out
from cli._options import data_dir_option, json_option

F = TypeVar("F", bound=Callable[..., Any])

#: Exit status of an import that merged what it could but refused a log (conflict or gap)
#: or a model (another model under the same name:version). 1 means nothing was imported.
EXIT_PARTIAL = 4


def _since(values: tuple[str, ...]) -> dict[str, int]:
    since: dict[str, int] = {}
    for value in values:
        origin, sep, size = value.rpartition("=")
        if not sep or not origin or not size.isdigit():
            raise click.BadParameter(
                f"{value!r} is not ORIGIN=SIZE (e.g. outpost/acme/edge-1=120, or edge-1=120)",
                param_hint="--since",
            )
        since[origin] = int(size)
    return since


@click.group()
def bundle() -> None:
    """Sync bundles: policy, revocations, audit logs and models on removable media."""


@bundle.command("export")
@data_dir_option
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The bundle file to write.")
@click.option("--since", "since", multiple=True, metavar="ORIGIN=SIZE",
              help="The receiver holds this log up to SIZE: carry only what follows "
                   "(ORIGIN as `outpost/FED/NODE` or just NODE); repeatable.")
@click.option("--models", "include_models", is_flag=True, help="Carry this node's models too.")
@click.option("--to", "receiver", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The receiving node's certificate: carry only the models model.pull lets "
                   "it have (else the importing node decides).")
@json_option
def export(data_dir: Path, output: Path, since: tuple[str, ...], include_models: bool,
           receiver: Path | None, as_json: bool) -> None:
    """Write a signed sync bundle: this node's log, the logs it holds for other nodes, the
    policy bundle and revocation list in force (and models with --models). Works with the
    daemon running."""
    from node.sync import export_bundle

    with out.errors():
        result = export_bundle(data_dir, output, since=_since(since),
                               include_models=include_models,
                               receiver_cert=receiver.read_bytes() if receiver else None)
    if as_json:
        out.print_json(result)
    else:
        click.echo(f"wrote {result['file']} ({result['bytes']} bytes, digest "
                   f"{result['digest'][:16]}…) from {result['node_id']}:")
        for log in result["logs"]:
            click.echo(f"  log {log['origin']}: entries [{log['start']}, {log['size']})")
        if result["policy_version"] is not None:
            click.echo(f"  policy bundle v{result['policy_version']}")
        if result["revocation_version"] is not None:
            click.echo(f"  revocation list v{result['revocation_version']}")
        for model in result["models"]:
            click.echo(f"  model {model['name']}:{model['version']} ({model['size']} bytes)")
    for left in result["left_out"]:
        click.echo(f"outpost: warning: left out {left['origin']}: {left['reason']}", err=True)
    for left in result.get("models_left_out", []):
        click.echo(f"outpost: warning: left out model {left['model']}: {left['reason']}",
                   err=True)


@bundle.command("import")
@data_dir_option
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
def import_(data_dir: Path, file: Path, as_json: bool) -> None:
    """Verify a sync bundle whole against this node's federation and merge what is new.

    A bundle that does not verify in every part is refused and nothing changes (exit 1).
    Importing it again changes nothing. A log that conflicts with or does not join up to the
    copy held here is reported, never merged (exit 4, the rest is imported).
    """
    from node.sync import import_bundle

    with out.errors():
        result = import_bundle(data_dir, file)
    if as_json:
        out.print_json(result)
    else:
        _print_import(result)
    for problem in result["problems"]:
        click.echo(f"outpost: warning: {problem}", err=True)
    if result["problems"]:
        sys.exit(EXIT_PARTIAL)


def _print_import(result: dict[str, Any]) -> None:
    origin = f"bundle {result['bundle'][:16]}… from {result['from']}"
    if result["nothing_new"]:
        if result["audit_index"] is None:
            click.echo(f"nothing new: {origin} holds nothing this node lacks (imported "
                       "before?); nothing changed")
        else:
            click.echo(f"nothing merged from {origin}; what was refused is recorded in the audit "
                       f"log (entry {result['audit_index']})")
        return
    click.echo(f"imported {origin} (created {result['created']}):")
    if result["revocations"] is not None:
        click.echo(f"  applied revocation list v{result['revocations']}")
    if result["policy"] is not None:
        click.echo(f"  applied policy bundle v{result['policy']}")
    for log in result["logs"]:
        if log["status"] == "appended":
            click.echo(f"  log {log['origin']}: +{log['appended']} entries (now {log['size']})")
    for model in result["models"]:
        if model["status"] == "added":
            click.echo(f"  added model {model['name']}:{model['version']}")


if __name__ == "__main__":
    bundle()
