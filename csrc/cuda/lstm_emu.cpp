// The CUDA kernels of lstm.cu compiled as plain C++ against emu.h, for
// bilstm_fast._cuda_emu (BILSTM_CUDA_EMULATE is defined by CMake).
#ifndef BILSTM_CUDA_EMULATE
#define BILSTM_CUDA_EMULATE 1
#endif
#include "lstm.cu"
