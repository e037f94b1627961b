// Which element of which row each CUDA thread touches: torch-free, __host__ __device__.
//
// Everything the kernels need to turn (block, thread) into addresses lives here as plain
// functions, so tests/cuda_plan_test.cpp (g++, no GPU) can run them for every thread of a launch
// and prove that each element is read once and written once.
//
// Two mappings of rows to blocks, chosen by the number of "units" a row takes (a unit is one
// 16-byte vector of a row read at class stride 1, or one element of a row read at another stride):
//   kTeamRows  a team of `team` lanes (a power of two, at most a warp) per row, 256 / team rows per
//              block. Small class counts (up to ~1k-2k); team == 1 is "one thread per row", used
//              when the class dim is strided, rows lie closer together than classes and there are
//              at least kThreadPerRowMinRows rows (e.g. (N, C, H, W) logits: neighbouring threads
//              then read neighbouring addresses).
//   kBlockRow  one block of kThreads per row (CUB BlockReduce across the block), large vocabularies.
// Blocks loop over row groups (group = block, block + grid, ...) with a grid capped at kMaxGrid, a
// constant: the partial sums a launch produces, and so its result, never depend on the GPU.
//
// A row read at class stride 1 is split into a scalar prologue up to the first 16-byte boundary,
// whole 16-byte vectors, and a scalar tail; lane l takes prologue elements l, l+team, ..., vectors
// l, l+team, ... and tail elements l, l+team, ... (consecutive lanes read consecutive vectors).
// All offsets are int64: N*C may pass 2^31, and so may a single row.
#pragma once

#include <cstdint>

#include "../row_geometry.h"
#include "../xent_row.h"

// Templates below call functors that are __device__ in the kernels and host-only in the tests.
#if defined(__CUDACC__)
#define VL_EXEC_CHECK_DISABLE _Pragma("nv_exec_check_disable")
#define VL_UNROLL _Pragma("unroll")
#define VL_UNROLL_2 _Pragma("unroll 2")
#else
#define VL_EXEC_CHECK_DISABLE
#define VL_UNROLL
#define VL_UNROLL_2
#endif

