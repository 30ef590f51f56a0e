"""Built-in logical table sets, for the planner CLI, benchmarks and tests."""

from __future__ import annotations

from embtables.config import TableConfig

# Rows of C1..C26 of Criteo Kaggle after the usual DLRM preprocessing (33,762,577 rows; 2.16 GB at dim 16).
CRITEO_KAGGLE_ROWS = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992,
    5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)


def criteo_kaggle_tables(embedding_dim: int = 16, scale: float = 1.0) -> list[TableConfig]:
    """The 26 Criteo Kaggle tables `C1`..`C26`, rows optionally scaled down (at least 1 row each)."""
    return [
        TableConfig(f"C{i + 1}", max(1, round(n * scale)), embedding_dim) for i, n in enumerate(CRITEO_KAGGLE_ROWS)
    ]


TABLE_SETS = {"criteo-kaggle": criteo_kaggle_tables}
