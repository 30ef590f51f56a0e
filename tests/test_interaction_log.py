"""`prepare-sequences log`: a CSV/TSV/Parquet interactions log -> DIN samples (datasets/interaction_log.py)."""

from __future__ import annotations

import gzip
import hashlib
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from embtables.cli import main
from embtables.datasets import interaction_log, layout
from embtables.datasets.din_samples import din_samples, write_sequences
from embtables.datasets.interaction_log import TabularFormatError, prepare_log
from embtables.datasets.sequences import SequenceData, prepare_amazon, read_interactions
from embtables.datasets.truth import check_out
from tests.conftest import shared_file

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("train/part-0.parquet", "val/part-0.parquet", "test/part-0.parquet", "counts.npz")

# three users, interleaved, their rows out of time order; every user misses some of the 7 items
LOG = [  # user, item, time
    (7, 13, 50), (3, 10, 9), (7, 11, 20), (3, 12, 1), (9, 16, 5), (3, 11, 4), (7, 10, 10), (3, 14, 30),
    (9, 10, 6), (7, 15, 40), (3, 10, 20), (7, 12, 30),
]


def digest(folder: Path, names=PARTS) -> dict[str, str]:
    return {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in names}


def write_csv(path: Path, header: str, rows, sep: str = ",") -> Path:
    text = sep.join(header.split(",")) + "\n" + "".join(sep.join(map(str, r)) + "\n" for r in rows)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def positives(folder: Path, split: str) -> list[tuple]:
    t = pq.read_table(folder / split / "part-0.parquet").to_pylist()
    return [(r["user"], r["position"], r["hist"], r["target"]) for r in t if r["label"] == 1]


def test_shuffled_log_equals_the_presorted_amazon_path(tmp_path):
    log = write_csv(tmp_path / "log.csv", "user,item,ts", LOG)
    order = sorted(range(len(LOG)), key=lambda i: ([7, 3, 9].index(LOG[i][0]), LOG[i][2]))  # first-row user order
    tsv = tmp_path / "sorted.tsv"
    tsv.write_text("".join(f"{LOG[i][0]}\t{LOG[i][1]}\n" for i in order))
    a = prepare_amazon(tsv, tmp_path / "amazon", max_history=2, seed=4)
    s = prepare_log(log, tmp_path / "log", user="user", item="item", time="ts", max_history=2, seed=4, progress=False)
    assert digest(tmp_path / "log") == digest(tmp_path / "amazon")
    assert s["rows_written"] == a["rows_written"] == 2 * (12 - 3) and s["tied_rows"] == 0
    # user 3 in time order: 12, 11, 10, 10, 14 (times 1, 4, 9, 20, 30)
    assert [p for p in positives(tmp_path / "log", "train") if p[0] == 3] == [(3, 1, [12], 11), (3, 2, [12, 11], 10)]
    assert [p for p in positives(tmp_path / "log", "val") if p[0] == 3] == [(3, 3, [11, 10], 10)]
    assert positives(tmp_path / "log", "test") == [(7, 4, [12, 15], 13), (3, 4, [10, 10], 14), (9, 1, [16], 10)]
    assert (s["source"], s["columns"]["time"], s["time_kind"], s["rows_read"], s["rows_used"]) == \
        ("log", "ts", "numbers", 12, 12)


def test_equal_times_keep_file_order(tmp_path):
    rows = [(1, 5, 1), (1, 6, 2), (2, 5, 1), (1, 7, 3), (1, 8, 3), (2, 6, 2), (2, 8, 2), (2, 7, 2), (3, 9, 1)]
    s = prepare_log(write_csv(tmp_path / "a.csv", "u,i,t", rows), tmp_path / "a", "u", "i", "t", progress=False)
    # user 1: items 7 and 8 share t=3, 8 is the later line -> the test target; user 2: 6, 8, 7 share t=2 -> 7
    assert [(u, target) for u, _, _, target in positives(tmp_path / "a", "test")] == [(1, 8), (2, 7)]
    assert s["tied_rows"] == 5 and s["tie_rule"] == interaction_log.TIE_RULE
    swapped = rows[:3] + [rows[4], rows[3]] + rows[5:]
    prepare_log(write_csv(tmp_path / "b.csv", "u,i,t", swapped), tmp_path / "b", "u", "i", "t", progress=False)
    assert [(u, target) for u, _, _, target in positives(tmp_path / "b", "test")] == [(1, 7), (2, 7)]
    s = prepare_log(tmp_path / "a.csv", tmp_path / "c", "u", "i", progress=False)  # no time: file order
    assert s["tied_rows"] == 0 and s["columns"]["time"] is None


