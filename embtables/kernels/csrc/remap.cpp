// The remaps every backend runs, each in place of a chain of PyTorch ops: qr's ids -> mixed-radix digits
// (digits_remap, called by embtables/methods/qr.py), per-feature range checks (outside, called by `Bags.outside`
// in embtables/bags.py) and the SplitMix64 hash (hash_to_range, called by embtables/hashing.py). Each caller keeps
// the PyTorch reference that tests compare with. Built with the other kernels by embtables/kernels/cpu.py.

#include "kernels.h"

namespace embtables_kernels {

// ---- qr: ids -> mixed-radix digits, laid out as the store's lookups (embtables/methods/qr.py) ----
namespace {

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

}  // namespace

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
namespace {

inline uint64_t mix(uint64_t z) {
  z += 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

}  // namespace

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

}  // namespace embtables_kernels
