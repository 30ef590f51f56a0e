"""embtables' Triton kernels (the `triton` store, `embtables/stores/triton_store.py`), each beside its launcher and a
PyTorch reference:

    lookup.py    forward: every physical lookup of a group pooled in one launch, per-sample weights, ragged bags
                 (and the launch as the operator `torch.ops.embtables_triton.pool`, for torch.compile / export)
    update.py    backward: ids sorted by row, each touched row's gradient summed once and the optimizer applied

They compile for CUDA GPUs; with TRITON_INTERPRET=1 in the environment (before Triton is imported) Triton's
interpreter runs them on CPU tensors, which is how the tests check them on machines without a GPU.

May import: torch and triton only (nothing of embtables). Importing this package imports triton.
"""
