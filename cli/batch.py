"""``outpost batch run``: offline inference over a .npy or Parquet file (issue 6).

Thin like ``cli.main``: parse, call ``node.batch.run_batch``, print. Register with
``main.add_command(batch)``. This module does not import ``cli.main`` (which imports it), so
the two option helpers repeat ``cli.main``'s; every default comes from ``node`` dataclasses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from cli import _output as out
from cli._options import data_dir_option

F = TypeVar("F", bound=Callable[..., Any])


def _default(field: str) -> Callable[[], int]:
    """A default read from ``node.batch.BatchSettings`` when the command runs (importing
    node.batch pulls numpy and the model layer: not for every `outpost` invocation)."""

    def read() -> int:
        from node.batch import BatchSettings

        value: int = getattr(BatchSettings(), field)
        return value

    return read


@click.group()
def batch() -> None:
    """Offline batch inference over files, with the node's models."""


@batch.command("run")
@data_dir_option
@click.argument("model")
@click.option("--input", "input_path", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A .npy array (one-input models) or a Parquet file (a column per input).")
@click.option("--output", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output directory: a Parquet dataset, one file per chunk. Running the same "
                   "command again continues after the last complete chunk.")
@click.option("--version", "version", help="Model version (default: latest).")
@click.option("--batch-size", type=int, default=_default("batch_size"),
              help="Rows per model run (default: BatchSettings.batch_size).")
@click.option("--chunk-rows", type=int, default=_default("chunk_rows"),
              help="Rows per output file and audit entry, the resume step: keep it on re-runs "
                   "(default: BatchSettings.chunk_rows).")
@click.option("--ray", "ray_address", metavar="ADDRESS",
              help='Run on Ray Data: "local", "auto", "ray://HOST:PORT"; "off" runs in-process. '
                   "Default: [ray] address of the node config (in-process when unset).")
@click.option("--data-class", help="Data class recorded in the audit entries "
                                   "(default: node.default_data_class).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def run(data_dir: Path, model: str, input_path: Path, output: Path, version: str | None,
        batch_size: int, chunk_rows: int, ray_address: str | None, data_class: str | None,
        as_json: bool) -> None:
    """Run MODEL (NAME or NAME:VERSION) over every row of --input into --output.

    One audit entry per chunk (kind infer, caller batch), like online inference: through the
    daemon when it runs, else written here under the data-directory lock.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )

    from node.batch import BatchError, BatchSettings, run_batch

    # The provider in use is in the summary; onnxruntime's failed-CUDA story (one long
    # warning on GPU-less machines with onnxruntime-gpu) stays out of the terminal.
    logging.getLogger("models.runtime").setLevel(logging.ERROR)
    with out.errors():
        try:
            settings = BatchSettings(batch_size=batch_size, chunk_rows=chunk_rows)
            with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                          MofNCompleteColumn(), TaskProgressColumn(), TimeRemainingColumn(),
                          console=out.console, disable=as_json, transient=True) as bar:
                task = bar.add_task(f"batch {model} rows", total=None)

                def progress(done: int, total: int) -> None:
                    bar.update(task, completed=done, total=total)

                summary = run_batch(data_dir, model, input_path, output, version=version,
                                    settings=settings, ray_address=ray_address,
                                    data_class=data_class, progress=progress)
        except BatchError as exc:
            raise out.CliError(str(exc)) from None
    if as_json:
        out.print_json(summary)
        return
    rate = f", {summary['rows_per_s']:,} rows/s" if summary.get("rows_per_s") else ""
    resumed = f" (resumed at row {summary['resumed_at']:,})" if summary["resumed_at"] else ""
    click.echo(f"{summary['model']}:{summary['version']}: {summary['rows']:,} rows in "
               f"{summary['chunks']} chunk(s) -> {summary['output']}{resumed}; "
               f"{summary['computed']:,} computed on {summary['engine']}"
               f"{' (' + summary['provider'] + ')' if summary.get('provider') else ''} in "
               f"{summary['seconds']:.1f} s{rate}; audit: {summary['audit']}")
