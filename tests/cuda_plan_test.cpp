// Host simulation of the CUDA kernels' index arithmetic (csrc/cuda/launch_plan.h, row_scan.h),
// built with a plain host compiler (no nvcc, no GPU) by tests/test_cuda_plan.py.
//
// For simulated launches it runs, for every (block, thread, row group), exactly the functions the
// kernels call (plan_for, slot_of, row_start, row_span, vector_compatible, for_each_unit,
// scan_lane) and checks that
//   * every row is owned by exactly one team, each of whose lanes appears once, and exactly one
//     lane (lane 0) writes the row's outputs;
//   * every logit of every row is read exactly once, every gradient element written exactly once
//     (also with a gradient of another layout and 16-byte phase), every 16-byte vector access is
//     aligned, and every address is the one row_geometry.h's row_offset gives;
//   * the lanes' partial scans combined in the kernels' order give the row's lse and sums;
// for odd row lengths, every misalignment of the row start, small and large C, strided class
// dims, and N*C (and a single row) past 2^31 (index arithmetic only, nothing that size is
// allocated).
#include <cinttypes>
#include <cmath>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "cuda/launch_plan.h"
#include "cuda/row_ops.h"
#include "cuda/row_scan.h"

using namespace validated_loss;
using namespace validated_loss::cuda;

#include "host_check.h"

// ---------------------------------------------------------------------------------------------
// Geometry helpers (the same coalescing as op_common.cpp's make_row_geometry, on plain arrays).

struct Layout {
  std::vector<int64_t> sizes;    // (N, C, d1..dk)
  std::vector<int64_t> strides;  // elements
};

static RowGeometry geometry_of(const Layout& t) {
  RowGeometry g;
  if (!make_row_geometry(t.sizes.data(), t.strides.data(), static_cast<int>(t.sizes.size()), g)) std::abort();
  return g;
}

static Layout contiguous(std::vector<int64_t> sizes) {
  Layout t{sizes, std::vector<int64_t>(sizes.size())};
  int64_t s = 1;
  for (int d = static_cast<int>(sizes.size()) - 1; d >= 0; --d) {
    t.strides[d] = s;
    s *= sizes[d];
  }
  return t;
}

// Storage extent (elements) a layout spans from its first element.
static int64_t extent(const Layout& t) {
  int64_t e = 1;
  for (size_t d = 0; d < t.sizes.size(); ++d) {
    if (t.sizes[d] == 0) return 0;
    e += (t.sizes[d] - 1) * t.strides[d];
  }
  return e;
}

// ---------------------------------------------------------------------------------------------
// 1. Magic-number division and row_start == row_offset.

static void test_fast_divmod() {
  std::mt19937_64 rng(1);
  std::vector<uint64_t> divisors = {1, 2, 3, 5, 7, 10, 12, 13, 31, 32, 33, 255, 256, 1000, 4096, 50257, 128256};
  for (int k = 1; k < 64; ++k) {
    const uint64_t p = uint64_t(1) << k;
    divisors.push_back(p - 1);
    divisors.push_back(p);
    divisors.push_back(p + 1);
  }
  divisors.push_back(UINT64_MAX);
  for (int i = 0; i < 200; ++i) divisors.push_back((rng() >> (rng() % 64)) | 1);
  for (uint64_t d : divisors) {
    const FastDivmod f = make_fast_divmod(d);
    std::vector<uint64_t> ns = {0,
                                1,
                                d - 1,
                                d,
                                d + 1,
                                2 * d - 1,
                                2 * d,
                                UINT64_MAX,
                                UINT64_MAX - 1,
                                uint64_t(1) << 63,
                                (uint64_t(1) << 63) - 1,
                                uint64_t(1) << 31,
                                uint64_t(1) << 32};
    for (int i = 0; i < 300; ++i) ns.push_back(rng() >> (rng() % 64));
    for (uint64_t n : ns) {
      const uint64_t q = fast_div(f, n);
      CHECK(q == n / d, "n=%" PRIu64 " d=%" PRIu64 " got %" PRIu64, n, d, q);
    }
  }
}

static void check_row_start(const RowGeometry& g, int64_t r) {
  const RowIndexer ix = make_row_indexer(g);
  const int64_t a = row_start(ix, r), b = row_offset(g, r);
  CHECK(a == b, "row %" PRId64 ": row_start %" PRId64 " != row_offset %" PRId64, r, a, b);
}

static void test_row_start() {
  std::mt19937_64 rng(2);
  std::vector<Layout> layouts = {
      contiguous({7, 5}),
      contiguous({3, 5, 4}),
      contiguous({2, 5, 3, 2}),
      contiguous({2, 5, 2, 3, 2}),
      Layout{{6, 5}, {1, 6}},                         // transposed
      Layout{{6, 5}, {20, 2}},                        // sliced class
      Layout{{6, 5}, {0, 1}},                         // expanded rows
      Layout{{3, 5, 4}, {20, 1, 5}},                  // class last in memory
      Layout{{2, 5, 3, 4}, {60, 1, 20, 5}},           // channels last
      Layout{{2, 5, 3, 4}, {1, 2, 40, 10}},           // reversed
      Layout{{3, 5, 4, 2}, {200, 40, 2 * 5 + 1, 1}},  // padded rows: nothing merges
      Layout{{5, 7, 3, 11, 2}, {1000, 3, 1, 70, 7000}},
  };
  for (const Layout& t : layouts) {
    const RowGeometry g = geometry_of(t);
    for (int64_t r = 0; r < g.num_rows; ++r) check_row_start(g, r);
  }
  // Offsets past 2^31 and 2^32: (N, C) with N*C > 2^31, transposed, and a 4-d case.
  const std::vector<Layout> big = {
      contiguous({600000, 4099}),
      Layout{{3000000001LL, 3}, {1, 3000000001LL}},
      Layout{{70000, 5, 3, 4001}, {5 * 3 * 4001 + 17, 3 * 4001, 4001, 1}},
      Layout{{9, 2, 1 << 20, 1 << 14}, {int64_t(1) << 36, 1, int64_t(1) << 15, 2}},
  };
  for (const Layout& t : big) {
    const RowGeometry g = geometry_of(t);
    for (int64_t r : {int64_t(0), int64_t(1), g.num_rows / 2, g.num_rows - 2, g.num_rows - 1}) check_row_start(g, r);
    for (int i = 0; i < 20000; ++i) check_row_start(g, static_cast<int64_t>(rng() % static_cast<uint64_t>(g.num_rows)));
  }
}

// ---------------------------------------------------------------------------------------------
// 2. Simulated launches: every element read once, written once.

struct Case {
  std::string name;
  int elem_bytes;
  Layout x;
  int64_t x_misalign;  // elements the first logit lies past a 16-byte boundary
  Layout grad;         // the gradient's layout (empty_like: the same, or contiguous)
  int64_t g_misalign;
};

static uint64_t base_address(int64_t misalign_elems, int elem_bytes) {
  return (uint64_t(1) << 40) + static_cast<uint64_t>(misalign_elems * elem_bytes);
}

