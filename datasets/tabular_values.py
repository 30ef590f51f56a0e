"""The value rules of `embtables preprocess csv` (datasets/tabular.py): what is missing, what a label, a dense
value and a categorical value are, how a column's type is inferred, and why a row is bad.

Every value is first taken as text with surrounding whitespace removed (a Parquet column of numbers, booleans
or dates is cast to text the way pyarrow writes it: 3.0 -> "3", True -> "true"), except that numeric Parquet
columns read as dense keep their numbers. Then:

    missing      the empty text, and na, n/a, nan, null, none in any case (and Parquet nulls, float NaN)
    label        1, 1.0, true, yes -> 1 and 0, 0.0, false, no -> 0, in any case; anything else, a missing
                 label included, makes the row bad
    dense        a finite decimal number (`-1`, `2.5`, `.5`, `3e-2`) -> float64; missing -> NaN; anything
                 else (`abc`, `inf`, `0x1F`, `1e999`) makes the row bad
    categorical  any text -> int64 id: the first 8 bytes of BLAKE2b of its UTF-8 bytes, little-endian, top
                 bit cleared (so ids are >= 0 and never the missing marker); missing -> MISSING_CAT (-1).
                 Integers and strings share one rule, so `7` in a CSV and 7 in a Parquet int column get
                 the same id, while `7` and `07` are different values.

Type inference (for columns given neither --categorical nor --dense): a column is dense when every one of its
non-missing values over the whole input is a number as above (a column with no value at all too), and
categorical otherwise. An integer-valued dense column may well hold ids: `describe_columns` says so, and
--categorical NAME overrides.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embtables.datasets.layout import MISSING_CAT

MISSING_WORDS = ("", "na", "n/a", "nan", "null", "none")
LABEL_ONES = ("1", "1.0", "true", "yes")
LABEL_ZEROS = ("0", "0.0", "false", "no")
NUMBER = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_ID_BITS = np.uint64((1 << 63) - 1)


def _flat(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def as_text(column: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """A column as trimmed text (missing values as "") and its (N,) bool missing mask.

    Example:
        >>> text, missing = as_text(pa.array([" a ", "NA", None, "7"]))
        >>> text.to_pylist(), missing.tolist()
        (['a', '', '', '7'], [False, True, True, False])
    """
    column = _flat(column)
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        column = pc.cast(column, pa.string())  # numbers, booleans, dates; binary must be UTF-8
    text = pc.utf8_trim_whitespace(column.cast(pa.string()))
    missing = pc.or_(pc.is_null(text), pc.fill_null(pc.is_in(pc.utf8_lower(text), value_set=pa.array(MISSING_WORDS)),
                                                    False))
    mask = missing.to_numpy(zero_copy_only=False)
    return pc.if_else(missing, "", text), mask


def is_numeric(column: pa.Array | pa.ChunkedArray) -> bool:
    """Whether a column's type holds numbers as such (Parquet ints, floats, decimals, booleans), not as text."""
    t = column.type
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t) or pa.types.is_boolean(t)


def parse_dense(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(N,) float64 values (NaN where missing) and the (N,) bool mask of values that are not finite numbers.

    Example:
        >>> values, bad = parse_dense(pa.array(["1.5", "", "abc", "-2", "inf"]))
        >>> values.tolist()[:2], bad.tolist()
        ([1.5, nan], [False, False, True, False, True])
    """
    column = _flat(column)
    if is_numeric(column):
        values = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)  # nulls -> NaN
        return values, np.isinf(values)
    text, missing = as_text(column)
    number = pc.match_substring_regex(text, NUMBER).to_numpy(zero_copy_only=False)
    values = pc.cast(pc.if_else(pa.array(number), text, "0"), pa.float64()).to_numpy(zero_copy_only=False)
    values = np.where(missing, np.nan, values)
    return values, ~missing & (~number | np.isinf(values))  # overflowing numbers (1e999) become inf


def parse_label(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(N,) int8 labels (0 where bad) and the (N,) bool mask of values that are no label.

    Example:
        >>> labels, bad = parse_label(pa.array(["1", "False", "yes", "2", None]))
        >>> labels.tolist(), bad.tolist()
        ([1, 0, 1, 0, 0], [False, False, False, True, True])
    """
    text, _ = as_text(column)
    lower = pc.utf8_lower(text)
    one = pc.is_in(lower, value_set=pa.array(LABEL_ONES)).to_numpy(zero_copy_only=False)
    zero = pc.is_in(lower, value_set=pa.array(LABEL_ZEROS)).to_numpy(zero_copy_only=False)
    return one.astype(np.int8), ~(one | zero)


def hash_categorical(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """(N,) int64 ids of a categorical column: a stable 63-bit hash of each value's text, MISSING_CAT if missing.

    Each distinct value of the column is hashed once (dictionary encoding), so low-cardinality columns cost
    next to nothing and a column of distinct values about 0.6 us per row.

    Example:
        >>> hash_categorical(pa.array(["7", "a", " 7", "", None])).tolist()
        [184498939294601447, 3405396810240292928, 184498939294601447, -1, -1]
        >>> hash_categorical(pa.array([7, None])).tolist()  # an int column: the same ids as its text
        [184498939294601447, -1]
    """
    text, missing = as_text(column)
    encoded = pc.dictionary_encode(text)
    digests = b"".join(hashlib.blake2b(v.encode(), digest_size=8).digest()
                       for v in encoded.dictionary.to_pylist())
    ids = (np.frombuffer(digests, dtype="<u8") & _ID_BITS).astype(np.int64)
    out = ids[encoded.indices.to_numpy(zero_copy_only=False)] if ids.size else np.zeros(len(text), np.int64)
    out[missing] = MISSING_CAT
    return out


@dataclass
class ColumnStats:
    """What type inference has seen of one column over the input.

    Args:
        values: non-missing values seen.
        integers: of them, numbers with an integral value.
        text_example: the first non-number: (file, line, value), or None while every value is a number.
    """

    values: int = 0
    integers: int = 0
    text_example: tuple[str, int, str] | None = None

    def add(self, column: pa.Array | pa.ChunkedArray, file: str, lines: np.ndarray) -> None:
        """Fold in a piece of the column; `lines` (N,) are the rows' line numbers, for the example."""
        values, bad = parse_dense(column)
        present = ~np.isnan(values) | bad
        self.values += int(present.sum())
        self.integers += int((present & ~bad & (values == np.round(values))).sum())
        if self.text_example is None and bad.any():
            i = int(np.flatnonzero(bad)[0])
            self.text_example = (file, int(lines[i]), str(_flat(column)[i].as_py()))

    def inferred(self) -> dict[str, Any]:
        """The column's entry of summary.json's "columns": its type, and why."""
        if self.text_example is not None:
            file, line, value = self.text_example
            return {"type": "categorical", "how": "inferred", "because": f"{value!r} at {file}:{line} is not a number"}
        entry: dict[str, Any] = {"type": "dense", "how": "inferred", "because": "every value is a number"}
        if self.values == 0:
            entry["because"] = "the column holds no value"
        elif self.integers == self.values:
            entry["integers"] = True  # ids, perhaps: describe_columns suggests --categorical
        return entry
