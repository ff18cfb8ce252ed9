// Runs the CPU kernels on the thread pool: ISA selection, the split of the
// work between threads, per-call scratch.
#pragma once
#include <string>
#include <vector>

#include "cpu_kernels.h"

namespace bilstm_cpu {

// The kernel build this CPU runs ("avx512", "avx2" or "baseline").
const KernelTable& active_kernels();
std::vector<std::string> supported_isas();      // the builds this CPU can run, fastest first
void set_isa(const std::string& name);          // throws std::invalid_argument if unsupported
// "auto", "on" or "off" (cpu_kernels.h: bf16_dot_mode); "on" throws
// std::invalid_argument on a CPU without AVX512-BF16, as does any other name.
void set_bf16_dot(const std::string& mode);

// All block until done. num_threads >= 1. run_gemm runs independent GEMMs
// (e.g. dW_hh of each direction) together, the threads split among them. dt:
// B's dtype (A and C are f32 when it is f16 / bf16, else dt).
void run_gemm(const std::vector<GemmParams>& problems, DType dt, int num_threads);

// The recurrence; p.dtype (X) is f32, f64, f16 or bf16 (A = f32 for the last two).
void run_forward(const FwdParams& p, int num_threads);
void run_backward(const BwdParams& p, int num_threads);

}  // namespace bilstm_cpu