static void simulate_plan(const Case& k, Split split) {
  const RowGeometry xg = geometry_of(k.x), gg = geometry_of(k.grad);
  const RowIndexer xi = make_row_indexer(xg), gi = make_row_indexer(gg);
  const LaunchPlan p = plan_for(xi, k.elem_bytes, split);
  const int64_t N = xg.num_rows, C = xg.num_classes;
  const int eb = k.elem_bytes;
  const uint64_t xbase = base_address(k.x_misalign, eb), gbase = base_address(k.g_misalign, eb);
  const char* n = k.name.c_str();

  CHECK(p.threads == kThreads && p.team >= 1 && (p.team & (p.team - 1)) == 0, "%s: team %d", n, p.team);
  CHECK(p.team * p.rows_per_block == p.threads, "%s", n);
  CHECK(p.mapping == kBlockRow    ? p.team == p.threads
        : p.mapping == kTiledRows ? p.rows_per_block == kTileRows
                                  : (p.team <= kWarpSize && kWarpSize % p.team == 0),
        "%s", n);
  CHECK(p.splits >= 1 && (split == Split::kAllowed || p.splits == 1) && p.items == p.groups * p.splits, "%s: splits",
        n);
  CHECK(p.grid >= (N > 0 ? 1 : 0) && p.grid <= kMaxGrid && p.grid <= p.items, "%s: grid %" PRId64, n, p.grid);

  const int64_t xext = extent(k.x), gext = extent(k.grad);
  std::vector<uint8_t> reads(static_cast<size_t>(xext), 0), writes(static_cast<size_t>(gext), 0),
      zero_writes(static_cast<size_t>(gext), 0);
  std::vector<int> lanes_seen(static_cast<size_t>(N), 0);
  std::vector<int> row_writers(static_cast<size_t>(N), 0);
  std::vector<uint64_t> lane_mask(static_cast<size_t>(N), 0);

  auto x_index = [&](uint64_t addr) { return static_cast<int64_t>((addr - xbase) / eb); };
  auto g_index = [&](uint64_t addr) { return static_cast<int64_t>((addr - gbase) / eb); };

  for (int64_t block = 0; block < p.grid; ++block) {
    for (int64_t item = block; item < p.items; item += p.grid) {
      const Item it = item_of(p, item);
      const int64_t group = it.group;
      CHECK(it.split >= 0 && it.split < p.splits && group * p.splits + it.split == item, "%s: item", n);
      for (int t = 0; t < p.threads; ++t) {
        const Slot s = slot_of(p, group, t);
        CHECK(s.lane >= 0 && s.lane < p.team, "%s", n);
        // TeamReduce's butterfly (__shfl_xor_sync) needs a team to be `team` adjacent lanes of
        // one warp, starting at a multiple of `team`; CUB's block reduce needs the whole block.
        if (p.mapping == kTeamRows) {
          CHECK(s.lane == (t % kWarpSize) % p.team, "%s: thread %d is lane %d", n, t, s.lane);
          CHECK(slot_of(p, group, t - s.lane).row == s.row && (t - s.lane) / kWarpSize == t / kWarpSize,
                "%s: team of thread %d split across warps", n, t);
        } else if (p.mapping == kTiledRows) {
          // A warp: one lane of 32 adjacent rows (its loads coalesce); TeamReduce<kTiledRows>
          // finds lane l of the row at thread l * rows + row.
          CHECK(s.lane == t / kWarpSize && s.row == group * kTileRows + t % kWarpSize, "%s: tile thread %d", n, t);
        } else {
          CHECK(s.lane == t && slot_of(p, group, 0).row == s.row, "%s: block row", n);
        }
        if (s.row >= N) {
          CHECK(group == p.groups - 1, "%s: row %" PRId64 " past the end outside the last group", n, s.row);
          continue;
        }
        lanes_seen[s.row] += 1;
        if (p.team <= 64) lane_mask[s.row] |= uint64_t(1) << s.lane;
        if (s.lane == 0) row_writers[s.row] += 1;

        // Forward / backward reads of the logits row, backward writes of the gradient row.
        const uint64_t xrow = xbase + static_cast<uint64_t>(row_start(xi, s.row) * eb);
        const uint64_t grow = gbase + static_cast<uint64_t>(row_start(gi, s.row) * eb);
        CHECK(row_start(xi, s.row) == row_offset(xg, s.row), "%s", n);
        const RowSpan span = split_span(row_span(xrow, C, xi.class_stride, eb), it.split, p.splits);
        const bool gvec = vector_compatible(span, xrow, grow, gi.class_stride);
        auto read = [&](int64_t c, uint64_t addr) {
          CHECK(c >= 0 && c < C, "%s: class %" PRId64, n, c);
          CHECK(addr == xbase + static_cast<uint64_t>(element_offset(xg, s.row, c) * eb), "%s: address", n);
          const int64_t i = x_index(addr);
          CHECK(addr >= xbase && i < xext, "%s: read outside the logits' storage", n);
          if (addr >= xbase && i < xext) reads[i] += 1;
        };
        auto write = [&](int64_t c, uint64_t addr) {
          CHECK(addr == gbase + static_cast<uint64_t>(element_offset(gg, s.row, c) * eb), "%s: grad address", n);
          const int64_t i = g_index(addr);
          CHECK(addr >= gbase && i < gext, "%s: write outside the gradient's storage", n);
          if (addr >= gbase && i < gext) writes[i] += 1;
        };
        for_each_unit(
            span, s.lane, p.team,
            [&](int64_t c) {
              read(c, xrow + static_cast<uint64_t>(c * xi.class_stride * eb));
              write(c, grow + static_cast<uint64_t>(c * gi.class_stride * eb));
            },
            [&](int64_t c0) {
              CHECK(xi.class_stride == 1, "%s: vector on a strided row", n);
              const uint64_t a = xrow + static_cast<uint64_t>(c0 * eb);
              CHECK(a % kVectorBytes == 0, "%s: unaligned vector load at class %" PRId64, n, c0);
              const uint64_t ga = grow + static_cast<uint64_t>(c0 * eb);
              if (gvec) CHECK(ga % kVectorBytes == 0, "%s: unaligned vector store", n);
              for (int j = 0; j < span.vec; ++j) {
                read(c0 + j, a + static_cast<uint64_t>(j * eb));
                write(c0 + j, gvec ? ga + static_cast<uint64_t>(j * eb)
                                   : grow + static_cast<uint64_t>((c0 + j) * gi.class_stride * eb));
              }
            });

        // An ignored/invalid row's gradient is zeroed through the gradient row's own span.
        auto zero = [&](int64_t c, uint64_t addr) {
          CHECK(c >= 0 && c < C && addr == gbase + static_cast<uint64_t>(element_offset(gg, s.row, c) * eb),
                "%s: zeroed address", n);
          const int64_t i = g_index(addr);
          if (addr >= gbase && i < gext) zero_writes[i] += 1;
        };
        const RowSpan zspan = split_span(row_span(grow, C, gi.class_stride, eb), it.split, p.splits);
        for_each_unit(
            zspan, s.lane, p.team, [&](int64_t c) { zero(c, grow + static_cast<uint64_t>(c * gi.class_stride * eb)); },
            [&](int64_t c0) {
              const uint64_t a = grow + static_cast<uint64_t>(c0 * eb);
              CHECK(a % kVectorBytes == 0 && gi.class_stride == 1, "%s: unaligned zero store", n);
              for (int j = 0; j < zspan.vec; ++j) zero(c0 + j, a + static_cast<uint64_t>(j * eb));
            });
      }
    }
  }
  for (int64_t r = 0; r < N; ++r) {
    CHECK(lanes_seen[r] == p.team * p.splits, "%s: row %" PRId64 " seen by %d lanes, team %d", n, r, lanes_seen[r],
          p.team);
    if (p.team <= 64) {
      const uint64_t full = p.team == 64 ? ~uint64_t(0) : (uint64_t(1) << p.team) - 1;
      CHECK(lane_mask[r] == full, "%s: row %" PRId64 " lanes", n, r);
    }
    // Lane 0 writes the row's outputs, or (split rows) one partial state per split.
    CHECK(row_writers[r] == p.splits, "%s: row %" PRId64 " outputs written %d times", n, r, row_writers[r]);
  }
  // Every element of the logits view read once (storage outside the view: never).
  std::vector<uint8_t> in_x(static_cast<size_t>(xext), 0), in_g(static_cast<size_t>(gext), 0);
  for (int64_t r = 0; r < N; ++r)
    for (int64_t c = 0; c < C; ++c) {
      in_x[element_offset(xg, r, c)] += 1;
      in_g[element_offset(gg, r, c)] += 1;
    }
  for (int64_t i = 0; i < xext; ++i)
    CHECK(reads[i] == in_x[i], "%s: storage element %" PRId64 " read %d times, view holds it %d times", n, i, reads[i],
          in_x[i]);
  for (int64_t i = 0; i < gext; ++i) {
    CHECK(in_g[i] <= 1, "%s: gradient layout overlaps", n);
    CHECK(writes[i] == in_g[i], "%s: grad element %" PRId64 " written %d times", n, i, writes[i]);
    CHECK(zero_writes[i] == in_g[i], "%s: grad element %" PRId64 " zeroed %d times", n, i, zero_writes[i]);
  }
}

