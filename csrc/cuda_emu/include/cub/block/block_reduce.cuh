// Emulated build: the CUB header's name, the emulation's stand-in (csrc/cuda_emu/cub_block_reduce.h).
#pragma once
#include "../../../cub_block_reduce.h"
