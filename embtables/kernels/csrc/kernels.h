// Shared by every C++ CPU kernel file of csrc/: the includes, the row-segment helpers, the fused store's view of
// its tensors (`Store`), the column program's pieces, and the declarations of what one file calls in another.
// The kernels are loaded by embtables/kernels/cpu.py, which compiles every .cpp of csrc/ into one extension and
// keys the build by every source and header; cpu_kernels.cpp registers the ops (torch.ops.embtables.*).
// Everything lives in `embtables_kernels`; a function defined here is `inline`, so that each caller can inline it.

#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <vector>

namespace embtables_kernels {

// Row-segment loops on pointers that never alias, so that the compiler vectorises them.
inline void set(float* __restrict o, const float* __restrict a, int64_t n) {
  for (int64_t j = 0; j < n; ++j) o[j] = a[j];
}
inline void add(float* __restrict o, const float* __restrict a, int64_t n) {
  for (int64_t j = 0; j < n; ++j) o[j] += a[j];
}
inline void mul(float* __restrict o, const float* __restrict a, int64_t n) {
  for (int64_t j = 0; j < n; ++j) o[j] *= a[j];
}
inline void set_product(float* __restrict o, const float* __restrict a, const float* __restrict b, int64_t n) {
  for (int64_t j = 0; j < n; ++j) o[j] = a[j] * b[j];
}
inline float dot(const float* __restrict a, const float* __restrict b, int64_t n) {
  float s = 0.f;
  for (int64_t j = 0; j < n; ++j) s += a[j] * b[j];
  return s;
}

// f(n) with n a compile-time constant for the common widths, so that the row loops inside f unroll into a few
// vector instructions (a 16-float row is one AVX-512 register) instead of a generic loop with tail handling.
template <typename F>
inline void with_width(int64_t n, F&& f) {
  switch (n) {
    case 4: return f(std::integral_constant<int64_t, 4>{});
    case 8: return f(std::integral_constant<int64_t, 8>{});
    case 16: return f(std::integral_constant<int64_t, 16>{});
    case 32: return f(std::integral_constant<int64_t, 32>{});
    case 64: return f(std::integral_constant<int64_t, 64>{});
    default: return f(n);
  }
}

// ---- the fused store (embtables/stores/fused_store.py; kernels in fused_store.cpp) ----
// All physical tables live in one flat fp32 weight; table t starts at element offset[t], has rows[t] rows of
// dim[t]. Lookup l reads table[l]: bag (l, b) is values[offsets[l*B + b] : offsets[l*B + b + 1]], each id
// weighted by psw when given. Its pooled rows go either straight to output columns [ocol[l], ocol[l] + dim) (a
// lookup the method's combine copies, and every lookup without a program) or, for the program to read, to x,
// which is kept lookup-major: lookup l as a (B, dim) block at x + B * xcol[l]. Pooling then writes, and the
// optimizer step reads, one lookup's rows contiguously while its table is the only one in the cache, as
// FBGEMM's table-batched kernels do; only the program itself works row by row.
struct Store {
  const float* weight;
  const int64_t *offset, *dim, *rows;  // per table
  const int64_t *table, *ocol, *xcol;  // per lookup
  const int64_t *values, *offsets;
  const float* psw;
  int64_t L, B;
  int64_t lookup_dim(int64_t l) const { return dim[table[l]]; }
};

inline Store make_store(const at::Tensor& weight, const at::Tensor& table_offset, const at::Tensor& table_dim,
                        const at::Tensor& table_rows, const at::Tensor& lookup_table, const at::Tensor& lookup_cols,
                        const at::Tensor& values, const at::Tensor& offsets, const c10::optional<at::Tensor>& psw,
                        int64_t batch_size) {
  TORCH_CHECK(weight.device().is_cpu() && weight.scalar_type() == at::kFloat && weight.is_contiguous(),
              "fused store: weight must be a contiguous fp32 CPU tensor");
  for (const at::Tensor* t : {&table_offset, &table_dim, &table_rows, &lookup_table, &lookup_cols, &values, &offsets})
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kLong && t->is_contiguous(),
                "fused store: index tensors must be contiguous int64 CPU tensors");
  const int64_t L = lookup_table.numel();
  TORCH_CHECK(lookup_cols.numel() == 2 * L, "fused store: lookup_cols must be (2, lookups): output and x columns");
  TORCH_CHECK(offsets.numel() == L * batch_size + 1, "fused store: offsets must hold lookups x batch + 1 entries");
  const float* w = nullptr;
  if (psw.has_value() && psw->defined()) {
    TORCH_CHECK(psw->scalar_type() == at::kFloat && psw->is_contiguous() && psw->numel() == values.numel(),
                "fused store: per-sample weights must be contiguous fp32, one per id");
    w = psw->data_ptr<float>();
  }
  return {weight.data_ptr<float>(), table_offset.data_ptr<int64_t>(), table_dim.data_ptr<int64_t>(),
          table_rows.data_ptr<int64_t>(), lookup_table.data_ptr<int64_t>(), lookup_cols.data_ptr<int64_t>(),
          lookup_cols.data_ptr<int64_t>() + L, values.data_ptr<int64_t>(), offsets.data_ptr<int64_t>(), w, L,
          batch_size};
}

