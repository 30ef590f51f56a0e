"""Streaming whole lines out of a plain or gzip text file, in pieces of a bounded number of lines.

A line is the bytes up to and including `\\n`; a last line without `\\n` still counts. `LineReader` tracks the
uncompressed byte offset of the next line, so a resumed run can seek straight back to where a completed
part ended (a plain file seeks in O(1); a gzip file decompresses up to that point).
"""

from __future__ import annotations

import gzip
import io
import os
from typing import BinaryIO

import numpy as np

READ_BYTES = 8 << 20  # bytes per read(): large enough that per-call overhead vanishes, small against memory
_GZIP_MAGIC = b"\x1f\x8b"


def open_input(path: str | os.PathLike) -> BinaryIO:
    """Open `path` for binary reading, decompressing gzip (recognised by its magic bytes, not its name)."""
    f = open(path, "rb")
    if f.read(2) == _GZIP_MAGIC:
        f.close()
        return gzip.open(path, "rb")  # type: ignore[return-value]
    f.seek(0)
    return f


def count_lines(path: str | os.PathLike) -> int:
    """Number of lines of a plain or gzip file (a final line without `\\n` counts).

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "x.tsv"); _ = open(p, "wb").write(b"a\\nb\\nc")
        >>> count_lines(p)
        3
    """
    n, last, block = 0, ord("\n"), bytearray(READ_BYTES)
    with open_input(path) as f:
        while size := f.readinto(block):
            view = memoryview(block)[:size]
            n += view.tobytes().count(b"\n") if size < len(block) else block.count(b"\n")
            last = block[size - 1]
    return n + (last != ord("\n"))


class LineReader:
    """Reads whole lines of a plain or gzip file, a bounded number at a time.

    Args:
        path: the input file.

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "x.tsv"); _ = open(p, "wb").write(b"a\\nbb\\nccc")
        >>> with LineReader(p) as r:
        ...     r.read_lines(2), r.offset, r.read_lines(5), r.read_lines(5)
        ((b'a\\nbb\\n', 2), 5, (b'ccc', 1), (b'', 0))
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        self._f = open_input(path)
        # one reused block (fresh multi-MB buffers per read would page-fault again and again), its newline
        # positions, and how much of it has been consumed
        self._block = bytearray(READ_BYTES)
        self._size = self._used_bytes = self._used_lines = 0
        self._ends = np.empty(0, dtype=np.int64)
        self.offset = 0  # uncompressed bytes consumed: where the next line starts

    def seek(self, offset: int) -> None:
        """Continue reading at uncompressed byte `offset` (a line start recorded from `offset` earlier)."""
        self._f.seek(offset, io.SEEK_SET)
        if self._f.tell() != offset:
            raise ValueError(f"{self.path}: cannot seek to byte {offset}: the file is shorter than when it was read")
        self._size = self._used_bytes = self._used_lines = 0
        self.offset = offset

    def _fill(self) -> bool:
        self._size = self._f.readinto(self._block) or 0
        view = np.frombuffer(self._block, dtype=np.uint8, count=self._size)
        self._ends = np.flatnonzero(view == ord("\n"))
        self._used_bytes = self._used_lines = 0
        return self._size > 0

    def read_lines(self, n: int) -> tuple[bytes, int]:
        """The next `n` lines (fewer at end of file, none after it) and how many there are. Each line keeps its
        `\n`; only the file's last line may lack one."""
        parts: list[bytes | memoryview] = []
        need = n
        while need > 0:
            if self._used_bytes == self._size and not self._fill():
                break
            take = min(need, self._ends.size - self._used_lines)
            cut = int(self._ends[self._used_lines + take - 1]) + 1 if take == need else self._size
            part = memoryview(self._block)[self._used_bytes:cut]
            parts.append(part if take == need else bytes(part))  # copy a tail before the block is refilled
            self._used_bytes, self._used_lines, need = cut, self._used_lines + take, need - take
        data = b"".join(parts)
        self.offset += len(data)
        count = n - need + (need > 0 and len(data) > 0 and not data.endswith(b"\n"))
        return data, count

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "LineReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
