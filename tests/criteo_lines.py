"""Criteo TSV lines for the preprocessing tests: valid random lines, injected bad lines, and readers of the output."""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

import embtables.datasets.criteo as criteo
from embtables.datasets.criteo_parse import BadLine, parse_line
from embtables.datasets.layout import DENSE, SPARSE


def make_line(label: str, ints: list[str], cats: list[str], end: str = "\n") -> bytes:
    return "\t".join([label, *ints, *cats]).encode() + end.encode()


def random_lines(n: int, seed: int = 0, start: int = 0) -> list[bytes]:
    """Valid lines with empty fields, negative and large integers, and Zipf-ish categories; I1 = line index."""
    rng = random.Random(seed)
    pools = [[rng.getrandbits(32) for _ in range(rng.choice([3, 20, 300]))] for _ in SPARSE]
    lines = []
    for i in range(start, start + n):
        ints = [str(i)] + [rng.choice(["", "0", "-1", "-2", str(rng.randint(0, 99)), str(rng.randint(0, 10**9))])
                           for _ in DENSE[1:]]
        cats = ["" if rng.random() < 0.1 else "%08x" % pool[min(int(rng.paretovariate(1.0)) - 1, len(pool) - 1)]
                for pool in pools]
        lines.append(make_line(rng.choice("0001"), ints, cats))
    return lines


def write(path: Path, lines: list[bytes], gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = b"".join(lines)
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def read_rows(out: Path, split: str) -> dict[str, np.ndarray]:
    parts = sorted((out / split).glob("part-*.parquet"))
    table = pq.read_table([str(p) for p in parts]) if parts else criteo.SCHEMA.empty_table()
    return {c: table.column(c).to_numpy() for c in table.column_names}


def expected_rows(lines: list[bytes]) -> list[tuple[int, list[int], list[int]]]:
    out = []
    for line in lines:
        try:
            out.append(parse_line(line))
        except BadLine:
            pass
    return out


def as_rows(cols: dict[str, np.ndarray]) -> list[tuple[int, list[int], list[int]]]:
    return [(int(cols["label"][i]), [int(cols[c][i]) for c in DENSE], [int(cols[c][i]) for c in SPARSE])
            for i in range(cols["label"].size)]


def files_of(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


BAD = {  # injected line -> the reason the report must give
    make_line("0", ["1"] * 13, ["68fd1e64"] * 25): "expected 40 tab-separated fields, found 39",
    make_line("1", ["1"] * 13, ["68fd1e64"] * 25 + ["68fd1eXX"]): "C26 must be 8 hex digits",
    make_line("0", ["1", "2.5"] + ["1"] * 11, ["68fd1e64"] * 26): "I2 must be an integer",
    make_line("2", ["1"] * 13, ["68fd1e64"] * 26): "label must be 0 or 1",
    make_line("1", ["1"] * 12 + ["99999999999"], ["68fd1e64"] * 26): "I13 must be an integer of at most 10",
    make_line("1", ["2147483648"] + ["1"] * 12, ["68fd1e64"] * 26): "I1 is outside the int32 range",
    b"\n": "expected 40 tab-separated fields, found 1",
}


def inject(lines: list[bytes], seed: int) -> tuple[list[bytes], dict[int, str]]:
    """Insert every BAD line at random places; returns the lines and {1-based line number: reason}."""
    rng = random.Random(seed)
    out, where = list(lines), {}
    for bad, reason in BAD.items():
        out.insert(rng.randrange(len(out) + 1), bad)
    for i, line in enumerate(out):
        if line in BAD:
            where[i + 1] = BAD[line]
    return out, where
