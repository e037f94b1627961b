// The fixed-shape status record a forward writes: torch-free, shared by CPU and CUDA.
// Output shapes never depend on values, so a launch reports bad values here instead of raising
// inside the kernel (a device-side assert would kill the CUDA context).
#pragma once

#include <cstdint>

namespace validated_loss {

enum StatusField : int {
  kStatusInvalidPosition = 0,  // flat position of the first invalid target, -1 if none
  kStatusInvalidValue = 1,
  kStatusInvalidCount = 2,
  kStatusNonFiniteRow = 3,  // first row with a NaN/inf logit (check_finite), -1 if none
  kStatusNonFiniteClass = 4,
  kStatusNonFiniteCount = 5,  // rows with a non-finite logit
  kStatusSize = 6,
};

}  // namespace validated_loss
