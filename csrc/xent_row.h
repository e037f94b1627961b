// Per-row cross-entropy math, written once for the CPU and CUDA kernels.
//
// Torch-free and __host__ __device__: the CPU build's tests execute every line of it, and the CUDA
// kernels call the same functions. Kernels only decide *which* elements a thread reads; what is
// computed from them lives here.
//
// Notation for one row (one batch/spatial position n): logits x_c over C classes, class weights
// w_c (all 1 without a weight), smoothing eps, target class y or target distribution q_c.
//   lse      = log sum_c exp(x_c)
//   q'_c     = (1 - eps) q_c + eps / C           (probability targets)
//   index loss  = (1 - eps) w_y (lse - x_y) + (eps / C) sum_c w_c (lse - x_c)
//   prob  loss  = sum_c w_c q'_c (lse - x_c)
//   gradient    = k * (S * softmax_c - a_c), with a_c the weighted target mass of class c,
//                 S = sum_c a_c and k the reduction's scale (grad_output, or / total weight).
// A row keeps its lse as two numbers, max and log_sum = log sum_c exp(x_c - max): their sum would
// absorb log_sum whenever |max| is large (20000 + 1.6 in float32 is 20001.6 +- 0.001), while
// torch's log_softmax computes (x - max) - log_sum and loses nothing there.
// Sums of the form sum_c w_c (x_c - r) are taken against a fixed per-row reference r (the row's
// first finite logit) so that partial sums from any split of the row just add, and so that large
// logits do not cancel catastrophically against lse.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define XENT_HD __host__ __device__ __forceinline__
#else
#define XENT_HD inline
#endif