def test_tsv_csv_gz_and_parquet_give_the_same_parts(tmp_path):
    when = pd.Timestamp("2021-03-01 12:00:00")
    df = pd.DataFrame({"user": [f"A{u}X" for u, _, _ in LOG], "item": [i for _, i, _ in LOG],
                       "when": [when + pd.Timedelta(seconds=t) for *_, t in LOG]})
    text = [(u, i, w.strftime("%Y-%m-%dT%H:%M:%S")) for u, i, w in df.itertuples(index=False)]
    files = [write_csv(tmp_path / "x.csv", "user,item,when", text),
             write_csv(tmp_path / "x.tsv", "user,item,when", text, sep="\t"),
             write_csv(tmp_path / "x.txt", "user,item,when", text, sep="\t"),
             write_csv(tmp_path / "x.csv.gz", "user,item,when", text)]
    df.to_parquet(tmp_path / "x.parquet")  # a timestamp column, integer items
    files.append(tmp_path / "x.parquet")
    out = []
    for k, f in enumerate(files):
        s = prepare_log(f, tmp_path / f"o{k}", "user", "item", "when", seed=1, progress=False)
        assert s["time_kind"] == "ISO 8601 dates" and s["rows_used"] == 12
        out.append(digest(tmp_path / f"o{k}"))
    assert all(d == out[0] for d in out[1:])
    assert [s["format"] for s in [layout.read_json(tmp_path / f"o{k}" / "summary.json") for k in (0, 2, 4)]] == \
        ["csv", "txt", "parquet"]
    with pytest.raises(ValueError, match="cannot tell the format"):
        prepare_log(write_csv(tmp_path / "x.json", "u,i", [(1, 2)]), tmp_path / "j", "u", "i")
    (tmp_path / "fake.parquet").write_text("u,i\n1,2\n")
    with pytest.raises(ValueError, match="named .parquet but is not Parquet"):
        prepare_log(tmp_path / "fake.parquet", tmp_path / "j", "u", "i")


def test_string_ids_map_by_rank_of_sorted_text(tmp_path):
    rows = [("U2", "B00X4WHP5E"), ("U10", "0439023351"), ("U2", "B000035Y4P"), ("U10", "B00X4WHP5E"),
            ("U2", "0439023351"), ("U10", "B000035Y4P"), ("U3", "B000035Y4P"), ("U3", "B0799")]
    s = prepare_log(write_csv(tmp_path / "a.csv", "u,i", rows), tmp_path / "a", "u", "i", progress=False)
    assert s["ids"] == {"user": interaction_log.RANKED_IDS, "item": interaction_log.RANKED_IDS}
    # users by bytes: U10 -> 1, U2 -> 2, U3 -> 3; items: 0439023351 -> 1, B000035Y4P -> 2, B00X4WHP5E -> 3, B0799 -> 4
    assert [(u, h, t) for u, _, h, t in positives(tmp_path / "a", "test")] == [(2, [3, 2], 1), (1, [1, 3], 2),
                                                                                (3, [2], 4)]
    # the same distinct values in another row order: the same ids
    prepare_log(write_csv(tmp_path / "b.csv", "u,i", rows[::-1]), tmp_path / "b", "u", "i", progress=False)
    assert [(u, h, t) for u, _, h, t in positives(tmp_path / "b", "test")] == [(3, [4], 2), (1, [2, 3], 1),
                                                                                (2, [1, 2], 3)]


def test_one_side_feature_reaches_hist_cat_and_din_trains_on_it(tmp_path):
    cat = {10: "action", 11: "rpg", 12: "rpg", 13: "puzzle", 14: "action", 15: "", 16: "sport"}
    rows = [(u, i, t, cat[i]) for u, i, t in LOG]
    rows[0] = (7, 13, 50, "rpg")  # item 13's first row says rpg, a later one would say puzzle
    rows.append((9, 13, 7, "puzzle"))
    s = prepare_log(write_csv(tmp_path / "a.csv", "u,i,t,genre", rows), tmp_path / "a", "u", "i", "t",
                    features=["genre"], progress=False)
    assert s["feature_conflicts"] == {"genre": 1} and s["categories"] == 4 and s["features"][2:4] == ["hist_cat",
                                                                                                       "target_cat"]
    # action 1, puzzle 2, rpg 3, sport 4: item 13 keeps rpg (its first row), item 15 has no value (-1)
    want = {10: 1, 11: 3, 12: 3, 13: 3, 14: 1, 15: -1, 16: 4}
    t = pq.read_table(tmp_path / "a" / "train" / "part-0.parquet").to_pylist()
    for r in t:
        assert r["hist_cat"] == [want[i] for i in r["hist"]] and r["target_cat"] == want[r["target"]]
    data = SequenceData(tmp_path / "a")
    batch = next(data.batches("train", 4))
    assert batch.sparse.keys() == ["hist", "target", "hist_cat", "target_cat", "user"]
    from embtables.app.train import TrainConfig, train

    config = TrainConfig(model="din", data=str(tmp_path / "a"), backend="torch", batch_size=4, max_steps=1,
                         min_count=1, embedding_dim=4)
    assert "test" in train(config, tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="one item side feature.*got 2: genre, t"):
        prepare_log(tmp_path / "a.csv", tmp_path / "b", "u", "i", features="genre,t")


