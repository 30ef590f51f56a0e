// C++ CPU kernels: the `fused` store (lookups, a method's column program and the optimizer step in one kernel
// per direction), qr's digit remap, per-feature range checks and the SplitMix64 hash. Each replaces a chain of
// PyTorch ops (one pass over memory per op, ~5 us of dispatch each); each has a PyTorch reference in the Python
// module that calls it, and tests compare the two.
// Loaded by embtables/kernels.py; ops live in the `embtables` namespace (torch.ops.embtables.*).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace {

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

// ---- the fused store (embtables/store/fused_store.py) ----
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

Store make_store(const at::Tensor& weight, const at::Tensor& table_offset, const at::Tensor& table_dim,
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

// ---- column programs on lookup-major x (embtables/store/fused_store.py: `kernel_program`) ----
// Per piece: op (0 add, 1 mult), output start, width, number of terms; per term: lookup, column offset in the
// lookup, width, weight (offset of its (piece width x width) matrix in the flat program weight, or -1).
struct Term {
  int64_t base, stride, width, weight;  // row b of the term at x + base + b * stride
};
struct Piece {
  int64_t op, start, width;
  std::vector<Term> terms;
};

std::vector<Piece> parse(const at::Tensor& spec, const Store& s) {
  TORCH_CHECK(spec.scalar_type() == at::kLong && spec.dim() == 1 && spec.is_contiguous(),
              "column program spec must be a contiguous 1-D int64 tensor");
  const int64_t* v = spec.data_ptr<int64_t>();
  const int64_t n = spec.numel();
  std::vector<Piece> pieces;
  for (int64_t i = 0; i < n;) {
    TORCH_CHECK(i + 4 <= n, "column program spec: truncated piece");
    Piece p{v[i], v[i + 1], v[i + 2], {}};
    const int64_t terms = v[i + 3];
    i += 4;
    TORCH_CHECK(terms >= 1 && i + 4 * terms <= n, "column program spec: truncated terms");
    for (int64_t t = 0; t < terms; ++t, i += 4) {
      const int64_t l = v[i], off = v[i + 1], width = v[i + 2];
      TORCH_CHECK(l >= 0 && l < s.L && s.xcol[l] >= 0 && off >= 0 && off + width <= s.lookup_dim(l),
                  "column program spec: a term must lie inside one lookup that goes to x");
      p.terms.push_back({s.B * s.xcol[l] + off, s.lookup_dim(l), width, v[i + 3]});
    }
    pieces.push_back(std::move(p));
  }
  return pieces;
}

// Every projected term's (D, d) matrix of a flat program weight, copied between its own row-major layout and the
// transposed (d, D) one at the same offset: `to_dd` (to (d, D)) lets the forward's inner loop run over D
// contiguous output columns; backward's (d, D) weight gradient goes back the other way.
void transpose_projections(const float* from, float* to, const std::vector<Piece>& pieces, bool to_dd) {
  for (const Piece& p : pieces)
    for (const Term& t : p.terms) {
      if (t.weight < 0) continue;
      for (int64_t j = 0; j < p.width; ++j)
        for (int64_t k = 0; k < t.width; ++k) {
          const int64_t rm = t.weight + j * t.width + k, dd = t.weight + k * p.width + j;
          if (to_dd)
            to[dd] = from[rm];
          else
            to[rm] = from[dd];
        }
    }
}

std::vector<float> transposed(const at::Tensor& weight, const std::vector<Piece>& pieces) {
  TORCH_CHECK(weight.scalar_type() == at::kFloat && weight.is_contiguous(), "program weight: contiguous fp32");
  std::vector<float> wt(weight.numel());
  transpose_projections(weight.data_ptr<float>(), wt.data(), pieces, true);
  return wt;
}

// A program runs on a block of rows at a time: piece by piece, term by term, and only then row by row, so that
// decoding it costs once per block, and each inner loop is one short vectorised loop.
constexpr int64_t kRowBlock = 32;

// output rows [b0, b1) (stride Wout) from lookup-major x; `wt` holds the projections transposed to (d, D).
void program_rows(const std::vector<Piece>& pieces, const float* wt, const float* X, int64_t b0, int64_t b1, float* O,
                  int64_t Wout) {
  for (const Piece& p : pieces) {
    float* o = O + p.start;
    bool first = true;
    for (const Term& t : p.terms) {
      const float* xi = X + t.base;
      if (t.weight >= 0) {
        const float* mt = wt + t.weight;
        with_width(p.width, [&](auto D) {
          with_width(t.width, [&](auto d) {
            for (int64_t b = b0; b < b1; ++b) {
              float* __restrict ob = o + b * Wout;
              if (first) std::fill(ob, ob + D, 0.f);
              const float* xb = xi + b * t.stride;
              for (int64_t k = 0; k < d; ++k) {
                const float v = xb[k];
                const float* __restrict mk = mt + k * D;
                for (int64_t j = 0; j < D; ++j) ob[j] += mk[j] * v;
              }
            }
          });
        });
      } else {
        const int64_t how = first ? 0 : p.op == 1 ? 1 : 2;
        with_width(p.width, [&](auto D) {
          for (int64_t b = b0; b < b1; ++b) {
            float* ob = o + b * Wout;
            const float* xb = xi + b * t.stride;
            if (how == 0)
              set(ob, xb, D);
            else if (how == 1)
              mul(ob, xb, D);
            else
              add(ob, xb, D);
          }
        });
      }
      first = false;
    }
  }
}

// Gradients of program_rows for rows [b0, b1): into lookup-major gx (accumulated: zeroed by the caller unless
// `exact`, every x column read by exactly one term, when each is written once) and, when `gwt` is given, into
// the transposed projection gradients. `w` is the program weight in its own (D, d) layout.
void program_rows_backward(const std::vector<Piece>& pieces, const float* w, const float* X, const float* G,
                           int64_t Wout, float* GX, int64_t b0, int64_t b1, bool exact, float* gwt, float* scratch) {
  for (const Piece& p : pieces) {
    const float* g = G + p.start;
    for (const Term& t : p.terms) {
      float* gi = GX + t.base;
      const float* xi = X + t.base;
      if (t.weight >= 0) {
        const float* m = w + t.weight;  // (D, d) row-major: gx = g^T M, a sum of M's rows, each d wide
        with_width(p.width, [&](auto D) {
          with_width(t.width, [&](auto d) {
            for (int64_t b = b0; b < b1; ++b) {
              const float* gb = g + b * Wout;
              float* __restrict gib = gi + b * t.stride;
              if (exact) std::fill(gib, gib + d, 0.f);
              for (int64_t j = 0; j < D; ++j) {
                const float gj = gb[j];
                const float* __restrict mj = m + j * d;
                for (int64_t k = 0; k < d; ++k) gib[k] += gj * mj[k];
              }
              if (gwt)
                for (int64_t k = 0; k < d; ++k) {
                  const float v = xi[b * t.stride + k];
                  float* __restrict row = gwt + t.weight + k * D;
                  for (int64_t j = 0; j < D; ++j) row[j] += v * gb[j];
                }
            }
          });
        });
      } else if (p.op == 1 && p.terms.size() > 1) {
        // g times every other term, built in place (exact) or in scratch and added
        for (int64_t b = b0; b < b1; ++b) {
          float* dst = exact ? gi + b * t.stride : scratch;
          bool started = false;
          for (const Term& o : p.terms) {
            if (&o == &t) continue;
            const float* xo = X + o.base + b * o.stride;
            if (started) {
              mul(dst, xo, p.width);
            } else {
              set_product(dst, g + b * Wout, xo, p.width);
              started = true;
            }
          }
          if (!exact) add(gi + b * t.stride, dst, p.width);
        }
      } else {
        with_width(p.width, [&](auto D) {
          for (int64_t b = b0; b < b1; ++b) {
            if (exact)
              set(gi + b * t.stride, g + b * Wout, D);
            else
              add(gi + b * t.stride, g + b * Wout, D);
          }
        });
      }
    }
  }
}

// n floats: the front of `spare` when it is a large enough fp32 CPU buffer, else a new tensor. The store keeps one
// for backward's dL/dx, which lives only during the call: 10 MB freshly allocated cost ~0.4 ms of page faults.
at::Tensor workspace(const c10::optional<at::Tensor>& spare, int64_t n, const at::Tensor& like) {
  if (spare.has_value() && spare->defined() && spare->numel() >= n && spare->scalar_type() == at::kFloat &&
      spare->is_contiguous() && spare->device().is_cpu())
    return spare->narrow(0, 0, n);
  return at::empty({n}, like.options());
}

// Lookup l's pooled bags into rows x + b * stride. Row reads are random and miss the cache; prefetching the row
// kAhead ids on keeps several misses in flight.
constexpr int64_t kAhead = 8;

void pool_lookup(const Store& s, int64_t l, int64_t b0, int64_t b1, float* x, int64_t stride) {
  const int64_t t = s.table[l], d = s.dim[t], rows = s.rows[t];
  const float* tab = s.weight + s.offset[t];
  const int64_t* off = s.offsets + l * s.B;
  const int64_t hi = off[b1];
  for (int64_t i = off[b0]; i < std::min(off[b0] + kAhead, hi); ++i) __builtin_prefetch(tab + s.values[i] * d);
  with_width(d, [&](auto D) {
    for (int64_t b = b0; b < b1; ++b) {
      float* __restrict xb = x + b * stride;
      const int64_t lo = off[b], end = off[b + 1];
      if (lo == end) std::fill(xb, xb + D, 0.f);
      for (int64_t i = lo; i < end; ++i) {
        if (i + kAhead < hi) __builtin_prefetch(tab + s.values[i + kAhead] * D);
        const int64_t id = s.values[i];
        TORCH_CHECK(id >= 0 && id < rows, "fused store: id ", id, " of lookup ", l, " is outside [0, ", rows, ")");
        const float* __restrict r = tab + id * D;
        const float a = s.psw ? s.psw[i] : 1.f;
        if (i == lo)
          for (int64_t j = 0; j < D; ++j) xb[j] = a * r[j];
        else
          for (int64_t j = 0; j < D; ++j) xb[j] += a * r[j];
      }
    }
  });
}

// -> (out (B, width_out), lookup-major x when there is a program, kept for its backward, else undefined)
std::tuple<at::Tensor, at::Tensor> fused_forward(
    const at::Tensor& weight, const at::Tensor& table_offset, const at::Tensor& table_dim, const at::Tensor& table_rows,
    const at::Tensor& lookup_table, const at::Tensor& lookup_cols, const at::Tensor& values, const at::Tensor& offsets,
    const c10::optional<at::Tensor>& psw, int64_t batch_size, int64_t width_in, const at::Tensor& spec,
    const c10::optional<at::Tensor>& program_weight, int64_t width_out) {
  const Store s = make_store(weight, table_offset, table_dim, table_rows, lookup_table, lookup_cols, values, offsets,
                             psw, batch_size);
  const std::vector<Piece> pieces = parse(spec, s);
  at::Tensor out = at::empty({batch_size, width_out}, weight.options());
  at::Tensor x = pieces.empty() ? at::Tensor() : at::empty({batch_size * width_in}, weight.options());
  float* O = out.data_ptr<float>();
  float* X = x.defined() ? x.data_ptr<float>() : nullptr;
  // work items: lookups, each cut into `splits` ranges of bags when there are few lookups for the threads
  const int64_t splits = std::max<int64_t>(1, (4 * at::get_num_threads() + s.L - 1) / s.L);
  const int64_t span = (batch_size + splits - 1) / splits;
  at::parallel_for(0, s.L * splits, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t item = i0; item < i1; ++item) {
      const int64_t l = item / splits, b0 = std::min(batch_size, item % splits * span);
      const int64_t b1 = std::min(batch_size, b0 + span);
      if (s.ocol[l] >= 0)
        pool_lookup(s, l, b0, b1, O + s.ocol[l], width_out);
      else
        pool_lookup(s, l, b0, b1, X + batch_size * s.xcol[l], s.lookup_dim(l));
    }
  });
  if (pieces.empty()) return {out, x};
  std::vector<float> wt;
  if (program_weight.has_value() && program_weight->defined()) wt = transposed(*program_weight, pieces);
  at::parallel_for(0, batch_size, kRowBlock, [&](int64_t begin, int64_t end) {
    for (int64_t b0 = begin; b0 < end; b0 += kRowBlock)
      program_rows(pieces, wt.data(), X, b0, std::min(end, b0 + kRowBlock), O, width_out);
  });
  return {out, x};
}

