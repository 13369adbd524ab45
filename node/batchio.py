"""The files of a batch job: the input (``.npy`` or Parquet) read in chunks, and the output
(a Parquet dataset directory) written chunk by chunk with a manifest that makes it resumable.

Owns the file formats and the manifest; nothing here runs a model or writes the audit log
(``node.batch`` does). Must never leave a chunk in the manifest whose file is not durable:
a part file is written to a temporary name, fsynced and renamed before the manifest that
lists it is replaced (itself written the same way), so after a crash at any point the
manifest lists only complete chunks and a re-run continues after the last of them.

Input layout:

- ``.npy``: one array, rows along axis 0, for a model with one input. Numeric arrays are
  cast to the input's datatype when the cast is safe (e.g. int to float); others refused.
- Parquet: one column per model input, named like it. A scalar column for an input of shape
  ``[N]``; a list (or fixed-size list) column for ``[N, d1, ...]``, each cell the row's
  ``d1 x ...`` values flattened in row-major order. For a one-input model of shape
  ``[N, F]`` the file may instead have exactly F numeric columns (a plain table).

Output layout (``--output DIR``)::

    DIR/part-00000.parquet ...   one file per chunk, rows in input order; one column per
                                 model output (scalar, or fixed-size list of the row's
                                 values flattened; the row shape is in the column metadata)
    DIR/_outpost_batch.json      the manifest: model, input identity, chunk size, chunks done

``pyarrow.dataset.dataset(DIR)`` (or pandas, Spark, DuckDB) reads DIR as one table;
:func:`read_output` gives numpy arrays back.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.datatypes import from_oip
from models.signature import ModelSignature, TensorSpec
from node.errors import OperatorError

Tensor = np.ndarray[Any, Any]

MANIFEST = "_outpost_batch.json"
FORMAT = 1  # ONLY INCREASE: the manifest layout; a newer one is refused, never guessed
_PART = "part-{:05d}.parquet"
_SHAPE_KEY = b"outpost.shape"  # column metadata: the row shape of a flattened output


class BatchError(OperatorError, ValueError):
    """A batch job cannot start or continue; the message names the fix."""


# -- input ----------------------------------------------------------------------------------


class BatchInput:
    """Rows of a ``.npy`` or Parquet file as the model's input arrays, chunk by chunk."""

    def __init__(self, path: Path, signature: ModelSignature) -> None:
        self.path = path
        self._specs = signature.inputs
        stat = path.stat()
        self.identity = {"path": str(path.resolve()), "size": stat.st_size,
                         "mtime_ns": stat.st_mtime_ns}
        if path.suffix == ".npy":
            if len(self._specs) != 1:
                raise BatchError(
                    f"{path} is one .npy array but the model takes {len(self._specs)} inputs "
                    f"({', '.join(s.name for s in self._specs)}); give a Parquet file with "
                    "one column per input"
                )
            self._array: Tensor | None = np.load(path, mmap_mode="r", allow_pickle=False)
            if self._array.ndim == 0:
                raise BatchError(f"{path} holds a scalar; batch input needs rows along axis 0")
            self.rows = int(self._array.shape[0])
            self._columns: list[list[str]] = []
        elif path.suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            self._array = None
            self._file = pq.ParquetFile(path)
            self.rows = self._file.metadata.num_rows
            self._columns = self._plan_columns([f.name for f in self._file.schema_arrow])
        else:
            raise BatchError(f"{path}: batch input must be a .npy or .parquet file")

    def _plan_columns(self, names: list[str]) -> list[list[str]]:
        """For each model input, the Parquet columns that hold it."""
        if all(s.name in names for s in self._specs):
            return [[s.name] for s in self._specs]
        spec = self._specs[0]
        if len(self._specs) == 1 and len(spec.shape) == 2 and len(names) == spec.shape[1]:
            return [names]  # a plain table: one column per feature
        missing = [s.name for s in self._specs if s.name not in names]
        raise BatchError(
            f"{self.path} has columns {names[:8]}{'…' if len(names) > 8 else ''} but the model's "
            f"inputs {missing} are not among them; name one column per input (a list column "
            "for a tensor input), or, for a one-input [N, F] model, give exactly F columns"
        )

    def chunks(self, start: int, rows: int) -> Iterator[tuple[int, dict[str, Tensor]]]:
        """``(first_row, inputs)`` for every chunk of ``rows`` rows from row ``start`` on."""
        if self._array is not None:
            for first in range(start, self.rows, rows):
                spec = self._specs[0]
                yield first, {spec.name: _cast(np.asarray(self._array[first:first + rows]),
                                               spec, self.path)}
            return
        yield from self._parquet_chunks(start, rows)

    def _parquet_chunks(self, start: int, rows: int) -> Iterator[tuple[int, dict[str, Tensor]]]:
        import pyarrow as pa

        wanted = [c for cols in self._columns for c in cols]
        # Skip whole row groups before `start` without decoding them.
        first_group, skipped = 0, 0
        meta = self._file.metadata
        while first_group < meta.num_row_groups and (
            skipped + meta.row_group(first_group).num_rows <= start
        ):
            skipped += meta.row_group(first_group).num_rows
            first_group += 1
        groups = list(range(first_group, meta.num_row_groups))
        pending: list[pa.RecordBatch] = []
        have, position = 0, skipped
        batches = self._file.iter_batches(batch_size=min(rows, 65536), row_groups=groups,
                                          columns=wanted) if groups else iter(())
        for batch in batches:
            if position < start:  # inside the first group: drop the rows before `start`
                cut = min(start - position, batch.num_rows)
                batch, position = batch.slice(cut), position + cut
            pending.append(batch)
            have += batch.num_rows
            while have >= rows:
                table = pa.Table.from_batches(pending).combine_chunks()
                yield position, self._arrays(table.slice(0, rows))
                rest = table.slice(rows)
                pending, have, position = rest.to_batches(), have - rows, position + rows
        if have:
            yield position, self._arrays(pa.Table.from_batches(pending).combine_chunks())

    def _arrays(self, table: Any) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for spec, cols in zip(self._specs, self._columns, strict=True):
            if len(cols) > 1:
                array = np.column_stack([_column(table.column(c), (), self.path, c) for c in cols])
            else:
                array = _column(table.column(cols[0]), spec.shape[1:], self.path, cols[0])
            out[spec.name] = _cast(array, spec, self.path)
        return out


