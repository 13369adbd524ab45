"""``outpost token add|list|revoke``: bearer tokens for the apps on this node (thin: parse, call
``node.apps``, print)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from cli import _output as out
from cli._options import data_dir_option, json_option


@click.group()
def token() -> None:
    """Bearer tokens that name the apps calling this node (policy sees App::"NAME")."""


@token.command("add")
@data_dir_option
@click.argument("name")
@click.option("--attr", "attrs", multiple=True, metavar="KEY=VALUE",
              help="An attribute policy sees as principal.KEY (repeatable), e.g. "
                   "purpose=diagnosis.")
@click.option("--expires", help="Lifetime, e.g. 90d, 12h, 30m (default: never).")
@json_option
def token_add(data_dir: Path, name: str, attrs: tuple[str, ...], expires: str | None,
              as_json: bool) -> None:
    """Issue a token for app NAME and print its secret (once: only a hash is kept)."""
    from node.apps import token_add as add
    from node.tokens import parse_attrs

    with out.errors():
        result = add(data_dir, name, parse_attrs(attrs), expires)
    if as_json:
        out.print_json(result)
        return
    until = _when(result["expires"]) if result["expires"] else "never"
    click.echo(f"token {result['token_id']} for app {result['name']} (expires {until}); "
               "the secret is shown only now:", err=True)
    click.echo(result["secret"])


@token.command("list")
@data_dir_option
@json_option
def token_list(data_dir: Path, as_json: bool) -> None:
    """List the tokens: app, attributes, created, expires, last use, state (never secrets)."""
    from node.apps import token_list as listing

    with out.errors():
        rows = listing(data_dir)
    if as_json:
        out.print_json(rows)
        return
    if not rows:
        click.echo("no app tokens yet; issue one with `outpost token add NAME`")
        return
    from rich.table import Table

    table = Table("app", "token", "state", "attributes", "created", "expires", "last used")
    for r in rows:
        attrs = ", ".join(f"{k}={v}" for k, v in sorted(r["attrs"].items())) or "-"
        table.add_row(r["name"], r["token_id"], r["state"], attrs, _when(r["created"]),
                      _when(r["expires"]), _when(r["last_used"]))
    out.console.print(table)


@token.command("revoke")
@data_dir_option
@click.argument("name")
@json_option
def token_revoke(data_dir: Path, name: str, as_json: bool) -> None:
    """Revoke app NAME's token (on a running daemon: from the next request on)."""
    from node.apps import token_revoke as revoke

    with out.errors():
        rows = revoke(data_dir, name)
    if as_json:
        out.print_json(rows)
        return
    for r in rows:
        click.echo(f"revoked token {r['token_id']} of app {r['name']}")


def _when(ts: Any) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(float(ts)))