// The summed gradients of the rows of one table that a batch touched: open addressing from row id to the row's
// slot in `grad` (no sort, no table-sized buffer).
struct RowGrads {
  int64_t d = 0;
  std::vector<int64_t> key;  // hash slots: row id or -1
  std::vector<int32_t> at;   // hash slots: index into ids
  std::vector<int64_t> ids;
  std::vector<float> grad;  // (ids, d)
  uint64_t mask = 0;
  int shift = 64;

  void reset(int64_t dim, int64_t expected) {
    d = dim;
    ids.clear();
    grad.clear();
    ids.reserve(expected);
    grad.reserve(expected * d);
    slots(expected);
  }
  // an empty hash table for `n` ids at load <= 1/2
  void slots(int64_t n) {
    int bits = 4;
    while ((int64_t(1) << bits) < 2 * n) ++bits;
    key.assign(size_t(1) << bits, -1);
    at.assign(size_t(1) << bits, -1);
    mask = (uint64_t(1) << bits) - 1;
    shift = 64 - bits;
  }
  size_t place(int64_t id) const {
    size_t h = (static_cast<uint64_t>(id) * 0x9E3779B97F4A7C15ULL) >> shift;
    while (key[h] != id && key[h] >= 0) h = (h + 1) & mask;
    return h;
  }
  // the gradient row of `id`, zeroed when new
  float* row(int64_t id) {
    size_t h = place(id);
    if (key[h] < 0) {
      if (2 * (ids.size() + 1) > key.size()) {  // keep the load <= 1/2: rehash into twice the slots
        slots(static_cast<int64_t>(key.size()));
        for (size_t u = 0; u < ids.size(); ++u) {
          const size_t g = place(ids[u]);
          key[g] = ids[u];
          at[g] = static_cast<int32_t>(u);
        }
        h = place(id);
      }
      key[h] = id;
      at[h] = static_cast<int32_t>(ids.size());
      ids.push_back(id);
      grad.resize(grad.size() + d, 0.f);
    }
    return grad.data() + static_cast<int64_t>(at[h]) * d;
  }
};


