// CPU kernels, compiled once per CPU capability (kernels_default/avx2/avx512.cpp include this file
// with that capability's flags and CPU_CAPABILITY macro, so at::vec::Vectorized has that width).
//
// Shape of every kernel: rows in parallel (at::parallel_for), each row walked in chunks of
// kChunkElems classes. A chunk is read from memory once, widened to the accumulate type in an
// L1-resident buffer when needed (half types, strided rows), and then every per-chunk quantity is
// computed from that buffer with Vectorized<acc_t>. The per-row math comes from xent_row.h.
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

template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// The half types, widened to float for the arithmetic. Our own trait: ATen's
// at::is_reduced_floating_point_v is missing in torch 2.6.
template <typename scalar_t>
constexpr bool is_reduced_float_v = std::is_same_v<scalar_t, at::Half> || std::is_same_v<scalar_t, at::BFloat16>;

constexpr int64_t kChunkElems = 2048;  // 8 KiB of float: stays in L1 while it is worked on

// Rows per reduction block: a function of C only, so a sum never depends on the thread count.
// A multiple of 64 rows, so lane groups of small-class kernels never straddle two blocks.
inline int64_t rows_per_block(int64_t num_classes) {
  const int64_t rows = std::max<int64_t>(1, 32768 / std::max<int64_t>(num_classes, 1));
  return (rows + 63) / 64 * 64;
}



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

template <typename acc_t>
acc_t chunk_max(const acc_t* x, int64_t n) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t L = Vec::size();
  const Vec lowest(-std::numeric_limits<acc_t>::infinity());
  Vec vm[kAccumulators] = {lowest, lowest, lowest, lowest};
  int64_t c = 0;
  for (; c + kAccumulators * L <= n; c += kAccumulators * L) {
    for (int a = 0; a < kAccumulators; ++a) vm[a] = at::vec::maximum(vm[a], Vec::loadu(x + c + a * L));
  }
  for (; c < n; c += L) {
    const int64_t k = std::min(L, n - c);
    vm[0] = at::vec::maximum(vm[0], Vec::set(lowest, Vec::loadu(x + c, k), k));
  }
  const Vec m = at::vec::maximum(at::vec::maximum(vm[0], vm[1]), at::vec::maximum(vm[2], vm[3]));
  return at::vec::vec_reduce_all<acc_t>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, m);
}

// x - x is 0 for every finite x and NaN for NaN and +-inf.
template <typename acc_t>
bool is_finite(acc_t x) {
  return x - x == acc_t(0);
}

