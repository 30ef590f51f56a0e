"""`embtables sweep --dtypes fp32,int8,int4`: each finished cell's best checkpoint scored quantized after training,
one row per dtype, on the report's bytes axis and in its compression-against-quantization table; resumed sweeps
do not score a dtype twice."""

import pandas as pd
import pytest

import embtables.app.quantized_eval as qe
import embtables.app.sweep as sw
from embtables.app.report import write_report
from embtables.app.trainer import TrainConfig


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from embtables.datasets.synthetic import synth_criteo

    path = tmp_path_factory.mktemp("syn")
    synth_criteo(path, seed=0, rows=4000, scale=1e-4, min_rows=20, part_rows=2000)
    return str(path)


def _config(data, dtypes=("fp32", "int8", "int4")):
    train = TrainConfig(data=data, batch_size=256, max_steps=4, model_options=dict(bottom=(16, 16), top=(16,)))
    return sw.SweepConfig(train=train, methods=("full", "hash"), budgets=(0.3,), seeds=(0,), dtypes=dtypes)


def test_quantized_rows_report_and_resume(data, tmp_path, in_process, monkeypatch):
    df = sw.sweep(_config(data), tmp_path, progress=False)
    ok = df[df["status"] == "ok"].set_index("cell")
    assert set(ok["dtype"]) == {"fp32", "int8", "int4"}
    for cell in ok[ok["dtype"] == "fp32"].index:
        fp32, int8, int4 = (ok.loc[c] for c in (cell, f"{cell}-int8", f"{cell}-int4"))
        # D + 4 and D / 2 + 4 bytes a row (D = 16 here), each of the 26 small tables padded to 128 bytes
        assert int4["memory_bytes"] < int8["memory_bytes"] < fp32["memory_bytes"] / 2
        assert abs(int8["test_auc_best"] - fp32["test_auc_best"]) < 0.01  # int8's rows are close to fp32's
        assert pd.isna(int8["train_samples_per_s"])  # nothing was trained in int8
    full = ok[(ok["method"] == "full") & (ok["dtype"] == "fp32")].iloc[0]
    full4 = ok[(ok["method"] == "full") & (ok["dtype"] == "int4")].iloc[0]
    assert full4["gap_to_full"] == pytest.approx(full4["test_auc_best"] - full["test_auc_best"])
    text = write_report(tmp_path).read_text()
    assert "## Compression against quantization" in text and "| full | 1 | int4 |" in text
    assert "| hash | 0.3 | int8 |" in text and "quantized after training" in text

    def again(*args):
        raise AssertionError("a dtype already scored was scored again")

    monkeypatch.setattr(sw, "quantized_outcome", again)
    assert len(sw.sweep(_config(data), tmp_path, progress=False)) == len(df)


def test_dtypes_are_checked():
    with pytest.raises(ValueError, match="must include fp32"):
        qe.check_dtypes(("int8",))
    with pytest.raises(ValueError, match="unknown quantized dtype 'int2'"):
        qe.check_dtypes(("fp32", "int2"))


def test_the_full_reference_is_the_trained_table_not_its_quantized_score():
    from embtables.app.results import full_reference

    df = pd.DataFrame([
        dict(cell="f", method="full", seed=0, status="ok", dtype="fp32", test_auc_best=0.80),
        dict(cell="f-int4", method="full", seed=0, status="ok", dtype="int4", test_auc_best=0.79),
    ])
    assert full_reference(df, 0)["cell"] == "f"
    assert full_reference(df.drop(columns="dtype").iloc[:1], 0)["cell"] == "f"  # tables from before --dtypes
    assert full_reference(df, 1) is None
