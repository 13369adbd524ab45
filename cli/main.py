"""The ``outpost`` command: parse, build config, call into ``node`` — nothing else.

Every command takes ``--data-dir`` (or ``$OUTPOST_DATA_DIR``); every listing takes ``--json``.
Errors are one line on stderr and a non-zero exit code (3 when the daemon cannot start).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from cli import _output as out
from node.config import ConfigError

F = TypeVar("F", bound=Callable[..., Any])


def data_dir_option(fn: F) -> F:
    from node.config import default_data_dir

    return click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=default_data_dir,
        envvar="OUTPOST_DATA_DIR",
        show_default="$OUTPOST_DATA_DIR or ~/.local/share/outpost",
        help="The node's data directory.",
    )(fn)


def json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(fn)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="outpost")
def main() -> None:
    """Outpost: an edge-first federated node for governed local inference."""


# -- node ------------------------------------------------------------------------------------


@main.command()
@data_dir_option
@click.option("--name", help="Node id (default: the host name). Bound into the certificate.")
@click.option("--no-sample", is_flag=True, help="Do not add the bundled sample model.")
def init(data_dir: Path, name: str | None, no_sample: bool) -> None:
    """Create the node: data directory, Ed25519 key (0600), config, database, sample model."""
    from node.ops import init_node

    with out.errors():
        result = init_node(data_dir, name=name, sample=not no_sample)
    for line in result.messages:
        click.echo(line)


@main.command()
@data_dir_option
@click.option("--listen", help="App endpoint HOST:PORT (config node.listen, default 127.0.0.1:8470).")
@click.option("--peer-listen", help="Peer endpoint HOST:PORT (config node.peer_listen).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def run(data_dir: Path, listen: str | None, peer_listen: str | None, log_level: str) -> None:
    """Run the daemon until SIGTERM/SIGINT (then drain and exit 0)."""
    from node import config as cfg
    from node.daemon import EXIT_STARTUP_FAILURE, StartupError
    from node.daemon import run as run_daemon

    logging.basicConfig(
        level=log_level.upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = cfg.load(data_dir)
        changes = {k: v for k, v in (("listen", listen), ("peer_listen", peer_listen)) if v}
        if changes:
            config = config.replace("node", **changes)
        code = asyncio.run(run_daemon(data_dir, config))
    except (StartupError, ConfigError) as exc:
        click.echo(f"outpost: cannot start: {exc}", err=True)
        sys.exit(EXIT_STARTUP_FAILURE)
    sys.exit(code)


@main.command()
@data_dir_option
@json_option
def status(data_dir: Path, as_json: bool) -> None:
    """Show the node: identity, daemon state, models and providers, capabilities, uptime."""
    from node.ops import node_status

    with out.errors():
        info = node_status(data_dir)
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
@json_option
def infer(data_dir: Path, name: str, input_: str, version: str | None,
          data_class: str | None, jurisdiction: str | None, as_json: bool) -> None:
    """Call the local endpoint of the running daemon, for quick checks."""
    from node.ops import infer as do_infer

    with out.errors():
        response = do_infer(data_dir, name, input_, version, data_class, jurisdiction)
    if as_json:
        out.print_json(response)
    else:
        out.print_infer(response)


if __name__ == "__main__":
    main()
