// Small class counts, packed rows (a contiguous (N, C) tensor with C <= kLaneRowsMaxClasses): the
// common case of a group of L = Vectorized<acc_t>::size() consecutive rows, done whole in vectors.
//
// Included by packed_rows.h (after the helpers it uses: row_exp, exp_finite_row, read_target,
// store_row_loss, load_chunk, fill_padded_block, kLaneRowsMaxClasses), not on its own.
//
// Why: the rows-in-lanes kernels spend most of a short row on scalar work, ~20 scalar moves to
// gather it into the lanes and ~30-40 instructions of per-row bookkeeping. Here L rows that lie
// back to back are turned into class-major lanes with L x L tile transposes (full-width loads that
// may run past a row's end into the next rows: those lanes are never used), and the bookkeeping of
// the common case is done for all L rows at once:
//   no class weight, no label smoothing, no z-loss, no softcap (and no lse gradient),
//   every target of the group valid (in [0, C), not ignore_index),
//   every logit of the group finite (forward: so check_finite has nothing to report there, and
//   a group it would report on goes to the per-row code), every saved lse finite (backward
//   choice of vexp).
// Then the row formulas of xent_row.h reduce to loss = lse - x_y (index_row_loss with
// target_share = w_y = 1: exact multiplications by 1) and gradient = scale * softmax (+ the target
// element from grad_from_prob). A group that is not the common case returns false before writing
// anything, and the caller runs its general per-row code on it: ignored and invalid targets (with
// their reporting), weights, smoothing, z-loss, softcap and non-finite logits keep exactly one
// implementation. The exps are fast_math.h's (every lane finite), as the packed per-row backward
// takes for a finite row, so an in-place and an out-of-place gradient get the same bits.
#pragma once

namespace validated_loss::cpu {
namespace CPU_CAPABILITY {

// dst[j * ld_dst + i] = src[i * ld_src + j] for an L x L tile (ATen's AVX2/AVX-512 float
// transposes; a scalar loop for double and the DEFAULT build).
template <typename acc_t>
inline void transpose_tile(const acc_t* src, int64_t ld_src, acc_t* dst, int64_t ld_dst) {
  constexpr int L = Vectorized<acc_t>::size();
  at::vec::transpose_mxn<acc_t, L, L>(src, ld_src, dst, ld_dst);
}

#if defined(CPU_CAPABILITY_AVX2)
// An 8 x 8 float tile in eight AVX registers, transposed in registers: 32-bit interleaves, then
// 64-bit, then 128-bit lane swaps. Written here rather than ATen's transpose_block, which torch
// 2.6 lacks.
inline void transpose_8x8(Vectorized<float>* v) {
  __m256 a[8], b[8];
  for (int i = 0; i < 8; i += 2) {  // a[i]: r_i0 r_j0 r_i1 r_j1 | r_i4 ..; a[i+1]: r_i2 r_j2 .. (j = i+1)
    a[i] = _mm256_unpacklo_ps(v[i], v[i + 1]);
    a[i + 1] = _mm256_unpackhi_ps(v[i], v[i + 1]);
  }
  const auto lo64 = [](__m256 x, __m256 y) {
    return _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(x), _mm256_castps_pd(y)));
  };
  const auto hi64 = [](__m256 x, __m256 y) {
    return _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(x), _mm256_castps_pd(y)));
  };
  for (int h = 0; h < 8; h += 4) {  // b[h + k]: column k (and k + 4) of rows h..h+3
    b[h + 0] = lo64(a[h + 0], a[h + 2]);
    b[h + 1] = hi64(a[h + 0], a[h + 2]);
    b[h + 2] = lo64(a[h + 1], a[h + 3]);
    b[h + 3] = hi64(a[h + 1], a[h + 3]);
  }
  for (int k = 0; k < 4; ++k) {  // join rows 0..3 and 4..7 of columns k and k + 4
    v[k] = _mm256_permute2f128_ps(b[k], b[k + 4], 0x20);
    v[k + 4] = _mm256_permute2f128_ps(b[k], b[k + 4], 0x31);
  }
}
#endif

