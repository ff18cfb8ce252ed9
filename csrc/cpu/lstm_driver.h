// Runs the recurrence kernels on the thread pool: ISA selection, the split of
// (direction, batch rows, hidden units) between threads, per-call scratch.
#pragma once
#include <string>
#include <vector>

#include "lstm_cpu.h"

namespace bilstm_cpu {

// The kernel build this CPU runs ("avx512", "avx2" or "baseline").
const KernelSet& active_kernels();
std::vector<std::string> supported_isas();      // the builds this CPU can run, fastest first
void set_isa(const std::string& name);          // throws std::invalid_argument if unsupported

// Both block until done; p.dtype is f32 or f64. num_threads >= 1.
void run_forward(const FwdParams& p, int num_threads);
void run_backward(const BwdParams& p, int num_threads);

}  // namespace bilstm_cpu
