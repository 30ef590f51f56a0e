"""`preprocess criteo`: splits, resume, counts, bad lines, the command line (the parser and the real sample:
test_criteo_parse.py)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest

import embtables.datasets.criteo_chunks as chunks
import embtables.datasets.lines as lines_module
from embtables.cli import build_parser
from embtables.datasets.criteo import CriteoFormatError, TooManyBadLines, kaggle_days, preprocess_criteo
from embtables.datasets.criteo_parse import parse_line
from embtables.datasets.layout import MISSING_CAT, MISSING_INT, SPARSE, load_counts, read_json
from tests.criteo_lines import BAD, as_rows, expected_rows, files_of, inject, make_line, random_lines, read_rows, write

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



@pytest.mark.parametrize("split", ["kaggle-days", "random", "none"])
def test_bad_lines_are_skipped_reported_and_no_good_line_is_lost(tmp_path, capsys, split):
    good = random_lines(600, seed=8)
    lines, where = inject(good, seed=8)
    src = write(tmp_path / "d.tsv", lines)
    s = preprocess_criteo(src, tmp_path / "out", split=split, progress=False, chunk_rows=128, max_bad_fraction=0.05)
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


def test_more_bad_lines_than_max_bad_fraction_fail_naming_the_file_the_counts_and_the_option(tmp_path, capsys):
    src = write(tmp_path / "notcriteo.tsv", [b"oops\n"] * 201)
    args = build_parser().parse_args(_preprocess_args(src, tmp_path / "out"))
    assert args.max_bad_fraction == 0.01
    assert args.run(args) == 2
    err = capsys.readouterr().err
    assert f"{src}: 201 of 201 lines are bad (100.0%), more than --max-bad-fraction" in err and "0.01 allows" in err
    assert f"{src}:1: bad line skipped" in err and "No line is good: there is nothing to keep." in err
    again = build_parser().parse_args([*_preprocess_args(src, tmp_path / "out"), "--max-bad-fraction", "1"])
    assert again.run(again) == 0  # the finished conversion is accepted under a larger limit, not redone
    assert "0 rows written of 201 read, 201 bad" in capsys.readouterr().out


def _preprocess_args(src, out):
    return ["preprocess", "criteo", str(src), "--out", str(out), "--split", "none"]


def test_max_bad_fraction_is_a_share_of_the_lines_read(tmp_path):
    lines = random_lines(99, seed=13)
    one_bad, two_bad = write(tmp_path / "a.tsv", lines + [b"x\n"]), write(tmp_path / "b.tsv", lines[:98] + [b"x\n"] * 2)
    assert preprocess_criteo(one_bad, tmp_path / "a", split="none", progress=False)["bad_rows"] == 1  # 1% is allowed
    with pytest.raises(TooManyBadLines, match=r"2 of 100 lines are bad \(2.0%\).* To keep the 98 good rows anyway"):
        preprocess_criteo(two_bad, tmp_path / "b", split="none", progress=False)
    for value in (-0.1, 1.5, True, "1%"):
        with pytest.raises(ValueError, match="max_bad_fraction .--max-bad-fraction. must be a number in"):
            preprocess_criteo(one_bad, tmp_path / "c", split="none", progress=False, max_bad_fraction=value)


def test_a_finished_run_repeats_its_bad_line_report(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(chunks, "MAX_REPORTED", 3)  # more bad lines than are listed: the total line is printed too
    monkeypatch.setattr("embtables.datasets.criteo.MAX_REPORTED", 3)
    lines, _ = inject(random_lines(600, seed=14), seed=14)
    kw = dict(split="none", progress=False, max_bad_fraction=0.05)
    first = preprocess_criteo(write(tmp_path / "d.tsv", lines), tmp_path / "out", **kw)
    said = capsys.readouterr().err
    assert said.count("bad line skipped") == 3 and f"{len(BAD)} bad lines skipped in total; the first 3" in said
    assert preprocess_criteo(tmp_path / "d.tsv", tmp_path / "out", **kw) == first
    assert capsys.readouterr().err == said


def test_a_resumed_run_reports_the_bad_lines_of_the_chunks_it_keeps(tmp_path, capsys, monkeypatch):
    lines, _ = inject(random_lines(600, seed=15), seed=15)
    src = write(tmp_path / "d.tsv", lines)
    kw = dict(split="none", progress=False, chunk_rows=100, max_bad_fraction=0.05)
    preprocess_criteo(src, tmp_path / "clean", **kw)
    clean = capsys.readouterr().err
    finish = chunks.finish_chunk

    def crash_on_fourth(run, k, marker):
        if k == 3:
            raise KeyboardInterrupt
        finish(run, k, marker)

    monkeypatch.setattr(chunks, "finish_chunk", crash_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        preprocess_criteo(src, tmp_path / "out", **kw)
    monkeypatch.setattr(chunks, "finish_chunk", finish)
    capsys.readouterr()
    preprocess_criteo(src, tmp_path / "out", **kw)
    assert capsys.readouterr().err == clean  # the lines of the kept chunks 0-2 too, in order


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