// v[0..L) seen as the rows of an L x L tile, transposed in place: in registers for AVX2 float,
// else through memory.
template <typename acc_t>
inline void transpose_vectors(Vectorized<acc_t>* v) {
  constexpr int L = Vectorized<acc_t>::size();
#if defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<acc_t, float>) {
    transpose_8x8(v);
    return;
  }
#endif
  alignas(64) acc_t a[L * L], b[L * L];
  for (int i = 0; i < L; ++i) v[i].store(a + i * L);
  transpose_tile(a, L, b, L);
  for (int i = 0; i < L; ++i) v[i] = Vectorized<acc_t>::loadu(b + i * L);
}

// True when every lane of v is finite (x - x is 0 exactly for finite x, NaN otherwise).
template <typename acc_t>
inline bool all_finite(const Vectorized<acc_t>& v) {
  constexpr int L = Vectorized<acc_t>::size();
  return (v - v).zero_mask() == static_cast<int>((1u << L) - 1u);
}

// The options under which a group may take the vector path (see the header comment).
template <typename acc_t>
inline bool lane_group_options_ok(const LossConstants<acc_t>& k, const acc_t* weight) {
  return weight == nullptr && !has_smoothing(k) && !has_softcap(k) && k.z_scale == acc_t(0);
}

// Reads the L targets of rows first.. into y; true when all are valid.
template <int L>
inline bool lane_group_targets(const IndexTargets& t, int64_t first, int64_t num_classes, int64_t* y) {
  bool ok = true;
  for (int l = 0; l < L; ++l) {
    y[l] = read_target(t, first + l);
    ok &= classify_target(y[l], num_classes, t.ignore_index) == kTargetValid;
  }
  return ok;
}

// rows: L rows back to back (row l at rows + l * C), readable up to (L - 1) * C + padded where
// padded is C rounded up to L. Fills buf[c * L + l] for c < padded (c >= C: other rows' values).
template <typename acc_t>
inline void lane_group_transpose_in(const acc_t* rows, int64_t num_classes, acc_t* buf) {
  constexpr int L = Vectorized<acc_t>::size();
  for (int64_t c0 = 0; c0 < num_classes; c0 += L) transpose_tile(rows + c0, num_classes, buf + c0 * L, L);
}

// ---------------------------------------------------------------------------------------------
// Forward.

// The forward's vector path over one block of rows [r0, r1). Groups are tried in order with
// group(first); loss sums are kept per lane in double and added to the block's totals by finish(),
// so a block's total is the same whatever the thread count.
template <typename scalar_t, typename acc_t = acc_type<scalar_t>>
class LaneGroupForward {
 public:
  using Vec = Vectorized<acc_t>;
  static constexpr int L = Vec::size();

  LaneGroupForward(const scalar_t* x, int64_t num_rows, int64_t num_classes, const IndexTargets& t,
                   const ForwardOutputs& out, int64_t r1)
      : x_(x),
        num_rows_(num_rows),
        C_(num_classes),
        padded_((num_classes + L - 1) / L * L),
        t_(t),
        out_(out),
        end_(r1),
        window_rows_(kChunkElems / num_classes / L * L) {}

