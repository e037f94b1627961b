// The vector math every CPU row path builds on: moving a chunk of a row between memory and the
// accumulate type, and the per-chunk max, sum-exp, shifted sums and gradient with Vectorized<acc_t>.
// Compiled once per CPU capability (through kernels.h), so Vectorized has that capability's width.
#pragma once

#include <algorithm>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include "fast_math.h"
#include "kernel_api.h"

namespace validated_loss::cpu {
namespace CPU_CAPABILITY {  // a namespace per capability: no symbol is shared between widths

using at::vec::Vectorized;

// For the small per-row helpers of the row paths, called once a row: a call per row (with its
// arguments through memory) cost the short-row forward 5-15% where GCC chose not to inline them.
#define VL_ROW_INLINE inline __attribute__((always_inline))

template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// The half types, widened to float for the arithmetic. Our own trait: ATen's
// at::is_reduced_floating_point_v is missing in torch 2.6.
template <typename scalar_t>
constexpr bool is_reduced_float_v = std::is_same_v<scalar_t, at::Half> || std::is_same_v<scalar_t, at::BFloat16>;

constexpr int64_t kChunkElems = 2048;  // 8 KiB of float: stays in L1 while it is worked on

// ---------------------------------------------------------------------------------------------
// Moving one chunk of a row between memory and accumulate precision.

// Returns the chunk as acc_t values: the memory itself when it already is (contiguous float or
// double), else `buf` filled from it.
template <typename scalar_t, typename acc_t>
const acc_t* load_chunk(const scalar_t* row, int64_t stride, int64_t c0, int64_t len, acc_t* buf) {
  const scalar_t* p = row + c0 * stride;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    if (stride == 1) return p;
  }
  if constexpr (is_reduced_float_v<scalar_t>) {
    if (stride == 1) {
      using Vec = Vectorized<float>;
      int64_t c = 0;
      for (; c + Vec::size() <= len; c += Vec::size()) {
        Vec v;
        at::vec::load_to_float(p + c, v);
        v.store(buf + c);
      }
      for (; c < len; ++c) buf[c] = static_cast<acc_t>(p[c]);
      return buf;
    }
  }
  for (int64_t c = 0; c < len; ++c) buf[c] = static_cast<acc_t>(p[c * stride]);
  return buf;
}

// Where a chunk of results is computed: straight into the output when it has the accumulate
// type and is contiguous, else into `buf` (then store_chunk narrows or scatters it).
template <typename scalar_t, typename acc_t>
acc_t* chunk_target(scalar_t* row, int64_t stride, int64_t c0, acc_t* buf) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    if (stride == 1) return row + c0;
  }
  return buf;
}

template <typename scalar_t, typename acc_t>
void store_chunk(scalar_t* row, int64_t stride, int64_t c0, int64_t len, const acc_t* values) {
  scalar_t* p = row + c0 * stride;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    if (stride == 1) return;  // computed in place by chunk_target
  }
  if constexpr (is_reduced_float_v<scalar_t>) {
    if (stride == 1) {
      using Vec = Vectorized<float>;
      int64_t c = 0;
      for (; c + 2 * Vec::size() <= len; c += 2 * Vec::size()) {
        at::vec::convert_from_float<scalar_t>(Vec::loadu(values + c), Vec::loadu(values + c + Vec::size()))
            .store(p + c);
      }
      for (; c < len; ++c) p[c] = static_cast<scalar_t>(values[c]);
      return;
    }
  }
  for (int64_t c = 0; c < len; ++c) p[c * stride] = static_cast<scalar_t>(values[c]);
}

template <typename scalar_t>
void zero_row(scalar_t* row, int64_t stride, int64_t len) {
  if (stride == 1) {
    std::fill(row, row + len, scalar_t(0));
  } else {
    for (int64_t c = 0; c < len; ++c) row[c * stride] = scalar_t(0);
  }
}

// ---------------------------------------------------------------------------------------------
// Vector math over one chunk held as acc_t values.

// may_be_nan = false: the caller knows no lane is NaN (its row's max and log-sum are finite, so
// no logit of the row is NaN or +inf), and the fix-up below, 2 of the ~14 instructions, is skipped.
template <typename acc_t, bool may_be_nan = true>
Vectorized<acc_t> vexp(const Vectorized<acc_t>& v) {
  if constexpr (std::is_same_v<acc_t, float>) {
    // exp_u20 (~2 ulp, the variant ATen's own softmax kernels use) turns NaN into inf; keep NaN
    // so a NaN logit poisons its row exactly as it does in torch.
    if constexpr (!may_be_nan) return v.exp_u20();
    return Vectorized<acc_t>::blendv(v.exp_u20(), v, v.isnan());
  } else {
    return v.exp();
  }
}

