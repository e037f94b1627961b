// Which element of which row each CUDA thread touches: torch-free, __host__ __device__.
//
// Everything the kernels need to turn (block, thread) into addresses lives here as plain
// functions, so tests/cuda_plan_test.cpp (g++, no GPU) can run them for every thread of a launch
// and prove that each element is read once and written once.
//
// Three mappings of rows to blocks, chosen by the number of "units" a row takes (a unit is one
// 16-byte vector of a row read at class stride 1, or one element of a row read at another stride):
//   kTeamRows   a team of `team` lanes (a power of two, at most a warp) per row, 256 / team rows per
//               block, up to kTeamMaxUnitsPerLane units a lane (C <= 2048 float32, 4096 bfloat16).
//               team == 1 is "one thread per row": a strided class dim of at most
//               kThreadPerRowMaxClasses classes whose rows lie closer together than its classes,
//               with at least kThreadPerRowMinRows rows ((N, C, H, W) segmentation logits:
//               neighbouring threads read neighbouring addresses).
//   kBlockRow   one block of kThreads per row (CUB BlockReduce across the block), large vocabularies.
//   kTiledRows  a strided class dim with more classes, rows closer together than classes
//               ((B, V, T) logits of a Conv1d head, x.t()): a block is a tile of kTileRows adjacent
//               rows, each warp's 32 lanes on the tile's 32 rows (coalesced reads), the block's 8
//               warps splitting the class range; lanes of a row merge in shared memory.
// A row may also be split into `splits` class ranges taken by different blocks (kBlockRow and
// kTiledRows, where the plan allows it): when rows alone would not give kFillBlocks blocks, the
// class range gives the rest. Forward partial states then meet in a workspace and a finish kernel
// combines them in split order; the backward needs no merge. Work items (row group, split) are
// numbered group * splits + split; blocks loop over items (item = block, block + grid, ...) with a
// grid capped at kMaxGrid. Every constant here is independent of the GPU: the partial sums a
// launch produces, and so its result, never depend on the device.
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

constexpr int kThreads = 256;       // threads per block, every kernel
constexpr int kMinBlocksPerSM = 2;  // __launch_bounds__: lets ptxas use up to 128
                                    // registers (it spills rather than go past the
                                    // occupancy it picks when given none)
constexpr int kWarpSize = 32;
constexpr int kVectorBytes = 16;
constexpr int64_t kMaxGrid = int64_t(1) << 20;                           // blocks per launch, at most
constexpr int64_t kUnitsPerLane = 4;                                     // team mapping: aim for this many units a lane
constexpr int64_t kTeamMaxUnitsPerLane = 16;                             // a warp per row takes up to 16 units a lane
constexpr int64_t kBlockRowMinUnits = kWarpSize * kTeamMaxUnitsPerLane;  // above: a block per row
constexpr int64_t kThreadPerRowMinRows = 1024;                           // strided classes: a thread per row from here
constexpr int64_t kThreadPerRowMaxClasses = 32;                          // ... for at most this many classes
constexpr int kTileRows = 32;                                            // kTiledRows: adjacent rows per block (a warp)
constexpr int64_t kFillBlocks = 1024;                                    // blocks that fill a 132-SM GPU several times
                                                                         // (8 resident blocks of 256 threads per SM)
constexpr int64_t kSplitMinUnitsPerLane = 8;                             // a split gives each lane at least this many

enum Mapping : int { kTeamRows = 0, kBlockRow = 1, kTiledRows = 2 };

// Whether a launch may split rows' class ranges across blocks: the index forward (its finish
// kernel merges) and the index backward (nothing to merge) do; the probability kernels, which
// need whole-row sums between passes, do not.
enum class Split : int { kNo = 0, kAllowed = 1 };

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
  int team;            // lanes per row: a power of two <= 32 (kTeamRows), `threads` (kBlockRow),
                       // threads / kTileRows (kTiledRows)
  int rows_per_block;  // threads / team
  int64_t num_rows;
  int64_t groups;  // row groups of rows_per_block rows
  int64_t splits;  // class ranges per row, each its own work item (1: whole rows)
  int64_t items;   // groups * splits
  int64_t grid;    // blocks launched: min(items, kMaxGrid); 0 when there are no rows
};

