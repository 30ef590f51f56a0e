"""`PartWriter`: stream tables into one Parquet part file that appears under its final name only when complete.

Same protocol as `layout.atomic_write` (temporary name in the same folder, fsync, rename), for a file written
piece by piece: rows are buffered into row groups of `row_group_rows`, so the output is identical however the
input was cut into pieces, and memory stays bounded by one row group.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROW_GROUP_ROWS = 1 << 17  # ~34 MB of Criteo columns: big enough to compress well, small enough to shuffle by
COMPRESSION = "zstd"


class PartWriter:
    """Writes one Parquet file atomically from a stream of tables with the same schema.

    Args:
        path: the final file name.
        schema: the pyarrow schema of every table written.
        row_group_rows: rows per row group (the last one may be shorter).

    Example:
        >>> import tempfile, pyarrow as pa, pyarrow.parquet as pq
        >>> path = tempfile.mkdtemp() + "/part-0.parquet"
        >>> with PartWriter(path, pa.schema([("x", pa.int64())])) as w:
        ...     w.write(pa.table({"x": [1, 2]})); w.write(pa.table({"x": [3]}))
        >>> pq.read_table(path).column("x").to_pylist()
        [1, 2, 3]
    """

    def __init__(self, path: str | os.PathLike, schema: pa.Schema, row_group_rows: int = ROW_GROUP_ROWS) -> None:
        self.path = Path(path)
        self.schema = schema
        self.row_group_rows = row_group_rows
        self.rows = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        self._writer = pq.ParquetWriter(self._tmp, schema, compression=COMPRESSION)
        self._pending: list[pa.Table] = []
        self._pending_rows = 0

    def write(self, table: pa.Table) -> None:
        """Append the rows of `table` (its schema must equal the writer's)."""
        if not table.schema.equals(self.schema):
            raise ValueError(f"{self.path}: table schema {table.schema} differs from the part's {self.schema}")
        self._pending.append(table)
        self._pending_rows += table.num_rows
        self.rows += table.num_rows
        while self._pending_rows >= self.row_group_rows:
            self._flush(self.row_group_rows)

    def _flush(self, rows: int) -> None:
        buffered = pa.concat_tables(self._pending)
        self._writer.write_table(buffered.slice(0, rows), row_group_size=rows)
        rest = buffered.slice(rows)
        self._pending, self._pending_rows = ([rest] if rest.num_rows else []), rest.num_rows

    def commit(self) -> None:
        """Write the last row group, fsync, and move the file under its final name."""
        if self._pending_rows:
            self._flush(self._pending_rows)
        self._writer.close()
        with open(self._tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        """Drop everything written: no file appears under the final name."""
        self._writer.close()
        if os.path.exists(self._tmp):
            os.unlink(self._tmp)

    def __enter__(self) -> "PartWriter":
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()
