// exp of a non-positive argument, for the kernels' hot loops. Included by kernels.h, once per CPU
// capability: it lives in that capability's namespace, so Vectorized has its width; the DEFAULT
// build runs the same code on its scalar Vectorized, so the tests cover the algorithm everywhere.
//
// The exps the loss takes on a row whose max is finite are of a logit minus that max or minus
// the row's log-sum-exp: the argument is <= 0 or -inf, never NaN. Knowing that drops exp_u20's
// overflow clamp and its NaN fix-up. What limits these loops on the CPU is the multiply/FMA
// ports (two on AVX2 Zen 3): exp_u20 takes 9 multiplies or FMAs a vector, this one 6 (the
// argument scaled to base 2 once, then a degree-5 polynomial for 2^f on [-1/2, 1/2], relative
// error 2.1e-7 evaluated in float), which took the forward's exp pass from ~6.5 to ~4.5 cycles a
// vector of 8. Measured against float64 on 2048 x 32000 and 16384 x 1000 logits the losses and
// gradients are closer to the truth than torch's own float32 (benchmarks/README.md).
//
//   e^d = 2^t = 2^n 2^f,  t = d log2(e),  n = round(t),  f = t - n,  2^n added to the exponent.
#pragma once

#include <ATen/cpu/vec/vec.h>

namespace validated_loss::cpu {
namespace CPU_CAPABILITY {

using at::vec::Vectorized;

// How arguments below kExpArgFloor (where 2^n would leave the normal floats and the exponent
// arithmetic would wrap) come out:
//   kTinyForSums: e^-86 (4e-38), one instruction; a sum of a row's exps is >= 1 (its max's term
//     is e^0), so it cannot tell.
//   kZeroBelow: exactly 0, two instructions (a -inf logit's probability and gradient are 0, as in
//     torch).
enum class ExpTail { kTinyForSums, kZeroBelow };

constexpr float kExpArgFloor = -86.0f;  // n >= -125: 2^n and the result stay normal floats

// e^d for every lane; d must not be NaN or +inf. Float only: the double kernels keep ATen's exp.
template <ExpTail tail>
Vectorized<float> exp_nonpositive(const Vectorized<float>& d) {
  using Vec = Vectorized<float>;
  using IVec = Vectorized<int32_t>;
  const Vec floor(kExpArgFloor);
  const Vec a = tail == ExpTail::kTinyForSums ? at::vec::clamp_min(d, floor) : d;
  const Vec t = a * Vec(1.44269504088896341f);
  const Vec n = t.round();
  const Vec f = t - n;
  Vec p = at::vec::fmadd(Vec(0.001327647129073739f), f, Vec(0.009675541892647743f));
  p = at::vec::fmadd(p, f, Vec(0.05550713092088699f));
  p = at::vec::fmadd(p, f, Vec(0.24022120237350464f));
  p = at::vec::fmadd(p, f, Vec(0.6931469440460205f));
  p = at::vec::fmadd(p, f, Vec(1.0f));
  const IVec exponent = at::vec::convert_to_int_of_same_size(n) << IVec(23);
  const Vec e = at::vec::cast<float>(at::vec::cast<int32_t>(p) + exponent);
  if constexpr (tail == ExpTail::kZeroBelow) return e & (d >= floor);
  return e;
}

}  // namespace CPU_CAPABILITY
}  // namespace validated_loss::cpu
