// The fused store's kernels (embtables/stores/fused_store.py calls them through torch.ops.embtables): fused_forward
// pools every lookup's bags and runs the method's column program (program.cpp); fused_backward runs the program's
// backward and the optimizer step, each touched row updated once, without sorting. The store's tensor layout
// (`Store`) is described in kernels.h. Built with the other kernels by embtables/kernels/cpu.py.

#include "kernels.h"

namespace embtables_kernels {
namespace {

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

}  // namespace

// -> (out (B, width_out), lookup-major x when there is a program, kept for its backward, else undefined)
std::tuple<at::Tensor, at::Tensor> fused_forward(
    const at::Tensor& weight, const at::Tensor& table_offset, const at::Tensor& table_dim, const at::Tensor& table_rows,
    const at::Tensor& lookup_table, const at::Tensor& lookup_cols, const at::Tensor& values, const at::Tensor& offsets,
    const c10::optional<at::Tensor>& psw, int64_t batch_size, int64_t width_in, const at::Tensor& spec,
    const c10::optional<at::Tensor>& matrices, int64_t width_out) {
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
  if (matrices.has_value() && matrices->defined()) wt = transposed(*matrices, pieces);
  at::parallel_for(0, batch_size, kRowBlock, [&](int64_t begin, int64_t end) {
    for (int64_t b0 = begin; b0 < end; b0 += kRowBlock)
      program_rows(pieces, wt.data(), X, b0, std::min(end, b0 + kRowBlock), O, width_out);
  });
  return {out, x};
}

namespace {

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

// Forward checked every id, but the caller may have changed them since: before any row is updated, check them all
// again (one pass over the ids), so that backward never writes outside a table, nor half an update.
void check_ids(const Store& s, int64_t num_values) {
  TORCH_CHECK(s.offsets[0] == 0 && s.offsets[s.L * s.B] == num_values,
              "fused store backward: offsets must run from 0 to the number of ids");
  // branch-free passes (the compiler vectorises the or-reductions); the slow search only to name a bad value
  bool bad = false;
  for (int64_t k = 0; k < s.L * s.B; ++k) bad |= s.offsets[k] > s.offsets[k + 1];
  for (int64_t k = 0; bad && k < s.L * s.B; ++k)
    TORCH_CHECK(s.offsets[k] <= s.offsets[k + 1], "fused store backward: offsets decrease at bag ", k);
  for (int64_t l = 0; l < s.L; ++l) {
    const int64_t t = s.table[l], rows = s.rows[t], begin = s.offsets[l * s.B], end = s.offsets[(l + 1) * s.B];
    bool outside = false;  // unsigned: a negative id is a huge one
    for (int64_t i = begin; i < end; ++i) outside |= static_cast<uint64_t>(s.values[i]) >= static_cast<uint64_t>(rows);
    for (int64_t i = begin; outside && i < end; ++i)
      TORCH_CHECK(s.values[i] >= 0 && s.values[i] < rows, "fused store backward: id ", s.values[i], " of table ", t,
                  " is outside [0, ", rows, ")");
  }
}

}  // namespace

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
    const c10::optional<at::Tensor>& matrices, const c10::optional<at::Tensor>& saved_x, bool exact,
    bool weight_grad, bool psw_grad, const c10::optional<at::Tensor>& spare) {
  const Store s = make_store(weight, table_offset, table_dim, table_rows, lookup_table, lookup_cols, values, offsets,
                             psw, batch_size);
  TORCH_CHECK(state.scalar_type() == at::kFloat && state.is_contiguous(), "fused store: fp32 optimizer state");
  check_ids(s, values.numel());
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
    const bool has_pw = matrices.has_value() && matrices->defined();
    const float* pw = has_pw ? matrices->data_ptr<float>() : nullptr;
    const int64_t wsize = has_pw ? matrices->numel() : 0;
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
      gw = at::zeros_like(*matrices);
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

}  // namespace embtables_kernels