// Smallest element, only asked for by check_finite (a -inf logit does not show in the max).
template <typename acc_t>
acc_t chunk_min(const acc_t* x, int64_t n) {
  acc_t m = INFINITY;
  for (int64_t c = 0; c < n; ++c) m = (x[c] != x[c] || x[c] < m) ? x[c] : m;
  return m;
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
// a third of its time in them).
template <typename scalar_t>
float widen_chunk_max(const scalar_t* p, int64_t len, float* buf) {
  using Vec = Vectorized<float>;
  constexpr int64_t L = Vec::size();
  const Vec lowest(-std::numeric_limits<float>::infinity());
  Vec m0 = lowest, m1 = lowest;  // two accumulators: one max chain per vector would set the pace
  int64_t c = 0;
  for (; c + 2 * L <= len; c += 2 * L) {
    Vec a, b;
    at::vec::load_to_float(p + c, a);
    at::vec::load_to_float(p + c + L, b);
    a.store(buf + c);
    b.store(buf + c + L);
    m0 = at::vec::maximum(m0, a);
    m1 = at::vec::maximum(m1, b);
  }
  float m = at::vec::vec_reduce_all<float>([](Vec& x, Vec& y) { return at::vec::maximum(x, y); },
                                          at::vec::maximum(m0, m1));
  for (; c < len; ++c) {
    buf[c] = static_cast<float>(p[c]);
    m = nan_max(m, buf[c]);
  }
  return m;
}

// load_logits, and the chunk's max in `max_out`.
template <typename scalar_t, typename acc_t>
const acc_t* load_logits_with_max(const scalar_t* row, int64_t stride, int64_t c0, int64_t len, acc_t* buf, acc_t cap,
                                  acc_t& max_out) {
  if constexpr (is_reduced_float_v<scalar_t>) {
    if (stride == 1 && !(cap > acc_t(0))) {
      max_out = widen_chunk_max(row + c0, len, buf);
      return buf;
    }
  }
  const acc_t* xs = load_logits(row, stride, c0, len, buf, cap);
  max_out = chunk_max(xs, len);
  return xs;
}

// ---------------------------------------------------------------------------------------------
// Small class counts: one row per SIMD lane.

// Up to this many classes a row is too short to fill vectors along the classes: the small-class
// kernels put one row in each SIMD lane instead (and read strided class dimensions that way too).
constexpr int64_t kLaneRowsMaxClasses = 64;

inline bool use_lane_rows(const RowGeometry& g) {
  return g.num_classes > 0 && g.num_classes <= kLaneRowsMaxClasses;
}

// Gathers the rows at `offsets` (one per lane) into buf[c * L + lane], widened to acc_t.
template <typename scalar_t, typename acc_t>
void gather_lane_rows(const scalar_t* x, const int64_t* offsets, int64_t num_classes, int64_t class_stride,
                      acc_t* buf) {
  constexpr int L = Vectorized<acc_t>::size();
  for (int l = 0; l < L; ++l) {
    const scalar_t* row = x + offsets[l];
    for (int64_t c = 0; c < num_classes; ++c) buf[c * L + l] = static_cast<acc_t>(row[c * class_stride]);
  }
}

// Offsets of rows first..first+L-1 (the last real row repeated to fill a short group).
template <typename acc_t>
int lane_offsets(const RowGeometry& g, int64_t first, int64_t end, int64_t* offsets) {
  constexpr int L = Vectorized<acc_t>::size();
  const int n = static_cast<int>(std::min<int64_t>(L, end - first));
  for (int l = 0; l < L; ++l) offsets[l] = row_offset(g, first + std::min(l, n - 1));
  return n;
}

// Per-lane RowLse of the L rows in buf: max, then log of the sum of exp over the classes.
template <typename acc_t>
void lane_lse(const acc_t* buf, int64_t num_classes, acc_t* max_out, acc_t* log_sum_out) {
  using Vec = Vectorized<acc_t>;
  constexpr int L = Vec::size();
  Vec m = Vec::loadu(buf);
  for (int64_t c = 1; c < num_classes; ++c) m = at::vec::maximum(m, Vec::loadu(buf + c * L));
  Vec s(acc_t(0));
  for (int64_t c = 0; c < num_classes; ++c) s = s + vexp(Vec::loadu(buf + c * L) - m);
  m.store(max_out);
  s.log().store(log_sum_out);
}

// ---------------------------------------------------------------------------------------------
// One row's forward scan: its lse, its shifted sums, and (check_finite) its first bad class.

template <typename acc_t>
struct RowScan {
  LseState<acc_t> lse;
  RowSums<acc_t> sums;
  acc_t ref;
  int64_t nonfinite_class;  // -1 when none found or not asked
};

// cap > 0: the logits are softcapped first (the reference too, so it stays near the capped values).
// check_finite then sees capped values: an infinite logit caps to +-cap, only NaN remains.
template <typename scalar_t, typename acc_t>
RowScan<acc_t> scan_row(const scalar_t* x_row, int64_t x_stride, const scalar_t* q_row, int64_t q_stride,
                        int64_t num_classes, const acc_t* weight, bool with_swd, bool check_finite, acc_t* xbuf,
                        acc_t* qbuf, acc_t cap = acc_t(0), const scalar_t* next_row = nullptr) {
  RowScan<acc_t> scan{lse_empty<acc_t>(), row_sums_zero<acc_t>(), acc_t(0), -1};
  if (num_classes == 0) return scan;
  const acc_t first = static_cast<acc_t>(x_row[0]);
  scan.ref = row_reference(cap > acc_t(0) ? softcap_logit(first, cap) : first);
  const bool need_sums = with_swd || q_row != nullptr;
  for (int64_t c0 = 0; c0 < num_classes; c0 += kChunkElems) {
    const int64_t n = std::min(kChunkElems, num_classes - c0);
    acc_t m;
    const acc_t* xs = load_logits_with_max(x_row, x_stride, c0, n, xbuf, cap, m);
    SpreadPrefetch pf = spread_prefetch_next(x_row, next_row, x_stride, c0, num_classes,
                                             n / (kAccumulators * Vectorized<acc_t>::size()));
    if (m != -INFINITY) scan.lse = lse_combine(scan.lse, LseState<acc_t>{m, chunk_sum_exp(xs, n, m, &pf)});
    pf.finish();
    if (check_finite && scan.nonfinite_class < 0 && !(m - m == 0 && is_finite(chunk_min(xs, n)))) {
      for (int64_t c = 0; c < n; ++c) {
        if (!is_finite(xs[c])) {
          scan.nonfinite_class = c0 + c;
          break;
        }
      }
    }
    if (need_sums) {
      const acc_t* qs = q_row ? load_chunk(q_row, q_stride, c0, n, qbuf) : nullptr;
      scan.sums = row_sums_add(scan.sums, chunk_row_sums(xs, weight ? weight + c0 : nullptr, qs, n, scan.ref, with_swd));
    }
  }
  return scan;
}

template <typename acc_t>
LossConstants<acc_t> loss_constants(const LossOptions& o, int64_t num_classes) {
  acc_t sum_weight = acc_t(num_classes);
  if (o.weight) {
    // In double: one by one in float32, 32000 weights drift by ~1e-6 relative (torch: ~1e-7).
    const acc_t* w = static_cast<const acc_t*>(o.weight);
    double sum = 0;
    for (int64_t c = 0; c < num_classes; ++c) sum += static_cast<double>(w[c]);
    sum_weight = static_cast<acc_t>(sum);
  }
  return {num_classes, static_cast<acc_t>(o.label_smoothing), sum_weight, static_cast<acc_t>(o.z_scale),
          static_cast<acc_t>(o.softcap)};
}

inline int64_t read_target(const IndexTargets& t, int64_t r) {
  return t.is_byte ? static_cast<int64_t>(static_cast<const uint8_t*>(t.data)[r])
                   : static_cast<const int64_t*>(t.data)[r];
}

inline ForwardTotals merge_totals(const std::vector<ForwardTotals>& parts) {
  ForwardTotals total;
  for (const auto& p : parts) {  // in block order: the result is the same for any thread count
    total.loss_sum += p.loss_sum;
    total.total_weight += p.total_weight;
    total.invalid = invalid_merge(total.invalid, p.invalid);
    if (total.nonfinite_row < 0 && p.nonfinite_row >= 0) {
      total.nonfinite_row = p.nonfinite_row;
      total.nonfinite_class = p.nonfinite_class;
    }
    total.nonfinite_count += p.nonfinite_count;
  }
  return total;
}

// Runs body(r0, r1, totals) over fixed blocks of rows in parallel and merges the blocks' totals.
template <typename Body>
ForwardTotals for_each_row_block(int64_t num_rows, int64_t num_classes, const Body& body) {
  const int64_t block = rows_per_block(num_classes);
  const int64_t num_blocks = (num_rows + block - 1) / block;
  std::vector<ForwardTotals> parts(num_blocks);
  at::parallel_for(0, num_blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) body(b * block, std::min(num_rows, (b + 1) * block), parts[b]);
  });
  return merge_totals(parts);
}

