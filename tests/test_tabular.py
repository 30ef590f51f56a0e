"""`embtables preprocess csv`: a user's own CSV or Parquet table to the data layout. Typing (given and inferred),
values (labels, missing, numbers, hashed categories), bad lines, splits, Parquet input, the command line, and
DLRM training on the result through the unchanged `Trainer`."""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embtables.app.trainer import TrainConfig, Trainer, open_data
from embtables.cli import tabular as cli
from embtables.datasets.layout import MISSING_CAT, load_counts
from embtables.datasets.tabular import preprocess_tabular
from embtables.datasets.tabular_write import TabularFormatError

ROWS = 400
HEADER = ["click", "user", "zip", "price", "age", "ts"]


def rows(n: int = ROWS, seed: int = 0) -> list[list[str]]:
    """Rows with mixed string and integer users, integer zip codes, signed prices and ages with missing values."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = int(rng.integers(0, 40))
        user = str(k) if k % 3 == 0 else ("a,b" if k == 1 else f"u{k}")  # ints, strings, a quoted comma
        price = "" if i % 17 == 0 else ("NA" if i % 23 == 0 else f"{rng.normal(0, 50):.3f}")
        age = "" if i % 11 == 0 else str(int(rng.integers(18, 80)))
        click = int(rng.random() < (0.8 if k < 20 else 0.2))
        label = ("true" if click else "false") if i % 13 == 0 else str(click)
        out.append([label, user, str(10000 + k % 7), price, age, f"2024-01-{1 + i % 28:02d}"])
    return out


def write_csv(path: Path, body: list[list[str]], extra: str = "") -> Path:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([HEADER, *body])
    path.write_text(buf.getvalue() + extra)
    return path


def blake(text: str) -> int:
    """The documented id of a categorical value, computed independently of the library."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") & ((1 << 63) - 1)


def table(out: Path, split: str) -> dict[str, list]:
    """A split's columns, NaN as None so that tables compare equal."""
    t = pq.read_table(sorted(str(p) for p in (out / split).glob("part-*.parquet"))).to_pydict()
    return {k: [None if isinstance(v, float) and math.isnan(v) else v for v in col] for k, col in t.items()}


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="embtables preprocess")
    cli.register(parser.add_subparsers(dest="dataset", required=True))
    args = parser.parse_args(["csv", *argv])
    return args.run(args)


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> tuple[Path, Path, dict]:
    """A CSV with three bad lines (a short row, a label that is no label, an empty line) preprocessed as is."""
    tmp = tmp_path_factory.mktemp("tabular")
    body = rows()
    body.insert(9, ["1", "u3"])  # line 11: two fields
    body.insert(19, ["maybe", "u4", "10001", "1.0", "30", "x"])  # line 21
    src = write_csv(tmp / "log.csv", body, extra="\n0,u5,10002,3,40,y\n")  # an empty line 404, then line 405
    out = tmp / "out"
    summary = preprocess_tabular(src, out, "click", ignore=["ts"], split="none", max_bad_fraction=0.05,
                                 progress=False)
    return src, out, summary


def test_inferred_typing_is_saved_and_described(made):
    src, out, s = made
    cols = s["columns"]
    assert s["kind"] == "criteo" and s["label"] == "click"
    assert s["categorical"] == ["user"] and s["dense"] == ["zip", "price", "age"] and s["ignored"] == ["ts"]
    assert cols["user"]["how"] == "inferred" and f"at {src}:" in cols["user"]["because"]
    assert cols["zip"]["integers"] and "price" in cols and not cols["price"].get("integers")
    assert cols["ts"] == {"type": "ignored", "how": "--ignore"}
    assert cols["price"]["missing"] == sum(1 for i in range(ROWS) if i % 17 == 0 or i % 23 == 0)
    assert json.loads((out / "summary.json").read_text()) == s


def test_bad_lines_are_counted_and_named(made):
    src, _, s = made
    assert s["rows_read"] == ROWS + 4 and s["bad_rows"] == 3 and s["rows_written"] == ROWS + 1
    lines = {b["line"]: b for b in s["first_bad_lines"]}
    assert sorted(lines) == [11, 21, 404]
    assert lines[11]["reason"] == "expected 6 fields (the header's), found 2" and lines[11]["content"] == "1,u3"
    assert lines[21]["column"] == "click" and "'maybe', not a label" in lines[21]["reason"]
    assert lines[404]["reason"] == "the label is missing" and all(b["file"] == str(src) for b in lines.values())


def test_values_labels_missing_and_ids(made):
    _, out, s = made
    t = table(out, "all")
    body = rows()
    assert t["label"] == [1 if r[0] in ("1", "true") else 0 for r in body] + [0]
    assert t["user"] == [blake(r[1]) for r in body] + [blake("u5")]  # "3" and "u3" alike: hashed text
    assert t["user"][body.index(next(r for r in body if r[1] == "a,b"))] == blake("a,b")
    assert t["price"] == [None if r[3] in ("", "NA") else float(r[3]) for r in body] + [3.0]
    counts = load_counts(out / "counts.npz")
    assert set(counts) == {"user"} and counts["user"][1].sum() == ROWS + 1
    assert s["columns"]["user"]["distinct"] == counts["user"][0].size