static void simulate(const Case& k) {
  simulate_plan(k, Split::kAllowed);
  simulate_plan(k, Split::kNo);
}

static void test_launches() {
  int cases = 0;
  const std::vector<int64_t> classes = {0,   1,   2,   3,   5,    7,    8,    9,    15,   16,   17,   31,   33,
                                        100, 127, 129, 257, 1000, 1023, 1025, 2047, 2049, 4099, 8191, 32771};
  for (int eb : {2, 4, 8}) {
    const int vec = kVectorBytes / eb;
    for (int64_t C : classes) {
      const int64_t N = C > 4000 ? 3 : (C > 500 ? 9 : 37);
      for (int64_t mis = 0; mis < vec; ++mis) {
        // Contiguous (N, C) with the first logit `mis` elements past a 16-byte boundary (rows of
        // odd length start at every phase), gradient contiguous at another phase.
        const Layout x = contiguous({N, C});
        simulate({"contig eb" + std::to_string(eb) + " C" + std::to_string(C) + " mis" + std::to_string(mis), eb, x,
                  mis, x, mis});
        simulate({"contig/grad-phase eb" + std::to_string(eb) + " C" + std::to_string(C) + " mis" + std::to_string(mis),
                  eb, x, mis, x, (mis + 1) % vec});
        cases += 2;
      }
      if (C > 2049) continue;
      // Transposed (C, N).t(): class stride N, rows adjacent -> one thread per row.
      simulate({"transposed eb" + std::to_string(eb) + " C" + std::to_string(C), eb, Layout{{N, C}, {1, N}}, 1,
                contiguous({N, C}), 0});
      // x[:, ::2]: class stride 2, rows 2C apart -> team over classes, scalar loads.
      simulate({"sliced-class eb" + std::to_string(eb) + " C" + std::to_string(C), eb, Layout{{N, C}, {2 * C + 1, 2}},
                3, contiguous({N, C}), 1});
      // (N, C, H, W) contiguous and channels-last; padded rows (nothing coalesces).
      const int64_t n4 = 2, h = 3, w = 5;
      simulate({"nchw eb" + std::to_string(eb) + " C" + std::to_string(C), eb, contiguous({n4, C, h, w}), 0,
                contiguous({n4, C, h, w}), 0});
      simulate({"nhwc eb" + std::to_string(eb) + " C" + std::to_string(C), eb,
                Layout{{n4, C, h, w}, {h * w * C, 1, w * C, C}}, 1, Layout{{n4, C, h, w}, {h * w * C, 1, w * C, C}},
                1});
      simulate({"padded eb" + std::to_string(eb) + " C" + std::to_string(C), eb,
                Layout{{4, C, 3}, {3 * (C + 3), 1, C + 3}}, 2, contiguous({4, C, 3}), 0});
      // Expanded rows (stride 0): every row reads the same storage; the gradient is contiguous.
      simulate({"expanded eb" + std::to_string(eb) + " C" + std::to_string(C), eb, Layout{{5, C}, {0, 1}}, 1,
                contiguous({5, C}), 0});
      cases += 6;
    }
  }
  // Strided class dims with enough rows for a thread per row (rows adjacent in memory).
  for (int eb : {2, 4, 8}) {
    for (int64_t C : {1, 3, 7, 21, 150}) {
      simulate({"transposed many rows eb" + std::to_string(eb) + " C" + std::to_string(C), eb,
                Layout{{3001, C}, {1, 3001}}, 1, contiguous({3001, C}), 0});
      simulate({"nchw many rows eb" + std::to_string(eb) + " C" + std::to_string(C), eb, contiguous({4, C, 16, 21}), 3,
                contiguous({4, C, 16, 21}), 3});
      cases += 2;
    }
  }
  CHECK(plan_for(make_row_indexer(geometry_of(contiguous({4, 7, 16, 21}))), 4, Split::kAllowed).team == 1,
        "nchw: thread per row");
  CHECK(plan_for(make_row_indexer(geometry_of(Layout{{8, 7}, {1, 8}})), 4, Split::kAllowed).team > 1,
        "few strided rows: a team");
  CHECK(plan_for(make_row_indexer(geometry_of(contiguous({8, 32000, 128}))), 4, Split::kAllowed).mapping == kTiledRows,
        "(B, V, T): tiles");
  // (B, V, T) heads and transposed vocabularies: a strided class dim over adjacent rows, tiles of
  // 32 rows (the last partial), classes split across blocks.
  for (int eb : {2, 4, 8}) {
    simulate({"bvt eb" + std::to_string(eb), eb, contiguous({3, 700, 45}), 1, contiguous({3, 700, 45}), 1});
    simulate({"bvt one row eb" + std::to_string(eb), eb, contiguous({1, 3001, 1}), 0, contiguous({1, 3001, 1}), 0});
    simulate({"x.t() eb" + std::to_string(eb), eb, Layout{{70, 5003}, {1, 70}}, 2, contiguous({70, 5003}), 3});
    simulate({"few rows, long eb" + std::to_string(eb), eb, contiguous({2, 70001}), 1, contiguous({2, 70001}), 2});
    cases += 4;
  }
  // Enough rows for several row groups per block (grid loop), small and large C.
  simulate({"many rows small C", 2, contiguous({300000, 5}), 3, contiguous({300000, 5}), 3});
  simulate({"many rows C=1000", 2, contiguous({20000, 1000}), 1, contiguous({20000, 1000}), 0});
  cases += 2;
  std::printf("  %d simulated launches\n", cases);
}