// One row's loss into the 'none' output, narrowed to the logits' dtype unless the output is
// accumulate-dtype (autocast: float32 losses from half/bfloat16 logits).
template <typename scalar_t, typename acc_t>
void store_row_loss(const ForwardOutputs& out, int64_t r, acc_t loss) {
  if (!out.loss_rows) return;
  if (out.loss_rows_acc) {
    static_cast<acc_t*>(out.loss_rows)[r] = loss;
  } else {
    static_cast<scalar_t*>(out.loss_rows)[r] = static_cast<scalar_t>(loss);
  }
}

inline void note_nonfinite(ForwardTotals& part, int64_t row, int64_t cls) {
  if (cls < 0) return;
  if (part.nonfinite_row < 0) {
    part.nonfinite_row = row;
    part.nonfinite_class = cls;
  }
  part.nonfinite_count += 1;
}

// ---------------------------------------------------------------------------------------------
// Class-index targets.

template <typename acc_t>
acc_t row_grad_scale(const GradScale& g, int64_t r) {
  return g.per_row ? static_cast<const acc_t*>(g.per_row)[r] : static_cast<acc_t>(g.scalar);
}

template <typename acc_t>
acc_t row_lse_grad(const GradScale& g, int64_t r) {
  return g.lse_grad ? static_cast<const acc_t*>(g.lse_grad)[r] : acc_t(0);
}

// One valid row's gradient, chunk by chunk: scale * d loss / d x + lse_grad * d lse / d x, through
// the softcap when there is one. x_y is the row's target logit as the loss saw it (capped), read
// by the caller before anything is written: `grow` may be the row's own logits (the fused op), so
// every chunk is read whole before its gradient is stored, and the target element is computed
// from x_y, never from memory.
template <typename scalar_t, typename acc_t>
void index_grad_row(const scalar_t* row, int64_t x_stride, scalar_t* grow, int64_t g_stride,
                    const LossConstants<acc_t>& k, const acc_t* w, int64_t y, acc_t x_y, RowLse<acc_t> lse,
                    acc_t scale, acc_t lse_grad, acc_t* xbuf, acc_t* gbuf, const scalar_t* next_row = nullptr) {
  const int64_t C = k.num_classes;
  const acc_t w_y = w ? w[y] : acc_t(1);
  const acc_t mass = index_row_mass(k, w_y);
  const acc_t extra = softmax_extra(k, scale, lse, lse_grad);
  for (int64_t c0 = 0; c0 < C; c0 += kChunkElems) {
    const int64_t n = std::min(kChunkElems, C - c0);
    const acc_t* xs = load_logits(row, x_stride, c0, n, xbuf, k.softcap);
    SpreadPrefetch pf = spread_prefetch_next(row, next_row, x_stride, c0, C, n / Vectorized<acc_t>::size());
    acc_t* out = chunk_target(grow, g_stride, c0, gbuf);
    const acc_t* ws = smoothing_weights(k, w);
    chunk_grad<acc_t>(out, xs, ws ? ws + c0 : nullptr, nullptr, n, lse, scale, mass, acc_t(0), smoothing_per_class(k),
                      extra, &pf);
    pf.finish();
    if (has_softcap(k)) chunk_softcap_grad(out, xs, n, k.softcap);
    store_chunk(grow, g_stride, c0, n, out);
  }
  // The target element, recomputed whole in acc_t (not patched into a rounded value).
  acc_t g_y = grad_element(scale, mass, x_y, lse, index_target_mass(k, w_y, true, w_y), extra);
  if (has_softcap(k)) g_y *= softcap_slope(x_y, k.softcap);
  grow[y * g_stride] = static_cast<scalar_t>(g_y);
}

