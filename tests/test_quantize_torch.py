"""`Collection.quantize(dtype, backend="torch")`: the quantized rows looked up by PyTorch operations
(`embtables/stores/quantized_torch.py`). For every method and dtype: the same rows bit for bit as FBGEMM's store and
its outputs (the quantized reference) to float rounding; `memory_bytes()` the formula. It exports with
`torch.export`, and the exported program equals the FBGEMM reference at another batch size (every method in int8,
every dtype on full and qr); it compiles; a file of
either store loads on the other; misuse is refused."""

from __future__ import annotations

import pytest
import torch

import embtables as et
from embtables.stores.quantized_store import row_bytes
from embtables.stores.quantized_torch import dequantize
from tests.conftest import random_kjt
from tests.test_quantize import DTYPES, METHODS, SEQ_TABLES, TABLES, _trained


def _pair(method: str, dtype: str, tables=TABLES) -> tuple[et.Collection, et.Collection]:
    c = _trained(method, tables)
    return c.quantize(dtype), c.quantize(dtype, backend="torch")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", METHODS)
def test_the_same_rows_and_outputs_as_fbgemms(method: str, dtype: str) -> None:
    fbgemm, ours = _pair(method, dtype)
    for a, b in zip(fbgemm.store.quantized_rows(), ours.store.quantized_rows(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(fbgemm.store.weights(), ours.store.weights(), strict=True):  # FBGEMM's dequantizer, and ours
        assert torch.equal(a, b)
    widths = sum(t.num_embeddings * row_bytes(t.embedding_dim, dtype) for t in ours.plan.physical_tables)
    assert ours.store.weight_bytes() == widths  # no padding
    assert ours.memory_bytes() == widths + ours.method.state_bytes()
    kjt = random_kjt(TABLES, batch_size=9, seed=4, weighted=False)
    with torch.no_grad():
        torch.testing.assert_close(ours(kjt).values(), fbgemm(kjt).values(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["full", "qr", "hash"])
def test_per_id_rows_equal_fbgemms(method: str) -> None:
    fbgemm, ours = _pair(method, "int4", SEQ_TABLES)
    kjt = random_kjt(SEQ_TABLES, batch_size=6, seed=2)
    with torch.no_grad():
        for f in ("hist", "target"):
            torch.testing.assert_close(ours(kjt)[f].values(), fbgemm(kjt)[f].values(), rtol=1e-6, atol=1e-6)


# every method in int8, every dtype on full and qr (the dequantization differs by dtype, not by method)
@pytest.mark.parametrize("method,dtype", [(m, "int8") for m in METHODS] + [(m, d) for m in ("full", "qr")
                                                                            for d in ("fp16", "int4")])
def test_exported_outputs_equal_the_quantized_reference(method: str, dtype: str) -> None:
    """Exported from a batch of 6 with a dynamic batch and number of ids; checked at a batch of 11 against
    FBGEMM's quantized collection (which itself cannot export: benchmarks/results/compile_export.md)."""
    fbgemm, ours = _pair(method, dtype)
    kjt = random_kjt(TABLES, batch_size=6, seed=1, weighted=False)
    batch, ids = torch.export.Dim("batch", min=2, max=4096), torch.export.Dim("ids", min=2, max=10**6)
    leaves = [{0: ids}, None, {0: len(kjt.keys()) * batch}, None, None, None]
    with torch.no_grad():
        ours(kjt)  # first eagerly, as a server warms up
        program = torch.export.export(ours, (kjt,), dynamic_shapes={"features": leaves}).module()
        other = random_kjt(TABLES, batch_size=11, seed=2, weighted=False)
        torch.testing.assert_close(program(other).values(), fbgemm(other).values(), rtol=1e-5, atol=1e-6)
    assert "fbgemm" not in str(program.graph)  # PyTorch operations only


@pytest.mark.parametrize("method", ["unified"])  # qr compiles too (checked by hand): 13 s more
def test_it_compiles(method: str) -> None:
    torch._dynamo.reset()
    _, ours = _pair(method, "int8")
    compiled = torch.compile(ours, backend="aot_eager", fullgraph=False)
    with torch.no_grad():
        for batch in (6, 9):
            kjt = random_kjt(TABLES, batch_size=batch, seed=batch)
            torch.testing.assert_close(compiled(kjt).values(), ours(kjt).values())


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_file_of_either_store_loads_on_the_other(tmp_path, dtype: str) -> None:
    fbgemm, ours = _pair("qr", dtype)
    kjt = random_kjt(TABLES, batch_size=5, seed=3)
    for saved, name in ((fbgemm, "fbgemm.pt"), (ours, "torch.pt")):
        et.save_collection(saved, tmp_path / name)
        for backend, reference in ((None, fbgemm), ("fbgemm", fbgemm), ("torch", ours)):
            back = et.load_collection(tmp_path / name, backend=backend)
            assert back.memory_bytes() == reference.memory_bytes()
            with torch.no_grad():
                assert torch.equal(back(kjt).values(), reference(kjt).values())
    with pytest.raises(ValueError, match="serves on backend 'fbgemm' .* or 'torch', not 'fused'"):
        et.load_collection(tmp_path / "torch.pt", backend="fused")


def test_dequantize_reads_fbgemms_layout() -> None:
    w = torch.randn(50, 8)
    for dtype, bits in (("int8", 8), ("int4", 4)):
        q = torch.ops.fbgemm.FloatOrHalfToFusedNBitRowwiseQuantizedSBHalf(w, bits)
        assert torch.equal(dequantize(q, 8, dtype), torch.ops.fbgemm.FusedNBitRowwiseQuantizedSBHalfToFloat(q, bits))
    assert torch.equal(dequantize(w.half().view(torch.uint8), 8, "fp16"), w.half().float())


def test_misuse_is_refused() -> None:
    with pytest.raises(RuntimeError, match=r"call \.eval\(\) first"):
        _trained("hash").train().quantize("int8", backend="torch")
    ours = _trained("hash").quantize("int8", backend="torch")
    ours.train()
    with pytest.raises(RuntimeError, match="for inference only"):
        ours(random_kjt(TABLES, batch_size=2, seed=0))
    with pytest.raises(ValueError, match="looked up by backend 'fbgemm' or 'torch', not 'fused'"):
        _trained("hash").quantize("int8", backend="fused")
    odd = [et.TableConfig("odd", 100, 6)]
    with pytest.raises(ValueError, match="table 'odd' has dim 6.* multiples of 4"):
        _trained("full", odd).quantize("int4", backend="torch")
