"""`Collection.quantize`: every method's physical tables in fp16, int8 and int4 on FBGEMM's inference kernels.

The quantized collection equals the fp32 collection whose tables hold the dequantized rows (so its error is the
rows' error, passed through the method's combine), the rows' error is within the row-wise bound, `memory_bytes()`
is the formula, a checkpoint loads back bit for bit, and misuse is refused with the reason."""

from __future__ import annotations

import pytest
import torch

import embtables as et
from embtables.collection import assemble_quantized
from embtables.stores.quantized_store import row_bytes
from tests.conftest import method_options, random_kjt

METHODS = et.list_methods()
DTYPES = ["fp16", "int8", "int4"]
TABLES = [et.TableConfig("big", 20000, 8, feature_names=("big_a", "big_b")), et.TableConfig("mid", 3000, 8, pooling="mean"),
          et.TableConfig("tiny", 3, 8), et.TableConfig("wide", 5000, 16)]
SEQ_TABLES = [et.TableConfig("item", 20000, 8, feature_names=("hist", "target"), pooling="none")]
CACHE_LINE = 128  # FBGEMM starts each table of a TBE on a cache line


def _trained(method: str, tables=TABLES, backend: str = "torch") -> et.Collection:
    """A collection with weights spread as training leaves them (wider than the init), in eval mode."""
    torch.manual_seed(0)
    budget = 0.1 if et.get_method(method).compresses else None
    options = method_options(method, tables, budget)
    if method == "mixed_dim":
        options["dim_multiple"] = 4  # int4 rows need dims in multiples of 4
    c = et.build_collection(tables, method, budget, backend=backend, **options)
    with torch.no_grad():
        for w in c.store.weights():
            w.normal_(0, 0.3)
    return c.eval()


def _dequantized_copy(c: et.Collection, q: et.Collection) -> et.Collection:
    """`c` with its tables replaced by `q`'s dequantized rows."""
    twin = _trained(c.plan.method, c.tables)
    with torch.no_grad():
        for w, d in zip(twin.store.weights(), q.store.weights()):
            w.copy_(d)
    twin.method.load_state_dict(c.method.state_dict())
    return twin


@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_are_within_the_row_wise_bound(dtype: str) -> None:
    c = _trained("full")
    q = c.quantize(dtype)
    for w, d in zip(c.store.weights(), q.store.weights()):
        if dtype == "fp16":
            bound = w.abs() * 2.0**-11 + 1e-7
        else:
            levels = 2 ** {"int8": 8, "int4": 4}[dtype] - 1
            spread = (w.max(1).values - w.min(1).values)[:, None]  # (rows, 1)
            # half a step of the row's grid, plus fp16's rounding of scale (x levels) and of the bias
            bound = spread / levels / 2 + (spread + w.abs().max(1).values[:, None]) * 2.0**-10
        assert ((w - d).abs() <= bound).all(), (dtype, float((w - d).abs().max()))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", METHODS)