// optimizer: 0 sgd, 1 adagrad (one accumulator per element), 2 row-wise adagrad (one per row; embtables/optim.py)
void update_row(float* __restrict w, float* __restrict state, const float* __restrict g, int64_t d, int64_t optimizer,
                double lr, double eps) {
  if (optimizer == 0) {
    for (int64_t j = 0; j < d; ++j) w[j] -= static_cast<float>(lr) * g[j];
  } else if (optimizer == 1) {
    for (int64_t j = 0; j < d; ++j) {
      state[j] += g[j] * g[j];
      w[j] -= static_cast<float>(lr) * g[j] / (std::sqrt(state[j]) + static_cast<float>(eps));
    }
  } else {
    float sq = 0.f;
    for (int64_t j = 0; j < d; ++j) sq += g[j] * g[j];
    state[0] += sq / static_cast<float>(d);
    const float scale = static_cast<float>(lr) / (std::sqrt(state[0]) + static_cast<float>(eps));
    for (int64_t j = 0; j < d; ++j) w[j] -= scale * g[j];
  }
}

// Backward and optimizer step. The program's backward turns the output gradient into lookup-major dL/dx, row
// block by row block; then table by table (with fewer tables than threads, each table split further into parts
// by a hash of the row id, so that each row has one owner), every id's gradient is added to its row's sum and each
// touched row is updated once. Returns the gradients of the program weight and of the per-id weights (each undefined
// unless asked for), both taken before any update.
std::tuple<at::Tensor, at::Tensor> fused_backward(
    const at::Tensor& grad_out, at::Tensor weight, at::Tensor state, const at::Tensor& state_offset, int64_t optimizer,
    double lr, double eps, const at::Tensor& table_offset, const at::Tensor& table_dim, const at::Tensor& table_rows,
    const at::Tensor& lookup_table, const at::Tensor& lookup_cols, const at::Tensor& table_lookups,
    const at::Tensor& table_lookup_start, const at::Tensor& values, const at::Tensor& offsets,
    const c10::optional<at::Tensor>& psw, int64_t batch_size, int64_t width_in, const at::Tensor& spec,
    const c10::optional<at::Tensor>& program_weight, const c10::optional<at::Tensor>& saved_x, bool exact,
    bool weight_grad, bool psw_grad, const c10::optional<at::Tensor>& spare) {
  const Store s = make_store(weight, table_offset, table_dim, table_rows, lookup_table, lookup_cols, values, offsets,
                             psw, batch_size);
  TORCH_CHECK(state.scalar_type() == at::kFloat && state.is_contiguous(), "fused store: fp32 optimizer state");
  const std::vector<Piece> pieces = parse(spec, s);
  const at::Tensor grad = grad_out.contiguous();
  const int64_t B = batch_size, W = width_in, Wout = grad.size(1), T = table_dim.numel();
  const int threads = at::get_num_threads();
  const float* G = grad.data_ptr<float>();
  // dL/dx of the lookups that go to x, lookup-major, from the program's backward
  const float* GX = nullptr;
  at::Tensor gx, gw;
  if (!pieces.empty()) {
    TORCH_CHECK(saved_x.has_value() && saved_x->defined(), "fused store: the forward's x is needed");
    const bool has_pw = program_weight.has_value() && program_weight->defined();
    const float* pw = has_pw ? program_weight->data_ptr<float>() : nullptr;
    const int64_t wsize = has_pw ? program_weight->numel() : 0;
    at::Tensor partial = weight_grad && has_pw ? at::zeros({threads, wsize}, grad.options()) : at::Tensor();
    gx = workspace(spare, B * W, grad);
    if (!exact) gx.zero_();
    int64_t widest = 0;
    for (const Piece& p : pieces) widest = std::max(widest, p.width);
    const float* X = saved_x->data_ptr<float>();
    float* GXm = gx.data_ptr<float>();
    float* P = partial.defined() ? partial.data_ptr<float>() : nullptr;
    at::parallel_for(0, B, kRowBlock, [&](int64_t begin, int64_t end) {
      std::vector<float> scratch(widest);
      float* gwt = P ? P + at::get_thread_num() * wsize : nullptr;
      for (int64_t b0 = begin; b0 < end; b0 += kRowBlock)
        program_rows_backward(pieces, pw, X, G, Wout, GXm, b0, std::min(end, b0 + kRowBlock), exact, gwt,
                              scratch.data());
    });
    GX = GXm;
    if (partial.defined()) {  // per-thread transposed sums -> the flat weight's (D, d) blocks
      const at::Tensor summed = partial.sum(0);
      gw = at::zeros_like(*program_weight);
      transpose_projections(summed.data_ptr<float>(), gw.data_ptr<float>(), pieces, false);
    }
  }
  // where lookup l's gradient row b is: in the output gradient, or in dL/dx
  auto grad_row = [&](int64_t l, int64_t b) {
    return s.ocol[l] >= 0 ? G + b * Wout + s.ocol[l] : GX + B * s.xcol[l] + b * s.lookup_dim(l);
  };
  at::Tensor gpsw = psw_grad && s.psw ? at::empty({values.numel()}, grad.options()) : at::Tensor();
  float* GP = gpsw.defined() ? gpsw.data_ptr<float>() : nullptr;
  float* wmut = weight.data_ptr<float>();
  float* st = state.data_ptr<float>();
  const int64_t* soff = state_offset.data_ptr<int64_t>();
  const int64_t* tl = table_lookups.data_ptr<int64_t>();
  const int64_t* tls = table_lookup_start.data_ptr<int64_t>();
  // Work items (table, part): with fewer tables than threads (unified's one shared table) a table is split into
  // parts by a hash of the row id, and each part scans the table's ids, skipping those of other parts.
  struct Item {
    int64_t table, part, expected;
  };
  int bits = 0;  // every table has 2^bits parts
  while (T < 2 * threads && (int64_t(1) << bits) < threads) ++bits;
  std::vector<Item> items;
  for (int64_t t = 0; t < T; ++t) {
    int64_t n = 0;
    for (int64_t k = tls[t]; k < tls[t + 1]; ++k) n += s.offsets[(tl[k] + 1) * B] - s.offsets[tl[k] * B];
    if (n == 0) continue;
    for (int64_t q = 0; q < (int64_t(1) << bits); ++q)
      items.push_back({t, q, std::min((n >> bits) + 1, s.rows[t])});
  }
  auto part_of = [bits](int64_t id) {
    return bits ? static_cast<int64_t>((static_cast<uint64_t>(id) * 0x9E3779B97F4A7C15ULL) >> (64 - bits)) : 0;
  };
  at::parallel_for(0, static_cast<int64_t>(items.size()), 1, [&](int64_t i0, int64_t i1) {
    RowGrads acc;
    for (int64_t item = i0; item < i1; ++item) {
      const int64_t t = items[item].table;
      const float* tab = s.weight + s.offset[t];
      acc.reset(s.dim[t], items[item].expected);  // grows if the split is uneven
      with_width(s.dim[t], [&](auto d) {
        auto add_id = [&](int64_t i, const float* g) {
          const int64_t id = s.values[i];
          // the forward checked every id, but a caller may have changed them since: never update outside the table
          TORCH_CHECK(id >= 0 && id < s.rows[t], "fused store backward: id ", id, " of table ", t, " is outside [0, ",
                      s.rows[t], ")");
          const float a = s.psw ? s.psw[i] : 1.f;
          float* __restrict dst = acc.row(id);
          for (int64_t j = 0; j < d; ++j) dst[j] += a * g[j];
          if (GP) GP[i] = dot(g, tab + id * d, d);  // d out / d w_i = <dL/dx of the bag, the row>
        };
        const int64_t part = items[item].part;
        for (int64_t k = tls[t]; k < tls[t + 1]; ++k) {
          const int64_t l = tl[k];
          for (int64_t b = 0; b < B; ++b) {
            const float* g = grad_row(l, b);
            for (int64_t i = s.offsets[l * B + b]; i < s.offsets[l * B + b + 1]; ++i)
              if (part_of(s.values[i]) == part) add_id(i, g);
          }
        }
        const size_t touched = acc.ids.size();
        for (size_t u = 0; u < touched; ++u) {
          if (u + kAhead < touched) {  // rows are random: fetch a later one's weights and state meanwhile
            const int64_t later = acc.ids[u + kAhead];
            __builtin_prefetch(wmut + s.offset[t] + later * d, 1);
            if (optimizer) __builtin_prefetch(st + soff[t] + (optimizer == 1 ? later * d : later), 1);
          }
          const int64_t id = acc.ids[u];
          float* state_row = optimizer == 0 ? st : st + soff[t] + (optimizer == 1 ? id * d : id);
          update_row(wmut + s.offset[t] + id * d, state_row, acc.grad.data() + u * d, d, optimizer, lr, eps);
        }
      });
    }
  });
  return {gw, gpsw};
}