// Small-class backward: one row per SIMD lane (see use_lane_rows). Every group of L rows is
// gathered (and its target logits kept) before any of its gradients is written, so `gout` may
// be the logits themselves.
template <typename scalar_t, typename acc_t = acc_type<scalar_t>>
void index_backward_lanes(const LogitsView& xv, const IndexTargets& t, const LossConstants<acc_t>& k, const acc_t* w,
                          const acc_t* lse, const GradScale& gs, const GradOutput& gout) {
  using Vec = Vectorized<acc_t>;
  constexpr int L = Vec::size();
  const RowGeometry& g = xv.geo;
  const int64_t C = g.num_classes;
  const auto* x = static_cast<const scalar_t*>(xv.data);
  auto* grad = static_cast<scalar_t*>(gout.data);
  at::parallel_for(0, (g.num_rows + L - 1) / L, std::max<int64_t>(1, 2048 / C), [&](int64_t b0, int64_t b1) {
    alignas(64) acc_t buf[kLaneRowsMaxClasses * L];
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t first = b * L;
      int64_t offsets[L];
      const int n = lane_offsets<acc_t>(g, first, g.num_rows, offsets);
      gather_lane_rows(x, offsets, C, g.class_stride, buf);
      if (has_softcap(k)) chunk_softcap(buf, buf, C * L, k.softcap);
      alignas(64) acc_t scale[L], mass[L], max[L], log_sum[L], ks[L], ke[L], extra[L], x_y[L];
      int64_t y[L];
      bool valid[L];
      for (int l = 0; l < L; ++l) {
        const int64_t r = first + std::min(l, n - 1);
        y[l] = read_target(t, r);
        valid[l] = l < n && classify_target(y[l], C, t.ignore_index) == kTargetValid;
        scale[l] = valid[l] ? row_grad_scale<acc_t>(gs, r) : acc_t(0);
        mass[l] = valid[l] ? index_row_mass(k, w ? w[y[l]] : acc_t(1)) : acc_t(0);
        const RowLse<acc_t> row = valid[l] ? load_row_lse(lse, r) : RowLse<acc_t>{0, 0};
        max[l] = row.max;
        log_sum[l] = row.log_sum;
        extra[l] = valid[l] ? softmax_extra(k, scale[l], row, row_lse_grad<acc_t>(gs, r)) : acc_t(0);
        ks[l] = scale[l] * mass[l] + extra[l];
        ke[l] = scale[l] * smoothing_per_class(k);
        x_y[l] = valid[l] ? buf[y[l] * L + l] : acc_t(0);
      }
      const Vec vks = Vec::loadu(ks), vke = Vec::loadu(ke), vmax = Vec::loadu(max), vlog_sum = Vec::loadu(log_sum);
      const Vec vcap(k.softcap), one(acc_t(1));
      for (int64_t c = 0; c < C; ++c) {
        const Vec xc = Vec::loadu(buf + c * L);
        const acc_t* ws = smoothing_weights(k, w);
        Vec gc = vks * vexp((xc - vmax) - vlog_sum) - vke * Vec(ws ? ws[c] : acc_t(1));
        if (has_softcap(k)) {
          const Vec tc = xc / vcap;
          gc = gc * (one - tc * tc);
        }
        gc.store(buf + c * L);
      }
      for (int l = 0; l < n; ++l) {
        scalar_t* grow = grad + row_offset(gout.geo, first + l);
        const int64_t gstride = gout.geo.class_stride;
        if (!valid[l]) {
          zero_row(grow, gstride, C);
          continue;
        }
        for (int64_t c = 0; c < C; ++c) grow[c * gstride] = static_cast<scalar_t>(buf[c * L + l]);
        // The target element, recomputed whole in acc_t from the (capped) logit kept above.
        const acc_t w_y = w ? w[y[l]] : acc_t(1);
        acc_t g_y = grad_element(scale[l], mass[l], x_y[l], RowLse<acc_t>{max[l], log_sum[l]},
                                 index_target_mass(k, w_y, true, w_y), extra[l]);
        if (has_softcap(k)) g_y *= softcap_slope(x_y[l], k.softcap);
        grow[y[l] * gstride] = static_cast<scalar_t>(g_y);
      }
    }
  });
}

// Packed short rows (C <= kLaneRowsMaxClasses; rows back to back, row i at i * C, in both the
// logits and the gradient: a contiguous (N, C) tensor). A block of whole rows, at most
// kChunkElems elements, is one contiguous span: it is read into an L1 buffer and written back
// with full-width vector copies. Inside the buffer each row is worked on in whole vectors that
// run past its end into the next row's elements (computed, then overwritten when that row is
// done: rows go in order); the target element is taken from the probabilities already computed
// (no scalar exp). Strided layouts keep the rows-in-lanes kernel, where adjacent rows are
// adjacent in memory.
inline bool is_packed(const RowGeometry& g) {
  return g.class_stride == 1 && g.ndim == 1 && (g.strides[0] == g.num_classes || g.sizes[0] == 1);
}

inline bool use_packed_rows(const RowGeometry& x, const RowGeometry& grad) {
  return use_lane_rows(x) && is_packed(x) && is_packed(grad);
}

// Stores n acc_t values to contiguous memory, narrowing them when the memory is narrower.
template <typename scalar_t, typename acc_t>
void store_span(scalar_t* p, int64_t n, const acc_t* values) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    std::memcpy(p, values, n * sizeof(acc_t));
  } else {
    store_chunk(p, 1, 0, n, values);
  }
}

