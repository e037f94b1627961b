// Where each row of the logits lives: torch-free, __host__ __device__.
//
// Logits are (N, C, d1..dk) with any strides. A "row" is one (n, d1..dk) position; rows are
// numbered in row-major order of (n, d1..dk), which is also the flat order of the target tensor
// and of a 'none' loss. The row dimensions are coalesced on the host (adjacent dimensions merged
// where their strides allow, size-1 dimensions dropped), so a contiguous (N, C) tensor has one row
// dimension and a contiguous (N, C, H, W) tensor has two.
#pragma once

#include <cstdint>

#include "xent_row.h"

namespace validated_loss {

constexpr int kMaxRowDims = 16;

struct RowGeometry {
  int64_t num_rows;
  int64_t num_classes;
  int64_t class_stride;  // in elements
  int ndim;              // coalesced row dimensions, outermost first
  int64_t sizes[kMaxRowDims];
  int64_t strides[kMaxRowDims];  // in elements
};

// Element offset of the first class of row r. 64-bit throughout: N*C may pass 2^31.
XENT_HD int64_t row_offset(const RowGeometry& g, int64_t r) {
  if (g.ndim == 1) return r * g.strides[0];  // r < sizes[0]: no division (most logits are 2-D)
  int64_t offset = 0;
  for (int d = g.ndim - 1; d >= 0; --d) {
    const int64_t size = g.sizes[d];
    offset += (r % size) * g.strides[d];
    r /= size;
  }
  return offset;
}

// The geometry of a (N, C, d1..dk) tensor from its sizes and strides (host code; the ops pass a
// tensor's, tests/cuda_plan_test.cpp simulated ones). Row dimensions are taken outermost first
// without size-1 dimensions (their stride never matters), and a dimension is merged into the one
// outside it when the outer stride is size * inner stride. False when more than kMaxRowDims
// row dimensions remain.
inline bool make_row_geometry(const int64_t* sizes, const int64_t* strides, int ndim, RowGeometry& g) {
  g = RowGeometry{};
  g.num_classes = sizes[1];
  g.class_stride = strides[1];
  g.num_rows = 1;
  g.ndim = 0;
  for (int d = 0; d < ndim; ++d) {
    if (d == 1) continue;
    g.num_rows *= sizes[d];
    if (sizes[d] == 1) continue;
    if (g.ndim > 0 && g.strides[g.ndim - 1] == sizes[d] * strides[d]) {
      g.sizes[g.ndim - 1] *= sizes[d];
      g.strides[g.ndim - 1] = strides[d];
    } else {
      if (g.ndim == kMaxRowDims) return false;
      g.sizes[g.ndim] = sizes[d];
      g.strides[g.ndim] = strides[d];
      ++g.ndim;
    }
  }
  if (g.ndim == 0) {
    g.ndim = 1;
    g.sizes[0] = 1;
    g.strides[0] = 0;
  }
  return true;
}

// Offset of element (row r, class c).
XENT_HD int64_t element_offset(const RowGeometry& g, int64_t r, int64_t c) {
  return row_offset(g, r) + c * g.class_stride;
}

}  // namespace validated_loss