def test_given_types_override_inference_and_blame_bad_values(tmp_path):
    body = rows(100)
    body[5][3] = "cheap"  # line 7: text in a column given --dense
    body[8][2] = ""  # a missing zip, given --categorical
    src = write_csv(tmp_path / "x.csv", body)
    s = preprocess_tabular(src, tmp_path / "o", "click", categorical=["zip"], dense=["price"], ignore=["ts"],
                           split="none", max_bad_fraction=0.05, progress=False)
    assert s["categorical"] == ["user", "zip"] and s["columns"]["zip"]["how"] == "--categorical"
    assert s["first_bad_lines"][0]["line"] == 7 and s["first_bad_lines"][0]["column"] == "price"
    assert "'cheap', not a finite number (the column is given --dense)" in s["first_bad_lines"][0]["reason"]
    zips = table(tmp_path / "o", "all")["zip"]
    assert zips[7] == MISSING_CAT and zips[0] == blake(body[0][2])
    with pytest.raises(TabularFormatError, match=r"x\.csv:7: column 'price' \(field 4\) is 'cheap'"):
        preprocess_tabular(src, tmp_path / "strict", "click", dense=["price"], strict=True, progress=False)
    assert not (tmp_path / "strict").exists()  # nothing half-written


def test_too_many_bad_lines_fail_and_leave_nothing(tmp_path):
    body = rows(100)
    for r in body[:3]:
        r[0] = "2"
    src = write_csv(tmp_path / "x.csv", body)
    with pytest.raises(TabularFormatError, match=r"3 bad rows of 100 \(3\.00%\) exceed --max-bad-fraction 0\.01; "
                                                 r"the first: .*x\.csv:2: column 'click'"):
        preprocess_tabular(src, tmp_path / "o", "click", progress=False)
    assert not (tmp_path / "o").exists() and [p.name for p in tmp_path.iterdir()] == ["x.csv"]
    assert preprocess_tabular(src, tmp_path / "o", "click", max_bad_fraction=0.03, progress=False)["bad_rows"] == 3


def test_splits_random_ordered_none_and_refusals(tmp_path):
    src = write_csv(tmp_path / "x.csv", rows(1000))
    r1 = preprocess_tabular(src, tmp_path / "r1", "click", split="random", seed=3, progress=False)
    r2 = preprocess_tabular(src, tmp_path / "r2", "click", split="random", seed=3, part_rows=150, progress=False)
    assert r1["splits"]["train"]["rows"] == r2["splits"]["train"]["rows"] and r2["splits"]["train"]["parts"] > 1
    assert table(tmp_path / "r1", "val") == table(tmp_path / "r2", "val")  # the split does not depend on parts
    assert 700 < r1["splits"]["train"]["rows"] < 900 and sum(v["rows"] for v in r1["splits"].values()) == 1000
    o = preprocess_tabular(src, tmp_path / "o", "click", split="ordered", fractions=(0.5, 0.25, 0.25), progress=False)
    assert [o["splits"][k]["rows"] for k in ("train", "val", "test")] == [500, 250, 250]
    assert table(tmp_path / "o", "test")["user"][-1] == blake(rows(1000)[-1][1])  # file order kept
    with pytest.raises(ValueError, match="'kaggle-days' is the calendar of Criteo's 7 days"):
        preprocess_tabular(src, tmp_path / "k", "click", split="kaggle-days", progress=False)
    with pytest.raises(ValueError, match="seed applies to split='random' only"):
        preprocess_tabular(src, tmp_path / "k", "click", split="ordered", seed=1, progress=False)
    with pytest.raises(FileExistsError, match="pass force=True"):
        preprocess_tabular(src, tmp_path / "o", "click", progress=False)
    assert preprocess_tabular(src, tmp_path / "o", "click", split="none", force=True, progress=False)["split"] == "none"


def test_parquet_and_gzip_inputs_give_the_same_data(tmp_path):
    body = rows(200)
    body[0][1] = ""  # a missing user: a null in the Parquet file
    src = write_csv(tmp_path / "x.csv", body)
    gz = tmp_path / "x.csv.gz"
    gz.write_bytes(gzip.compress(src.read_bytes()))
    cols = list(zip(*body))
    pq.write_table(pa.table({
        "click": pa.array([r in ("1", "true") for r in cols[0]]),
        "user": pa.array([u or None for u in cols[1]]),
        "zip": pa.array([int(z) for z in cols[2]]),  # ints: hashed as their text, like the CSV's
        "price": pa.array([None if p in ("", "NA") else float(p) for p in cols[3]]),
        "age": pa.array([None if a == "" else int(a) for a in cols[4]]),
        "ts": pa.array(cols[5]),
    }), tmp_path / "x.parquet")
    outs = {}
    for name in ("x.csv", "x.csv.gz", "x.parquet"):
        s = preprocess_tabular(tmp_path / name, tmp_path / f"o-{name}", "click", categorical=["zip"], ignore=["ts"],
                               progress=False)
        outs[name] = (s["categorical"], s["dense"], s["splits"], table(tmp_path / f"o-{name}", "train"))
    assert outs["x.csv"] == outs["x.csv.gz"] == outs["x.parquet"]