// How many class ranges a row of `units` units is split into when `groups` row groups of `team`
// lanes each would launch too few blocks.
XENT_HD int64_t split_count(int64_t groups, int64_t units, int team) {
  if (groups <= 0 || groups >= kFillBlocks) return 1;
  const int64_t wanted = ceil_div(kFillBlocks, groups);
  const int64_t most = units / (kSplitMinUnitsPerLane * team);
  const int64_t n = wanted < most ? wanted : most;
  return n > 1 ? n : 1;
}

// inner_row_stride: stride (elements) of the innermost row dimension after coalescing.
XENT_HD LaunchPlan make_plan(int64_t num_rows, int64_t num_classes, int64_t class_stride, int64_t inner_row_stride,
                             int elem_bytes, Split split) {
  LaunchPlan p{};
  p.threads = kThreads;
  p.num_rows = num_rows;
  const bool vectorized = class_stride == 1;
  const int64_t units = vectorized ? ceil_div(num_classes, vector_elems(elem_bytes)) : num_classes;
  const int64_t abs_inner = inner_row_stride < 0 ? -inner_row_stride : inner_row_stride;
  const int64_t abs_class = class_stride < 0 ? -class_stride : class_stride;
  const bool rows_adjacent = !vectorized && abs_inner < abs_class;
  if (rows_adjacent && num_classes > kThreadPerRowMaxClasses) {
    // Rows closer together than classes, many classes: a warp reads 32 neighbouring rows at once.
    p.mapping = kTiledRows;
    p.team = kThreads / kTileRows;
  } else if (rows_adjacent && num_rows >= kThreadPerRowMinRows) {
    // Few classes: a thread per row keeps a warp's reads adjacent (with enough rows to fill a few
    // blocks; fewer rows share out their classes instead).
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
  p.splits = (split == Split::kAllowed && p.mapping != kTeamRows) ? split_count(p.groups, units, p.team) : 1;
  p.items = p.groups * p.splits;
  p.grid = p.items < kMaxGrid ? p.items : kMaxGrid;
  return p;
}

XENT_HD LaunchPlan plan_for(const RowIndexer& ix, int elem_bytes, Split split) {
  return make_plan(ix.num_rows, ix.num_classes, ix.class_stride, inner_row_stride(ix), elem_bytes, split);
}

// The forward's plan: class-index targets may split rows, probability targets never do (their
// loss needs whole-row sums, and some rows a second pass).
XENT_HD LaunchPlan forward_plan(const RowIndexer& ix, int elem_bytes, bool prob) {
  return plan_for(ix, elem_bytes, prob ? Split::kNo : Split::kAllowed);
}

// A thread per row, rows in order: the split forward's finish kernel.
XENT_HD LaunchPlan row_plan(int64_t num_rows) {
  LaunchPlan p{};
  p.mapping = kTeamRows;
  p.threads = kThreads;
  p.team = 1;
  p.rows_per_block = kThreads;
  p.num_rows = num_rows;
  p.groups = ceil_div(num_rows, kThreads);
  p.splits = 1;
  p.items = p.groups;
  p.grid = p.items < kMaxGrid ? p.items : kMaxGrid;
  return p;
}

// The row and lane of thread `thread` while its block works on row group `group`. The row may be
// past the last one (a partial last group): its lanes still take part in the team's reductions,
// with nothing to read.
struct Slot {
  int64_t row;
  int lane;
};

XENT_HD Slot slot_of(const LaunchPlan& p, int64_t group, int thread) {
  if (p.mapping == kTiledRows) {
    // Thread t of a tile: row t % rows_per_block (a warp spans the tile's rows), lane t / rows.
    return {group * p.rows_per_block + thread % p.rows_per_block, thread / p.rows_per_block};
  }
  return {group * p.rows_per_block + thread / p.team, thread % p.team};
}

// Work item -> (row group, split).
struct Item {
  int64_t group;
  int64_t split;
};

XENT_HD Item item_of(const LaunchPlan& p, int64_t item) {
  if (p.splits == 1) return {item, 0};
  return {item / p.splits, item % p.splits};
}

// How the lanes of a team split one row (or one split's class range of it).
struct RowSpan {
  int64_t num_classes;  // end of the tail
  int64_t head_begin;   // classes [head_begin, head): scalar, at the class stride
  int64_t head;
  int64_t vec_begin;   // then vectors vec_begin .. nvec - 1 of `vec` classes each, vector v at
  int64_t nvec;        //   class base + v * vec
  int64_t base;        // class of vector 0 (the whole row's head length)
  int64_t tail_begin;  // classes [tail_begin, num_classes): scalar
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
    s.base = num_classes;
    s.tail_begin = num_classes;
    return s;
  }
  int64_t head = misalign == 0 ? 0 : int64_t((kVectorBytes - misalign) / elem_bytes);
  if (head > num_classes) head = num_classes;
  s.head = head;
  s.base = head;
  s.nvec = (num_classes - head) / s.vec;
  s.tail_begin = head + s.nvec * s.vec;
  return s;
}

