"""Serving from the host: a batch given on the CPU to a collection on an accelerator is read and range-checked on
the CPU, then uploaded, so that nothing after the upload reads a value back (the host never waits for the device).

The accelerator is stood in for by the meta device: a meta tensor has no values, so any read of one (`.item()`,
`.tolist()`, a data-dependent size such as `nonzero`) raises. Every method's inference path running to the end on
meta tables is the proof that it reads nothing from the device; the same batch given on the device raises at its
first read, which shows the stand-in would catch one."""

from __future__ import annotations

import pytest
import torch

import embtables as et
from tests.conftest import method_options, random_kjt

METHODS = et.list_methods()
POOLED = [et.TableConfig("a", 300, 8), et.TableConfig("b", 40, 8, pooling="mean"), et.TableConfig("c", 1000, 16)]
PER_ID = [et.TableConfig("s", 300, 8, feature_names=("h", "t"), pooling="none")]


def _collection(method: str, tables: list[et.TableConfig], device: str) -> et.Collection:
    budget = None if method == "full" else 0.3
    torch.manual_seed(0)
    return et.build_collection(tables, method, budget, backend="torch", device=device,
                               **method_options(method, tables, budget)).eval()


@pytest.mark.parametrize("tables", [POOLED, PER_ID], ids=["pooled", "per_id"])
@pytest.mark.parametrize("method", METHODS)
def test_the_inference_path_reads_nothing_from_the_device(method: str, tables: list[et.TableConfig]) -> None:
    on_device, on_cpu = _collection(method, tables, "meta"), _collection(method, tables, "cpu")
    kjt = random_kjt(tables, batch_size=7, seed=1)
    with torch.no_grad():
        got, want = on_device(kjt), on_cpu(kjt)
    if isinstance(want, dict):  # per-id rows
        assert {f: v.values().shape for f, v in got.items()} == {f: v.values().shape for f, v in want.items()}
        assert all(v.values().device.type == "meta" for v in got.values())
    else:
        assert got.values().shape == want.values().shape and got.values().device.type == "meta"


def test_the_stand_in_catches_a_read() -> None:
    """The same batch already on the (meta) device: reading its lengths raises, as it would wait on CUDA."""
    c = _collection("hash", POOLED, "meta")
    kjt = random_kjt(POOLED, batch_size=7, seed=1).to(torch.device("meta"))
    with torch.no_grad(), pytest.raises((RuntimeError, NotImplementedError)):
        c(kjt)


def test_a_bad_id_is_refused_on_the_host_before_the_upload() -> None:
    c = _collection("full", POOLED, "meta")
    kjt = random_kjt(POOLED, batch_size=3, seed=1)
    values = kjt.values().clone()
    values[0] = 300  # one past table a's end
    bad = type(kjt)(kjt.keys(), values, lengths=kjt.lengths())
    with torch.no_grad(), pytest.raises(ValueError, match=r"id 300 of feature 'a' is outside \[0, 300\) of table 'a'"):
        c(bad)