  // Rows first..first+L-1 (all inside the block): false, with nothing written, when the group is
  // not the common case.
  bool group(int64_t first) {
    int64_t y[L];
    if (first + L > end_ || !lane_group_targets<L>(t_, first, C_, y)) return false;
    const acc_t* rows = rows_at(first);
    alignas(64) acc_t buf[kLaneRowsMaxClasses * L];
    lane_group_transpose_in(rows, C_, buf);
    // A plain max (no NaN fix-up) and fast_math.h's exp: valid because the group is only kept
    // when the sum of its logits is finite (no NaN, no inf anywhere).
    Vec m = Vec::loadu(buf), sum_x = m;
    for (int64_t c = 1; c < C_; ++c) {
      const Vec xc = Vec::loadu(buf + c * L);
      m = at::vec::clamp_min(m, xc);
      sum_x = sum_x + xc;
    }
    if (!all_finite(sum_x)) return false;
    Vec s(acc_t(0));
    for (int64_t c = 0; c < C_; ++c) s = s + exp_finite_row<ExpTail::kTinyForSums>(Vec::loadu(buf + c * L) - m);
    const RowLse<Vec> lse{m, s.log()};
    alignas(64) acc_t x_y[L], loss[L];
    for (int l = 0; l < L; ++l) x_y[l] = rows[l * C_ + y[l]];
    // index_row_loss of the common case: target_share * w_y * lse_minus, both factors exactly 1.
    lse_minus(lse, Vec::loadu(x_y)).store(loss);
    const auto pair = at::vec::interleave2(lse.max, lse.log_sum);  // store_row_lse's {max, log_sum}
    acc_t* saved = static_cast<acc_t*>(out_.lse) + 2 * first;
    pair.first.store(saved);
    pair.second.store(saved + L);
    for (int l = 0; l < L; ++l) {
      store_row_loss<scalar_t>(out_, first + l, loss[l]);
      loss_lanes_[l] += loss[l];
    }
    rows_done_ += L;
    return true;
  }

  // Adds this block's vector-path totals (every row of them counted with weight 1).
  void finish(ForwardTotals& part) const {
    double sum = 0;
    for (int l = 0; l < L; ++l) sum += loss_lanes_[l];
    part.loss_sum += sum;
    part.total_weight += static_cast<double>(rows_done_);
  }

 private:
  // Row `first` of a readable span: the logits themselves when they are acc_t and the group's
  // whole-vector reads stay inside the tensor, else an L1 copy of up to window_rows_ rows
  // (widened, zero-padded past its end) that is refilled when a group leaves it.
  const acc_t* rows_at(int64_t first) {
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      if ((first + L - 1) * C_ + padded_ <= num_rows_ * C_) return x_ + first * C_;
    }
    if (first < win_first_ || first + L > win_first_ + win_rows_) {
      win_first_ = first;
      win_rows_ = std::min(window_rows_, end_ - first);
      const int64_t n = win_rows_ * C_;
      fill_padded_block(load_chunk(x_ + first * C_, 1, 0, n, window_), n, padded_, window_);
    }
    return window_ + (first - win_first_) * C_;
  }

  const scalar_t* x_;
  int64_t num_rows_, C_, padded_;
  const IndexTargets& t_;
  const ForwardOutputs& out_;
  int64_t end_, window_rows_;
  int64_t win_first_ = 0, win_rows_ = 0;
  int64_t rows_done_ = 0;
  double loss_lanes_[L] = {};
  alignas(64) acc_t window_[kChunkElems + kLaneRowsMaxClasses];
};

// ---------------------------------------------------------------------------------------------
// Backward.

// The backward's vector path for L packed rows, read from xrows (index_backward_packed_rows' L1
// copy or the logits themselves, readable to (L - 1) * C + padded), their gradients stored to
// grows (rows back to back: that L1 block or the gradient tensor). False, with nothing written,
// when the group is not the common case. The caller has checked lane_group_backward_ok.
//
// Tile by tile (L classes of the L rows): L row loads, a transpose to class-major lanes, the
// probabilities and gradients, a transpose back and L row stores, all in registers. A row's
// stores may run past its end into the next rows of the group: tiles go from the last to the
// first and rows in order, so those rows' own values are stored after. Nothing is stored past
// the group.
template <typename acc_t, bool may_be_nan>
inline void lane_group_grad_tiles(const acc_t* xrows, acc_t* grows, int64_t num_classes, const Vectorized<acc_t>& vmax,
                                  const Vectorized<acc_t>& vlog_sum, const Vectorized<acc_t>& vks,
                                  const Vectorized<acc_t>& vke, acc_t* pbuf) {
  using Vec = Vectorized<acc_t>;
  constexpr int L = Vec::size();
  const int64_t C = num_classes;
  for (int64_t c0 = (C - 1) / L * L; c0 >= 0; c0 -= L) {
    Vec v[L];
    for (int l = 0; l < L; ++l) v[l] = Vec::loadu(xrows + l * C + c0);
    transpose_vectors(v);  // v[j]: class c0 + j of the L rows
    const int classes = static_cast<int>(std::min<int64_t>(L, C - c0));
    for (int j = 0; j < L; ++j) {
      if (j >= classes) {
        v[j] = Vec(acc_t(0));
        continue;
      }
      const Vec p = row_exp<may_be_nan, ExpTail::kZeroBelow>((v[j] - vmax) - vlog_sum);
      p.store(pbuf + (c0 + j) * L);
      v[j] = vks * p - vke;  // index_backward_packed_rows' expression, w_c = 1
    }
    transpose_vectors(v);
    for (int l = 0; l < L; ++l) {
      // Whole vectors, except where one would pass the group's end: grows may be the gradient
      // tensor itself, where the rows after the group belong to another block (thread).
      const int64_t room = (L - l) * C - c0;
      if (room >= L) {
        v[l].store(grows + l * C + c0);
      } else {
        v[l].store(grows + l * C + c0, static_cast<int>(room));
      }
    }
  }
}