// Makes `buf` hold a block of n packed-row values, then `padded` zeros: whole-vector reads of the
// block's last row run past its end. `xs` is load_chunk's result for the block (`buf` itself when
// it widened them, else the tensor).
template <typename acc_t>
void fill_padded_block(const acc_t* xs, int64_t n, int64_t padded, acc_t* buf) {
  if (xs != buf) std::memcpy(buf, xs, n * sizeof(acc_t));
  std::fill(buf + n, buf + n + padded, acc_t(0));
}

}  // namespace CPU_CAPABILITY
}  // namespace validated_loss::cpu
#include "small_rows.h"  // the common case of packed short rows, L rows at a time
namespace validated_loss::cpu {
namespace CPU_CAPABILITY {

// Every block is read whole before its gradient is stored, so `gout` may be the logits themselves.
template <typename scalar_t, typename acc_t = acc_type<scalar_t>>
void index_backward_packed_rows(const LogitsView& xv, const IndexTargets& t, const LossConstants<acc_t>& k,
                                const acc_t* w, const acc_t* lse, const GradScale& gs, const GradOutput& gout) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t L = Vec::size();
  const int64_t C = xv.geo.num_classes;
  const int64_t padded = (C + L - 1) / L * L;
  const int64_t block_rows = kChunkElems / C;
  const auto* x = static_cast<const scalar_t*>(xv.data);
  auto* grad = static_cast<scalar_t*>(gout.data);
  const acc_t eps = smoothing_per_class(k);
  // Weights padded to whole vectors, once (the padding lanes' gradients are dropped).
  alignas(64) acc_t wpad[kLaneRowsMaxClasses];
  const acc_t* ws = smoothing_weights(k, w);
  for (int64_t c = 0; c < padded; ++c) wpad[c] = c < C && ws ? ws[c] : acc_t(1);
  const bool lane_groups = lane_group_backward_ok(k, w, gs);
  const int64_t N = xv.geo.num_rows;
  const bool overlapping = reinterpret_cast<const char*>(grad) < reinterpret_cast<const char*>(x + N * C) &&
                           reinterpret_cast<const char*>(x) < reinterpret_cast<const char*>(grad + N * C);
  // Vector-path groups store an acc_t gradient straight into the tensor (no second copy) when it
  // is not the logits; the per-row code's rows go through gbuf, copied out before the next group.
  const bool write_in_place = std::is_same_v<scalar_t, acc_t> && !overlapping;
  const int64_t num_blocks = (xv.geo.num_rows + block_rows - 1) / block_rows;
  at::parallel_for(0, num_blocks, 1, [&](int64_t b0, int64_t b1) {
    // + kLaneRowsMaxClasses: the last row's whole vectors run past the block's end.
    alignas(64) acc_t xbuf[kChunkElems + kLaneRowsMaxClasses], gbuf[kChunkElems + kLaneRowsMaxClasses];
    alignas(64) acc_t pbuf[kLaneRowsMaxClasses];
    const Vec one(acc_t(1)), vcap(k.softcap), veps(eps);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * block_rows, rows = std::min(block_rows, xv.geo.num_rows - r0), n = rows * C;
      const acc_t* xs = load_chunk(x + r0 * C, 1, 0, n, xbuf);
      // acc_t logits are read where they are (no copy) unless they must be capped, the vectors
      // past the block's end would leave the tensor, or the gradient overlaps them.
      const bool read_in_place = xs != xbuf && !has_softcap(k) && !overlapping && (r0 + rows) * C + padded <= N * C;
      if (!read_in_place) {
        fill_padded_block(xs, n, padded, xbuf);
        if (has_softcap(k)) chunk_softcap(xbuf, xbuf, n + padded, k.softcap);
        xs = xbuf;
      }
      int64_t pending = 0;  // the first row in gbuf not yet stored
      for (int64_t i = 0; i < rows; ++i) {
        acc_t* gdst = write_in_place ? reinterpret_cast<acc_t*>(grad) + (r0 + i) * C : gbuf + i * C;
        if (lane_groups && i % L == 0 && i + L <= rows &&
            lane_group_backward(xs + i * C, gdst, r0 + i, t, k, lse, gs)) {
          if (write_in_place) {
            store_span(grad + (r0 + pending) * C, (i - pending) * C, gbuf + pending * C);
            pending = i + L;
          }
          i += L - 1;
          continue;
        }
        const int64_t r = r0 + i;
        const acc_t* xrow = xs + i * C;
        acc_t* grow = gbuf + i * C;
        const int64_t y = read_target(t, r);
        if (classify_target(y, C, t.ignore_index) != kTargetValid) {
          std::fill(grow, grow + C, acc_t(0));
          continue;
        }
        const RowLse<acc_t> row = load_row_lse(lse, r);
        const acc_t scale = row_grad_scale<acc_t>(gs, r);
        const acc_t w_y = w ? w[y] : acc_t(1);
        const acc_t mass = index_row_mass(k, w_y);
        const acc_t extra = softmax_extra(k, scale, row, row_lse_grad<acc_t>(gs, r));
        const Vec vmax(row.max), vlog_sum(row.log_sum), vks(scale * mass + extra), vk(scale);
        const bool finite = is_finite(row.max) && is_finite(row.log_sum);
        for (int64_t c = 0; c < padded; c += L) {
          const Vec d = (Vec::loadu(xrow + c) - vmax) - vlog_sum;
          const Vec p = finite ? exp_finite_row<ExpTail::kZeroBelow>(d) : vexp(d);
          p.store(pbuf + c);
          (vks * p - vk * (Vec::loadu(wpad + c) * veps)).store(grow + c);  // chunk_grad's expression
        }
        grow[y] = grad_from_prob(scale, mass, pbuf[y], index_target_mass(k, w_y, true, w_y), extra);
        if (has_softcap(k)) {
          for (int64_t c = 0; c < padded; c += L) {
            const Vec tc = Vec::loadu(xrow + c) / vcap;
            (Vec::loadu(grow + c) * (one - tc * tc)).store(grow + c);
          }
        }
      }
      store_span(grad + (r0 + pending) * C, n - pending * C, gbuf + pending * C);
    }
  });
}

// The small-class backward for this layout: packed rows when rows are back to back, rows in
// lanes otherwise.
template <typename scalar_t, typename acc_t = acc_type<scalar_t>>
void index_backward_small(const LogitsView& xv, const IndexTargets& t, const LossConstants<acc_t>& k, const acc_t* w,
                          const acc_t* lse, const GradScale& gs, const GradOutput& gout) {
  if (use_packed_rows(xv.geo, gout.geo)) {
    index_backward_packed_rows<scalar_t>(xv, t, k, w, lse, gs, gout);
  } else {
    index_backward_lanes<scalar_t>(xv, t, k, w, lse, gs, gout);
  }
}

