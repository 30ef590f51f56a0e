"""The one hash primitive every hashed method uses: seeded SplitMix64, vectorised over int64 tensors.

Formula (all arithmetic modulo 2^64 on the unsigned reading of the int64 bits, `>>` a logical shift):

    mix(z):  z += 0x9E3779B97F4A7C15                 (the SplitMix64 output function)
             z  = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
             z  = (z ^ (z >> 27)) * 0x94D049BB133111EB
             return z ^ (z >> 31)
    key(seed)   = mix(seed)
    hash64(x, seed)       = mix(x ^ key(seed))
    hash_to_range(x, s, n) = (hash64(x, s) >> 1) mod n          (the top 63 bits, so the result is >= 0)

SplitMix64 (Steele, Lea and Flood, 2014) is a bijection on 64-bit words with full avalanche, so distinct ids
never collide before the final `mod n`, and every int64 id (negative ones included) is a valid input. Only
wrapping int64 multiply, xor and shifts are used, which PyTorch computes identically on every device, so the
hash is the same across runs, processes and CPU/GPU. `reference_hash64` is a pure-Python oracle for tests.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.fx.experimental.symbolic_shapes import statically_known_true

from embtables import kernels

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB
_INT64_MAX = (1 << 63) - 1


def _signed(c: int) -> int:
    """The int64 whose bits are the unsigned 64-bit constant `c`."""
    return c - (1 << 64) if c >= 1 << 63 else c


def _shr(x: Tensor, s: int) -> Tensor:
    """Logical right shift of int64 bits (torch's `>>` is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def _mix(z: Tensor) -> Tensor:
    z = z + _signed(_GOLDEN)
    z = (z ^ _shr(z, 30)) * _signed(_M1)
    z = (z ^ _shr(z, 27)) * _signed(_M2)
    return z ^ _shr(z, 31)


def hash_key(seed: int) -> int:
    """The 64-bit key (as int64) that `hash64` xors into ids for `seed`; stored by methods as their hash parameter."""
    return _signed(_reference_mix(seed & _MASK64))


def hash64(x: Tensor, key: Tensor | int) -> Tensor:
    """Seeded 64-bit hash of int64 ids, with `key = hash_key(seed)` (scalar or broadcastable tensor).

    Args:
        x: (N,) or any shape, int64 ids; every value is valid.
        key: int64 key(s) from `hash_key`, broadcast against `x`.

    Returns:
        int64 tensor of `x`'s shape holding the 64 hash bits.
    """
    if x.dtype != torch.int64:
        raise TypeError(f"hash64 expects int64 ids, got {x.dtype}")
    return _mix(x ^ key)


def hash_to_range(x: Tensor, key: Tensor | int, n: Tensor | int) -> Tensor:
    """Hash int64 ids into [0, n): `(hash64(x, key) >> 1) mod n`. `n` may be a per-id tensor.

    On CPU this is one C++ pass (`embtables.kernels`); the PyTorch ops below are its reference."""
    ops = kernels.ops_for(x) if x.dtype == torch.int64 else None
    if ops is not None:
        k, m = (torch.tensor(v) if isinstance(v, int) else v for v in (key, n))
        if k.dtype == m.dtype == torch.int64 and k.device == m.device == x.device:
            shape = torch.broadcast_shapes(x.shape, k.shape, m.shape)
            # a count torch.export cannot know (a symbol) takes the expand, right for one element too
            k, m = (t if statically_known_true(t.numel() == 1) else t.expand(shape).contiguous() for t in (k, m))
            return ops.hash_to_range(x.expand(shape).contiguous().view(-1), k.reshape(-1), m.reshape(-1)).view(shape)
    return _shr(hash64(x, key), 1) % n


def _reference_mix(z: int) -> int:
    z = (z + _GOLDEN) & _MASK64
    z = ((z ^ (z >> 30)) * _M1) & _MASK64
    z = ((z ^ (z >> 27)) * _M2) & _MASK64
    return z ^ (z >> 31)


def reference_hash64(x: int, seed: int) -> int:
    """Pure-Python `hash64(x, hash_key(seed))` on Python ints, as an unsigned 64-bit value (test oracle)."""
    return _reference_mix((x & _MASK64) ^ _reference_mix(seed & _MASK64))


def derive_seed(*parts: int) -> int:
    """A 64-bit seed derived from several integers (e.g. user seed, table index, hash index), as int64."""
    h = 0
    for p in parts:
        h = reference_hash64(p, h)
    return _signed(h)