// e^d where the row's max is finite (d <= 0 or -inf, never NaN): fast_math.h's exp for float,
// ATen's for double.
template <ExpTail tail, typename acc_t>
Vectorized<acc_t> exp_finite_row(const Vectorized<acc_t>& d) {
  if constexpr (std::is_same_v<acc_t, float>) {
    return exp_nonpositive<tail>(d);
  } else {
    return vexp<acc_t, false>(d);
  }
}

// Either exp: ATen's with its NaN fix-up where the row may hold NaN or +inf, else the fast one.
template <bool may_be_nan, ExpTail tail, typename acc_t>
Vectorized<acc_t> row_exp(const Vectorized<acc_t>& d) {
  if constexpr (may_be_nan) {
    return vexp<acc_t, true>(d);
  } else {
    return exp_finite_row<tail>(d);
  }
}

// NaN-propagating max, like at::vec::maximum.
template <typename acc_t>
acc_t nan_max(acc_t a, acc_t b) {
  return (a != a || a > b) ? a : b;
}

// Four independent accumulators: one would chain every vector's max (compare, max, blend: ~7
// cycles) behind the previous one, and the pass, the first over each chunk, would be latency-bound.
// The lanes past the end of a partial vector are filled with the identity (-inf for the max,
// 0 for sums) by Vec::set, so no scalar tail.
constexpr int kAccumulators = 4;

// x - x is 0 for every finite x and NaN for NaN and +-inf.
template <typename acc_t>
bool is_finite(acc_t x) {
  return x - x == acc_t(0);
}

// check_finite's flag, folded into a loop that already loads every vector: flag + v * 0 stays
// (+-)0 while every lane seen is finite and turns NaN for good at the first NaN or +-inf (inf * 0
// is NaN). One FMA a vector; where the flag is set, first_nonfinite then finds the position.
template <typename acc_t>
VL_ROW_INLINE Vectorized<acc_t> finite_flag(const Vectorized<acc_t>& flag, const Vectorized<acc_t>& v) {
  return at::vec::fmadd(v, Vectorized<acc_t>(acc_t(0)), flag);
}

// True when no lane of `flag` saw a non-finite value.
template <typename acc_t>
bool flag_finite(const Vectorized<acc_t>& flag) {
  using Vec = Vectorized<acc_t>;
  return is_finite(at::vec::vec_reduce_all<acc_t>([](Vec& a, Vec& b) { return a + b; }, flag));
}

// The first non-finite element of x[0, n), or -1: the rescan of the rare chunk whose flag is set.
template <typename acc_t>
int64_t first_nonfinite(const acc_t* x, int64_t n) {
  for (int64_t c = 0; c < n; ++c) {
    if (!is_finite(x[c])) return c;
  }
  return -1;
}

// The chunk's NaN-propagating max; with `check`, *finite also says whether every element is
// finite (a -inf does not show in the max), from the same loop (finite_flag).
template <typename acc_t, bool check = false>
acc_t chunk_max(const acc_t* x, int64_t n, bool* finite = nullptr) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t L = Vec::size();
  const Vec lowest(-std::numeric_limits<acc_t>::infinity()), zero(acc_t(0));
  Vec vm[kAccumulators] = {lowest, lowest, lowest, lowest};
  Vec flag[kAccumulators] = {zero, zero, zero, zero};
  int64_t c = 0;
  for (; c + kAccumulators * L <= n; c += kAccumulators * L) {
    for (int a = 0; a < kAccumulators; ++a) {
      const Vec v = Vec::loadu(x + c + a * L);
      vm[a] = at::vec::maximum(vm[a], v);
      if constexpr (check) flag[a] = finite_flag(flag[a], v);
    }
  }
  for (; c < n; c += L) {
    const int64_t k = std::min(L, n - c);
    const Vec v = Vec::loadu(x + c, k);  // the lanes past the end are 0: finite
    vm[0] = at::vec::maximum(vm[0], Vec::set(lowest, v, k));
    if constexpr (check) flag[0] = finite_flag(flag[0], v);
  }
  if constexpr (check) *finite = flag_finite((flag[0] + flag[1]) + (flag[2] + flag[3]));
  const Vec m = at::vec::maximum(at::vec::maximum(vm[0], vm[1]), at::vec::maximum(vm[2], vm[3]));
  return at::vec::vec_reduce_all<acc_t>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, m);
}

