"""embtables' own kernels, each beside its loader; the stores and remaps that call them keep a PyTorch reference.

    triton/              Triton GPU kernels of the triton store (import triton: loaded only by that store)
    cpu.py               loader of the C++ CPU kernels in csrc/ (compiled on first use): the fused store's
                         lookup + combine + optimizer kernels, qr's digit remap, range checks, SplitMix64 hashing
    fake.py              the ops' fake (meta) kernels, registered when they load: torch.compile / torch.export
                         trace through them (benchmarks/results/compile_export.md)
    csrc/                their source, compiled into one extension: cpu_kernels.cpp registers the ops (schemas,
                         and the kernels for the CPU dispatch key);
                         kernels.h (shared helpers and declarations), program.cpp (column programs),
                         fused_store.cpp (the fused store's kernels), remap.cpp (digits, range checks, hashing)

May import: torch (and triton, in triton/) only, nothing of embtables, so every layer can use it.
"""

from embtables.kernels.cpu import available, disabled, ops_for, require, set_enabled, status

__all__ = ["available", "disabled", "ops_for", "require", "set_enabled", "status"]