def test_quantized_equals_fp32_on_the_dequantized_rows(method: str, dtype: str) -> None:
    for tables in (TABLES, SEQ_TABLES):
        c = _trained(method, tables)
        q = c.quantize(dtype)
        twin = _dequantized_copy(c, q)
        kjt = random_kjt(tables, batch_size=6, max_len=4, seed=1)
        with torch.no_grad():
            got, want, exact = q(kjt), twin(kjt), c(kjt)
        if tables is SEQ_TABLES:
            got, want, exact = (torch.cat([o[f].values() for f in ("hist", "target")]) for o in (got, want, exact))
        else:
            got, want, exact = got.values(), want.values(), exact.values()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert (got - exact).abs().max() < {"fp16": 1e-2, "int8": 0.2, "int4": 2.0}[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", METHODS)
def test_memory_bytes_is_the_formula(method: str, dtype: str) -> None:
    c = _trained(method)
    q = c.quantize(dtype)
    rows = sum(-(-t.num_embeddings * row_bytes(t.embedding_dim, dtype) // CACHE_LINE) * CACHE_LINE
               for t in q.plan.physical_tables)
    assert q.memory_bytes() == rows + c.method.state_bytes()
    assert row_bytes(16, "fp16") == 32 and row_bytes(16, "int8") == 20 and row_bytes(16, "int4") == 12


def test_full_in_int4_is_a_point_on_the_memory_axis() -> None:
    q = _trained("full").quantize("int4")
    full = et.full_bytes(TABLES)
    # (D/2 + 4) / 4D: 0.25 of the dim-8 tables, 0.1875 of the dim-16 one, plus the cache-line padding
    assert 0.2 < q.memory_bytes() / full < 0.25


@pytest.mark.parametrize("dtype", DTYPES)
def test_checkpoint_of_a_quantized_collection_loads_back(tmp_path, dtype: str) -> None:
    q = _trained("qr").quantize(dtype)
    et.save_collection(q, tmp_path / "q.pt")
    back = et.load_collection(tmp_path / "q.pt")
    assert back.memory_bytes() == q.memory_bytes()
    for a, b in zip(q.store.quantized_rows(), back.store.quantized_rows()):
        assert torch.equal(a, b)
    kjt = random_kjt(TABLES, batch_size=5, seed=3)
    with torch.no_grad():
        assert torch.equal(back(kjt).values(), q(kjt).values())
    with pytest.raises(ValueError, match="trains with nothing: optimizer= does not apply"):
        et.load_collection(tmp_path / "q.pt", optimizer=et.SparseOptimizer("sgd"))
    with pytest.raises(ValueError, match="not into an fp32 one"):
        et.checkpoint.load_collection_state(_trained("qr"), torch.load(tmp_path / "q.pt", weights_only=True), "q.pt")


def test_misuse_is_refused() -> None:
    with pytest.raises(RuntimeError, match=r"call \.eval\(\) first"):
        _trained("hash").train().quantize("int8")
    q = _trained("hash").quantize("int8")
    q.train()
    with pytest.raises(RuntimeError, match="for inference only"):
        q(random_kjt(TABLES, batch_size=2))
    with pytest.raises(ValueError, match="unknown quantized dtype 'int3'"):
        _trained("hash").quantize("int3")
    odd = [et.TableConfig("odd", 100, 6)]
    with pytest.raises(ValueError, match="int4 quantization: table 'odd' has dim 6.*multiples of 4"):
        _trained("full", odd).quantize("int4")
    assert _trained("full", odd).quantize("int8").memory_bytes() == 128 * -(-100 * 10 // 128)


@pytest.mark.parametrize("method", ["full", "qr"])
def test_quantize_draws_no_rows_it_then_overwrites(monkeypatch, method: str) -> None:
    """Building the quantized store neither draws random rows (`reset_parameters`) nor quantizes any: each table is
    quantized once, from the collection's weights, and the store holds exactly those rows."""
    from embtables.stores.quantized_store import QuantizedStore

    c = _trained(method)
    quantized: list[int] = []
    put = QuantizedStore._put

    def spy(store: QuantizedStore, i: int, rows: torch.Tensor) -> None:
        quantized.append(i)
        put(store, i, rows)

    def refuse(*args, **kwargs) -> None:
        raise AssertionError("quantize() drew random rows that it then overwrote")

    monkeypatch.setattr(QuantizedStore, "_put", spy)
    monkeypatch.setattr(QuantizedStore, "reset_parameters", refuse)
    q = c.quantize("int8")
    assert sorted(quantized) == list(range(len(q.plan.physical_tables)))  # each table once, none twice
    for w, rows in zip(c.store.weights(), q.store.quantized_rows()):  # every row is the collection's, quantized
        assert torch.equal(rows, torch.ops.fbgemm.FloatOrHalfToFusedNBitRowwiseQuantizedSBHalf(w.detach(), 8))
    kjt = random_kjt(TABLES, batch_size=6, max_len=4, seed=1)
    with torch.no_grad():
        got, want, exact = q(kjt).values(), _dequantized_copy(c, q)(kjt).values(), c(kjt).values()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (got - exact).abs().max() < 0.2


def test_a_quantized_store_starts_at_zero_until_loaded() -> None:
    """What `init_on_build = False` leaves before the load: FBGEMM's zeroed rows, not a random draw; the other
    FBGEMM-based store still draws its tables at build."""
    c = _trained("full")
    store = assemble_quantized(c.plan, "int8", "cpu").store
    assert all(not r.any() for r in store.quantized_rows())
    fbgemm = et.build_collection(TABLES, "full", backend="fbgemm")
    for t, w in zip(fbgemm.store.tables, fbgemm.store.weights()):
        assert w.std() > 0 and w.min() >= t.init_low and w.max() <= t.init_high