def test_bad_rows_counted_and_errors_name_file_and_line(tmp_path, capsys):
    rows = [(1, 10, 1), (1, 11, 2), ("", 12, 3), (1, 12, "soon"), (2, 10, 1), (2, 11, "2.5"), (2, 12, ""),
            (3, 14, 1), (3, 15, 2)]
    f = write_csv(tmp_path / "b.csv", "u,i,t", rows)
    with open(f, "a") as out:
        out.write("2,13\n")  # the wrong field count: line 11 (the header is line 1)
    s = prepare_log(f, tmp_path / "a", "u", "i", "t", max_bad_fraction=0.5, progress=False)
    assert (s["rows_read"], s["rows_used"], s["bad_rows"]) == (10, 6, 4)
    assert [(b["line"], b["column"]) for b in s["first_bad_lines"]] == [(4, "u"), (5, "t"), (8, "t"), (11, None)]
    assert f"{f}:5: bad line skipped: column 't' is 'soon', not a number" in capsys.readouterr().err
    where = re.escape(str(f))
    with pytest.raises(TabularFormatError, match=f"{where}:4: column 'u' is missing"):
        prepare_log(f, tmp_path / "c", "u", "i", "t", strict=True, progress=False)
    with pytest.raises(TabularFormatError, match=f"4 bad rows of 10 .*the first: {where}:4:"):
        prepare_log(f, tmp_path / "c", "u", "i", "t", progress=False)
    assert not (tmp_path / "c").exists()
    with pytest.raises(ValueError, match=f"--time: {where} has no column 'time'; its columns are u, i, t"):
        prepare_log(f, tmp_path / "c", "u", "i", "time")
    with pytest.raises(ValueError, match="named by both --user and --item"):
        prepare_log(f, tmp_path / "c", "u", "u")


def old_prepare_amazon(input: Path, out: Path, max_history: int, seed: int) -> None:
    """`prepare_amazon` as it was before it became a preset of the log path (the reference bytes)."""
    users, items = read_interactions(input)
    check_out(out, False)
    samples = din_samples(users, items, max_history, np.random.default_rng(np.random.SeedSequence([seed])),
                          source=str(input))
    write_sequences(out, samples, users, items, np.unique(items), None,
                    {"source": "interactions", "input": str(input), "seed": seed, "rows_read": int(users.size),
                     "max_history": max_history})


@pytest.mark.parametrize("which", ["generated", "shared"])
def test_amazon_preset_output_is_unchanged(tmp_path, which):
    if which == "shared":
        path = shared_file("amazon_video_games_interactions.tsv")
    else:
        rng = np.random.default_rng(0)
        lengths = rng.integers(1, 12, 60)
        path = tmp_path / "gen.tsv"
        path.write_text("".join(f"{u + 100}\t{i}\n" for u, n in enumerate(lengths) for i in rng.integers(1, 90, n)))
    prepare_amazon(path, tmp_path / "new", max_history=5, seed=2)
    old_prepare_amazon(path, tmp_path / "old", max_history=5, seed=2)
    names = (*PARTS, "summary.json")
    assert digest(tmp_path / "new", names) == digest(tmp_path / "old", names)


def test_cli_prepare_sequences_log(tmp_path, monkeypatch, capsys):
    f = write_csv(tmp_path / "ratings.csv", "user,item,rating,timestamp", [(u, i, 4, t) for u, i, t in LOG])
    out = tmp_path / "data"
    run = subprocess.run([sys.executable, "-m", "embtables.cli", "prepare-sequences", "log", str(f), "--user", "user",
                          "--item", "item", "--time", "timestamp", "--out", str(out), "--max-history", "3"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "12 rows read (0 bad, 0 tied (kept in file order)): 12 interactions of 3 users and 7 items" in run.stdout
    s = layout.read_json(out / "summary.json")
    assert (s["source"], s["input"], s["max_history"], s["bad_rows"]) == ("log", str(f), 3, 0)
    assert SequenceData(out).rows("test") == 6
    seen = []
    monkeypatch.setattr(interaction_log, "progress_bar", lambda *a, **k: seen.append(a[2]) or
                        __import__("tqdm").tqdm(disable=True))
    args = ["prepare-sequences", "log", str(f), "--user", "user", "--item", "item", "--out", str(tmp_path / "q")]
    assert main(args + ["--quiet"]) == 0 and main(args + ["--force"]) == 0 and seen == [False, True]
    assert main(args + ["--features", "rating,timestamp", "--force"]) == 2
    assert "carries one item side feature" in capsys.readouterr().err
    assert main(["prepare-sequences", "log", str(f), "--user", "uid", "--item", "item", "--out", str(out)]) == 2
    assert "has no column 'uid'; its columns are user, item, rating, timestamp" in capsys.readouterr().err
