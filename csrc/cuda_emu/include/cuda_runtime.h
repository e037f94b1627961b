// Emulated build: the CUDA header's name, the emulation's content (csrc/cuda_emu/runtime.h).
#pragma once
#include "../runtime.h"