// ---------------------------------------------------------------------------------------------
// 2b. Filling the GPU (issue 19): every plan either launches kFillBlocks blocks (a few waves of a
//     132-SM GPU: 8 resident blocks of 256 threads per SM, more waves at fewer) or has too few
//     elements to need them, and no thread walks more than its share: 32 units, or twice what an
//     even spread over kFillBlocks full blocks would give it (plus a vector row's head and tail).

static int64_t lane_count(int64_t begin, int64_t end, int lane, int team) {
  return end > begin + lane ? (end - begin - lane + team - 1) / team : 0;
}

static void check_fill(const char* name, const Layout& t, int eb, int64_t misalign) {
  const RowGeometry g = geometry_of(t);
  const RowIndexer ix = make_row_indexer(g);
  const LaunchPlan p = plan_for(ix, eb, Split::kAllowed);
  const int64_t units_per_row = ix.class_stride == 1 ? ceil_div(g.num_classes, kVectorBytes / eb) : g.num_classes;
  const int64_t units = units_per_row * g.num_rows;
  const int64_t blocks = p.items;  // before the kMaxGrid cap: blocks loop over items past it
  if (units >= kFillBlocks * kThreads * 32) {
    CHECK(blocks >= kFillBlocks, "%s: %" PRId64 " blocks for %" PRId64 " units (mapping %d, splits %" PRId64 ")", name,
          blocks, units, p.mapping, p.splits);
  }
  // The row's units by split and lane (row 0; every row has the same span up to its phase).
  const RowSpan whole = row_span(base_address(misalign, eb), g.num_classes, ix.class_stride, eb);
  int64_t most = 0, total = 0;
  for (int64_t sp = 0; sp < p.splits; ++sp) {
    const RowSpan s = split_span(whole, sp, p.splits);
    total += span_units(s);
    if (sp > 0) {
      const RowSpan prev = split_span(whole, sp - 1, p.splits);
      CHECK(s.nvec == s.vec_begin ? s.head_begin == prev.head : s.vec_begin == prev.nvec,
            "%s: split %" PRId64 " does not start where split %" PRId64 " ends", name, sp, sp - 1);
    }
    for (int lane = 0; lane < p.team; ++lane) {
      const int64_t n = lane_count(s.head_begin, s.head, lane, p.team) + lane_count(s.vec_begin, s.nvec, lane, p.team) +
                        lane_count(s.tail_begin, s.num_classes, lane, p.team);
      most = n > most ? n : most;
    }
  }
  CHECK(total == span_units(whole), "%s: splits hold %" PRId64 " of %" PRId64 " units", name, total, span_units(whole));
  const int64_t share = 2 * ceil_div(units, kFillBlocks * kThreads);
  const int64_t bound = (share > 32 ? share : 32) + 2 * kVectorBytes;
  CHECK(most <= bound, "%s: a thread walks %" PRId64 " units (bound %" PRId64 ", mapping %d, splits %" PRId64 ")", name,
        most, bound, p.mapping, p.splits);
}

static void test_fill() {
  const int64_t big_row = (int64_t(1) << 31) + 13;
  // Contiguous (N, C): classifiers, LM heads, few long rows.
  check_fill("4096x32000 f32", contiguous({4096, 32000}), 4, 0);
  check_fill("4096x32000 bf16", contiguous({4096, 32000}), 2, 1);
  check_fill("65536x1000 f32", contiguous({65536, 1000}), 4, 0);
  check_fill("16384x2048 f32", contiguous({16384, 2048}), 4, 0);
  check_fill("8192x2049 f32", contiguous({8192, 2049}), 4, 3);
  check_fill("1024x1M f32", contiguous({1024, 1 << 20}), 4, 0);
  check_fill("8x32000 f32", contiguous({8, 32000}), 4, 0);
  check_fill("16x1M bf16", contiguous({16, 1 << 20}), 2, 5);
  check_fill("one 2^31 row bf16", contiguous({1, big_row}), 2, 3);
  check_fill("8M x 3", contiguous({int64_t(1) << 23, 3}), 4, 0);
  // Strided class dims: (B, V, T) heads, x.t(), segmentation.
  check_fill("(8, 32000, 128) f32", contiguous({8, 32000, 128}), 4, 0);
  check_fill("(4, 50257, 512) bf16", contiguous({4, 50257, 512}), 2, 0);
  check_fill("(50257, 1024).t() f32", Layout{{1024, 50257}, {1, 1024}}, 4, 0);
  check_fill("(2, 128256, 64) bf16", contiguous({2, 128256, 64}), 2, 0);
  check_fill("(8, 21, 512, 512) f32", contiguous({8, 21, 512, 512}), 4, 0);
  check_fill("(2, 32, 256, 256) f32", contiguous({2, 32, 256, 256}), 4, 0);
  check_fill("(2, 50, 256, 256) f32", contiguous({2, 50, 256, 256}), 4, 0);
  check_fill("(2, 150, 512, 512) bf16", contiguous({2, 150, 512, 512}), 2, 0);
  check_fill("(1, 1000, 8192) f32", contiguous({1, 1000, 8192}), 4, 0);
  check_fill("(16, 19, 1024, 2048) channels_last", Layout{{16, 19, 1024, 2048}, {19 * 1024 * 2048, 1, 19 * 2048, 19}},
             4, 0);
  check_fill("x[:, ::2] of (64, 2M)", Layout{{64, 1 << 20}, {int64_t(1) << 21, 2}}, 4, 0);
  // Rows of 4-8 KB (float32 C <= 2048, bfloat16 C <= 4096) stay with a warp, with up to 16 vectors
  // a lane, rather than a block with three barriers per row; longer rows get a block.
  for (int eb : {2, 4}) {
    const int64_t warp_max = kWarpSize * kTeamMaxUnitsPerLane * (kVectorBytes / eb);
    const LaunchPlan warp = make_plan(4096, warp_max, 1, warp_max, eb, Split::kAllowed);
    CHECK(warp.mapping == kTeamRows && warp.team == kWarpSize, "C=%" PRId64 ": a warp per row", warp_max);
    CHECK(make_plan(4096, warp_max + 1, 1, warp_max + 1, eb, Split::kAllowed).mapping == kBlockRow,
          "C=%" PRId64 ": a block per row", warp_max + 1);
    CHECK(make_plan(4096, 1025, 1, 1025, eb, Split::kAllowed).mapping == kTeamRows, "C=1025: a warp per row");
  }
  // The named shapes' plans (issue 19): tiles and splits, not a thread walking a vocabulary.
  const LaunchPlan bvt = plan_for(make_row_indexer(geometry_of(contiguous({8, 32000, 128}))), 4, Split::kAllowed);
  CHECK(bvt.mapping == kTiledRows && bvt.groups == 32 && bvt.splits * bvt.groups >= kFillBlocks,
        "(8, 32000, 128): plan");
  CHECK(plan_for(make_row_indexer(geometry_of(contiguous({8, 32000, 128}))), 4, Split::kNo).splits == 1,
        "probability plans never split");
}

