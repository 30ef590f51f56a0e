"""Criteo lines: the vectorised parser against the reference parser, line reading, and the real Kaggle sample
preprocessed against the statistics of its README."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from embtables.datasets.criteo import preprocess_criteo
from embtables.datasets.criteo_parse import BadLine, parse_line, parse_lines
from embtables.datasets.layout import DENSE, MISSING_CAT, MISSING_INT, SPARSE, load_counts
from embtables.datasets.lines import LineReader, count_lines
from tests.conftest import shared_file
from tests.criteo_lines import BAD, as_rows, inject, make_line, random_lines, read_rows, write

SAMPLE = "criteo_kaggle_head10k.tsv"

# ---------------------------------------------------------------- parser

GOOD_INTS = ["", "0", "-0", "7", "-7", "007", "2147483647", "-2147483647", "1234567890", "-99999999"]
BAD_INTS = ["-", "--1", "1.5", " 1", "+1", "0x1", "a", "12345678901", "2147483648", "-2147483648", "1-"]
GOOD_CATS = ["", "68fd1e64", "DEADBEEF", "0000000a", "ffffffff"]
BAD_CATS = ["68fd1e6", "68fd1e640", "ghijklmn", "68fd 1e6", "-8fd1e64", "68fd1e6\x00", "68fd1e6:"]


def test_parse_reference_example_values():
    line = make_line("1", ["-5", "", "2147483647"] + ["3"] * 10, ["0000000a", "", "FFFFFFFF"] + ["68fd1e64"] * 23)
    label, dense, sparse = parse_line(line)
    assert (label, dense[:4], sparse[:4]) == (1, [-5, MISSING_INT, 2147483647, 3], [10, MISSING_CAT, 2**32 - 1, 0x68FD1E64])
    p = parse_lines(line)
    assert p.label.tolist() == [1] and p.dense[:, 0].tolist() == dense and p.sparse[:, 0].tolist() == sparse


@st.composite
def messy_lines(draw) -> bytes:
    """Lines that are mostly valid, with every kind of defect: field values, field counts, line endings."""
    label = draw(st.sampled_from(["0", "1", "1", "", "2", "01", "x"]))
    ints = [draw(st.sampled_from(GOOD_INTS * 4 + BAD_INTS)) for _ in DENSE]
    cats = [draw(st.sampled_from(GOOD_CATS * 8 + BAD_CATS)) for _ in SPARSE]
    fields = [label, *ints, *cats]
    shape = draw(st.sampled_from(["ok"] * 6 + ["drop", "extra", "trailing", "two_trailing", "empty", "cr_inside"]))
    if shape == "drop":
        fields.pop(draw(st.integers(0, len(fields) - 1)))
    elif shape == "extra":
        fields.append("1")
    elif shape == "trailing":
        fields.append("")
    elif shape == "two_trailing":
        fields += ["", ""]
    text = "\t".join(fields) if shape != "empty" else ""
    if shape == "cr_inside":
        text = text.replace("\t", "\r\t", 1)
    return text.encode() + draw(st.sampled_from([b"\n", b"\n", b"\r\n"]))


@settings(max_examples=150)
@given(st.lists(messy_lines(), min_size=1, max_size=30), st.booleans())
def test_vectorised_parser_equals_reference_line_by_line(lines, drop_final_newline):
    data = b"".join(lines)
    if drop_final_newline and lines[-1].strip(b"\r\n"):
        data = data[:-1]  # the last line, not empty, loses its "\n": it still counts
    p = parse_lines(data)
    good, bad, expect = [], [], []
    for i, line in enumerate(lines):
        try:
            expect.append(parse_line(line))
            good.append(i)
        except BadLine:
            bad.append(i)
    assert p.num_lines == len(lines)
    assert p.good.tolist() == good and p.bad.tolist() == bad
    assert as_rows({"label": p.label, **dict(zip(DENSE, p.dense)), **dict(zip(SPARSE, p.sparse))}) == expect


def test_line_reader_pieces_and_counts(tmp_path):
    lines = random_lines(50)
    plain = write(tmp_path / "a.tsv", lines[:-1] + [lines[-1].rstrip(b"\n")])  # no final newline
    gz = write(tmp_path / "a.tsv.gz", lines, gz=True)
    assert count_lines(plain) == count_lines(gz) == 50
    for path in (plain, gz):
        with LineReader(path) as r:
            pieces = [r.read_lines(k) for k in (1, 7, 30, 100, 5)]
        assert [n for _, n in pieces] == [1, 7, 30, 12, 0]
        assert b"".join(d for d, _ in pieces).rstrip(b"\n") == b"".join(lines).rstrip(b"\n")


# ---------------------------------------------------------------- the real Kaggle sample

README_DISTINCT = [175, 386, 5520, 4032, 56, 7, 3184, 93, 3, 2986, 2084, 5283, 1725, 24, 2035, 4723, 9, 1149, 546, 3,
                   5036, 7, 12, 2524, 39, 1938]
README_EMPTY = {**{c: 357 for c in ("C3", "C4", "C12", "C16", "C21", "C24")}, "C6": 1332,
                **{c: 4496 for c in ("C19", "C20", "C25", "C26")}, "C22": 8182}


def test_real_sample_statistics_match_its_readme(tmp_path):
    src = shared_file(SAMPLE)
    s = preprocess_criteo(src, tmp_path / "out", split="none", progress=False, chunk_rows=3000)
    assert (s["rows_read"], s["rows_written"], s["bad_rows"]) == (10_000, 10_000, 0)
    assert s["splits"]["all"]["clicks"] == 2182
    counts = load_counts(tmp_path / "out" / "counts.npz")
    distinct = [int((counts[c][0] != MISSING_CAT).sum()) for c in SPARSE]
    assert distinct == README_DISTINCT and sum(distinct) == 43_579
    empty = {c: int(counts[c][1][counts[c][0] == MISSING_CAT].sum()) for c in SPARSE}
    assert {c: n for c, n in empty.items() if n} == README_EMPTY
    lines = src.read_bytes().splitlines(keepends=True)
    assert as_rows(read_rows(tmp_path / "out", "all")) == [parse_line(x) for x in lines]


def test_real_sample_with_injected_bad_lines_keeps_every_good_row(tmp_path):
    lines = shared_file(SAMPLE).read_bytes().splitlines(keepends=True)
    dirty, where = inject(lines, seed=10)
    clean = preprocess_criteo(write(tmp_path / "clean.tsv", lines), tmp_path / "clean", progress=False)
    s = preprocess_criteo(write(tmp_path / "dirty.tsv", dirty), tmp_path / "dirty", split="none", progress=False,
                          chunk_rows=2500)
    assert (s["rows_read"], s["rows_written"], s["bad_rows"]) == (10_000 + len(BAD), 10_000, len(BAD))
    assert {b["line"]: b["reason"] for b in s["first_bad_lines"]}.keys() == where.keys()
    assert as_rows(read_rows(tmp_path / "dirty", "all")) == [parse_line(x) for x in lines]
    assert sum(v["clicks"] for v in clean["splits"].values()) == s["splits"]["all"]["clicks"] == 2182
