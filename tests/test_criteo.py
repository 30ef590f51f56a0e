"""`preprocess criteo`: the vectorised parser against the reference parser, splits, resume, counts, bad lines,
and the real Kaggle sample against the statistics of its README."""

from __future__ import annotations

import gzip
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import embtables.datasets.criteo as criteo
import embtables.datasets.criteo_chunks as chunks
import embtables.datasets.lines as lines_module
from embtables.cli import build_parser
from embtables.datasets.criteo import CriteoFormatError, kaggle_days, preprocess_criteo
from embtables.datasets.criteo_parse import BadLine, parse_line, parse_lines
from embtables.datasets.layout import DENSE, MISSING_CAT, MISSING_INT, SPARSE, load_counts, read_json
from embtables.datasets.lines import LineReader, count_lines
from tests.conftest import shared_file

SAMPLE = "criteo_kaggle_head10k.tsv"


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


# ---------------------------------------------------------------- preprocessing

def test_edge_cases_are_parsed_into_parquet(tmp_path):
    lines = [
        make_line("0", ["", "-1"] + [""] * 11, [""] * 26),  # all empty, negative
        make_line("1", ["5"] * 13, ["68fd1e64"] * 25 + [""]),  # empty C26: the line ends in a tab
        make_line("1", ["5"] * 13, ["68fd1e64"] * 26, end="\t\n"),  # one extra trailing tab: tolerated
        make_line("0", ["-2147483647"] + ["1"] * 12, ["ABCDEF01"] * 26, end="\r\n"),  # CRLF, upper case hex
        make_line("1", ["2147483647"] * 13, ["00000000"] * 26, end=""),  # no final newline
    ]
    out = tmp_path / "out"
    s = preprocess_criteo(write(tmp_path / "in.tsv", lines), out, split="none", progress=False)
    assert (s["rows_read"], s["rows_written"], s["bad_rows"]) == (5, 5, 0)
    rows = as_rows(read_rows(out, "all"))
    assert rows == expected_rows(lines)
    assert rows[0][1][:2] == [MISSING_INT, -1] and rows[1][2][25] == MISSING_CAT and rows[3][2][0] == 0xABCDEF01
    schema = pq.read_schema(next((out / "all").glob("*.parquet")))
    assert [str(schema.field(c).type) for c in ("label", "I1", "C1")] == ["int8", "int32", "int64"]


def test_gzip_input_gives_identical_output(tmp_path):
    lines = random_lines(300, seed=1)
    a = preprocess_criteo(write(tmp_path / "d.tsv", lines), tmp_path / "a", split="kaggle-days", progress=False,
                          chunk_rows=64)
    b = preprocess_criteo(write(tmp_path / "d.tsv.gz", lines, gz=True), tmp_path / "b", split="kaggle-days",
                          progress=False, chunk_rows=64)
    assert a["splits"] == b["splits"]
    fa, fb = files_of(tmp_path / "a"), files_of(tmp_path / "b")
    parts = [k for k in fa if k.endswith(".parquet")]
    assert len(parts) > 3 and all(fa[k] == fb[k] for k in parts + ["counts.npz"])