// ---- qr: ids -> mixed-radix digits, laid out as the store's lookups (embtables/methods/qr.py) ----
// floor(a / b) for 0 <= a and 1 <= b: a double division, exact to within one below 2^52, then corrected; the
// integer division instruction is several times slower and does not vectorise.
inline int64_t div_floor(int64_t a, int64_t b) {
  if (a >= (int64_t(1) << 52) || b >= (int64_t(1) << 52)) return a / b;
  int64_t q = static_cast<int64_t>(static_cast<double>(a) / static_cast<double>(b));
  const int64_t r = a - q * b;
  q -= r < 0;
  q += r >= b;
  return q;
}

// values (N,) ids >= 0 of F features (feature-major), offsets (F*B + 1,); reads (L, 2): lookup l reads feature
// reads[l][0] as digit row reads[l][1] of `place`/`radix` (-1: the id itself) -> values (N',) and offsets
// (L*B + 1,) of the L lookups. digit = (id // place) mod radix.
std::tuple<at::Tensor, at::Tensor> digits_remap(const at::Tensor& values, const at::Tensor& offsets,
                                               int64_t batch_size, const at::Tensor& reads, const at::Tensor& place,
                                               const at::Tensor& radix) {
  for (const at::Tensor* t : {&values, &offsets, &reads, &place, &radix})
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kLong && t->is_contiguous(),
                "digits_remap: int64 contiguous CPU tensors expected");
  const int64_t B = batch_size, L = reads.size(0);
  const int64_t* off = offsets.data_ptr<int64_t>();
  const int64_t* rd = reads.data_ptr<int64_t>();
  std::vector<int64_t> base(L + 1, 0);
  for (int64_t l = 0; l < L; ++l) {
    const int64_t f = rd[2 * l];
    base[l + 1] = base[l] + off[(f + 1) * B] - off[f * B];
  }
  at::Tensor out = at::empty({base[L]}, values.options());
  at::Tensor out_off = at::empty({L * B + 1}, offsets.options());
  const int64_t* ids = values.data_ptr<int64_t>();
  const int64_t* pl = place.data_ptr<int64_t>();
  const int64_t* rx = radix.data_ptr<int64_t>();
  int64_t* o = out.data_ptr<int64_t>();
  int64_t* oo = out_off.data_ptr<int64_t>();
  oo[L * B] = base[L];
  at::parallel_for(0, L, 1, [&](int64_t l0, int64_t l1) {
    for (int64_t l = l0; l < l1; ++l) {
      const int64_t f = rd[2 * l], row = rd[2 * l + 1], first = off[f * B];
      for (int64_t b = 0; b < B; ++b) oo[l * B + b] = base[l] + off[f * B + b] - first;
      const int64_t* src = ids + first;
      int64_t* dst = o + base[l];
      const int64_t n = base[l + 1] - base[l];
      if (row < 0) {
        std::copy(src, src + n, dst);
        continue;
      }
      const int64_t p = pl[row], r = rx[row];
      for (int64_t i = 0; i < n; ++i) {
        const int64_t q = div_floor(src[i], p);
        dst[i] = q - div_floor(q, r) * r;
      }
    }
  });
  return {out, out_off};
}

