// Emulated build: the CUDA header's name, the emulation's content (csrc/cuda_emu/half_types.h).
#pragma once
#include "../half_types.h"
