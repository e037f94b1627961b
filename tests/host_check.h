// The check macro of the host-compiled C++ tests (cuda_plan_test.cpp, deferred_test.cpp): counts
// every check, prints the first 30 failures, and check_summary() gives main's exit code.
#pragma once

#include <cinttypes>
#include <cstdint>
#include <cstdio>

static int g_failures = 0;
static int64_t g_checks = 0;

#define CHECK(cond, ...)                                                     \
  do {                                                                       \
    ++g_checks;                                                              \
    if (!(cond)) {                                                           \
      if (++g_failures <= 30) {                                              \
        std::fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
        std::fprintf(stderr, __VA_ARGS__);                                   \
        std::fprintf(stderr, "\n");                                          \
      }                                                                      \
    }                                                                        \
  } while (0)

inline int check_summary() {
  std::printf("%" PRId64 " checks, %d failures\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