// Whether index_backward_packed_rows tries groups. Only up to 32 classes: there rows are short
// enough that per-row setup and padded vectors dominate the row-by-row code (2x faster as groups
// at C = 8..24), while from ~40 classes on the row-by-row code's whole vectors win (C = 64 was
// ~10% slower as groups: two transposes a tile and no waste left to remove).
constexpr int64_t kLaneGroupBackwardMaxClasses = 32;

template <typename acc_t>
inline bool lane_group_backward_ok(const LossConstants<acc_t>& k, const acc_t* weight, const GradScale& gs) {
  return k.num_classes <= kLaneGroupBackwardMaxClasses && lane_group_options_ok(k, weight) && gs.lse_grad == nullptr;
}

template <typename acc_t>
bool lane_group_backward(const acc_t* xrows, acc_t* grows, int64_t first, const IndexTargets& t,
                         const LossConstants<acc_t>& k, const acc_t* lse, const GradScale& gs) {
  using Vec = Vectorized<acc_t>;
  constexpr int L = Vec::size();
  const int64_t C = k.num_classes;
  int64_t y[L];
  if (!lane_group_targets<L>(t, first, C, y)) return false;
  alignas(64) acc_t pbuf[kLaneRowsMaxClasses * L];
  alignas(64) acc_t scale[L];
  for (int l = 0; l < L; ++l) scale[l] = row_grad_scale<acc_t>(gs, first + l);
  // load_row_lse for L rows: the saved tensor holds {max, log_sum} pairs.
  const auto saved = at::vec::deinterleave2(Vec::loadu(lse + 2 * first), Vec::loadu(lse + 2 * first + L));
  const Vec vmax = saved.first, vlog_sum = saved.second;
  // Per row: mass = index_row_mass(k, 1), extra = softmax_extra(k, scale, lse, 0) = 0 here, the
  // eps term scale * (w_c * eps) as in index_backward_packed_rows (eps = 0: kept for equal bits).
  const acc_t mass = index_row_mass(k, acc_t(1)), extra = acc_t(0);
  const Vec vscale = Vec::loadu(scale);
  const Vec vks = vscale * Vec(mass) + Vec(extra);
  const Vec vke = vscale * (Vec(acc_t(1)) * Vec(smoothing_per_class(k)));
  // As chunk_grad: a finite max and log-sum mean no NaN or +inf logit in the row.
  if (all_finite(vmax + vlog_sum)) {
    lane_group_grad_tiles<acc_t, false>(xrows, grows, C, vmax, vlog_sum, vks, vke, pbuf);
  } else {
    lane_group_grad_tiles<acc_t, true>(xrows, grows, C, vmax, vlog_sum, vks, vke, pbuf);
  }
  // The target element from the probability already computed, as index_backward_packed_rows.
  const acc_t target_mass = index_target_mass(k, acc_t(1), true, acc_t(1));
  for (int l = 0; l < L; ++l) {
    grows[l * C + y[l]] = grad_from_prob(scale[l], mass, pbuf[y[l] * L + l], target_mass, extra);
  }
  return true;
}

}  // namespace CPU_CAPABILITY
}  // namespace validated_loss::cpu
