#include "lstm_driver.h"

#include <atomic>
#include <memory>
#include <type_traits>
#include <mutex>
#include <stdexcept>

#include "thread_pool.h"

namespace bilstm_cpu {

namespace {

bool cpu_has(const char* isa) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (std::string(isa) == "avx512")
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
  if (std::string(isa) == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
  return std::string(isa) == "baseline";
}

const KernelSet* all_kernels[] = {
#ifdef BILSTM_CPU_X86
    &kernels_avx512(), &kernels_avx2(),
#endif
    &kernels_baseline()};

const KernelSet* pick_default() {
  for (const KernelSet* k : all_kernels)
    if (cpu_has(k->isa)) return k;
  return &kernels_baseline();
}

std::atomic<const KernelSet*> g_active{pick_default()};


struct Plan {
  int nthreads = 1;
  std::vector<std::vector<Job>> jobs;            // per thread, run in order
  std::vector<std::unique_ptr<Barrier>> barriers;
};

// How threads share the work (P threads, N directions, B rows, Hq hidden units
// in units of `unit` = 4L):
//  * P <= N: whole directions per thread -- the two directions are
//    independent, so no synchronization at all. With 2 cores and a
//    bidirectional layer this is always the case.
//  * P > N: P/N threads per direction, splitting the batch rows when there
//    are >= 8 rows per thread (no barrier; each thread streams all of W_hh,
//    which at >= 8 rows is amortized), else splitting the hidden units (each
//    thread keeps only its slice of W_hh hot and the threads of a direction
//    meet at a barrier once per step).
Plan make_plan(int64_t N, int64_t B, int64_t Hq, int64_t unit, int P) {
  Plan plan;
  if (P <= N) {
    plan.nthreads = P;
    plan.jobs.resize(P);
    for (int64_t n = 0; n < N; ++n) plan.jobs[n % P].push_back(Job{n, 0, B, 0, Hq});
    return plan;
  }
  int64_t tpd = P / N;
  const int64_t units = Hq / unit;
  const bool split_batch = B >= 8 * tpd;
  if (!split_batch) tpd = std::min(tpd, units);
  plan.nthreads = static_cast<int>(tpd * N);
  plan.jobs.resize(plan.nthreads);
  for (int64_t n = 0; n < N; ++n) {
    Barrier* bar = nullptr;
    if (!split_batch && tpd > 1) {
      plan.barriers.push_back(std::make_unique<Barrier>(static_cast<int>(tpd)));
      bar = plan.barriers.back().get();
    }
    for (int64_t c = 0; c < tpd; ++c) {
      Job j{n, 0, B, 0, Hq, bar};
      if (split_batch) {
        j.b0 = B * c / tpd;
        j.b1 = B * (c + 1) / tpd;
      } else {
        j.lo = units * c / tpd * unit;
        j.hi = units * (c + 1) / tpd * unit;
      }
      plan.jobs[n * tpd + c].push_back(j);
    }
  }
  return plan;
}

template <class Params>
void run(const Params& p, int num_threads) {
  const DType dt = p.dtype;
  constexpr bool forward = std::is_same_v<Params, FwdParams>;
  const KernelSet& ks = *g_active.load();
  const auto kernel = [&] {
    if constexpr (forward) return ks.forward[kernel_index(dt)];
    else return ks.backward[kernel_index(dt)];
  }();
  const int64_t esize = dt == DType::f64 ? 8 : 4;
  const int64_t L = ks.vec_bytes / esize, unit = 4 * L;
  Buffers buf;
  buf.Hq = (p.H + unit - 1) / unit * unit;
  std::lock_guard<std::mutex> lock(ThreadPool::call_mutex());
  Plan plan = make_plan(p.N, p.B, buf.Hq, unit, num_threads < 1 ? 1 : num_threads);

  // Scratch: packed weights of every job ((hi-lo) * 4H elements each), then
  // per direction h ([2][B][Hq] forward, [B][Hq] backward) and c ([B][Hq]).
  int64_t wp_elems = 0;
  for (auto& tj : plan.jobs)
    for (Job& j : tj) wp_elems += ((j.hi - j.lo) * 4 * p.H + 15) / 16 * 16;
  const int64_t hsz = (forward ? 2 : 1) * p.B * buf.Hq, csz = p.B * buf.Hq;
  char* wp = static_cast<char*>(scratch(0, esize * wp_elems + 64));
  char* st = static_cast<char*>(scratch(1, esize * p.N * (hsz + csz) + 64));
  for (auto& tj : plan.jobs)
    for (Job& j : tj) {
      j.wpack = wp;
      wp += esize * (((j.hi - j.lo) * 4 * p.H + 15) / 16 * 16);
    }
  for (int64_t n = 0; n < p.N; ++n) {
    buf.h[n] = st + esize * n * (hsz + csz);
    buf.c[n] = st + esize * (n * (hsz + csz) + hsz);
  }
  ThreadPool::instance().run(plan.nthreads, [&](int tid) {
    for (const Job& j : plan.jobs[tid]) kernel(p, j, buf);
  }, /*independent=*/plan.barriers.empty());
}

}  // namespace

const KernelSet& active_kernels() { return *g_active.load(); }

std::vector<std::string> supported_isas() {
  std::vector<std::string> out;
  for (const KernelSet* k : all_kernels)
    if (cpu_has(k->isa)) out.push_back(k->isa);
  return out;
}

void set_isa(const std::string& name) {
  for (const KernelSet* k : all_kernels)
    if (name == k->isa && cpu_has(k->isa)) {
      g_active.store(k);
      return;
    }
  throw std::invalid_argument("isa: '" + name + "' is not built or not supported by this CPU");
}

void run_forward(const FwdParams& p, int num_threads) { run(p, num_threads); }

void run_backward(const BwdParams& p, int num_threads) { run(p, num_threads); }

}  // namespace bilstm_cpu
