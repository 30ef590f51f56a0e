"""The C++ CPU kernels (`embtables.kernels`) against their PyTorch references, which run when they are disabled."""

import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import embtables as et
from embtables import kernels
from embtables.bags import Bags
from embtables.hashing import hash_to_range, reference_hash64
from torchrec import KeyedJaggedTensor

INT64 = st.integers(-(2**63), 2**63 - 1)


def both(fn):
    """fn() with the kernels, then with the PyTorch references."""
    assert kernels.available(), kernels.status()
    first = fn()
    with kernels.disabled():
        second = fn()
    return first, second


@given(st.lists(INT64, min_size=1, max_size=40), INT64, st.integers(1, 2**62))
def test_hash_to_range_matches_reference_and_oracle(ids, key, n):
    x = torch.tensor(ids)
    a, b = both(lambda: hash_to_range(x, key, n))
    assert torch.equal(a, b)
    assert bool((a >= 0).all()) and bool((a < n).all())


def test_hash_to_range_broadcasts_keys_and_sizes_like_the_reference():
    x = torch.tensor([[-5], [0], [7], [2**62]])  # (N, 1) ids against (1, k) keys: multihash's k hashes
    keys = torch.tensor([[3, -9, 2**40]])
    n = torch.tensor([[10, 1000, 7]])
    a, b = both(lambda: hash_to_range(x, keys, n))
    assert a.shape == (4, 3) and torch.equal(a, b)
    one = torch.tensor([[42]])  # a single id against two keys: the id is broadcast, not the keys shrunk
    a, b = both(lambda: hash_to_range(one, keys[:, :2], 1000))
    assert a.shape == (1, 2) and torch.equal(a, b)
    per_id = torch.tensor([3, 4, 5, 6])
    a, b = both(lambda: hash_to_range(x.view(-1), 11, per_id))
    assert torch.equal(a, b)


def test_hash_to_range_agrees_with_the_pure_python_oracle():
    ids = [0, 1, -1, 2**63 - 1, -(2**63), 123456789]
    key = et.hashing.hash_key(17)
    got = hash_to_range(torch.tensor(ids), key, 1000).tolist()
    want = [(reference_hash64(i, 17) >> 1) % 1000 for i in ids]
    assert got == want


@given(st.lists(st.lists(st.integers(-3, 60), max_size=12), min_size=1, max_size=5), st.data())
def test_outside_matches_reference(features, data):
    values = torch.tensor([v for f in features for v in f], dtype=torch.long)
    bags = Bags(values, torch.tensor([0] + [len(f) for f in features]).cumsum(0), None, [len(f) for f in features], 1)
    upper = [data.draw(st.one_of(st.none(), st.integers(1, 70))) for _ in features]
    a, b = both(lambda: bags.outside(upper))
    assert a == b
    assert a == any(u is not None and any(v < 0 or v >= u for v in f) for f, u in zip(features, upper))


@given(st.integers(201, 50_000), st.integers(2, 3), st.sampled_from(["mult", "add", "concat"]), st.integers(0, 3),
       st.integers(0, 2**31))
def test_qr_digit_remap_matches_reference(n, k, operation, max_len, seed):
    tables = [et.TableConfig("a", n, 8), et.TableConfig("b", 150, 8), et.TableConfig("c", n + 7, 8, ("c1", "c2"))]
    ebc = et.build_collection(tables, "qr", collisions=max(2, round(n ** (1 / k))), partitions=k, operation=operation)
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, max_len + 1, (4 * 3,), generator=g)
    bounds = [n, 150, n + 7, n + 7]
    values = torch.cat([torch.randint(0, u, (int(l),), generator=g) for u, l in zip(bounds, lengths.view(4, 3).sum(1))])
    bags = Bags(values, torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]), None,
                lengths.view(4, 3).sum(1).tolist(), 3)
    a, b = both(lambda: ebc.method.remap(bags).physical)
    assert torch.equal(a.values, b.values) and torch.equal(a.offsets, b.offsets)
    assert a.ids_per_feature == b.ids_per_feature and a.batch_size == b.batch_size


def test_switches_and_status():
    assert kernels.status() == "C++ CPU kernels in use"
    with kernels.disabled():
        assert kernels.ops_for(torch.zeros(1)) is None
        assert kernels.status().startswith("disabled")
    kernels.set_enabled(False)
    try:
        assert kernels.ops_for(torch.zeros(1)) is None
    finally:
        kernels.set_enabled(True)
    assert kernels.ops_for(torch.zeros(1)) is not None
    assert kernels.ops_for(torch.zeros(1, device="meta")) is None  # CPU tensors only


def test_fused_backend_refuses_to_build_without_the_kernels(monkeypatch):
    tables = [et.TableConfig("t", 10, 4)]
    with kernels.disabled(), pytest.raises(RuntimeError, match="kernels, which are disabled .*EMBTABLES_KERNELS=0"):
        et.build_collection(tables, backend="fused")
    from embtables.kernels import cpu

    monkeypatch.setitem(cpu._state, "ops", None)
    monkeypatch.setitem(cpu._state, "error", "CalledProcessError: no compiler")
    with pytest.raises(RuntimeError, match="could not be built \\(CalledProcessError: no compiler\\)"):
        et.build_collection(tables, backend="fused")


def test_fused_backend_refuses_at_build_time_under_embtables_kernels_0():
    # the variable is read at start-up, so a fresh process; before the fix the build passed and the first forward
    # failed with "'NoneType' object has no attribute 'fused_forward'"
    code = ("import embtables as et\n"
            "try:\n    et.build_collection([et.TableConfig('t', 10, 4)], backend='fused')\n"
            "except RuntimeError as e:\n    print('refused:', e)\n")
    env = {**os.environ, "EMBTABLES_KERNELS": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.startswith("refused: the fused backend runs embtables' C++ CPU kernels, which are disabled")


def test_fused_collection_refuses_to_run_once_the_kernels_are_disabled():
    ebc = et.build_collection([et.TableConfig("t", 10, 4)], backend="fused")
    kjt = KeyedJaggedTensor(["t"], torch.tensor([1, 2]), lengths=torch.tensor([1, 1]))
    with kernels.disabled(), pytest.raises(RuntimeError, match="fused backend runs .* which are disabled"):
        ebc(kjt)
    assert ebc(kjt).values().shape == (2, 4)
