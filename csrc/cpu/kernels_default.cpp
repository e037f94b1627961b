// The CPU kernels built for the DEFAULT capability: setup.py compiles this file with that
// capability's flags and -DCPU_CAPABILITY=DEFAULT (see CPU_CAPABILITY_FLAGS there).
#include "kernels.h"