// The next chunk (or the next row's first) is prefetched while this one is worked on from L1, so
// its memory traffic overlaps the exp work, and spread over the exp loop a few cache lines a
// step. The hardware prefetcher alone left the forward's max pass waiting on memory (40% of the
// forward at C = 1000); asked all at once, most requests found the core's few miss buffers busy:
// the float32 forward at 4096 x 32000 (2 threads, min of 9) took 32-36 ms that way, 24 ms spread,
// and at 65536 x 1000 (one chunk a row, the next row's) 17.5 -> 12.3 ms.
struct SpreadPrefetch {
  const char* p = nullptr;
  const char* end = nullptr;
  int64_t lines_per_step = 0;
  void step() {
    for (int64_t i = 0; i < lines_per_step && p < end; ++i, p += 64) __builtin_prefetch(p);
  }
  void finish() {
    for (; p < end; p += 64) __builtin_prefetch(p);
  }
};

template <typename scalar_t>
SpreadPrefetch spread_prefetch_chunk(const scalar_t* row, int64_t stride, int64_t c0, int64_t num_classes,
                                     int64_t steps) {
  SpreadPrefetch pf;
  if (stride != 1 || c0 >= num_classes) return pf;
  pf.p = reinterpret_cast<const char*>(row + c0);
  pf.end = reinterpret_cast<const char*>(row + std::min(num_classes, c0 + kChunkElems));
  pf.lines_per_step = ((pf.end - pf.p) / 64 + steps) / std::max<int64_t>(steps, 1);
  return pf;
}

// What to prefetch while chunk c0 of `row` is worked on: its next chunk, or after the last chunk
// the first of `next_row` (nullptr: none).
template <typename scalar_t>
SpreadPrefetch spread_prefetch_next(const scalar_t* row, const scalar_t* next_row, int64_t stride, int64_t c0,
                                    int64_t num_classes, int64_t steps) {
  if (c0 + kChunkElems < num_classes) return spread_prefetch_chunk(row, stride, c0 + kChunkElems, num_classes, steps);
  if (next_row == nullptr) return SpreadPrefetch{};
  return spread_prefetch_chunk(next_row, stride, 0, num_classes, steps);
}

// sum_c exp(x_c - m); m is the chunk's max, so nothing overflows. Accumulators as in chunk_max.
template <bool may_be_nan, typename acc_t>
acc_t chunk_sum_exp_impl(const acc_t* x, int64_t n, acc_t m, SpreadPrefetch* pf) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t L = Vec::size();
  const Vec vm(m), zero(acc_t(0));
  Vec acc[kAccumulators] = {zero, zero, zero, zero};
  int64_t c = 0;
  for (; c + kAccumulators * L <= n; c += kAccumulators * L) {
    if (pf) pf->step();
    for (int a = 0; a < kAccumulators; ++a) {
      acc[a] = acc[a] + row_exp<may_be_nan, ExpTail::kTinyForSums>(Vec::loadu(x + c + a * L) - vm);
    }
  }
  for (; c < n; c += L) {
    const int64_t k = std::min(L, n - c);
    acc[0] = acc[0] + Vec::set(zero, row_exp<may_be_nan, ExpTail::kTinyForSums>(Vec::loadu(x + c, k) - vm), k);
  }
  const Vec total = (acc[0] + acc[1]) + (acc[2] + acc[3]);
  return at::vec::vec_reduce_all<acc_t>([](Vec& a, Vec& b) { return a + b; }, total);
}

// A finite max (NaN-propagating) means no NaN and no +inf in the chunk.
template <typename acc_t>
acc_t chunk_sum_exp(const acc_t* x, int64_t n, acc_t m, SpreadPrefetch* pf) {
  return is_finite(m) ? chunk_sum_exp_impl<false>(x, n, m, pf) : chunk_sum_exp_impl<true>(x, n, m, pf);
}

// RowSums over a chunk (see xent_row.h): w == nullptr means unit weights, q == nullptr means a
// class-index row (only swd is formed, and only when `with_swd`).
template <typename acc_t>
RowSums<acc_t> chunk_row_sums(const acc_t* x, const acc_t* w, const acc_t* q, int64_t n, acc_t ref, bool with_swd) {
  using Vec = Vectorized<acc_t>;
  const Vec vref(ref), one(acc_t(1));
  Vec swd(acc_t(0)), swq(acc_t(0)), swqd(acc_t(0));
  int64_t c = 0;
  for (; c + Vec::size() <= n; c += Vec::size()) {
    const Vec d = Vec::loadu(x + c) - vref;
    const Vec wv = w ? Vec::loadu(w + c) : one;
    if (with_swd) swd = swd + wv * d;
    if (q) {
      const Vec wq = wv * Vec::loadu(q + c);
      swq = swq + wq;
      swqd = swqd + wq * d;
    }
  }
  auto hsum = [](Vec v) { return at::vec::vec_reduce_all<acc_t>([](Vec& a, Vec& b) { return a + b; }, v); };
  RowSums<acc_t> sums{hsum(swd), hsum(swq), hsum(swqd)};
  for (; c < n; ++c) {
    RowSums<acc_t> e = row_sums_element<acc_t>(x[c], w ? w[c] : acc_t(1), q ? q[c] : acc_t(0), ref);
    if (!with_swd) e.swd = 0;
    sums = row_sums_add(sums, e);
  }
  return sums;
}