// ---- column programs on lookup-major x (embtables/stores/fused_store.py: `kernel_program`; in program.cpp) ----
// Per piece: op (0 add, 1 mult), output start, width, number of terms; per term: lookup, column offset in the
// lookup, width, weight (offset of its (piece width x width) matrix in the flat program weight, or -1).
struct Term {
  int64_t base, stride, width, weight;  // row b of the term at x + base + b * stride
};
struct Piece {
  int64_t op, start, width;
  std::vector<Term> terms;
};

// A program runs on a block of rows at a time: piece by piece, term by term, and only then row by row, so that
// decoding it costs once per block, and each inner loop is one short vectorised loop.
constexpr int64_t kRowBlock = 32;

// program.cpp (each documented there)
std::vector<Piece> parse(const at::Tensor& spec, const Store& s);
void transpose_projections(const float* from, float* to, const std::vector<Piece>& pieces, bool to_dd);
std::vector<float> transposed(const at::Tensor& weight, const std::vector<Piece>& pieces);
void program_rows(const std::vector<Piece>& pieces, const float* wt, const float* X, int64_t b0, int64_t b1, float* O,
                  int64_t Wout);
void program_rows_backward(const std::vector<Piece>& pieces, const float* w, const float* X, const float* G,
                           int64_t Wout, float* GX, int64_t b0, int64_t b1, bool exact, float* gwt, float* scratch);

// ---- the ops, registered in cpu_kernels.cpp ----
// fused_store.cpp
std::tuple<at::Tensor, at::Tensor> fused_forward(
    const at::Tensor& weight, const at::Tensor& table_offset, const at::Tensor& table_dim, const at::Tensor& table_rows,
    const at::Tensor& lookup_table, const at::Tensor& lookup_cols, const at::Tensor& values, const at::Tensor& offsets,
    const c10::optional<at::Tensor>& psw, int64_t batch_size, int64_t width_in, const at::Tensor& spec,
    const c10::optional<at::Tensor>& matrices, int64_t width_out);
std::tuple<at::Tensor, at::Tensor> fused_backward(
    const at::Tensor& grad_out, at::Tensor weight, at::Tensor state, const at::Tensor& state_offset, int64_t optimizer,
    double lr, double eps, const at::Tensor& table_offset, const at::Tensor& table_dim, const at::Tensor& table_rows,
    const at::Tensor& lookup_table, const at::Tensor& lookup_cols, const at::Tensor& table_lookups,
    const at::Tensor& table_lookup_start, const at::Tensor& values, const at::Tensor& offsets,
    const c10::optional<at::Tensor>& psw, int64_t batch_size, int64_t width_in, const at::Tensor& spec,
    const c10::optional<at::Tensor>& matrices, const c10::optional<at::Tensor>& saved_x, bool exact,
    bool weight_grad, bool psw_grad, const c10::optional<at::Tensor>& spare);
// remap.cpp
std::tuple<at::Tensor, at::Tensor> digits_remap(const at::Tensor& values, const at::Tensor& offsets,
                                               int64_t batch_size, const at::Tensor& reads, const at::Tensor& place,
                                               const at::Tensor& radix);
bool outside(const at::Tensor& values, const at::Tensor& starts, const at::Tensor& upper);
at::Tensor hash_to_range(const at::Tensor& x, const at::Tensor& key, const at::Tensor& n);

}  // namespace embtables_kernels