// What the fused op adds to the forward: the gradient of every row, written to `grad` (which may
// be the logits themselves) right after the row's forward scan, while the row is still in cache.
struct FusedGrad {
  GradScale scale;
  GradOutput grad;
};

template <typename scalar_t>
ForwardTotals index_forward_typed(const LogitsView& xv, const IndexTargets& t, const LossOptions& o,
                                  const ForwardOutputs& out, const FusedGrad* fused = nullptr) {
  using acc_t = acc_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  constexpr int L = Vec::size();
  const RowGeometry& g = xv.geo;
  const int64_t C = g.num_classes;
  const auto* x = static_cast<const scalar_t*>(xv.data);
  const auto* w = static_cast<const acc_t*>(o.weight);
  const LossConstants<acc_t> k = loss_constants<acc_t>(o, C);
  auto* lse_out = static_cast<acc_t*>(out.lse);

  // What the row's gradient needs from its forward.
  struct RowResult {
    TargetKind kind;
    int64_t y;
    RowLse<acc_t> lse;
    acc_t x_y;  // the target logit as the loss saw it (capped)
  };

  // Records one row's result. `scan_valid_row` is only called for a valid target: an invalid
  // one is never used as an address.
  auto finish_row = [&](int64_t r, ForwardTotals& part, auto&& scan_valid_row) {
    const int64_t y = read_target(t, r);
    const TargetKind kind = classify_target(y, C, t.ignore_index);
    acc_t loss = 0;
    RowLse<acc_t> lse{0, 0};
    acc_t x_y = 0;
    if (kind == kTargetInvalid) {
      part.invalid = invalid_merge(part.invalid, InvalidTarget{r, y, 1});
      loss = NAN;
      lse = RowLse<acc_t>{NAN, NAN};
    } else if (kind == kTargetValid) {
      const acc_t w_y = w ? w[y] : acc_t(1);
      acc_t ref;
      RowSums<acc_t> sums;
      scan_valid_row(y, lse, ref, x_y, sums, part);
      loss = index_row_loss(k, lse, ref, x_y, w_y, sums);
      part.total_weight += w_y;
    }
    part.loss_sum += loss;
    store_row_lse(lse_out, r, lse);
    store_row_loss<scalar_t>(out, r, loss);
    return RowResult{kind, y, lse, x_y};
  };

  const ForwardTotals totals = for_each_row_block(g.num_rows, C, [&](int64_t r0, int64_t r1, ForwardTotals& part) {
    if (!use_lane_rows(g)) {
      alignas(64) acc_t xbuf[kChunkElems];
      alignas(64) acc_t gbuf[kChunkElems];
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t* row = x + row_offset(g, r);
        const scalar_t* next_row = r + 1 < r1 ? x + row_offset(g, r + 1) : nullptr;  // prefetched during this one
        const RowResult res = finish_row(r, part, [&](int64_t y, RowLse<acc_t>& lse, acc_t& ref, acc_t& x_y,
                                                      RowSums<acc_t>& sums, ForwardTotals& p) {
          const RowScan<acc_t> scan = scan_row<scalar_t, acc_t>(row, g.class_stride, nullptr, 0, C, w, has_smoothing(k),
                                                                out.check_finite, xbuf, nullptr, k.softcap, next_row);
          note_nonfinite(p, r, scan.nonfinite_class);
          lse = row_lse(scan.lse);
          ref = scan.ref;
          x_y = loss_logit(k, static_cast<acc_t>(row[y * g.class_stride]));
          sums = scan.sums;
        });
        if (!fused) continue;
        scalar_t* grow = static_cast<scalar_t*>(fused->grad.data) + row_offset(fused->grad.geo, r);
        if (res.kind == kTargetValid) {
          index_grad_row(row, g.class_stride, grow, fused->grad.geo.class_stride, k, w, res.y, res.x_y, res.lse,
                         row_grad_scale<acc_t>(fused->scale, r), row_lse_grad<acc_t>(fused->scale, r), xbuf, gbuf);
        } else {
          zero_row(grow, fused->grad.geo.class_stride, C);
        }
      }
      return;
    }
    alignas(64) acc_t buf[kLaneRowsMaxClasses * L];
    const bool lane_groups = is_packed(g) && lane_group_options_ok(k, w) && !out.check_finite;
    LaneGroupForward<scalar_t> groups(x, g.num_rows, C, t, out, r1);
    for (int64_t first = r0; first < r1; first += L) {
      if (lane_groups && groups.group(first)) continue;
      int64_t offsets[L];
      const int n = lane_offsets<acc_t>(g, first, r1, offsets);
      gather_lane_rows(x, offsets, C, g.class_stride, buf);
      if (has_softcap(k)) chunk_softcap(buf, buf, C * L, k.softcap);
      alignas(64) acc_t max[L], log_sum[L], ref[L], swd[L];
      lane_lse(buf, C, max, log_sum);
      for (int l = 0; l < L; ++l) ref[l] = row_reference(buf[l]);
      if (has_smoothing(k)) {
        const Vec vref = Vec::loadu(ref);
        Vec acc(acc_t(0));
        for (int64_t c = 0; c < C; ++c) acc = acc + Vec(w ? w[c] : acc_t(1)) * (Vec::loadu(buf + c * L) - vref);
        acc.store(swd);
      }
      for (int l = 0; l < n; ++l) {
        finish_row(first + l, part, [&](int64_t y, RowLse<acc_t>& lse_r, acc_t& ref_r, acc_t& x_y,
                                        RowSums<acc_t>& sums, ForwardTotals& p) {
          if (out.check_finite) {
            int64_t bad = -1;
            for (int64_t c = 0; c < C && bad < 0; ++c) bad = is_finite(buf[c * L + l]) ? -1 : c;
            note_nonfinite(p, first + l, bad);
          }
          lse_r = RowLse<acc_t>{max[l], log_sum[l]};
          ref_r = ref[l];
          x_y = buf[y * L + l];
          sums = RowSums<acc_t>{has_smoothing(k) ? swd[l] : acc_t(0), 0, 0};
        });
      }
    }
    groups.finish(part);
  });
  // Small class counts: the gradient pass re-gathers the (short) rows after the whole forward.
  if (fused && use_lane_rows(g)) index_backward_small<scalar_t>(xv, t, k, w, lse_out, fused->scale, fused->grad);
  return totals;
}

