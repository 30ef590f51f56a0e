// C++ CPU kernels: the `fused` store (lookups, a method's column program and the optimizer step in one kernel
// per direction), qr's digit remap, per-feature range checks and the SplitMix64 hash. Each replaces a chain of
// PyTorch ops (one pass over memory per op, ~5 us of dispatch each); each has a PyTorch reference in the Python
// module that calls it, and tests compare the two.
// Loaded by embtables/kernels/cpu.py, which compiles every .cpp of this folder into one extension. This file
// registers the ops, in the `embtables` namespace (torch.ops.embtables.*); the code is in
//   kernels.h          row-segment helpers, the fused store's `Store`, the program's `Term`/`Piece`, declarations
//   program.cpp        column programs: parse a spec, run it and its backward on blocks of rows
//   fused_store.cpp    fused_forward, fused_backward (embtables/stores/fused_store.py)
//   remap.cpp          digits_remap (embtables/methods/qr.py), outside (embtables/bags.py), hash_to_range
//                      (embtables/hashing.py)

#include <torch/library.h>

#include "kernels.h"

// Schemas here, kernels below for the CPU dispatch key: a kernel given to m.def is a catch-all, which the
// dispatcher files as CompositeImplicitAutograd, and PyTorch would then run the C++ on FakeTensors (which have no
// data) under torch.compile / torch.export instead of the fake kernels of embtables/kernels/fake.py.
TORCH_LIBRARY(embtables, m) {
  m.def("fused_forward(Tensor weight, Tensor table_offset, Tensor table_dim, Tensor table_rows, Tensor lookup_table, "
        "Tensor lookup_cols, Tensor values, Tensor offsets, Tensor? psw, SymInt batch_size, int width_in, Tensor spec, "
        "Tensor? matrices, int width_out) -> (Tensor, Tensor)");
  m.def("fused_backward(Tensor grad_out, Tensor(a!) weight, Tensor(b!) state, Tensor state_offset, int optimizer, "
        "float lr, float eps, Tensor table_offset, Tensor table_dim, Tensor table_rows, Tensor lookup_table, "
        "Tensor lookup_cols, Tensor table_lookups, Tensor table_lookup_start, Tensor values, Tensor offsets, "
        "Tensor? psw, SymInt batch_size, int width_in, Tensor spec, Tensor? matrices, Tensor? saved_x, bool exact, "
        "bool weight_grad, bool psw_grad, Tensor(c!)? spare) -> (Tensor, Tensor)");
  m.def("digits_remap(Tensor values, Tensor offsets, SymInt batch_size, Tensor reads, Tensor place, Tensor radix) -> "
        "(Tensor, Tensor)");
  m.def("outside(Tensor values, Tensor starts, Tensor upper) -> bool");
  m.def("hash_to_range(Tensor x, Tensor key, Tensor n) -> Tensor");
}

TORCH_LIBRARY_IMPL(embtables, CPU, m) {
  m.impl("fused_forward", &embtables_kernels::fused_forward);
  m.impl("fused_backward", &embtables_kernels::fused_backward);
  m.impl("digits_remap", &embtables_kernels::digits_remap);
  m.impl("outside", &embtables_kernels::outside);
  m.impl("hash_to_range", &embtables_kernels::hash_to_range);
}