// ---------------------------------------------------------------------------------------------
// 3. N*C past 2^31 (and one row past 2^31): index arithmetic only.

static void test_huge() {
  // (a) (N, C) fp32 contiguous, N*C = 2.46e9: row ownership for every row, element coverage of
  //     the rows around the 2^31 boundary.
  {
    const int64_t N = 600000, C = 4099;
    const RowGeometry g = geometry_of(contiguous({N, C}));
    const RowIndexer ix = make_row_indexer(g);
    const LaunchPlan p = plan_for(ix, 4, Split::kAllowed);
    CHECK(p.mapping == kBlockRow && p.grid == N, "huge (a): plan");
    std::vector<uint8_t> owners(static_cast<size_t>(N), 0);
    for (int64_t b = 0; b < p.grid; ++b)
      for (int64_t group = b; group < p.groups; group += p.grid) {
        const Slot s = slot_of(p, group, 0);
        if (s.row < N) owners[s.row] += 1;
        const Slot last = slot_of(p, group, p.threads - 1);
        CHECK(last.row == s.row && last.lane == p.threads - 1, "huge (a): block row");
      }
    for (int64_t r = 0; r < N; ++r) CHECK(owners[r] == 1, "huge (a): row %" PRId64 " owners %d", r, owners[r]);
    const int64_t boundary = (int64_t(1) << 31) / C;
    for (int64_t r : {int64_t(0), boundary - 1, boundary, boundary + 1, N - 1}) {
      const unsigned __int128 expect = static_cast<unsigned __int128>(r) * C;
      CHECK(static_cast<unsigned __int128>(row_start(ix, r)) == expect, "huge (a): row %" PRId64, r);
      const uint64_t row_addr = base_address(0, 4) + static_cast<uint64_t>(row_start(ix, r)) * 4;
      const RowSpan span = row_span(row_addr, C, 1, 4);
      std::vector<uint8_t> seen(static_cast<size_t>(C), 0);
      for (int lane = 0; lane < p.team; ++lane)
        for_each_unit(
            span, lane, p.team, [&](int64_t c) { seen[c] += 1; },
            [&](int64_t c0) {
              CHECK((row_addr + static_cast<uint64_t>(c0) * 4) % 16 == 0, "huge (a): alignment");
              for (int j = 0; j < 4; ++j) seen[c0 + j] += 1;
            });
      for (int64_t c = 0; c < C; ++c) CHECK(seen[c] == 1, "huge (a): row %" PRId64 " class %" PRId64, r, c);
    }
  }
  // (b) One bf16 row of 2^31 + 13 classes starting 3 elements past a boundary: every unit is
  //     visited by lane (unit % team) in increasing order, and the visits add up to C.
  {
    const int64_t C = (int64_t(1) << 31) + 13;
    const LaunchPlan p = make_plan(1, C, 1, 0, 2, Split::kNo);
    CHECK(p.mapping == kBlockRow && p.grid == 1, "huge (b): plan");
    const uint64_t row_addr = base_address(3, 2);
    const RowSpan span = row_span(row_addr, C, 1, 2);
    CHECK(span.head == 5 && span.tail_begin + (C - span.tail_begin) == C, "huge (b): span");
    int64_t total = 0;
    for (int lane = 0; lane < p.team; ++lane) {
      int64_t last = -1;
      for_each_unit(
          span, lane, p.team,
          [&](int64_t c) {
            CHECK(c > last && c < C, "huge (b): order");
            const int64_t unit = c < span.head ? c : span.nvec + (c - span.tail_begin);
            CHECK((c < span.head ? unit : c - span.tail_begin) % p.team == lane, "huge (b): lane of scalar");
            last = c;
            total += 1;
          },
          [&](int64_t c0) {
            CHECK(c0 > last && c0 + 8 <= span.tail_begin, "huge (b): vector order");
            CHECK(((c0 - span.head) / 8) % p.team == lane && (c0 - span.head) % 8 == 0, "huge (b): lane of vector");
            CHECK((row_addr + static_cast<uint64_t>(c0) * 2) % 16 == 0, "huge (b): alignment");
            last = c0 + 7;
            total += 8;
          });
    }
    CHECK(total == C, "huge (b): visited %" PRId64 " of %" PRId64, total, C);
  }
  // (c) Transposed (C, N).t() with N = 3e9 rows of 3 classes: one thread per row, 2^20 blocks
  //     looping over row groups; the last group and the 2^31 boundary land where they should.
  {
    const int64_t N = 3000000001LL, C = 3;
    const RowGeometry g = geometry_of(Layout{{N, C}, {1, N}});
    const RowIndexer ix = make_row_indexer(g);
    const LaunchPlan p = plan_for(ix, 2, Split::kAllowed);
    CHECK(p.mapping == kTeamRows && p.team == 1 && p.grid == kMaxGrid, "huge (c): plan");
    CHECK(p.groups * p.rows_per_block >= N && (p.groups - 1) * p.rows_per_block < N, "huge (c): groups");
    const int64_t last_group = p.groups - 1;
    const int64_t block = last_group % p.grid;
    CHECK(slot_of(p, last_group, 0).row == last_group * p.rows_per_block, "huge (c): last group");
    int64_t rows_in_last = 0;
    for (int t = 0; t < p.threads; ++t) rows_in_last += slot_of(p, last_group, t).row < N;
    CHECK(rows_in_last == N - last_group * p.rows_per_block, "huge (c): last group rows");
    CHECK(block < p.grid, "huge (c)");
    for (int64_t r : {int64_t(1) << 31, (int64_t(1) << 31) + 1, N - 1}) {
      CHECK(row_start(ix, r) == r, "huge (c): row %" PRId64, r);
      CHECK(element_offset(g, r, 2) == r + 2 * N, "huge (c): element offset");
    }
  }
}

// ---------------------------------------------------------------------------------------------
// 4. The lanes' scans, combined as the kernels combine them, against a direct computation.

struct HostLoader {
  const double* x;
  const double* q;
  int64_t stride;
  template <typename acc_t>
  void scalar(int64_t c, acc_t& xv, acc_t& qv) const {
    xv = static_cast<acc_t>(x[c * stride]);
    qv = q ? static_cast<acc_t>(q[c * stride]) : acc_t(0);
  }
  template <typename acc_t>
  void vector(int64_t c0, acc_t* xv, acc_t* qv) const {
    for (int j = 0; j < kVectorBytes / static_cast<int>(sizeof(float)); ++j) scalar(c0 + j, xv[j], qv[j]);
  }
};

