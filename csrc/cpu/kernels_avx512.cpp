// The CPU kernels built for the AVX512 capability: setup.py compiles this file with that
// capability's flags and -DCPU_CAPABILITY=AVX512 (see CPU_CAPABILITY_FLAGS there).
#include "kernels.h"