// ---- range checks: is some id of feature f outside [0, upper[f])? (upper[f] < 0: any id is valid) ----
bool outside(const at::Tensor& values, const at::Tensor& starts, const at::Tensor& upper) {
  TORCH_CHECK(values.scalar_type() == at::kLong && values.is_contiguous() && starts.scalar_type() == at::kLong &&
                  upper.scalar_type() == at::kLong && values.device().is_cpu(),
              "outside: int64 contiguous CPU tensors expected");
  const int64_t F = upper.numel();
  const int64_t* v = values.data_ptr<int64_t>();
  const int64_t* s = starts.data_ptr<int64_t>();
  const int64_t* u = upper.data_ptr<int64_t>();
  std::vector<char> bad(F, 0);
  at::parallel_for(0, F, 1, [&](int64_t f0, int64_t f1) {
    for (int64_t f = f0; f < f1; ++f) {
      if (u[f] < 0) continue;
      const uint64_t n = static_cast<uint64_t>(u[f]);
      char any = 0;
      for (int64_t i = s[f]; i < s[f + 1]; ++i) any |= static_cast<uint64_t>(v[i]) >= n;  // negatives wrap high
      bad[f] = any;
    }
  });
  for (char b : bad)
    if (b) return true;
  return false;
}

// ---- SplitMix64 (embtables/hashing.py has the formula and the PyTorch reference) ----
inline uint64_t mix(uint64_t z) {
  z += 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// (hash64(x, key) >> 1) mod n; key and n hold one value or one per id.
at::Tensor hash_to_range(const at::Tensor& x, const at::Tensor& key, const at::Tensor& n) {
  for (const at::Tensor* t : {&x, &key, &n})
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kLong && t->is_contiguous(),
                "hash_to_range: int64 contiguous CPU tensors expected");
  const int64_t N = x.numel();
  TORCH_CHECK(key.numel() == 1 || key.numel() == N, "hash_to_range: key must hold 1 or N values");
  TORCH_CHECK(n.numel() == 1 || n.numel() == N, "hash_to_range: n must hold 1 or N values");
  at::Tensor out = at::empty_like(x);
  const uint64_t* xs = reinterpret_cast<const uint64_t*>(x.data_ptr<int64_t>());
  const uint64_t* ks = reinterpret_cast<const uint64_t*>(key.data_ptr<int64_t>());
  const int64_t* ns = n.data_ptr<int64_t>();
  const int64_t kstep = key.numel() == N ? 1 : 0, nstep = n.numel() == N ? 1 : 0;
  int64_t* o = out.data_ptr<int64_t>();
  at::parallel_for(0, N, 4096, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t m = ns[i * nstep];
      TORCH_CHECK(m >= 1, "hash_to_range: n must be >= 1, got ", m);
      o[i] = static_cast<int64_t>((mix(xs[i] ^ ks[i * kstep]) >> 1) % static_cast<uint64_t>(m));
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(embtables, m) {
  m.def("fused_forward(Tensor weight, Tensor table_offset, Tensor table_dim, Tensor table_rows, Tensor lookup_table, "
        "Tensor lookup_cols, Tensor values, Tensor offsets, Tensor? psw, int batch_size, int width_in, Tensor spec, "
        "Tensor? program_weight, int width_out) -> (Tensor, Tensor)",
        &fused_forward);
  m.def("fused_backward(Tensor grad_out, Tensor(a!) weight, Tensor(b!) state, Tensor state_offset, int optimizer, "
        "float lr, float eps, Tensor table_offset, Tensor table_dim, Tensor table_rows, Tensor lookup_table, "
        "Tensor lookup_cols, Tensor table_lookups, Tensor table_lookup_start, Tensor values, Tensor offsets, "
        "Tensor? psw, int batch_size, int width_in, Tensor spec, Tensor? program_weight, Tensor? saved_x, bool exact, "
        "bool weight_grad, bool psw_grad, Tensor? spare) -> (Tensor, Tensor)",
        &fused_backward);
  m.def("digits_remap(Tensor values, Tensor offsets, int batch_size, Tensor reads, Tensor place, Tensor radix) -> "
        "(Tensor, Tensor)",
        &digits_remap);
  m.def("outside(Tensor values, Tensor starts, Tensor upper) -> bool", &outside);
  m.def("hash_to_range(Tensor x, Tensor key, Tensor n) -> Tensor", &hash_to_range);
}
