"""torch.compile and torch.export of the inference path (eval mode, `torch.no_grad()`) of every registered method on
the `torch` and `fused` stores and int8-quantized (`Collection.quantize`), and the fake kernels of the C++ ops
(`embtables/kernels/fake.py`) against the real ones (`torch.library.opcheck`).

The fake kernels need the C++ kernels registered for the CPU dispatch key (csrc/cpu_kernels.cpp's
TORCH_LIBRARY_IMPL; a catch-all kernel would be run on FakeTensors instead), the `fused_backward` schema to declare
`spare` mutable (opcheck's schema check) and `SymInt batch_size` (a dynamic batch in export).

torch.compile (backend aot_eager, fullgraph=False; inductor for qr on the fused store) gives eager's outputs for every
method and store. The graphs break where the forward reads the host: `_to_host`'s `.tolist()`, `outside`'s bool,
qr's `digits_remap` (a data-dependent output size). The quantized store runs its FBGEMM modules eagerly between graphs
(`torch.compiler.disable`): dynamo cannot trace FBGEMM's forward.

What exports and what cannot (each asserted in tests/test_export.py with its error):

  - `Collection.forward` (a KeyedJaggedTensor), with a dynamic batch size and number of ids, on the torch and fused
    stores, for every method: the batch's host values are unbacked symbols, `bags_from_kjt`'s checks and the range
    check (`Bags.outside`) asserts of the program. Not yet: hash on a KJT whose keys are not the features in order,
    and unpooled tables on the fused store (a Python branch on a symbol in hashing.py, stores/flat.py).
  - `Collection.lookup` on bags whose host facts the caller gives (one id per bag, ids (F, B)), likewise; qr's
    `digits_remap` has a data-dependent output size, which export keeps as an unbacked size.
  - The quantized store cannot: FBGEMM's `IntNBitTableBatchedEmbeddingBagsCodegen` holds TorchScript objects
    (`fbgemm::AtomicCounter`, `fbgemm::TensorQueue`) that FBGEMM registers no fake class for, and its forward calls
    their methods (`lxu_cache_locations_list.pop()`).
  - DLRM's head (`DLRMHead`, the model after the lookups) exports.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch import Tensor
from torch._dynamo.testing import CompileCounterWithBackend
from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode
from torch.fx.experimental.symbolic_shapes import ShapeEnv
from torchrec import KeyedJaggedTensor

import embtables as et
from embtables.kernels import cpu, fake
from tests.conftest import method_options, random_kjt

METHODS = et.list_methods()
STORES = ("torch", "fused", "quantized")
TABLES = [
    et.TableConfig("big", 20000, 8, feature_names=("big_a", "big_b")),
    et.TableConfig("mid", 3000, 8, pooling="mean"),
    et.TableConfig("tiny", 3, 8),
    et.TableConfig("wide", 5000, 16),
]

pytestmark = pytest.mark.skipif(not cpu.available(), reason="the C++ CPU kernels cannot be built here")


SUM_TABLES = [t for t in TABLES if t.pooling == "sum"]  # per-id weights need sum pooling


def collection(method: str, store: str, tables: list[et.TableConfig] = TABLES) -> et.Collection:
    """`method` at budget 0.1 (1.0 when it does not compress) on `store`, in eval mode; "quantized" is the torch
    store's collection quantized to int8."""
    torch.manual_seed(0)
    budget = 0.1 if et.get_method(method).compresses else 1.0
    options = method_options(method, tables, budget)
    if method == "mixed_dim":
        options["dim_multiple"] = 4  # one plan on every store
    c = et.build_collection(tables, method, budget, backend="fused" if store == "fused" else "torch", **options).eval()
    return c.quantize("int8") if store == "quantized" else c


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Every test compiles from scratch: graphs cached for another collection's code would count against the
    recompile limit, past which dynamo runs the code eagerly (a warning, no error)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture
def fakes():
    """For the tests that trace the C++ ops: fail with the reason when their fake kernels are not registered."""
    if fake.status() != "registered":
        pytest.fail(f"the C++ ops' fake kernels are {fake.status()}")


def test_every_op_has_its_fake_kernel():
    assert fake.status() == "registered", fake.status()
    for op in fake.OPS:
        name = f"embtables::{op}"
        assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "CPU"), f"{name}: no CPU kernel"
        assert not torch._C._dispatch_has_kernel_for_dispatch_key(name, "CompositeImplicitAutograd"), name
        assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "Meta"), f"{name}: no fake kernel"


# ---- torch.compile ----


