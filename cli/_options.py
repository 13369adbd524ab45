"""Click options every command group shares (one definition, so defaults never drift)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

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
