import subprocess
import sys

import torch
from hypothesis import given
from hypothesis import strategies as st

from embtables.hashing import derive_seed, hash64, hash_key, hash_to_range, reference_hash64

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)


def _unsigned(x: int) -> int:
    return x & ((1 << 64) - 1)


@given(st.lists(INT64, min_size=1, max_size=50), st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_hash64_matches_python_reference(ids, seed):
    got = hash64(torch.tensor(ids, dtype=torch.int64), hash_key(seed))
    assert [_unsigned(v) for v in got.tolist()] == [reference_hash64(x, seed) for x in ids]


@given(st.lists(INT64, min_size=1, max_size=50), st.integers(0, 2**31), st.integers(1, 2**62))
def test_hash_to_range_is_in_range_and_matches_reference(ids, seed, n):
    got = hash_to_range(torch.tensor(ids), hash_key(seed), n)
    assert got.min() >= 0 and got.max() < n
    assert got.tolist() == [(reference_hash64(x, seed) >> 1) % n for x in ids]


def test_known_answers_pin_the_formula():
    from embtables.hashing import _reference_mix

    # The published SplitMix64 sequence from state 0 starts 0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4: our mix is
    # that output function. The pinned hash below defines the bucket layout of saved hashed models.
    assert _reference_mix(0) == 0xE220A8397B1DCDAF
    assert _reference_mix(0x9E3779B97F4A7C15) == 0x6E789E6AA1B965F4
    assert reference_hash64(0, 0) == _reference_mix(0xE220A8397B1DCDAF) == 12035550249420947055
    assert _unsigned(int(hash64(torch.tensor([0]), hash_key(0))[0])) == reference_hash64(0, 0)


def test_hash_is_deterministic_across_processes():
    code = (
        "import torch; from embtables.hashing import hash64, hash_key; "
        "print(hash64(torch.arange(-5, 5), hash_key(7)).tolist())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert eval(out) == hash64(torch.arange(-5, 5), hash_key(7)).tolist()


def test_hash_spreads_ids_evenly():
    n = 64
    counts = torch.bincount(hash_to_range(torch.arange(200_000), hash_key(3), n), minlength=n).float()
    expected = 200_000 / n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 130  # chi-square with 63 dof: p ~ 1e-6 at 130


def test_seeds_give_different_hashes():
    x = torch.arange(1000)
    a, b = hash_to_range(x, hash_key(derive_seed(0, 1)), 1 << 20), hash_to_range(x, hash_key(derive_seed(0, 2)), 1 << 20)
    assert (a == b).float().mean() < 0.01


def test_hash_rejects_non_int64():
    import pytest

    with pytest.raises(TypeError, match="int64"):
        hash64(torch.arange(3, dtype=torch.int32), 0)
