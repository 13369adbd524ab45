"""Operator commands: ``outpost stop`` (and the ``config`` group, backup). Thin like
``cli.main``: parse, call one ``node`` function, print. Registered by ``cli.main``."""

from __future__ import annotations

import json
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


@click.group("config")
def config_group() -> None:
    """The node configuration: what is in force and where it came from."""


@config_group.command("show")
@data_dir_option
@json_option
def config_show(data_dir: Path, as_json: bool) -> None:
    """The effective configuration `outpost run` would use, each value with its source:
    default, file (outpost.toml), env (OUTPOST_<SECTION>_<KEY>) or flag."""
    from node.config_sources import as_json as to_json
    from node.config_sources import effective

    with out.errors():
        config, sources = effective(data_dir)
    values = to_json(config)
    if as_json:
        out.print_json({"config": values, "sources": sources})
        return
    for section, fields in values.items():
        click.echo(f"[{section}]")
        for key, value in fields.items():
            click.echo(f"  {key} = {json.dumps(value)}    # {sources[f'{section}.{key}']}")


@config_group.command("check")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@json_option
def config_check(file: Path, as_json: bool) -> None:
    """Validate a config file as `outpost run` would; exit 1 naming the bad key."""
    from node.config import ConfigError
    from node.config_sources import check_file

    try:
        check_file(file)
    except ConfigError as exc:
        if as_json:
            out.print_json({"ok": False, "file": str(file), "error": str(exc)})
            raise SystemExit(1) from None
        raise click.ClickException(str(exc)) from None
    if as_json:
        out.print_json({"ok": True, "file": str(file)})
    else:
        click.echo(f"ok: {file} is a valid outpost configuration")


@click.command()
@data_dir_option
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="A new directory for the backup (mode 0700: it holds the node key).")
@json_option
def backup(data_dir: Path, output: Path, as_json: bool) -> None:
    """Back up the node, online: a consistent database snapshot (SQLite backup API), the
    model files it names, the key, certificates and config."""
    from node.backup import BackupError
    from node.backup import backup as do_backup

    with out.errors():
        try:
            result = do_backup(data_dir, output)
        except BackupError as exc:
            raise out.CliError(str(exc)) from None
    if as_json:
        out.print_json(result)
    else:
        click.echo(f"backed up node {result['node_id']} to {result['backup']}: "
                   f"{result['files']} files, {result['models']} model(s), "
                   f"{result['bytes']:,} bytes in {result['seconds']:.1f} s")


@click.command()
@data_dir_option
@click.argument("backup_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@json_option
def restore(data_dir: Path, backup_dir: Path, as_json: bool) -> None:
    """Restore BACKUP_DIR into --data-dir (which must hold no node), checking every file."""
    from node.backup import BackupError
    from node.backup import restore as do_restore

    with out.errors():
        try:
            result = do_restore(backup_dir, data_dir)
        except BackupError as exc:
            raise out.CliError(str(exc)) from None
    if as_json:
        out.print_json(result)
    else:
        click.echo(f"restored node {result['node_id']} into {result['data_dir']} "
                   f"({result['files']} files); check it with `outpost audit verify`, then "
                   "`outpost run`")