def _column(column: Any, row_shape: tuple[int, ...], path: Path, name: str) -> Tensor:
    import pyarrow as pa

    rows = len(column)
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type) or \
            pa.types.is_fixed_size_list(column.type):
        values = column.flatten()
        while pa.types.is_list(values.type) or pa.types.is_fixed_size_list(values.type):
            values = values.flatten()  # nested lists: [[...], [...]] per row
        flat: Tensor = values.to_numpy(zero_copy_only=False)
        if rows == 0:
            return flat.reshape(0, *[max(d, 0) for d in row_shape])
        if flat.size % rows:
            raise BatchError(f"{path}: rows of column {name!r} do not all have the same length")
        shape = row_shape if row_shape and all(d > 0 for d in row_shape) else (flat.size // rows,)
        try:
            return flat.reshape(rows, *shape)
        except ValueError:
            raise BatchError(
                f"{path}: column {name!r} holds {flat.size // rows} values per row; the model "
                f"wants rows of shape {list(row_shape)}"
            ) from None
    if pa.types.is_binary(column.type) or pa.types.is_string(column.type):
        out = np.empty(rows, dtype=object)
        out[:] = [v if isinstance(v, bytes) else str(v).encode() for v in column.to_pylist()]
        return out
    if column.null_count:
        raise BatchError(f"{path}: column {name!r} has {column.null_count} empty (null) cells")
    result: Tensor = column.to_numpy(zero_copy_only=False)
    return result


def _cast(array: Tensor, spec: TensorSpec, path: Path) -> Tensor:
    dtype = from_oip(spec.datatype).dtype
    if spec.datatype == "BYTES":
        if array.dtype == object:
            return array
        raise BatchError(f"{path}: input {spec.name!r} is BYTES; give a binary or string column")
    if array.dtype == dtype:
        return np.ascontiguousarray(array)
    if not np.can_cast(array.dtype, dtype, casting="same_kind"):
        raise BatchError(
            f"{path}: input {spec.name!r} holds {array.dtype} values; the model wants "
            f"{spec.datatype} ({dtype}) and that conversion could change them"
        )
    return np.ascontiguousarray(array.astype(dtype))


def input_sha256(inputs: dict[str, Tensor], signature: ModelSignature) -> str:
    """SHA-256 of a chunk's inputs (each input's raw bytes, in signature order): what the
    chunk's audit entry records, never the data itself."""
    digest = hashlib.sha256()
    for spec in signature.inputs:
        array = inputs[spec.name]
        if array.dtype == object:
            for item in array.ravel().tolist():
                raw = item if isinstance(item, bytes) else str(item).encode()
                digest.update(len(raw).to_bytes(8, "little") + raw)
        else:
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


# -- output ---------------------------------------------------------------------------------


@dataclass
class Manifest:
    model: str
    version: str
    sha256: str
    input: dict[str, Any]
    rows: int
    chunk_rows: int
    chunks: list[dict[str, Any]]
    complete: bool = False

    @property
    def rows_done(self) -> int:
        return sum(int(c["rows"]) for c in self.chunks)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "model": self.model, "version": self.version,
                "sha256": self.sha256, "input": self.input, "rows": self.rows,
                "chunk_rows": self.chunk_rows, "chunks": self.chunks, "complete": self.complete}