def test_header_and_column_errors_name_file_line_and_column(tmp_path):
    src = tmp_path / "x.csv"
    src.write_text("click,user,user\n1,a,b\n")
    with pytest.raises(ValueError, match=r"x\.csv:1: columns 2 and 3 of the header are both named 'user'"):
        preprocess_tabular(src, tmp_path / "o", "click", progress=False)
    src.write_text("click,label,user\n1,2,a\n")
    with pytest.raises(ValueError, match="column 'label' would be a feature"):
        preprocess_tabular(src, tmp_path / "o", "click", progress=False)
    with pytest.raises(ValueError, match=r"--dense: .*x\.csv has no column 'price'; its columns are click, label"):
        preprocess_tabular(src, tmp_path / "o", "click", dense=["price"], progress=False)
    with pytest.raises(ValueError, match="named by both --categorical and --dense"):
        preprocess_tabular(src, tmp_path / "o", "click", categorical=["user"], dense=["user"], progress=False)
    with pytest.raises(ValueError, match="no categorical column"):
        preprocess_tabular(src, tmp_path / "o", "click", ignore=["user", "label"], progress=False)


def test_command_line_prints_the_typing_and_refuses_sequences(tmp_path, capsys):
    src = write_csv(tmp_path / "x.csv", rows(200))
    out = tmp_path / "o"
    assert run_cli([str(src), "--label", "click", "--categorical", "zip", "--ignore", "ts", "--out", str(out),
                    "--split", "ordered", "--fractions", "0.6,0.2,0.2"]) == 0
    printed = capsys.readouterr().out
    assert "zip     categorical  --categorical" in printed and "age     dense        inferred" in printed
    assert "reproduce with: --label click --categorical user,zip --dense price,age --ignore ts" in printed
    assert f"{out}: 200 rows written of 200 read, 0 bad; train 120 rows" in printed
    assert run_cli([str(src), "--label", "click", "--out", str(tmp_path / "s"), "--sequence", "user,ts"]) == 2
    assert "embtables prepare-sequences amazon" in capsys.readouterr().err
    assert run_cli([str(src), "--label", "nope", "--out", str(tmp_path / "s")]) == 2
    assert "--label: " in capsys.readouterr().err and not (tmp_path / "s").exists()


def test_dlrm_trains_on_the_folder(made, tmp_path):
    _, _, _ = made
    src = write_csv(tmp_path / "x.csv", rows(ROWS))
    out = tmp_path / "o"
    preprocess_tabular(src, out, "click", ignore=["ts"], progress=False)
    data = open_data(out)
    assert data.dense_dim == 3 and [t.name for t in data.tables(8)] == ["user"]
    batch = next(iter(data.batches("train", 32)))
    assert batch.dense.shape == (32, 3) and batch.sparse.keys() == ["user"] and np.isfinite(batch.dense).all()
    config = TrainConfig(data=str(out), batch_size=32, max_steps=8, embedding_dim=8, method="hash", budget=0.5,
                         model_options=dict(bottom=(16, 8), top=(16,)))
    metrics = Trainer(config, tmp_path / "run", progress=False).fit()
    assert metrics["steps"] == 8 and 0 <= metrics["val"]["best"]["auc"] <= 1


def test_fields_are_numbered_in_the_input_and_tsv_is_tab_separated(tmp_path):
    src = tmp_path / "x.tsv"
    src.write_text("ts\tuser\tprice\tclick\n1\ta\t2.5\t1\n2\tb\tcheap\t0\n3\tc\t\tno\n")
    s = preprocess_tabular(src, tmp_path / "o", "click", dense=["price"], ignore=["ts"], split="none",
                           max_bad_fraction=0.5, progress=False)
    assert s["first_bad_lines"] == [{"file": str(src), "line": 3, "column": "price", "content": "2\tb\tcheap\t0",
                                     "reason": "column 'price' (field 3) is 'cheap', not a finite number (the column "
                                               "is given --dense)"}]
    assert table(tmp_path / "o", "all") == {"label": [1, 0], "user": [blake("a"), blake("c")], "price": [2.5, None]}
    src.write_text("ts\tuser\tprice\tclick\n")
    with pytest.raises(ValueError, match=r"x\.tsv: no good row to write \(0 read\)"):
        preprocess_tabular(src, tmp_path / "e", "click", categorical=["user"], progress=False)