namespace validated_loss {

// Same codes as at::Reduction, so the Python layer passes torch's own enum values.
enum Reduction : int64_t { kReductionNone = 0, kReductionMean = 1, kReductionSum = 2 };

// What a class-index target means for its row.
enum TargetKind : int { kTargetValid = 0, kTargetIgnored = 1, kTargetInvalid = 2 };

// ignore_index is matched first, as in torch: it may lie inside or outside [0, C).
XENT_HD TargetKind classify_target(int64_t target, int64_t num_classes, int64_t ignore_index) {
  if (target == ignore_index) return kTargetIgnored;
  if (target >= 0 && target < num_classes) return kTargetValid;
  return kTargetInvalid;
}

// Reference point for the shifted sums: finite, so that (x - r) is never inf - inf.
template <typename acc_t>
XENT_HD acc_t row_reference(acc_t first_logit) {
  return (first_logit - first_logit == acc_t(0)) ? first_logit : acc_t(0);
}

// Running log-sum-exp of part of a row: max and sum of exp(x - max).
template <typename acc_t>
struct LseState {
  acc_t max;
  acc_t sum;
};

template <typename acc_t>
XENT_HD LseState<acc_t> lse_empty() {
  return {-INFINITY, acc_t(0)};
}

// Merge two partial states. A part that saw only -inf contributes nothing; NaN propagates.
template <typename acc_t>
XENT_HD LseState<acc_t> lse_combine(LseState<acc_t> a, LseState<acc_t> b) {
  if (a.max == -INFINITY) return b;
  if (b.max == -INFINITY) return a;
  const acc_t m = a.max > b.max ? a.max : b.max;
  if (m != m) return {m, m};  // NaN logit somewhere: the whole row is NaN, as in torch
  // exp(inf - inf) would be NaN; a +inf max makes the row NaN anyway (torch does the same).
  return {m, a.sum * std::exp(a.max - m) + b.sum * std::exp(b.max - m)};
}

// Add one logit to a running state (the CUDA kernels' scalar elements: strided rows, heads and
// tails). Bitwise lse_combine(s, {x, 1}) with one exp instead of two: the side whose max is kept
// is scaled by exp(0) = 1 there. Non-finite values and an empty state take lse_combine's rules.
template <typename acc_t>
XENT_HD LseState<acc_t> lse_add(LseState<acc_t> s, acc_t x) {
  if (x - x == acc_t(0) && s.max - s.max == acc_t(0)) {  // both finite
    if (x <= s.max) return {s.max, s.sum + std::exp(x - s.max)};
    return {x, s.sum * std::exp(s.max - x) + acc_t(1)};
  }
  return lse_combine(s, LseState<acc_t>{x, acc_t(1)});
}

// What a row keeps for its backward (see the header comment).
template <typename acc_t>
struct RowLse {
  acc_t max;
  acc_t log_sum;
};

template <typename acc_t>
XENT_HD RowLse<acc_t> row_lse(LseState<acc_t> s) {
  return {s.max, std::log(s.sum)};
}

// log softmax of logit x: (x - max) - log_sum.
template <typename acc_t>
XENT_HD acc_t log_prob(acc_t x, RowLse<acc_t> r) {
  return (x - r.max) - r.log_sum;
}

// lse - v, without forming lse.
template <typename acc_t>
XENT_HD acc_t lse_minus(RowLse<acc_t> r, acc_t v) {
  return (r.max - v) + r.log_sum;
}

// A row's RowLse in the ops' saved tensor: float[num_rows][2] = {max, log_sum}.
template <typename acc_t>
XENT_HD void store_row_lse(acc_t* saved, int64_t row, RowLse<acc_t> v) {
  saved[2 * row] = v.max;
  saved[2 * row + 1] = v.log_sum;
}

template <typename acc_t>
XENT_HD RowLse<acc_t> load_row_lse(const acc_t* saved, int64_t row) {
  return {saved[2 * row], saved[2 * row + 1]};
}

// The log-sum-exp itself (for callers that ask for it; never used inside the loss).
template <typename acc_t>
XENT_HD acc_t lse_value(RowLse<acc_t> r) {
  return r.max + r.log_sum;
}

// Shifted sums a row needs besides its lse (each is a plain sum over classes, so partial sums from
// lanes, threads or chunks add up):
//   swd  = sum_c w_c (x_c - r)           label smoothing (both target kinds)
//   swq  = sum_c w_c q_c                 probability targets
//   swqd = sum_c w_c q_c (x_c - r)       probability targets
template <typename acc_t>
struct RowSums {
  acc_t swd;
  acc_t swq;
  acc_t swqd;
};

template <typename acc_t>
XENT_HD RowSums<acc_t> row_sums_zero() {
  return {acc_t(0), acc_t(0), acc_t(0)};
}

template <typename acc_t>
XENT_HD RowSums<acc_t> row_sums_add(RowSums<acc_t> a, RowSums<acc_t> b) {
  return {a.swd + b.swd, a.swq + b.swq, a.swqd + b.swqd};
}

// Contribution of one element; the kernels' vector loops compute the same three products.
template <typename acc_t>
XENT_HD RowSums<acc_t> row_sums_element(acc_t x, acc_t w, acc_t q, acc_t ref) {
  const acc_t d = x - ref;
  return {w * d, w * q, w * q * d};
}

// Per-call constants of the loss (the same for every row). The last two are the LLM-training
// options (zero when unused, so an aggregate initialiser that omits them turns them off).
template <typename acc_t>
struct LossConstants {
  int64_t num_classes;
  acc_t smoothing;   // eps; <= 0 or NaN means none (torch tests eps > 0)
  acc_t sum_weight;  // sum_c w_c (C without a weight)
  acc_t z_scale;     // z-loss: + z_scale * lse^2 per counted row; 0 means none
  acc_t softcap;     // logits capped to softcap * tanh(x / softcap) first; <= 0 means none
};

template <typename acc_t>
XENT_HD bool has_smoothing(const LossConstants<acc_t>& k) {
  return k.smoothing > acc_t(0);
}

template <typename acc_t>
XENT_HD acc_t smoothing_per_class(const LossConstants<acc_t>& k) {
  return has_smoothing(k) ? k.smoothing / acc_t(k.num_classes) : acc_t(0);
}

template <typename acc_t>
XENT_HD acc_t target_share(const LossConstants<acc_t>& k) {
  return has_smoothing(k) ? acc_t(1) - k.smoothing : acc_t(1);
}

// ---- Logit softcapping (Gemma 2): every logit x is replaced by cap * tanh(x / cap) before the
// softmax, so lse, the target logit and the smoothing sums all see capped values; the gradient
// of a capped logit is multiplied by d capped / d x = 1 - tanh^2 (softcap_slope).

template <typename acc_t>
XENT_HD bool has_softcap(const LossConstants<acc_t>& k) {
  return k.softcap > acc_t(0);
}

template <typename acc_t>
XENT_HD acc_t softcap_logit(acc_t x, acc_t cap) {
  return cap * std::tanh(x / cap);
}

// d capped / d x, from the capped value itself (tanh = capped / cap).
template <typename acc_t>
XENT_HD acc_t softcap_slope(acc_t capped, acc_t cap) {
  const acc_t t = capped / cap;
  return acc_t(1) - t * t;
}

// A logit as the loss sees it: capped when the call asks for it.
template <typename acc_t>
XENT_HD acc_t loss_logit(const LossConstants<acc_t>& k, acc_t x) {
  return has_softcap(k) ? softcap_logit(x, k.softcap) : x;
}

// ---- z-loss (PaLM): z_scale * lse^2 added to every counted row (valid target; ignored rows add
// nothing), unweighted by the class weights, and summed with the cross-entropy before the
// reduction: 'mean' divides the total by the same total weight. Without class weights that is
// Liger's and flash-attn's definition (sum over non-ignored rows / their count).

template <typename acc_t>
XENT_HD acc_t z_loss(const LossConstants<acc_t>& k, RowLse<acc_t> lse) {
  const acc_t v = lse_value(lse);
  return k.z_scale * v * v;
}

// Loss of a row with a valid class-index target y (x_y its logit, w_y its weight).
// The smoothing term is only formed when eps > 0: an untouched -inf logit must not turn 0 * inf
// into NaN when torch would not compute that term at all.
template <typename acc_t>
XENT_HD acc_t index_row_loss(const LossConstants<acc_t>& k, RowLse<acc_t> lse, acc_t ref, acc_t x_target,
                             acc_t w_target, RowSums<acc_t> sums) {
  acc_t loss = target_share(k) * w_target * lse_minus(lse, x_target);
  if (has_smoothing(k)) loss += smoothing_per_class(k) * (k.sum_weight * lse_minus(lse, ref) - sums.swd);
  if (k.z_scale != acc_t(0)) loss += z_loss(k, lse);
  return loss;
}

// Loss of a row with a probability target.
template <typename acc_t>
XENT_HD acc_t prob_row_loss(const LossConstants<acc_t>& k, RowLse<acc_t> lse, acc_t ref, RowSums<acc_t> sums) {
  acc_t mass = target_share(k) * sums.swq;      // sum_c w_c q'_c
  acc_t shifted = target_share(k) * sums.swqd;  // sum_c w_c q'_c (x_c - r)
  if (has_smoothing(k)) {
    mass += smoothing_per_class(k) * k.sum_weight;
    shifted += smoothing_per_class(k) * sums.swd;
  }
  return mass * lse_minus(lse, ref) - shifted;
}

// Total target mass S = sum_c a_c of a class-index row (the softmax coefficient of its gradient).
// Without smoothing no other class's weight is read, as in torch: an inf or NaN weight of a class
// no target uses (1 / class_counts) must not turn 0 * inf into a NaN gradient.
template <typename acc_t>
XENT_HD acc_t index_row_mass(const LossConstants<acc_t>& k, acc_t w_target) {
  const acc_t target = target_share(k) * w_target;
  return has_smoothing(k) ? target + smoothing_per_class(k) * k.sum_weight : target;
}

// Total target mass S of a probability row, from its sum_c w_c q_c.
template <typename acc_t>
XENT_HD acc_t prob_row_mass(const LossConstants<acc_t>& k, acc_t swq) {
  return target_share(k) * swq + smoothing_per_class(k) * k.sum_weight;
}

// Gradient of one logit: k * (S * softmax(x) - a_c) + extra * softmax(x), extra from
// softmax_extra (0 without z-loss or an lse gradient, which then adds exactly nothing). Ignored
// and invalid rows never get here: their gradient is exactly zero.
template <typename acc_t>
XENT_HD acc_t grad_from_prob(acc_t scale, acc_t mass, acc_t p, acc_t target_mass, acc_t extra = acc_t(0)) {
  return scale * (mass * p - target_mass) + extra * p;
}

// The same from the logit (p = exp(log_prob)), for code that has not computed p already.
template <typename acc_t>
XENT_HD acc_t grad_element(acc_t scale, acc_t mass, acc_t x, RowLse<acc_t> lse, acc_t target_mass,
                           acc_t extra = acc_t(0)) {
  return grad_from_prob(scale, mass, std::exp(log_prob(x, lse)), target_mass, extra);
}

// The softmax coefficient a row's gradient gains besides k * S: z-loss's d(z lse^2)/dx_c =
// 2 z lse softmax_c (times the reduction scale k, like the rest of the loss), and the gradient
// flowing into the row's returned lse (d lse / dx_c = softmax_c).
template <typename acc_t>
XENT_HD acc_t softmax_extra(const LossConstants<acc_t>& k, acc_t scale, RowLse<acc_t> lse, acc_t lse_grad) {
  acc_t extra = lse_grad;
  if (k.z_scale != acc_t(0)) extra += scale * (acc_t(2) * k.z_scale * lse_value(lse));
  return extra;
}

// a_c of a class-index row: the smoothing share of every class, plus (1 - eps) w_y on the target.
// w_c is read only with smoothing (see index_row_mass).
template <typename acc_t>
XENT_HD acc_t index_target_mass(const LossConstants<acc_t>& k, acc_t w_c, bool is_target, acc_t w_target) {
  const acc_t target = is_target ? target_share(k) * w_target : acc_t(0);
  return has_smoothing(k) ? smoothing_per_class(k) * w_c + target : target;
}

// The class weights a class-index row's smoothing term reads: none without smoothing (vector
// loops then take their unweighted path and never multiply 0 by an unused class's inf weight).
template <typename acc_t>
XENT_HD const acc_t* smoothing_weights(const LossConstants<acc_t>& k, const acc_t* w) {
  return has_smoothing(k) ? w : nullptr;
}

// a_c of a probability row: w_c q'_c.
template <typename acc_t>
XENT_HD acc_t prob_target_mass(const LossConstants<acc_t>& k, acc_t w_c, acc_t q_c) {
  return w_c * (target_share(k) * q_c + smoothing_per_class(k));
}

// The same loss term by term, w_c q'_c (lse - x_c) summed over c as torch forms it. The shifted
// sums above give NaN where torch gives +inf: a +inf target probability (inf - inf, or inf * 0 at
// the reference class), a -inf logit whose target is 0 under smoothing (0 * -inf in swqd). Rows
// where prob_row_needs_terms says so are summed again with prob_loss_term (CPU and CUDA).
template <typename acc_t>
XENT_HD acc_t prob_loss_term(const LossConstants<acc_t>& k, acc_t w_c, acc_t q_c, RowLse<acc_t> lse, acc_t x_c) {
  return prob_target_mass(k, w_c, q_c) * lse_minus(lse, x_c);
}

template <typename acc_t>
XENT_HD bool prob_row_needs_terms(acc_t loss, RowLse<acc_t> lse) {
  return loss != loss && lse.max - lse.max == acc_t(0) && lse.log_sum - lse.log_sum == acc_t(0);
}

// d loss / d q_c of a probability row: -k (1 - eps) w_c log p_c.
template <typename acc_t>
XENT_HD acc_t prob_target_grad(const LossConstants<acc_t>& k, acc_t scale, acc_t w_c, acc_t x, RowLse<acc_t> lse) {
  return -scale * target_share(k) * w_c * log_prob(x, lse);
}

// Scale of a row's gradient for each reduction: grad_output (per row for 'none'), divided by
// the total weight for 'mean'. A zero total weight makes every counted row's gradient NaN, as in
// torch (whose 0 * inf at the target poisons the whole row through the softmax backward).
template <typename acc_t>
XENT_HD acc_t reduction_scale(int64_t reduction, acc_t grad_output, acc_t total_weight) {
  if (reduction != kReductionMean) return grad_output;
  return total_weight == acc_t(0) ? acc_t(NAN) : grad_output / total_weight;
}

// The 'mean' of a call's summed loss, divided as torch divides it:
//  * sum and divisor each rounded to the accumulate dtype acc_t first (torch accumulates there:
//    in float32 a total weight past 3.4e38 is inf, and inf / inf is NaN, not a finite quotient
//    of doubles);
//  * a zero divisor gives IEEE's answer: +-inf for a nonzero sum (class weights summing to zero),
//    NaN for a zero one (every target ignored);
//  * with label smoothing torch divides the target term and the smoothing term separately; a
//    zero total weight there means every counted target has weight 0, so the target term is 0/0
//    and the mean NaN even when the smoothing sum alone would give inf (weights of both signs
//    summing to zero are the one case this rule does not follow torch: README).
template <typename acc_t>
XENT_HD double mean_loss(double loss_sum, double divisor, bool smoothing) {
  if (divisor == 0 && smoothing) return NAN;
  return static_cast<double>(static_cast<acc_t>(loss_sum) / static_cast<acc_t>(divisor));
}

// What a probability-target 'mean' divides by: the number of rows, and 0 (a NaN mean, as torch's
// "numel() == 0") when there is no element at all, rows or classes.
XENT_HD double prob_mean_divisor(int64_t num_rows, int64_t num_classes) {
  return num_classes == 0 ? 0.0 : static_cast<double>(num_rows);
}

// First invalid target of a launch, kept by its flat position in the target tensor.
struct InvalidTarget {
  int64_t position;  // -1 when every target is valid
  int64_t value;
  int64_t count;
};

XENT_HD InvalidTarget invalid_none() {
  return {-1, 0, 0};
}

XENT_HD InvalidTarget invalid_merge(InvalidTarget a, InvalidTarget b) {
  InvalidTarget first = a;
  if (a.position < 0 || (b.position >= 0 && b.position < a.position)) first = b;
  first.count = a.count + b.count;
  return first;
}

}  // namespace validated_loss