template <typename scalar_t>
void index_backward_typed(const LogitsView& xv, const IndexTargets& t, const LossOptions& o, const void* lse_ptr,
                          const GradScale& gs, const GradOutput& gout) {
  using acc_t = acc_type<scalar_t>;
  const RowGeometry& g = xv.geo;
  const int64_t C = g.num_classes;
  const auto* x = static_cast<const scalar_t*>(xv.data);
  const auto* w = static_cast<const acc_t*>(o.weight);
  const auto* lse = static_cast<const acc_t*>(lse_ptr);
  auto* grad = static_cast<scalar_t*>(gout.data);
  const LossConstants<acc_t> k = loss_constants<acc_t>(o, C);
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1));
  if (use_lane_rows(g)) {
    index_backward_small<scalar_t>(xv, t, k, w, lse, gs, gout);
    return;
  }
  at::parallel_for(0, g.num_rows, grain, [&](int64_t r0, int64_t r1) {
    alignas(64) acc_t xbuf[kChunkElems];
    alignas(64) acc_t gbuf[kChunkElems];
    for (int64_t r = r0; r < r1; ++r) {
      scalar_t* grow = grad + row_offset(gout.geo, r);
      const scalar_t* next_row = r + 1 < r1 ? x + row_offset(g, r + 1) : nullptr;  // prefetched during this one
      const int64_t y = read_target(t, r);
      if (classify_target(y, C, t.ignore_index) != kTargetValid) {
        zero_row(grow, gout.geo.class_stride, C);
        continue;
      }
      const scalar_t* row = x + row_offset(g, r);
      const acc_t x_y = loss_logit(k, static_cast<acc_t>(row[y * g.class_stride]));
      index_grad_row(row, g.class_stride, grow, gout.geo.class_stride, k, w, y, x_y, load_row_lse(lse, r),
                     row_grad_scale<acc_t>(gs, r), row_lse_grad<acc_t>(gs, r), xbuf, gbuf, next_row);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Probability targets (same dtype and shape as the logits, any strides).

// A probability row's loss term by term (xent_row.h's prob_loss_term), for the rows
// prob_row_needs_terms names.
template <typename scalar_t, typename acc_t>
acc_t prob_row_loss_direct(const scalar_t* x_row, int64_t x_stride, const scalar_t* q_row, int64_t q_stride,
                           const acc_t* w, const LossConstants<acc_t>& k, RowLse<acc_t> lse) {
  acc_t loss = 0;
  for (int64_t c = 0; c < k.num_classes; ++c) {
    loss += prob_loss_term(k, w ? w[c] : acc_t(1), static_cast<acc_t>(q_row[c * q_stride]), lse,
                           static_cast<acc_t>(x_row[c * x_stride]));
  }
  return loss;
}

template <typename scalar_t>
ForwardTotals prob_forward_typed(const LogitsView& xv, const LogitsView& qv, const LossOptions& o,
                                 const ForwardOutputs& out) {
  using acc_t = acc_type<scalar_t>;
  const RowGeometry& g = xv.geo;
  const auto* x = static_cast<const scalar_t*>(xv.data);
  const auto* q = static_cast<const scalar_t*>(qv.data);
  const auto* w = static_cast<const acc_t*>(o.weight);
  const LossConstants<acc_t> k = loss_constants<acc_t>(o, g.num_classes);
  auto* lse_out = static_cast<acc_t*>(out.lse);
  return for_each_row_block(g.num_rows, g.num_classes, [&](int64_t r0, int64_t r1, ForwardTotals& part) {
   alignas(64) acc_t xbuf[kChunkElems];
   alignas(64) acc_t qbuf[kChunkElems];
   for (int64_t r = r0; r < r1; ++r) {
    const RowScan<acc_t> scan =
        scan_row<scalar_t, acc_t>(x + row_offset(g, r), g.class_stride, q + row_offset(qv.geo, r), qv.geo.class_stride,
                                  g.num_classes, w, has_smoothing(k), out.check_finite, xbuf, qbuf);
    note_nonfinite(part, r, scan.nonfinite_class);
    const RowLse<acc_t> lse = row_lse(scan.lse);
    // An empty class dimension has nothing to sum: the row's loss is 0, as torch's sum over it.
    acc_t loss = g.num_classes == 0 ? acc_t(0) : prob_row_loss(k, lse, scan.ref, scan.sums);
    if (prob_row_needs_terms(loss, lse)) {
      loss = prob_row_loss_direct(x + row_offset(g, r), g.class_stride, q + row_offset(qv.geo, r), qv.geo.class_stride,
                                  w, k, lse);
    }
    part.loss_sum += loss;
    store_row_lse(lse_out, r, lse);
    store_row_loss<scalar_t>(out, r, loss);
   }
  });
}

template <typename scalar_t>
void prob_backward_typed(const LogitsView& xv, const LogitsView& qv, const LossOptions& o, const void* lse_ptr,
                         const GradScale& gs, const GradOutput& gx, const GradOutput* gq) {
  using acc_t = acc_type<scalar_t>;
  const RowGeometry& g = xv.geo;
  const int64_t C = g.num_classes;
  const auto* x = static_cast<const scalar_t*>(xv.data);
  const auto* q = static_cast<const scalar_t*>(qv.data);
  const auto* w = static_cast<const acc_t*>(o.weight);
  const auto* lse = static_cast<const acc_t*>(lse_ptr);
  const auto* per_row = static_cast<const acc_t*>(gs.per_row);
  const LossConstants<acc_t> k = loss_constants<acc_t>(o, C);
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1));
  at::parallel_for(0, g.num_rows, grain, [&](int64_t r0, int64_t r1) {
    alignas(64) acc_t xbuf[kChunkElems];
    alignas(64) acc_t qbuf[kChunkElems];
    alignas(64) acc_t gbuf[kChunkElems];
    for (int64_t r = r0; r < r1; ++r) {
      const scalar_t* xrow = x + row_offset(g, r);
      const scalar_t* qrow = q + row_offset(qv.geo, r);
      scalar_t* gxrow = static_cast<scalar_t*>(gx.data) + row_offset(gx.geo, r);
      scalar_t* gqrow = gq ? static_cast<scalar_t*>(gq->data) + row_offset(gq->geo, r) : nullptr;
      const acc_t scale = per_row ? per_row[r] : static_cast<acc_t>(gs.scalar);
      // S needs the whole row's sum_c w_c q_c before the first gradient element can be written.
      acc_t swq = 0;
      for (int64_t c0 = 0; c0 < C; c0 += kChunkElems) {
        const int64_t n = std::min(kChunkElems, C - c0);
        const acc_t* qs = load_chunk(qrow, qv.geo.class_stride, c0, n, qbuf);
        swq += chunk_row_sums<acc_t>(qs, w ? w + c0 : nullptr, qs, n, acc_t(0), false).swq;
      }
      const acc_t mass = prob_row_mass(k, swq);
      for (int64_t c0 = 0; c0 < C; c0 += kChunkElems) {
        const int64_t n = std::min(kChunkElems, C - c0);
        const acc_t* xs = load_chunk(xrow, g.class_stride, c0, n, xbuf);
        const acc_t* qs = load_chunk(qrow, qv.geo.class_stride, c0, n, qbuf);
        const acc_t* wc = w ? w + c0 : nullptr;
        acc_t* out = chunk_target(gxrow, gx.geo.class_stride, c0, gbuf);
        chunk_grad<acc_t>(out, xs, wc, qs, n, load_row_lse(lse, r), scale, mass, target_share(k), smoothing_per_class(k));
        store_chunk(gxrow, gx.geo.class_stride, c0, n, out);
        if (gqrow) {
          out = chunk_target(gqrow, gq->geo.class_stride, c0, gbuf);
          chunk_target_grad<acc_t>(out, xs, wc, n, load_row_lse(lse, r), scale, target_share(k));
          store_chunk(gqrow, gq->geo.class_stride, c0, n, out);
        }
      }
    }
  });
}

}  // namespace CPU_CAPABILITY

