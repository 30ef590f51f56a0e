"""Layout helper shared by methods whose logical tables become several physical tables (`qr`, `mixed_dim`).

Per-id lookups of one collection share one width g (a store returns one (N, g) block of rows), so a wider
partition or block is stored as width/g physical tables of width g, one per column block (`column_blocks`;
same bytes; row-wise Adagrad then keeps one accumulator per block row).
"""

from __future__ import annotations

from embtables.config import Lookup, PhysicalTable, TableConfig


def column_blocks(name: str, rows: int, width: int, g: int, low: float, high: float) -> list[PhysicalTable]:
    """The physical tables of one `rows` x `width` table: one table `name` when g is 0 (pooled lookups) or the
    width itself, else width / g tables `name#c` of width g.

    Example:
        >>> [(t.name, t.embedding_dim) for t in column_blocks("t/q", 10, 8, 4, -0.1, 0.1)]
        [('t/q#0', 4), ('t/q#1', 4)]
    """
    blocks = 1 if g in (0, width) else width // g
    if blocks * (width // blocks) != width:
        raise ValueError(f"table {name!r}: width {width} is not a multiple of the column block width {g}")
    suffix = (lambda c: f"#{c}") if blocks > 1 else (lambda c: "")
    return [PhysicalTable(name + suffix(c), rows, width // blocks, low, high) for c in range(blocks)]


def append_blocks(physical: list[PhysicalTable], lookups: list[Lookup], table: TableConfig, suffix: str, rows: int,
                  width: int, g: int, low: float, high: float) -> int:
    """Append the column blocks of `table`'s sub-table `suffix` (e.g. "/q") to `physical`, and to `lookups` one
    lookup per block and feature of the table (block-major, pooled when g is 0); returns the number of blocks."""
    blocks = column_blocks(table.name + suffix, rows, width, g, low, high)
    for block in blocks:
        name = block.name[len(table.name) :]
        lookups += [Lookup(f + name, len(physical), g == 0) for f in table.feature_names]
        physical.append(block)
    return len(blocks)