namespace validated_loss::cuda {

constexpr int kThreads = 256;                        // threads per block, every kernel
constexpr int kMinBlocksPerSM = 2;                   // __launch_bounds__: lets ptxas use up to 128
                                                     // registers (it spills rather than go past the
                                                     // occupancy it picks when given none)
constexpr int kWarpSize = 32;
constexpr int kVectorBytes = 16;
constexpr int64_t kMaxGrid = int64_t(1) << 20;       // blocks per launch, at most
constexpr int64_t kUnitsPerLane = 4;                 // team mapping: aim for this many units a lane
constexpr int64_t kBlockRowMinUnits = kWarpSize * 8; // above this many units a row gets a block
constexpr int64_t kThreadPerRowMinRows = 1024;       // strided classes: a thread per row from here

enum Mapping : int { kTeamRows = 0, kBlockRow = 1 };

XENT_HD int vector_elems(int elem_bytes) {
  return kVectorBytes / elem_bytes;
}

XENT_HD int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// ---------------------------------------------------------------------------------------------
// Where rows start. row_geometry.h's row_offset divides by each row dimension's size in int64,
// which on the GPU is a called subroutine (and costs registers around the call); the kernels use
// this equivalent instead: each division by a size is a multiply-high by a magic number
// (Granlund & Montgomery, "Division by invariant integers using multiplication", fig. 4.1),
// exact for every 64-bit dividend. tests/cuda_plan_test.cpp checks row_start == row_offset.

XENT_HD uint64_t umulhi64(uint64_t a, uint64_t b) {
#if defined(__CUDA_ARCH__)
  return __umul64hi(a, b);
#else
  return static_cast<uint64_t>((static_cast<unsigned __int128>(a) * b) >> 64);
#endif
}

struct FastDivmod {
  uint64_t divisor;
  uint64_t magic;
  uint32_t shift1;
  uint32_t shift2;
};

// Host only (128-bit arithmetic). divisor >= 1.
inline FastDivmod make_fast_divmod(uint64_t divisor) {
  uint32_t l = 0;
  while (l < 64 && (uint64_t(1) << l) < divisor) ++l;  // l = ceil(log2(divisor))
  const unsigned __int128 two_l = static_cast<unsigned __int128>(1) << l;
  const unsigned __int128 m = (((two_l - divisor) << 64) / divisor) + 1;
  return {divisor, static_cast<uint64_t>(m), l < 1 ? l : 1u, l > 1 ? l - 1 : 0u};
}

XENT_HD uint64_t fast_div(const FastDivmod& d, uint64_t n) {
  const uint64_t t = umulhi64(d.magic, n);
  return (t + ((n - t) >> d.shift1)) >> d.shift2;
}

// A tensor's rows as the kernels index them: RowGeometry's dimensions innermost first, each with
// its divider (the outermost needs none).
struct RowIndexer {
  int ndim;
  int64_t num_rows;
  int64_t num_classes;
  int64_t class_stride;
  int64_t strides[kMaxRowDims];
  FastDivmod sizes[kMaxRowDims];
};

inline RowIndexer make_row_indexer(const RowGeometry& g) {
  RowIndexer ix{};
  ix.ndim = g.ndim;
  ix.num_rows = g.num_rows;
  ix.num_classes = g.num_classes;
  ix.class_stride = g.class_stride;
  for (int i = 0; i < g.ndim; ++i) {
    const int d = g.ndim - 1 - i;
    ix.strides[i] = g.strides[d];
    ix.sizes[i] = make_fast_divmod(static_cast<uint64_t>(g.sizes[d] > 0 ? g.sizes[d] : 1));
  }
  return ix;
}

// Element offset of class 0 of row r (0 <= r < num_rows): row_offset(geometry, r).
XENT_HD int64_t row_start(const RowIndexer& ix, int64_t r) {
  uint64_t rest = static_cast<uint64_t>(r);
  int64_t offset = 0;
  for (int i = 0; i + 1 < ix.ndim; ++i) {
    const uint64_t q = fast_div(ix.sizes[i], rest);
    offset += static_cast<int64_t>(rest - q * ix.sizes[i].divisor) * ix.strides[i];
    rest = q;
  }
  return offset + static_cast<int64_t>(rest) * (ix.ndim > 0 ? ix.strides[ix.ndim - 1] : 0);
}

XENT_HD int64_t inner_row_stride(const RowIndexer& ix) {
  return ix.ndim > 0 ? ix.strides[0] : 0;
}

struct LaunchPlan {
  Mapping mapping;
  int threads;         // per block (kThreads)
  int team;            // lanes per row: a power of two <= 32 (kTeamRows), or `threads` (kBlockRow)
  int rows_per_block;  // threads / team
  int64_t num_rows;
  int64_t groups;      // row groups of rows_per_block rows
  int64_t grid;        // blocks launched: min(groups, kMaxGrid); 0 when there are no rows
};

// inner_row_stride: stride (elements) of the innermost row dimension after coalescing.
XENT_HD LaunchPlan make_plan(int64_t num_rows, int64_t num_classes, int64_t class_stride, int64_t inner_row_stride,
                             int elem_bytes) {
  LaunchPlan p{};
  p.threads = kThreads;
  p.num_rows = num_rows;
  const bool vectorized = class_stride == 1;
  const int64_t units = vectorized ? ceil_div(num_classes, vector_elems(elem_bytes)) : num_classes;
  const int64_t abs_inner = inner_row_stride < 0 ? -inner_row_stride : inner_row_stride;
  const int64_t abs_class = class_stride < 0 ? -class_stride : class_stride;
  if (!vectorized && num_rows >= kThreadPerRowMinRows && abs_inner < abs_class) {
    // Rows closer together than classes: a thread per row keeps a warp's reads adjacent (with
    // enough rows to fill a few blocks; fewer rows share out their classes instead).
    p.mapping = kTeamRows;
    p.team = 1;
  } else if (units > kBlockRowMinUnits) {
    p.mapping = kBlockRow;
    p.team = kThreads;
  } else {
    p.mapping = kTeamRows;
    p.team = 1;
    while (p.team < kWarpSize && int64_t(p.team) * kUnitsPerLane < units) p.team *= 2;
  }
  p.rows_per_block = p.threads / p.team;
  p.groups = ceil_div(num_rows, p.rows_per_block);
  p.grid = p.groups < kMaxGrid ? p.groups : kMaxGrid;
  return p;
}

XENT_HD LaunchPlan plan_for(const RowIndexer& ix, int elem_bytes) {
  return make_plan(ix.num_rows, ix.num_classes, ix.class_stride, inner_row_stride(ix), elem_bytes);
}

// The row and lane of thread `thread` while its block works on row group `group`. The row may be
// past the last one (a partial last group): its lanes still take part in the team's reductions,
// with nothing to read.
struct Slot {
  int64_t row;
  int lane;
};

XENT_HD Slot slot_of(const LaunchPlan& p, int64_t group, int thread) {
  return {group * p.rows_per_block + thread / p.team, thread % p.team};
}

// How the lanes of a team split one row.
struct RowSpan {
  int64_t num_classes;
  int64_t head;        // classes [0, head): scalar, at the class stride
  int64_t nvec;        // then nvec 16-byte vectors of `vec` classes each
  int64_t tail_begin;  // head + nvec * vec; classes [tail_begin, num_classes): scalar
  int vec;             // classes per vector
};

// row_address: byte address of class 0 of the row; a row read at class stride != 1 is all
// "head" (scalar). An address that is not a multiple of the element size (never produced by a
// tensor) also falls back to scalar.
XENT_HD RowSpan row_span(uint64_t row_address, int64_t num_classes, int64_t class_stride, int elem_bytes) {
  RowSpan s{};
  s.num_classes = num_classes;
  s.vec = vector_elems(elem_bytes);
  const uint64_t misalign = row_address % kVectorBytes;
  if (class_stride != 1 || misalign % elem_bytes != 0) {
    s.head = num_classes;
    s.nvec = 0;
    s.tail_begin = num_classes;
    return s;
  }
  int64_t head = misalign == 0 ? 0 : int64_t((kVectorBytes - misalign) / elem_bytes);
  if (head > num_classes) head = num_classes;
  s.head = head;
  s.nvec = (num_classes - head) / s.vec;
  s.tail_begin = head + s.nvec * s.vec;
  return s;
}

// Whether another tensor's row (gradient, probability target) can be accessed with the same
// 16-byte vectors as the row that set the span: class stride 1 and the same 16-byte phase.
// Otherwise each vector's elements are accessed one by one (same classes, same lane).
XENT_HD bool vector_compatible(const RowSpan& s, uint64_t span_row_address, uint64_t other_row_address,
                               int64_t other_class_stride) {
  return s.nvec > 0 && other_class_stride == 1 &&
         span_row_address % kVectorBytes == other_row_address % kVectorBytes;
}

// Calls scalar(c) for each scalar class and vector(c0) for each vector [c0, c0 + vec) of lane
// `lane` of a team of `team`, in increasing class order.
VL_EXEC_CHECK_DISABLE
template <typename ScalarFn, typename VectorFn>
XENT_HD void for_each_unit(const RowSpan& s, int lane, int team, ScalarFn&& scalar, VectorFn&& vector) {
  for (int64_t c = lane; c < s.head; c += team) scalar(c);
  VL_UNROLL_2
  for (int64_t v = lane; v < s.nvec; v += team) vector(s.head + v * s.vec);
  for (int64_t c = s.tail_begin + lane; c < s.num_classes; c += team) scalar(c);
}

// Byte address of an element, for the alignment decisions above.
template <typename T>
XENT_HD uint64_t address_of(const T* p) {
  return static_cast<uint64_t>(reinterpret_cast<uintptr_t>(p));
}

}  // namespace validated_loss::cuda