// out_c = k * (S softmax_c - a_c) with a_c = w_c (share q_c + eps/C): both target kinds.
// For a class-index row q == nullptr (a_c is then the smoothing share alone; the caller writes
// the target element itself, from acc_t, so its cancellation never goes through a rounded value).
// `extra` is softmax_extra's coefficient (z-loss, lse gradient); 0 adds exactly nothing.
template <bool may_be_nan, typename acc_t>
void chunk_grad_impl(acc_t* out, const acc_t* x, const acc_t* w, const acc_t* q, int64_t n, RowLse<acc_t> lse,
                     acc_t scale, acc_t mass, acc_t share, acc_t eps_per_class, acc_t extra, SpreadPrefetch* pf) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t L = Vec::size();
  const Vec vmax(lse.max), vlog_sum(lse.log_sum), vks(scale * mass + extra), vk(scale), vshare(share),
      veps(eps_per_class);
  auto p_term = [&](const Vec& xv) { return vks * row_exp<may_be_nan, ExpTail::kZeroBelow>((xv - vmax) - vlog_sum); };
  auto subtracted = [&](int64_t c, int64_t k) {  // k w_c a_c
    const Vec wv = w ? Vec::loadu(w + c, k) : Vec(acc_t(1));
    return vk * (wv * (q ? vshare * Vec::loadu(q + c, k) + veps : veps));
  };
  const int64_t full = n / L * L;
  if (!w && !q) {
    // The common case (class-index row, no weights): k w_c a_c is one constant, and the loop
    // has no per-vector branches left (a quarter of the pass's instructions when it had them).
    const Vec k_eps = vk * veps;
    for (int64_t c = 0; c < full; c += L) {
      if (pf) pf->step();
      (p_term(Vec::loadu(x + c)) - k_eps).store(out + c);
    }
  } else {
    for (int64_t c = 0; c < full; c += L) {
      if (pf) pf->step();
      (p_term(Vec::loadu(x + c)) - subtracted(c, L)).store(out + c);
    }
  }
  // The last, partial vector masked: a scalar tail would pay one libm exp per leftover class,
  // 8 of every 1000 at C = 1000, a third of the backward's time.
  if (full < n) (p_term(Vec::loadu(x + full, n - full)) - subtracted(full, n - full)).store(out + full, n - full);
}

// A row with a finite max and log-sum has no NaN or +inf logit.
template <typename acc_t>
void chunk_grad(acc_t* out, const acc_t* x, const acc_t* w, const acc_t* q, int64_t n, RowLse<acc_t> lse, acc_t scale,
                acc_t mass, acc_t share, acc_t eps_per_class, acc_t extra = acc_t(0), SpreadPrefetch* pf = nullptr) {
  if (is_finite(lse.max) && is_finite(lse.log_sum)) {
    chunk_grad_impl<false>(out, x, w, q, n, lse, scale, mass, share, eps_per_class, extra, pf);
  } else {
    chunk_grad_impl<true>(out, x, w, q, n, lse, scale, mass, share, eps_per_class, extra, pf);
  }
}

// d loss / d q_c = -k share w_c log softmax_c.
template <typename acc_t>
void chunk_target_grad(acc_t* out, const acc_t* x, const acc_t* w, int64_t n, RowLse<acc_t> lse, acc_t scale,
                       acc_t share) {
  using Vec = Vectorized<acc_t>;
  const Vec vmax(lse.max), vlog_sum(lse.log_sum), vneg(-scale * share), one(acc_t(1));
  int64_t c = 0;
  for (; c + Vec::size() <= n; c += Vec::size()) {
    const Vec wv = w ? Vec::loadu(w + c) : one;
    (vneg * wv * ((Vec::loadu(x + c) - vmax) - vlog_sum)).store(out + c);
  }
  for (; c < n; ++c) out[c] = -scale * share * (w ? w[c] : acc_t(1)) * log_prob(x[c], lse);
}

