"""Operator commands: ``outpost stop`` (and the ``config`` group, backup). Thin like
``cli.main``: parse, call one ``node`` function, print. Registered by ``cli.main``."""

from __future__ import annotations

from pathlib import Path

import click

from cli import _output as out
from cli._options import data_dir_option, json_option


@click.command()
@data_dir_option
@click.option("--timeout", type=float,
              help="Seconds to wait for the drain (default: node.drain_timeout_s + 15).")
@json_option
def stop(data_dir: Path, timeout: float | None, as_json: bool) -> None:
    """Stop the daemon of this data directory (SIGTERM) and wait until it has drained.
    Exits 0 when no daemon runs; run again while it drains to cut the drain short."""
    from node.stop import StopError
    from node.stop import stop as do_stop

    with out.errors():
        try:
            result = do_stop(data_dir, timeout)
        except StopError as exc:
            raise out.CliError(str(exc)) from None
    if as_json:
        out.print_json(result.to_json())
    elif result.was_running:
        click.echo(f"stopped node {result.node_id} (pid {result.pid}) in {result.seconds:.1f} s")
    else:
        click.echo(f"no daemon running in {data_dir}")
