// The fused store's column programs (embtables/stores/fused_store.py: `kernel_program` writes their spec): parse a
// spec against the store's lookups, transpose its projections, and run it, and its backward, on a block of rows of
// lookup-major x. Called by fused_store.cpp's fused_forward / fused_backward; the spec's layout, `Term`, `Piece`
// and kRowBlock are in kernels.h. Built with the other kernels by embtables/kernels/cpu.py.

#include "kernels.h"

namespace embtables_kernels {

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

}  // namespace embtables_kernels