def test_the_quantized_store_keeps_fbgemm_out_of_the_graph():
    """Its FBGEMM modules run eagerly between graphs: dynamo cannot trace their forward, which calls a TorchScript
    object (`lxu_cache_locations_list.pop()`, a `fbgemm::TensorQueue`) that FBGEMM registers no fake class for."""
    c = collection("hash", "quantized")
    for tbe in (c.store.pooled_tbe, c.store.rows_tbe):
        assert tbe is None or hasattr(tbe.forward, "__wrapped__") or "disable" in repr(tbe.forward)


@pytest.mark.usefixtures("fakes")
@pytest.mark.parametrize("store", STORES)
@pytest.mark.parametrize("method", METHODS)
def test_compiled_collection_equals_eager(method: str, store: str):
    c = collection(method, store)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(c, backend=counter, fullgraph=False)
    with torch.no_grad():
        for batch, seed in ((6, 1), (9, 2)):  # a second batch size: recompiled with dynamic sizes
            kjt = random_kjt(TABLES, batch_size=batch, max_len=4, seed=seed)
            want, got = c(kjt), compiled(kjt)
            assert got.keys() == want.keys()
            torch.testing.assert_close(got.values(), want.values(), rtol=1e-6, atol=1e-6)
    assert counter.frame_count >= 1 and counter.op_count > 0  # something was compiled, not all run eagerly


@pytest.mark.usefixtures("fakes")
def test_inductor_compiles_qr_on_the_fused_store():
    """The default backend, through the fused kernels (`fused_forward` and its undefined x in the graph)."""
    c = collection("qr", "fused")
    compiled = torch.compile(c)
    with torch.no_grad():
        kjt = random_kjt(TABLES, batch_size=8, max_len=4, seed=3)
        torch.testing.assert_close(compiled(kjt).values(), c(kjt).values(), rtol=1e-5, atol=1e-6)


@pytest.mark.usefixtures("fakes")
def test_the_range_check_runs_between_graphs():
    """`outside` answers a Python bool from the ids: dynamo breaks the graph there and runs the check eagerly, so a
    bad id is still refused."""
    c = collection("full", "torch")
    explanation = torch._dynamo.explain(c)(random_kjt(TABLES, batch_size=4, seed=1))
    assert any("embtables.outside" in str(b.reason) for b in explanation.break_reasons), explanation.break_reasons
    torch._dynamo.reset()
    compiled = torch.compile(c, backend="eager")
    kjt = random_kjt(TABLES, batch_size=4, seed=1)
    values = kjt.values().clone()
    values[0] = TABLES[0].num_embeddings  # one past the end of big_a's table
    bad = type(kjt)(kjt.keys(), values, lengths=kjt.lengths())
    with torch.no_grad(), pytest.raises(ValueError, match="outside"):
        compiled(bad)


# ---- the fake kernels against the real ones ----


class _Recorder:
    """Stands for `torch.ops.embtables`: records the arguments of every call, then makes it."""

    def __init__(self, ops):
        self.ops, self.calls = ops, []

    def __getattr__(self, name):
        op = getattr(self.ops, name)

        def call(*args):
            self.calls.append((name, tuple(a.clone() if isinstance(a, Tensor) else a for a in args)))
            return op(*args)

        return call


@pytest.fixture(scope="module")
def op_calls() -> dict[str, list[tuple]]:
    """Real arguments of every op, from collections that call them: per op, its calls that differ in which
    optional outputs they make (a program or not, per-id weights, a weight gradient)."""
    cpu._load()
    recorder = _Recorder(torch.ops.embtables)
    before = cpu._state["ops"]
    cpu._state["ops"] = recorder
    try:
        for method, backend in (("full", "torch"), ("qr", "torch"), ("hash", "torch"), ("full", "fused"),
                                ("qr", "fused"), ("mixed_dim", "fused"), ("multihash", "fused")):
            c = collection(method, backend, SUM_TABLES).train()
            for weighted in (False, True):
                kjt = random_kjt(c.tables, batch_size=5, max_len=3, seed=4, weighted=weighted)
                if weighted:
                    kjt.weights().requires_grad_()  # their gradient: fused_backward's psw_grad
                c(kjt).values().sin().sum().backward()
    finally:
        cpu._state["ops"] = before
    calls: dict[str, dict[tuple, tuple]] = {}
    for name, args in recorder.calls:
        kind = tuple(a is None or (isinstance(a, Tensor) and a.numel() == 0) or a is True for a in args)
        calls.setdefault(name, {}).setdefault(kind, args)
    return {name: list(kinds.values()) for name, kinds in calls.items()}


@pytest.mark.usefixtures("fakes")
def test_every_op_was_called(op_calls):
    """... with every optional output: x and no x (a program or none), the weight and per-id weight gradients."""
    assert set(op_calls) == set(fake.OPS)
    forward, backward = op_calls["fused_forward"], op_calls["fused_backward"]
    assert {a[11].numel() > 0 for a in forward} == {False, True}  # spec
    assert any(a[8] is not None for a in forward) and any(a[12] is not None for a in forward)  # psw, matrices
    assert any(a[23] and a[20] is not None for a in backward)  # weight_grad with matrices
    assert any(a[24] and a[16] is not None for a in backward)  # psw_grad with psw