class BatchOutput:
    """The output directory: resume from its manifest, then append chunks."""

    def __init__(self, directory: Path, fresh: Manifest) -> None:
        self.dir = directory
        path = directory / MANIFEST
        if path.exists():
            held = _read_manifest(path)
            for key in ("sha256", "input", "chunk_rows"):
                if getattr(held, key) != getattr(fresh, key):
                    raise BatchError(
                        f"{directory} holds a run with another {key.replace('_', '-')} "
                        f"({_short(getattr(held, key))}, now {_short(getattr(fresh, key))}); "
                        "to continue it, use the same model version, input file and "
                        "--chunk-rows; otherwise choose another --output or delete it"
                    )
            self.manifest = held
            for chunk in held.chunks:
                if not (directory / chunk["file"]).is_file():
                    raise BatchError(
                        f"{directory / chunk['file']} is listed as done but missing; delete "
                        f"{directory} and run again"
                    )
        elif directory.exists() and any(directory.iterdir()):
            raise BatchError(
                f"{directory} exists and is not a batch output (no {MANIFEST}); choose "
                "another --output"
            )
        else:
            directory.mkdir(parents=True, exist_ok=True)
            self.manifest = fresh
            self._save()
        self._sweep()

    def _sweep(self) -> None:
        """Delete files of a chunk that was being written when the last run stopped."""
        listed = {c["file"] for c in self.manifest.chunks} | {MANIFEST}
        for entry in self.dir.iterdir():
            if entry.name not in listed and (entry.name.startswith("part-")
                                             or entry.name.endswith(".tmp")):
                entry.unlink()

    def write(self, first_row: int, outputs: dict[str, Tensor], signature: ModelSignature,
              meta: dict[str, Any]) -> None:
        """Make one chunk durable, then list it in the manifest."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        index = len(self.manifest.chunks)
        name = _PART.format(index)
        rows = next(iter(outputs.values())).shape[0] if outputs else 0
        fields, columns = [], []
        for spec in signature.outputs:
            array = outputs[spec.name]
            field, column = _to_arrow(spec.name, array)
            fields.append(field)
            columns.append(column)
        table = pa.Table.from_arrays(columns, schema=pa.schema(fields))
        tmp = self.dir / (name + ".tmp")
        pq.write_table(table, tmp)
        _fsync(tmp)
        os.replace(tmp, self.dir / name)
        self.manifest.chunks.append({"file": name, "start": first_row, "rows": rows, **meta})
        self.manifest.complete = self.manifest.rows_done >= self.manifest.rows
        self._save()

    def _save(self) -> None:
        path = self.dir / MANIFEST
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.manifest.to_json(), indent=1))
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(self.dir)


def _to_arrow(name: str, array: Tensor) -> tuple[Any, Any]:
    import pyarrow as pa

    if array.dtype == object:
        column = pa.array(array.ravel().tolist(), type=pa.binary())
        return pa.field(name, pa.binary()), column
    if array.ndim == 1:
        column = pa.array(array)
        return pa.field(name, column.type), column
    row_shape = array.shape[1:]
    width = int(np.prod(row_shape))
    flat = pa.array(np.ascontiguousarray(array).reshape(-1))
    column = pa.FixedSizeListArray.from_arrays(flat, width)
    field = pa.field(name, column.type,
                     metadata={_SHAPE_KEY: json.dumps(list(row_shape)).encode()})
    return field, column


def read_output(directory: Path) -> dict[str, Tensor]:
    """Every chunk of a batch output, in row order, as one numpy array per model output."""
    import pyarrow.parquet as pq

    manifest = _read_manifest(directory / MANIFEST)
    parts: dict[str, list[Tensor]] = {}
    for chunk in manifest.chunks:
        table = pq.read_table(directory / chunk["file"])
        for field in table.schema:
            column = table.column(field.name).combine_chunks()
            shape_raw = (field.metadata or {}).get(_SHAPE_KEY)
            if shape_raw is not None:
                row_shape = json.loads(shape_raw)
                flat = column.flatten().to_numpy(zero_copy_only=False)
                array = flat.reshape(len(column), *row_shape)
            elif field.type == "binary":
                array = np.asarray(column.to_pylist(), dtype=object)
            else:
                array = column.to_numpy(zero_copy_only=False)
            parts.setdefault(field.name, []).append(array)
    return {name: np.concatenate(arrays) for name, arrays in parts.items()}


def _read_manifest(path: Path) -> Manifest:
    try:
        raw = json.loads(path.read_text())
        if raw.get("format") != FORMAT:
            raise BatchError(
                f"{path} has manifest format {raw.get('format')!r}; this outpost reads "
                f"format {FORMAT}: finish the run with the outpost that started it"
            )
        return Manifest(raw["model"], raw["version"], raw["sha256"], raw["input"], raw["rows"],
                        raw["chunk_rows"], list(raw["chunks"]), bool(raw.get("complete")))
    except FileNotFoundError:
        raise BatchError(f"{path.parent} is not a batch output (no {MANIFEST})") from None
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise BatchError(f"{path} is damaged ({exc!r}); delete {path.parent} and run again") from exc


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:77] + "…"