// Entry points of this capability (declared in kernel_api.h), dispatching on the logits' dtype.
namespace CPU_CAPABILITY {

ForwardTotals index_forward(const LogitsView& x, const IndexTargets& t, const LossOptions& o,
                            const ForwardOutputs& out) {
  return AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.dtype, "index_forward",
                                         [&] { return index_forward_typed<scalar_t>(x, t, o, out); });
}

void index_backward(const LogitsView& x, const IndexTargets& t, const LossOptions& o, const void* lse,
                    const GradScale& g, const GradOutput& grad) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.dtype, "index_backward",
                                  [&] { index_backward_typed<scalar_t>(x, t, o, lse, g, grad); });
}

ForwardTotals index_forward_grad(const LogitsView& x, const IndexTargets& t, const LossOptions& o,
                                 const ForwardOutputs& out, const GradScale& g, const GradOutput& grad) {
  const FusedGrad fused{g, grad};
  return AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.dtype, "index_forward_grad",
                                         [&] { return index_forward_typed<scalar_t>(x, t, o, out, &fused); });
}

ForwardTotals prob_forward(const LogitsView& x, const LogitsView& q, const LossOptions& o,
                           const ForwardOutputs& out) {
  return AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.dtype, "prob_forward",
                                         [&] { return prob_forward_typed<scalar_t>(x, q, o, out); });
}

void prob_backward(const LogitsView& x, const LogitsView& q, const LossOptions& o, const void* lse,
                   const GradScale& g, const GradOutput& grad_x, const GradOutput* grad_q) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.dtype, "prob_backward",
                                  [&] { prob_backward_typed<scalar_t>(x, q, o, lse, g, grad_x, grad_q); });
}

}  // namespace CPU_CAPABILITY
}  // namespace validated_loss::cpu