// Logit softcapping over a chunk: out_c = cap * tanh(x_c / cap) (out may be x). Same operation
// order as torch's cap * tanh(x / cap), with ATen's own vectorised tanh.
template <typename acc_t>
void chunk_softcap(acc_t* out, const acc_t* x, int64_t n, acc_t cap) {
  using Vec = Vectorized<acc_t>;
  const Vec vcap(cap);
  int64_t c = 0;
  for (; c + Vec::size() <= n; c += Vec::size()) (vcap * (Vec::loadu(x + c) / vcap).tanh()).store(out + c);
  for (; c < n; ++c) out[c] = softcap_logit(x[c], cap);
}

// Gradient w.r.t. the raw logits from the gradient w.r.t. the capped ones (chain rule):
// g_c *= 1 - (capped_c / cap)^2.
template <typename acc_t>
void chunk_softcap_grad(acc_t* g, const acc_t* capped, int64_t n, acc_t cap) {
  using Vec = Vectorized<acc_t>;
  const Vec vcap(cap), one(acc_t(1));
  int64_t c = 0;
  for (; c + Vec::size() <= n; c += Vec::size()) {
    const Vec t = Vec::loadu(capped + c) / vcap;
    (Vec::loadu(g + c) * (one - t * t)).store(g + c);
  }
  for (; c < n; ++c) g[c] *= softcap_slope(capped[c], cap);
}

// A chunk's logits as the loss sees them: load_chunk's values, capped into `buf` when cap > 0
// (never in place: the source may be the caller's tensor).
template <typename scalar_t, typename acc_t>
const acc_t* load_logits(const scalar_t* row, int64_t stride, int64_t c0, int64_t len, acc_t* buf, acc_t cap) {
  const acc_t* xs = load_chunk(row, stride, c0, len, buf);
  if (!(cap > acc_t(0))) return xs;
  chunk_softcap(buf, xs, len, cap);
  return buf;
}

// Widens a contiguous half/bfloat16 chunk into `buf` and returns its (NaN-propagating) max from
// the same loop: the forward's first two passes over the chunk in one (the bfloat16 forward spent
// a third of its time in them). With `check`, *finite as chunk_max's.
template <typename scalar_t, bool check = false>
float widen_chunk_max(const scalar_t* p, int64_t len, float* buf, bool* finite = nullptr) {
  using Vec = Vectorized<float>;
  constexpr int64_t L = Vec::size();
  const Vec lowest(-std::numeric_limits<float>::infinity()), zero(0.0f);
  Vec m0 = lowest, m1 = lowest;  // two accumulators: one max chain per vector would set the pace
  Vec f0 = zero, f1 = zero;
  int64_t c = 0;
  for (; c + 2 * L <= len; c += 2 * L) {
    Vec a, b;
    at::vec::load_to_float(p + c, a);
    at::vec::load_to_float(p + c + L, b);
    a.store(buf + c);
    b.store(buf + c + L);
    m0 = at::vec::maximum(m0, a);
    m1 = at::vec::maximum(m1, b);
    if constexpr (check) {
      f0 = finite_flag(f0, a);
      f1 = finite_flag(f1, b);
    }
  }
  float m =
      at::vec::vec_reduce_all<float>([](Vec& x, Vec& y) { return at::vec::maximum(x, y); }, at::vec::maximum(m0, m1));
  bool tail_finite = true;
  for (; c < len; ++c) {
    buf[c] = static_cast<float>(p[c]);
    m = nan_max(m, buf[c]);
    if constexpr (check) tail_finite &= is_finite(buf[c]);
  }
  if constexpr (check) *finite = tail_finite && flag_finite(f0 + f1);
  return m;
}

// load_logits, and the chunk's max in `max_out`; with `check`, whether the chunk (as the loss
// sees it: capped) is all finite in *finite.
template <bool check = false, typename scalar_t, typename acc_t>
const acc_t* load_logits_with_max(const scalar_t* row, int64_t stride, int64_t c0, int64_t len, acc_t* buf, acc_t cap,
                                  acc_t& max_out, bool* finite = nullptr) {
  if constexpr (is_reduced_float_v<scalar_t>) {
    if (stride == 1 && !(cap > acc_t(0))) {
      max_out = widen_chunk_max<scalar_t, check>(row + c0, len, buf, finite);
      return buf;
    }
  }
  const acc_t* xs = load_logits(row, stride, c0, len, buf, cap);
  max_out = chunk_max<acc_t, check>(xs, len, finite);
  return xs;
}

}  // namespace CPU_CAPABILITY
}  // namespace validated_loss::cpu
