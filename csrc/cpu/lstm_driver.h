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

// All block until done. num_threads >= 1. run_gemm runs independent GEMMs
// (e.g. dW_hh of each direction) together, the threads split among them.
void run_gemm(const std::vector<GemmParams>& problems, DType dt, int num_threads);

// The recurrence; p.dtype is f32 or f64.
void run_forward(const FwdParams& p, int num_threads);
void run_backward(const BwdParams& p, int num_threads);

}  // namespace bilstm_cpu
