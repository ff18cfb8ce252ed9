// Runs the CPU kernels on the thread pool: ISA selection, the split of the
// work between threads, per-call scratch.
#pragma once
#include <string>
#include <vector>

#include "cpu_kernels.h"

namespace bilstm_cpu {

enum class DType { f32 = 0, f64 = 1 };

// The kernel build this CPU runs ("avx512", "avx2" or "baseline").
const KernelTable& active_kernels();
std::vector<std::string> supported_isas();      // the builds this CPU can run, fastest first
void set_isa(const std::string& name);          // throws std::invalid_argument if unsupported

// All block until done. num_threads >= 1. run_gemm runs independent GEMMs
// (e.g. dW_hh of each direction) together, the threads split among them.
void run_gemm(const std::vector<GemmParams>& problems, DType dt, int num_threads);

// Prepacked B for GemmParams::bpacked: NR columns per panel in the active
// build, and W [N][K] (rows ld apart) packed into ceil(N/NR)*NR*K elements.
int64_t panel_cols(DType dt);
void pack_w_rows(const void* w, int64_t N, int64_t K, int64_t ld, void* dst, DType dt);
// Prepacked W_hh for FwdParams::w_hh_packed: N*4*Hp*H elements, 64-byte aligned.
int64_t packed_w_hh_size(DType dt, int64_t N, int64_t H);
void pack_w_hh(const View& w_hh, int64_t N, int64_t H, void* dst, DType dt);
void run_forward(const FwdParams& p, DType dt, int num_threads);
void run_backward(const BwdParams& p, DType dt, int num_threads);

}  // namespace bilstm_cpu