// TeamReduce<kTeamRows>: butterfly, lower lane first; every lane ends with the same state.
static std::vector<LaneState<float>> butterfly(std::vector<LaneState<float>> st) {
  const int team = static_cast<int>(st.size());
  for (int offset = team / 2; offset > 0; offset /= 2) {
    std::vector<LaneState<float>> next(st.size());
    for (int l = 0; l < team; ++l) {
      const LaneState<float>& other = st[l ^ offset];
      next[l] = (l & offset) ? lane_combine(other, st[l]) : lane_combine(st[l], other);
    }
    st = next;
  }
  return st;
}

static void test_scan_math() {
  std::mt19937_64 rng(3);
  std::normal_distribution<double> normal(0.0, 3.0);
  std::uniform_real_distribution<double> unif(0.1, 2.0);
  for (int64_t C : {1, 2, 3, 5, 8, 13, 64, 100, 1000, 4099}) {
    for (int mis = 0; mis < 4; ++mis) {
      std::vector<double> x(C), q(C), w(C);
      for (int64_t c = 0; c < C; ++c) {
        x[c] = normal(rng) + 20.0;
        q[c] = unif(rng);
        w[c] = unif(rng);
      }
      const int64_t bad = C > 3 ? C / 2 + 1 : -1;  // a NaN/inf logit, for check_finite
      std::vector<float> wf(w.begin(), w.end());
      const uint64_t addr = base_address(mis, 4);
      const LaunchPlan p = make_plan(1, C, 1, 0, 4, Split::kNo);
      const RowSpan span = row_span(addr, C, 1, 4);
      const ScanOptions o{true, true, true};
      for (bool with_bad : {false, true}) {
        std::vector<double> xs = x;
        if (with_bad && bad >= 0) xs[bad] = -INFINITY;
        const HostLoader load{xs.data(), q.data(), 1};
        const float ref = row_reference(static_cast<float>(xs[0]));
        std::vector<LaneState<float>> lanes(p.team);
        for (int l = 0; l < p.team; ++l) lanes[l] = scan_lane<float, 4>(span, l, p.team, load, wf.data(), ref, o);
        LaneState<float> st;
        if (p.mapping == kTeamRows) {
          const auto all = butterfly(lanes);
          for (int l = 1; l < p.team; ++l)
            CHECK(std::memcmp(&all[l], &all[0], sizeof(float) * 5) == 0 && all[l].bad_class == all[0].bad_class,
                  "C=%" PRId64 ": lanes disagree after the butterfly", C);
          st = all[0];
        } else {
          st = lane_empty<float>();
          for (int l = 0; l < p.team; ++l) st = lane_combine(st, lanes[l]);
        }
        double m = -INFINITY, s = 0, swd = 0, swq = 0, swqd = 0;
        for (int64_t c = 0; c < C; ++c) m = std::max(m, xs[c]);
        for (int64_t c = 0; c < C; ++c) {
          s += std::exp(xs[c] - m);
          const double f = static_cast<double>(static_cast<float>(xs[c]));
          swd += wf[c] * (f - ref);
          swq += wf[c] * static_cast<float>(q[c]);
          swqd += wf[c] * static_cast<float>(q[c]) * (f - ref);
        }
        const double lse = m + std::log(s);
        const double got = lse_value(row_lse(st.lse));
        CHECK(std::fabs(got - lse) <= 1e-5 * std::fabs(lse) + 1e-5, "C=%" PRId64 ": lse %.9g vs %.9g", C, got, lse);
        CHECK(std::fabs(st.sums.swq - swq) <= 1e-4 * std::fabs(swq) + 1e-4, "C=%" PRId64 ": swq", C);
        if (!(with_bad && bad >= 0)) {
          CHECK(std::fabs(st.sums.swd - swd) <= 1e-4 * (std::fabs(swd) + C), "C=%" PRId64 ": swd %g vs %g", C,
                st.sums.swd, swd);
          CHECK(std::fabs(st.sums.swqd - swqd) <= 1e-4 * (std::fabs(swqd) + C), "C=%" PRId64 ": swqd", C);
          CHECK(st.bad_class == kNoClass, "C=%" PRId64 ": no bad class expected", C);
        } else {
          CHECK(st.bad_class == bad, "C=%" PRId64 ": bad class %" PRId64 " vs %" PRId64, C, st.bad_class, bad);
        }
        // The per-row loss the forward kernel forms from the combined state.
        const LossConstants<float> k{C, 0.1f, 0, 0, 0};
        float sum_w = 0;
        for (float v : wf) sum_w += v;
        const LossConstants<float> kw{C, 0.1f, sum_w, 0, 0};
        const int64_t y = C / 3;
        const float loss = index_row_loss(kw, row_lse(st.lse), ref, static_cast<float>(xs[y]), wf[y], st.sums);
        if (!(with_bad && bad >= 0)) {
          double expect = 0.9 * wf[y] * (lse - static_cast<float>(xs[y]));
          for (int64_t c = 0; c < C; ++c) expect += 0.1 / C * wf[c] * (lse - static_cast<float>(xs[c]));
          CHECK(std::fabs(loss - expect) <= 2e-4 * std::fabs(expect) + 1e-4, "C=%" PRId64 ": loss %g vs %g", C, loss,
                expect);
        }
        (void)k;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// 5. The kernels' row logic (row_ops.h) end to end on the host: lanes scan (launch_plan +
//    row_scan), combine in the kernels' order, lane 0 finishes the row; every lane then computes
//    its gradient elements. Compared with float64 references written from the definitions.

struct RowCase {
  int64_t C;
  int mis;
  bool weighted;
  double eps;
};

// The combined state of a row as the kernel's team sees it.
static LaneState<float> team_scan(const std::vector<double>& x, const std::vector<double>* q, const float* w, int mis,
                                  const ScanOptions& o, float& ref, LaunchPlan& p, RowSpan& span) {
  const int64_t C = static_cast<int64_t>(x.size());
  p = make_plan(1, C, 1, 0, 4, Split::kNo);
  span = row_span(base_address(mis, 4), C, 1, 4);
  ref = C > 0 ? row_reference(static_cast<float>(x[0])) : 0.0f;
  const HostLoader load{x.data(), q ? q->data() : nullptr, 1};
  std::vector<LaneState<float>> lanes(p.team);
  for (int l = 0; l < p.team; ++l) lanes[l] = scan_lane<float, 4>(span, l, p.team, load, w, ref, o);
  if (p.mapping == kTeamRows) return butterfly(lanes)[0];
  LaneState<float> st = lane_empty<float>();
  for (int l = 0; l < p.team; ++l) st = lane_combine(st, lanes[l]);
  return st;
}

static bool close(double got, double want, double rtol, double atol) {
  return std::fabs(got - want) <= rtol * std::fabs(want) + atol;
}

// z-loss scale, softcap (0: none), gradient of the row's returned lse.
struct LlmCase {
  float z;
  float cap;
  float lse_grad;
};

static void test_index_rows() {
  std::mt19937_64 rng(5);
  std::normal_distribution<double> normal(0.0, 2.0);
  std::uniform_real_distribution<double> unif(0.2, 2.0);
  const int64_t ignore_index = -100;
  int rows = 0;
  for (int64_t C : {1, 2, 5, 33, 100, 1000, 4099}) {
    for (const RowCase& rc :
         {RowCase{C, 0, false, 0.0}, RowCase{C, 1, true, 0.0}, RowCase{C, 3, false, 0.1}, RowCase{C, 2, true, 0.25}}) {
      std::vector<double> x(C);
      std::vector<float> wf(C);
      for (int64_t c = 0; c < C; ++c) {
        x[c] = static_cast<float>(normal(rng) + 50.0);  // an offset: lse - x must not cancel badly
        wf[c] = rc.weighted ? static_cast<float>(unif(rng)) : 1.0f;
      }
      float sum_w = 0;
      for (float v : wf) sum_w += v;
      const float* w = rc.weighted ? wf.data() : nullptr;
      // The LLM options: none; z-loss and an lse gradient; both with a softcap (the kernel's loader
      // caps each logit as it reads it: the scan below is given capped values, the gradient the raw
      // ones, which IndexGradRow caps itself).
      for (const LlmCase& lc : {LlmCase{0, 0, 0}, LlmCase{0.01f, 0, 0.3f}, LlmCase{0.02f, 60.0f, -0.2f}}) {
        const LossConstants<float> k{C, static_cast<float>(rc.eps), rc.weighted ? sum_w : static_cast<float>(C), lc.z,
                                     lc.cap};
        const ScanOptions o{has_smoothing(k), has_smoothing(k), false};
        std::vector<double> xc(C);  // the logits as the loss sees them, computed as the loader does
        for (int64_t c = 0; c < C; ++c) xc[c] = loss_logit(k, static_cast<float>(x[c]));
        for (int64_t y : {int64_t(0), C - 1, C / 2, ignore_index, C, int64_t(-1)}) {
          const TargetKind kind = classify_target(y, C, ignore_index);
          BlockTotals totals = totals_empty();
          float ref;
          LaunchPlan p;
          RowSpan span;
          // As the kernel: a row whose target is not valid is not read (empty span).
          const std::vector<double> xs = kind == kTargetValid ? xc : std::vector<double>();
          const LaneState<float> st = team_scan(xs, nullptr, w, rc.mis, o, ref, p, span);
          const float x_y = kind == kTargetValid ? static_cast<float>(xc[y]) : 0.0f;
          const float w_y = (kind == kTargetValid && w) ? w[y] : 1.0f;
          const RowOut<float> out = index_row_finish(k, 7, kind, y, x_y, w_y, ref, st, totals);
          rows += 1;
          if (kind == kTargetInvalid) {
            CHECK(std::isnan(out.loss) && std::isnan(out.lse.max) && std::isnan(out.lse.log_sum), "invalid row: NaN");
            CHECK(totals.invalid.position == 7 && totals.invalid.value == y && totals.invalid.count == 1,
                  "invalid row");
            CHECK(std::isnan(totals.loss_sum) && totals.total_weight == 0, "invalid row: totals");
            continue;
          }
          if (kind == kTargetIgnored) {
            CHECK(out.loss == 0 && out.lse.max == 0 && out.lse.log_sum == 0, "ignored row: zeros");
            CHECK(totals.invalid.count == 0 && totals.loss_sum == 0 && totals.total_weight == 0, "ignored row: totals");
            continue;
          }
          // Reference loss (float64, from the definition, on the capped logits).
          double m = -INFINITY, se = 0;
          for (double v : xc) m = std::max(m, v);
          for (double v : xc) se += std::exp(v - m);
          const double lse = m + std::log(se);
          double loss = (1 - rc.eps) * w_y * (lse - xc[y]) + lc.z * lse * lse;
          for (int64_t c = 0; c < C; ++c) loss += rc.eps / C * wf[c] * (lse - xc[c]);
          CHECK(close(out.loss, loss, 1e-5, 1e-5), "C=%" PRId64 " y=%" PRId64 " eps=%g z=%g cap=%g: loss %.8g vs %.8g",
                C, y, rc.eps, lc.z, lc.cap, out.loss, loss);
          CHECK(close(lse_value(out.lse), lse, 1e-6, 1e-6), "C=%" PRId64 ": lse", C);
          CHECK(totals.total_weight == w_y && totals.invalid.count == 0, "valid row: totals");
          // Gradient, every lane, against d loss / d x_c = (scale * (share w_y (p_c - [c == y])
          //     + eps/C (sum_w p_c - w_c) + 2 z lse p_c) + lse_grad p_c) * (1 - (capped_c / cap)^2).
          const float scale = 0.37f;
          const auto g = index_grad_row(k, w, y, scale, out.lse, lc.lse_grad);
          std::vector<double> grad(C, NAN);
          std::vector<int> written(C, 0);
          for (int l = 0; l < p.team; ++l)
            for_each_unit(
                span, l, p.team,
                [&](int64_t c) {
                  grad[c] = g(c, static_cast<float>(x[c]));
                  written[c] += 1;
                },
                [&](int64_t c0) {
                  for (int j = 0; j < 4; ++j) {
                    grad[c0 + j] = g(c0 + j, static_cast<float>(x[c0 + j]));
                    written[c0 + j] += 1;
                  }
                });
          double sum_wd = 0;
          for (float v : wf) sum_wd += v;
          for (int64_t c = 0; c < C; ++c) {
            const double pc = std::exp(xc[c] - lse);
            const double slope = lc.cap > 0 ? 1 - (xc[c] / lc.cap) * (xc[c] / lc.cap) : 1.0;
            const double want = slope * (scale * ((1 - rc.eps) * w_y * (pc - (c == y)) +
                                                  rc.eps / C * (sum_wd * pc - wf[c]) + 2 * lc.z * lse * pc) +
                                         lc.lse_grad * pc);
            CHECK(written[c] == 1, "grad element written %d times", written[c]);
            CHECK(close(grad[c], want, 1e-4, 1e-7), "C=%" PRId64 " y=%" PRId64 " c=%" PRId64 ": grad %.8g vs %.8g", C,
                  y, c, grad[c], want);
          }
        }
      }
    }
  }
  std::printf("  %d class-index rows\n", rows);
}

static void test_prob_rows() {
  std::mt19937_64 rng(6);
  std::normal_distribution<double> normal(0.0, 2.0);
  std::uniform_real_distribution<double> unif(0.2, 2.0);
  int rows = 0;
  for (int64_t C : {0, 1, 3, 64, 1000, 4099}) {
    for (const RowCase& rc : {RowCase{C, 0, false, 0.0}, RowCase{C, 1, true, 0.2}, RowCase{C, 3, true, 0.0}}) {
      std::vector<double> x(C), q(C);
      std::vector<float> wf(C);
      for (int64_t c = 0; c < C; ++c) {
        x[c] = static_cast<float>(normal(rng) - 30.0);
        q[c] = static_cast<float>(unif(rng) / C);
        wf[c] = rc.weighted ? static_cast<float>(unif(rng)) : 1.0f;
      }
      float sum_w = 0;
      for (float v : wf) sum_w += v;
      const float* w = rc.weighted ? wf.data() : nullptr;
      const LossConstants<float> k{C, static_cast<float>(rc.eps), rc.weighted ? sum_w : static_cast<float>(C), 0, 0};
      const ScanOptions o{true, has_smoothing(k), true};
      BlockTotals totals = totals_empty();
      float ref;
      LaunchPlan p;
      RowSpan span;
      const LaneState<float> st = team_scan(x, &q, w, rc.mis, o, ref, p, span);
      const RowOut<float> out = prob_row_finish(k, 3, ref, st, totals);
      rows += 1;
      if (C == 0) {
        CHECK(out.loss == 0 && totals.loss_sum == 0 && totals.nonfinite_count == 0, "C=0 probability row");
        continue;
      }
      double m = -INFINITY, se = 0;
      for (double v : x) m = std::max(m, v);
      for (double v : x) se += std::exp(v - m);
      const double lse = m + std::log(se);
      double loss = 0, mass = 0;
      std::vector<double> qs(C);
      for (int64_t c = 0; c < C; ++c) {
        qs[c] = (1 - rc.eps) * q[c] + rc.eps / C;
        loss += wf[c] * qs[c] * (lse - x[c]);
        mass += wf[c] * qs[c];
      }
      CHECK(close(out.loss, loss, 1e-5, 1e-6), "prob C=%" PRId64 ": loss %.8g vs %.8g", C, out.loss, loss);
      // Pass 1 of the backward (sum_c w_c q_c), then the gradients of every lane.
      float swq = 0;
      for (int64_t c = 0; c < C; ++c) swq += prob_swq_element(w, c, static_cast<float>(q[c]));
      const float scale = -1.3f;
      const ProbGradRow<float, const float*> g{k, w, prob_row_mass(k, swq), scale, out.lse};
      std::vector<int> written(C, 0);
      for (int l = 0; l < p.team; ++l) {
        auto check = [&](int64_t c) {
          const double pc = std::exp(x[c] - lse);
          const double dx = g.dx(c, static_cast<float>(x[c]), static_cast<float>(q[c]));
          const double dq = g.dq(c, static_cast<float>(x[c]));
          CHECK(close(dx, scale * (mass * pc - wf[c] * qs[c]), 1e-4, 1e-7), "prob C=%" PRId64 " c=%" PRId64 ": dx", C,
                c);
          CHECK(close(dq, -scale * (1 - rc.eps) * wf[c] * (x[c] - lse), 1e-5, 1e-6), "prob C=%" PRId64 ": dq", C);
          written[c] += 1;
        };
        for_each_unit(span, l, p.team, check, [&](int64_t c0) {
          for (int j = 0; j < 4; ++j) check(c0 + j);
        });
      }
      for (int64_t c = 0; c < C; ++c) CHECK(written[c] == 1, "prob grad element written %d times", written[c]);
    }
  }
  std::printf("  %d probability rows\n", rows);
}

// ---------------------------------------------------------------------------------------------
// 6. Block totals: merge order does not change the first invalid target or the counts.

static void test_totals() {
  std::mt19937_64 rng(4);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<BlockTotals> parts(1 + rng() % 50, totals_empty());
    int64_t first = -1, count = 0, nf_first = -1, nf_count = 0;
    for (size_t i = 0; i < parts.size(); ++i) {
      if (rng() % 3 == 0) {
        const int64_t pos = static_cast<int64_t>(rng() % 100000);
        parts[i].invalid = invalid_merge(parts[i].invalid, InvalidTarget{pos, -pos, 1});
        if (first < 0 || pos < first) first = pos;
        count += 1;
      }
      if (rng() % 4 == 0) {
        const int64_t row = static_cast<int64_t>(rng() % 100000);
        totals_note_nonfinite(parts[i], row, 7);
        if (nf_first < 0 || row < nf_first) nf_first = row;
        nf_count += 1;
      }
    }
    BlockTotals fwd = totals_empty(), rev = totals_empty();
    for (size_t i = 0; i < parts.size(); ++i) fwd = totals_merge(fwd, parts[i]);
    for (size_t i = parts.size(); i-- > 0;) rev = totals_merge(parts[i], rev);
    for (const BlockTotals& t : {fwd, rev}) {
      CHECK(t.invalid.position == first && t.invalid.count == count, "totals: invalid");
      if (first >= 0) CHECK(t.invalid.value == -first, "totals: value of the first");
      CHECK(t.nonfinite_row == nf_first && t.nonfinite_count == nf_count, "totals: non-finite");
    }
  }
}

// lse_add (one exp per scalar element) is bitwise lse_combine(s, {x, 1}) (two), specials included.
static void test_lse_add() {
  const float special[] = {0.0f, -1.5f, 3.25f, 88.0f, -104.0f, 1e-30f, INFINITY, -INFINITY, NAN};
  std::vector<LseState<float>> states = {lse_empty<float>()};
  for (float m : special) {
    for (float s : {1.0f, 0.5f, 1234.5f, 0.0f}) states.push_back({m, s});
  }
  int compared = 0;
  for (const auto& st : states) {
    for (float x : special) {
      const LseState<float> a = lse_add(st, x), b = lse_combine(st, LseState<float>{x, 1.0f});
      const bool same = (std::memcmp(&a.max, &b.max, 4) == 0 || (a.max != a.max && b.max != b.max)) &&
                        (std::memcmp(&a.sum, &b.sum, 4) == 0 || (a.sum != a.sum && b.sum != b.sum));
      CHECK(same, "lse_add({%g, %g}, %g) = {%g, %g}, lse_combine gives {%g, %g}", st.max, st.sum, x, a.max, a.sum,
            b.max, b.sum);
      ++compared;
    }
  }
  // A running sum over a row, element by element, against the combine of all.
  uint32_t r = 7;
  for (int n : {1, 2, 33, 1000}) {
    LseState<float> add = lse_empty<float>(), combine = lse_empty<float>();
    for (int i = 0; i < n; ++i) {
      r = r * 1664525u + 1013904223u;
      const float x = static_cast<float>(static_cast<int32_t>(r >> 8) % 4000) / 100.0f;
      add = lse_add(add, x);
      combine = lse_combine(combine, LseState<float>{x, 1.0f});
    }
    CHECK(std::memcmp(&add, &combine, sizeof(add)) == 0, "row of %d: {%g, %g} vs {%g, %g}", n, add.max, add.sum,
          combine.max, combine.sum);
  }
  CHECK(compared > 300, "compared %d", compared);
}

int main() {
  std::printf("lse_add\n");
  test_lse_add();
  std::printf("fast_divmod\n");
  test_fast_divmod();
  std::printf("row_start == row_offset\n");
  test_row_start();
  std::printf("simulated launches\n");
  test_launches();
  std::printf("filling the GPU\n");
  test_fill();
  std::printf("N*C past 2^31\n");
  test_huge();
  std::printf("lane scans\n");
  test_scan_math();
  std::printf("row logic\n");
  test_index_rows();
  test_prob_rows();
  std::printf("block totals\n");
  test_totals();
  return check_summary();
}