// Split `split` of `splits` of a row's span: a scalar row's classes, or a vector row's vectors
// (the head goes with split 0, the tail with the last), in contiguous even ranges.
XENT_HD RowSpan split_span(RowSpan s, int64_t split, int64_t splits) {
  if (splits == 1) return s;
  if (s.nvec == s.vec_begin) {  // no vectors: the classes [head_begin, num_classes) are contiguous
    const int64_t b = s.head_begin, n = s.num_classes - b;
    s.head_begin = b + n * split / splits;
    s.head = b + n * (split + 1) / splits;
    s.tail_begin = s.num_classes = s.head;
    return s;
  }
  const int64_t n = s.nvec - s.vec_begin;
  if (split > 0) s.head = s.head_begin;                  // the head belongs to split 0
  if (split + 1 < splits) s.num_classes = s.tail_begin;  // the tail to the last
  const int64_t first = s.vec_begin;
  s.vec_begin = first + n * split / splits;
  s.nvec = first + n * (split + 1) / splits;
  return s;
}

// Units (vectors or scalars) the span holds.
XENT_HD int64_t span_units(const RowSpan& s) {
  return (s.head - s.head_begin) + (s.nvec - s.vec_begin) + (s.num_classes - s.tail_begin);
}

// Whether another tensor's row (gradient, probability target) can be accessed with the same
// 16-byte vectors as the row that set the span: class stride 1 and the same 16-byte phase.
// Otherwise each vector's elements are accessed one by one (same classes, same lane).
XENT_HD bool vector_compatible(const RowSpan& s, uint64_t span_row_address, uint64_t other_row_address,
                               int64_t other_class_stride) {
  return s.nvec > s.vec_begin && other_class_stride == 1 &&
         span_row_address % kVectorBytes == other_row_address % kVectorBytes;
}

// Calls scalar(c) for each scalar class and vector(c0) for each vector [c0, c0 + vec) of lane
// `lane` of a team of `team`, in increasing class order.
VL_EXEC_CHECK_DISABLE
template <typename ScalarFn, typename VectorFn>
XENT_HD void for_each_unit(const RowSpan& s, int lane, int team, ScalarFn&& scalar, VectorFn&& vector) {
  for (int64_t c = s.head_begin + lane; c < s.head; c += team) scalar(c);
  VL_UNROLL_2
  for (int64_t v = s.vec_begin + lane; v < s.nvec; v += team) vector(s.base + v * s.vec);
  for (int64_t c = s.tail_begin + lane; c < s.num_classes; c += team) scalar(c);
}

// Byte address of an element, for the alignment decisions above.
template <typename T>
XENT_HD uint64_t address_of(const T* p) {
  return static_cast<uint64_t>(reinterpret_cast<uintptr_t>(p));
}

}  // namespace validated_loss::cuda