@pytest.mark.usefixtures("fakes")
@pytest.mark.parametrize("op", [op for op in fake.OPS if op != "outside"])
def test_opcheck(op: str, op_calls):
    """Schema, fake kernel (shapes, dtypes, strides and which outputs are undefined, against the real op) and
    AOT dispatch with dynamic shapes, on each kind of real call."""
    for args in op_calls[op]:
        torch.library.opcheck(getattr(torch.ops.embtables, op).default, args)


@pytest.mark.usefixtures("fakes")
def test_outside_has_no_fake_value(op_calls):
    """`outside`'s bool depends on the ids: its fake raises DataDependentOutputException, as FakeTensor does for
    aten's bool-returning ops; the schema and autograd registration still check."""
    op = torch.ops.embtables.outside.default
    for args in op_calls["outside"]:
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_autograd_registration"))
        with FakeTensorMode(shape_env=ShapeEnv()) as mode, pytest.raises(DataDependentOutputException):
            op(*(mode.from_tensor(a) if isinstance(a, Tensor) else a for a in args))


# ---- opt-in timing: benchmarks/results/compile_export.md ----


def _zipf_batches(tables: list[et.TableConfig], batch: int, count: int) -> list:
    """One id per feature and sample, P(rank k) ~ 1 / (k + 1), ranks scattered (benchmarks/inference_latency.py)."""
    g = torch.Generator().manual_seed(batch)
    out = []
    for _ in range(count):
        ids = []
        for t in tables:
            u = torch.rand(batch, generator=g, dtype=torch.float64)
            rank = (torch.exp(u * torch.log(torch.tensor(t.num_embeddings + 1.0))) - 1).long()
            ids.append((rank * 2654435761) % t.num_embeddings)
        out.append(KeyedJaggedTensor([t.name for t in tables], torch.cat(ids),
                                     lengths=torch.ones(len(tables) * batch, dtype=torch.long)))
    return out


@pytest.mark.usefixtures("fakes")
@pytest.mark.skipif(not os.environ.get("EMBTABLES_COMPILE_TIMING"),
                    reason="timing, opt-in: EMBTABLES_COMPILE_TIMING=<threads> (benchmarks/results/compile_export.md)")
def test_print_compile_speedup():
    """Per method and store, one config after another: the 26 Criteo Kaggle tables at scale 0.01 (dim 16, budget
    0.1), batch 512, eval + no_grad, on EMBTABLES_COMPILE_TIMING threads; p50 microseconds per call of the eager
    collection and of torch.compile's (default inductor backend), their calls alternating (30 each after 5 warm-up
    calls), the compile time (the first compiled call) and the graphs compiled."""
    import time

    torch.set_num_threads(int(os.environ["EMBTABLES_COMPILE_TIMING"]))

    from embtables.methods.optembed import stand_in_options
    from embtables.tablesets import criteo_kaggle_tables

    tables = criteo_kaggle_tables(16, 0.01)
    batches = _zipf_batches(tables, 512, 8)
    print("\n| method | store | eager us/call | compiled us/call | speedup | compile s | graphs |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for method in METHODS:
        for store in STORES:
            torch._dynamo.reset()
            torch.manual_seed(0)
            budget = 0.1 if et.get_method(method).compresses else None
            options = stand_in_options(tables, 0.1 * et.full_bytes(tables)) if et.get_method(method).learned else {}
            if method == "mixed_dim":
                options["dim_multiple"] = 4
            c = et.build_collection(tables, method, budget, backend="fused" if store == "fused" else "torch",
                                    **options).eval()
            if store == "quantized":
                c = c.quantize("int8")
            counter = CompileCounterWithBackend("inductor")
            compiled = torch.compile(c, backend=counter)
            with torch.no_grad():
                start = time.perf_counter()
                compiled(batches[0])
                compile_s = time.perf_counter() - start
                for i in range(5):
                    c(batches[i % 8])
                    compiled(batches[i % 8])
                times: dict[str, list[float]] = {"eager": [], "compiled": []}
                for i in range(30):
                    for name, m in (("eager", c), ("compiled", compiled)):
                        start = time.perf_counter()
                        m(batches[i % 8]).values().sum()
                        times[name].append(time.perf_counter() - start)
            e, k = (sorted(times[n])[15] * 1e6 for n in ("eager", "compiled"))
            print(f"| {method} | {store} | {e:.0f} | {k:.0f} | {e / k:.2f} | {compile_s:.1f} | {counter.frame_count} |",
                  flush=True)