@pytest.mark.parametrize("n", [7, 101, 1000])
def test_kaggle_days_exact_split_sizes(tmp_path, n):
    q = n // 7
    day7 = n - q  # the first n % 7 days are one line longer
    test = (q + 1) // 2
    assert kaggle_days(n) == {"train": (0, day7), "test": (day7, day7 + test), "val": (day7 + test, n)}
    lines = random_lines(n, seed=n)
    # two input files, cut where no split boundary is: the days run over the concatenation
    files = [write(tmp_path / "a.tsv", lines[: n // 3]), write(tmp_path / "b.tsv", lines[n // 3:])]
    s = preprocess_criteo(files, tmp_path / "out", progress=False, chunk_rows=97)
    for split, (a, b) in kaggle_days(n).items():
        rows = read_rows(tmp_path / "out", split)
        assert rows["I1"].tolist() == list(range(a, b))  # I1 holds the line index
        assert s["splits"][split]["rows"] == b - a
        assert s["splits"][split]["clicks"] == sum(parse_line(x)[0] for x in lines[a:b])
    assert s["line_ranges"] == {k: list(v) for k, v in kaggle_days(n).items()}


def test_ordered_split_cuts_the_file_in_order(tmp_path):
    lines = random_lines(1003, seed=2)
    files = [write(tmp_path / "a.tsv", lines[:400]), write(tmp_path / "b.tsv", lines[400:])]
    s = preprocess_criteo(files, tmp_path / "out", split="ordered", fractions=(0.8, 0.1, 0.1), progress=False,
                          chunk_rows=150)
    expected = {"train": (0, 802), "val": (802, 902), "test": (902, 1003)}
    assert s["line_ranges"] == {k: list(v) for k, v in expected.items()}
    for split, (a, b) in expected.items():
        assert read_rows(tmp_path / "out", split)["I1"].tolist() == list(range(a, b))
        assert s["splits"][split]["rows"] == b - a
    with pytest.raises(ValueError, match="seed applies to split='random' only"):
        preprocess_criteo(files, tmp_path / "o2", split="ordered", seed=1, progress=False)


def test_kaggle_days_full_size_numbers():
    assert kaggle_days(45_840_617) == {"train": (0, 39_291_958), "test": (39_291_958, 42_566_288),
                                       "val": (42_566_288, 45_840_617)}


def test_random_split_is_seeded_exhaustive_and_independent_of_chunking(tmp_path):
    src = write(tmp_path / "d.tsv", random_lines(4000, seed=3))

    def assignment(out: str, **kw) -> dict[str, list[int]]:
        preprocess_criteo(src, tmp_path / out, split="random", progress=False, **kw)
        return {s: read_rows(tmp_path / out, s)["I1"].tolist() for s in ("train", "val", "test")}

    a = assignment("a", seed=5, fractions=(0.6, 0.3, 0.1), chunk_rows=1000)
    assert assignment("b", seed=5, fractions=(0.6, 0.3, 0.1), chunk_rows=333) == a
    assert sorted(a["train"] + a["val"] + a["test"]) == list(range(4000))
    for s, f in zip(("train", "val", "test"), (0.6, 0.3, 0.1)):
        assert abs(len(a[s]) - 4000 * f) < 4 * (4000 * f * (1 - f)) ** 0.5
        assert a[s] == sorted(a[s])  # file order within a split
    assert assignment("c", seed=6, fractions=(0.6, 0.3, 0.1), chunk_rows=1000) != a
    assert assignment("d", chunk_rows=1000) == assignment("e", seed=0, fractions=(0.8, 0.1, 0.1), chunk_rows=1000)


def test_output_does_not_depend_on_read_and_parse_piece_sizes(tmp_path, monkeypatch):
    lines, where = inject(random_lines(900, seed=12), seed=12)
    src = write(tmp_path / "d.tsv", lines)
    kw = dict(split="random", seed=2, progress=False, chunk_rows=400)
    reference = preprocess_criteo(src, tmp_path / "a", **kw)
    monkeypatch.setattr(chunks, "PIECE_LINES", 7)  # many pieces per chunk, parsed ahead in threads
    monkeypatch.setattr(lines_module, "READ_BYTES", 1000)  # lines straddle read blocks
    small = preprocess_criteo(src, tmp_path / "b", **kw)
    assert small == reference and [b["line"] for b in small["first_bad_lines"]] == sorted(where)
    assert files_of(tmp_path / "a") == files_of(tmp_path / "b")


def test_runs_are_deterministic_byte_for_byte(tmp_path):
    src = write(tmp_path / "d.tsv", random_lines(500, seed=4))
    for out in ("a", "b"):
        preprocess_criteo(src, tmp_path / out, split="random", seed=1, progress=False, chunk_rows=128)
    assert files_of(tmp_path / "a") == files_of(tmp_path / "b")


def test_counts_are_exact_training_frequencies(tmp_path):
    lines = random_lines(700, seed=5)
    preprocess_criteo(write(tmp_path / "d.tsv", lines), tmp_path / "out", progress=False, chunk_rows=50)
    a, b = kaggle_days(700)["train"]
    train = expected_rows(lines[a:b])
    counts = load_counts(tmp_path / "out" / "counts.npz")
    assert list(counts) == SPARSE
    for j, f in enumerate(SPARSE):
        expect = Counter(r[2][j] for r in train)
        values, cnt = counts[f]
        assert dict(zip(values.tolist(), cnt.tolist())) == expect
        assert np.all(np.diff(cnt) <= 0)  # most frequent first
    assert MISSING_CAT in counts["C1"][0]  # missing is counted as a value


def test_resume_after_interrupt_keeps_completed_parts_and_matches_a_clean_run(tmp_path, monkeypatch):
    src = write(tmp_path / "d.tsv", random_lines(1000, seed=6))
    kw = dict(split="kaggle-days", progress=False, chunk_rows=100)
    preprocess_criteo(src, tmp_path / "clean", **kw)

    finish = chunks.finish_chunk
    calls = []

    def crash_on_third(run, k, marker):
        calls.append(k)
        if len(calls) == 3:
            raise KeyboardInterrupt  # after chunk 2's parts are in place, before it is marked complete
        finish(run, k, marker)

    monkeypatch.setattr(chunks, "finish_chunk", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        preprocess_criteo(src, tmp_path / "run", **kw)
    out = tmp_path / "run"
    assert not (out / "summary.json").exists() and not list(out.rglob("*.tmp"))
    kept = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("train/part-0000[01].parquet")}
    assert len(kept) == 2

    processed = []
    process = chunks.process_chunk
    monkeypatch.setattr(chunks, "finish_chunk", finish)
    monkeypatch.setattr(chunks, "process_chunk", lambda run, reader, k, *a: processed.append(k) or
                        process(run, reader, k, *a))
    summary = preprocess_criteo(src, out, **kw)
    assert processed[0] == 2 and 0 not in processed and 1 not in processed  # chunk 2 had no marker: redone
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in kept} == kept  # not rewritten
    assert files_of(out) == files_of(tmp_path / "clean")
    assert summary == read_json(tmp_path / "clean" / "summary.json")
    processed.clear()
    assert preprocess_criteo(src, out, **kw) == summary and processed == []  # a finished run is not redone


def test_a_crash_while_writing_a_part_leaves_no_part_under_its_final_name(tmp_path, monkeypatch):
    src = write(tmp_path / "d.tsv", random_lines(300, seed=7))

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(chunks.PartWriter, "commit", broken)
    with pytest.raises(OSError, match="disk full"):
        preprocess_criteo(src, tmp_path / "out", split="none", progress=False, chunk_rows=100)
    assert not list((tmp_path / "out").rglob("part-*")) and not list((tmp_path / "out").rglob("*.tmp"))


def test_rerun_with_other_settings_is_refused(tmp_path):
    src = write(tmp_path / "d.tsv", random_lines(20))
    preprocess_criteo(src, tmp_path / "out", split="none", progress=False)
    with pytest.raises(ValueError, match="other settings .split"):
        preprocess_criteo(src, tmp_path / "out", split="random", progress=False)


@pytest.mark.parametrize("kw, match", [
    (dict(split="days"), "split must be one of"),
    (dict(split="kaggle-days", seed=1), "applies to split='random' only"),
    (dict(split="none", fractions=(1, 0, 0)), "apply to split='random' or 'ordered' only"),
    (dict(split="random", fractions=(0.5, 0.5)), "3 numbers"),
    (dict(split="random", fractions=(0.5, 0.2, 0.2)), "summing to 1"),
    (dict(split="random", fractions=(0, 0.5, 0.5)), "train fraction must be > 0"),
    (dict(split="random", seed=-1), "seed must be an int >= 0"),
    (dict(chunk_rows=0), "chunk_rows must be an int >= 1"),
])
def test_invalid_settings_name_the_option(tmp_path, kw, match):
    src = write(tmp_path / "d.tsv", random_lines(5))
    with pytest.raises(ValueError, match=match):
        preprocess_criteo(src, tmp_path / "out", progress=False, **kw)


def test_missing_input_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.tsv"):
        preprocess_criteo(tmp_path / "nope.tsv", tmp_path / "out", progress=False)


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


@pytest.mark.parametrize("split", ["kaggle-days", "random", "none"])
def test_bad_lines_are_skipped_reported_and_no_good_line_is_lost(tmp_path, capsys, split):
    good = random_lines(600, seed=8)
    lines, where = inject(good, seed=8)
    src = write(tmp_path / "d.tsv", lines)
    s = preprocess_criteo(src, tmp_path / "out", split=split, progress=False, chunk_rows=128)
    assert (s["rows_read"], s["rows_written"], s["bad_rows"]) == (len(lines), len(good), len(BAD))
    assert s["rows_read"] == s["rows_written"] + s["bad_rows"]
    assert [b["line"] for b in s["first_bad_lines"]] == sorted(where)
    for b in s["first_bad_lines"]:
        assert b["file"] == str(src) and where[b["line"]] in b["reason"]
    err = capsys.readouterr().err
    assert all(f"{src}:{n}: bad line skipped" in err for n in where)
    splits = ["all"] if split == "none" else ["train", "val", "test"]
    written = sorted(r for s_ in splits for r in as_rows(read_rows(tmp_path / "out", s_)))
    assert written == sorted(expected_rows(good))


def test_strict_mode_stops_at_the_first_bad_line_naming_line_and_content(tmp_path):
    lines = random_lines(300, seed=9)
    bad = make_line("1", ["1"] * 13, ["zz"] + ["68fd1e64"] * 25)
    lines.insert(250, bad)
    src = write(tmp_path / "d.tsv", lines)
    with pytest.raises(CriteoFormatError) as e:
        preprocess_criteo(src, tmp_path / "out", split="none", strict=True, progress=False, chunk_rows=100)
    msg = str(e.value)
    assert f"{src}:251: C1 must be 8 hex digits or empty, got b'zz'" in msg and repr(bad.decode().rstrip("\n")) in msg
    assert len(list((tmp_path / "out" / "all").glob("part-*.parquet"))) == 2  # chunks before it are complete


def test_cli_parser_runs_and_reports_errors(tmp_path, capsys):
    parser = build_parser()
    src = write(tmp_path / "d.tsv", random_lines(50))
    args = parser.parse_args(["preprocess", "criteo", str(src), "--out", str(tmp_path / "out"), "--split", "random",
                              "--seed", "3", "--fractions", "0.5,0.25,0.25", "--chunk-rows", "20"])
    assert (args.seed, args.fractions, args.chunk_rows) == (3, (0.5, 0.25, 0.25), 20)
    assert args.run(args) == 0
    assert read_json(tmp_path / "out" / "summary.json")["fractions"] == [0.5, 0.25, 0.25]
    bad = parser.parse_args(["preprocess", "criteo", str(src), "--out", str(tmp_path / "o2"), "--seed", "3"])
    assert bad.run(bad) == 2 and "applies to split='random' only" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["preprocess", "criteo", str(src), "--out", "x", "--fractions", "0.5,0.5"])


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
