#include "lstm_driver.h"

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <atomic>
#include <memory>
#include <mutex>
#include <numeric>
#include <stdexcept>
#include <type_traits>

#include "thread_pool.h"

namespace bilstm_cpu {

namespace {

bool cpu_has(const char* isa) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  // f16c: the fp16 conversions of both builds (every AVX2 CPU has it).
  if (std::string(isa) == "avx512")
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("f16c");
  if (std::string(isa) == "avx2")
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#endif
  return std::string(isa) == "baseline";
}

const KernelTable* all_kernels[] = {
#ifdef BILSTM_CPU_X86
    &kernel_table_avx512(), &kernel_table_avx2(),
#endif
    &kernel_table_baseline()};

const KernelTable* pick_default() {
  for (const KernelTable* k : all_kernels)
    if (cpu_has(k->isa)) return k;
  return &kernel_table_baseline();
}

std::atomic<const KernelTable*> g_active{pick_default()};

int parse_bf16_dot(const std::string& mode) {
  if (mode == "auto") return kBf16DotAuto;
  if (mode == "off") return kBf16DotOff;
  if (mode == "on") {
    if (!cpu_has_bf16_dot())
      throw std::invalid_argument("bf16_dot: 'on' needs AVX512-BF16, which this CPU does not have");
    return kBf16DotOn;
  }
  throw std::invalid_argument("bf16_dot: expected 'auto', 'on' or 'off', got '" + mode + "'");
}

// The environment's choice; one it cannot honour (a typo, "on" without
// AVX512-BF16) leaves "auto" rather than failing the module's import.
std::atomic<int> g_bf16_dot{[] {
  const char* v = std::getenv("BILSTM_CPU_BF16_DOT");
  try {
    return v ? parse_bf16_dot(v) : kBf16DotAuto;
  } catch (const std::invalid_argument&) {
    return kBf16DotAuto;
  }
}()};

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Bump allocator over one scratch slot: every piece 64-byte aligned.
class Arena {
 public:
  void add(int64_t bytes) { total_ += round_up(bytes, 64); }
  void start(int slot) { base_ = static_cast<char*>(scratch(slot, static_cast<size_t>(total_) + 64)); }
  void* take(int64_t bytes) {
    void* p = base_;
    base_ += round_up(bytes, 64);
    return p;
  }

 private:
  int64_t total_ = 0;
  char* base_ = nullptr;
};

// -------------------------------------------------------------------- GEMM
// Each problem's output columns are cut in whole panels into jobs, two per
// thread of its share (kJobsPerThread: a thread that starts late leaves more
// than a token share to the others, run_jobs); every job packs only its own
// columns of B and runs over all M rows: no synchronization.
constexpr int64_t kJobsPerThread = 2;

// The caller holds ThreadPool::call_mutex().
void run_gemm_locked(const std::vector<GemmParams>& problems, DType dt, int P) {
  const KernelTable& ks = *g_active.load();
  const int64_t esize = dt == DType::f64 ? 8 : 4, NR = 2 * ks.vec_bytes / esize;
  const int64_t np = static_cast<int64_t>(problems.size());
  std::vector<GemmJob> jobs;
  int64_t max_n = 0;
  for (int64_t i = 0; i < np; ++i) {
    const GemmParams& p = problems[i];
    if (p.M < 1 || p.N < 1) continue;
    if (p.a_bf16 && (!ks.bf16_dot() || dt != DType::bf16))  // the binding checked; set_isa may have run since
      throw std::invalid_argument("bf16 x: the active kernel build has no bf16 dot products");
    const int64_t panels = (p.N + NR - 1) / NR;
    const int64_t share = (P + np - 1 - i) / np;  // threads of this problem
    const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(panels, P > 1 ? kJobsPerThread * share : 1));
    for (int64_t c = 0; c < parts; ++c)
      jobs.push_back(GemmJob{&p, panels * c / parts * NR, std::min(p.N, panels * (c + 1) / parts * NR)});
    max_n = std::max(max_n, p.N);
  }
  if (jobs.empty()) return;
  // Largest first (jobs are claimed in order): equal cuts of 10 panels into
  // 4 jobs are 2, 3, 2, 3 panels, which two threads claimed as 2 + 2 vs 3 + 3;
  // 3, 3, 2, 2 is 5 + 5. Measured on dx of T64 B32 D300 H256 ([2048, 2048] x
  // [2048, 300]), Zen 5, 2 threads, min of 20, 2 runs: 7.26-7.36 -> 6.38-6.59 ms.
  std::stable_sort(jobs.begin(), jobs.end(), [](const GemmJob& a, const GemmJob& b) {
    return a.p->M * a.p->K * (a.n1 - a.n0) > b.p->M * b.p->K * (b.n1 - b.n0);
  });
  Arena arena;
  for (const GemmJob& j : jobs)
    arena.add(esize * round_up(j.n1 - j.n0, NR) * j.p->K);
  arena.add(esize * max_n);
  arena.start(0);
  for (GemmJob& j : jobs)
    j.bpack = arena.take(esize * round_up(j.n1 - j.n0, NR) * j.p->K);
  void* zero = arena.take(esize * max_n);
  std::memset(zero, 0, static_cast<size_t>(esize * max_n));
  for (GemmJob& j : jobs) j.zero_row = zero;
  const GemmFn kernel = ks.gemm[kernel_index(dt)];
  ThreadPool::instance().run_jobs(static_cast<int>(jobs.size()), P, [&](int j) { kernel(jobs[j]); });
}

void run_gemm_impl(const std::vector<GemmParams>& problems, DType dt, int P) {
  std::lock_guard<std::mutex> lock(ThreadPool::call_mutex());
  run_gemm_locked(problems, dt, P);
}

// -------------------------------------------------------------- recurrence
struct Plan {
  int nthreads = 1;
  std::vector<std::vector<RecJob>> jobs;              // per thread, run in order
  std::vector<RowGroup> groups;
  std::vector<std::vector<int64_t>> group_rows;
  std::vector<std::unique_ptr<Barrier>> barriers;
};

// Rows by decreasing length (ties by batch row), so that the rows still
// running at a step are a prefix of every group in both directions.
std::vector<int64_t> row_order(int64_t B, const int64_t* lengths) {
  std::vector<int64_t> order(B);
  std::iota(order.begin(), order.end(), 0);
  if (lengths)
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return lengths[a] > lengths[b]; });
  return order;
}

// How threads share the work (P threads, N directions, B rows, Hp hidden units
// in panels of NR):
//  * P <= N: whole directions per thread -- the two directions are
//    independent, so no synchronization at all. With 2 cores and a
//    bidirectional layer this is always the case.
//  * P > N: P/N threads per direction, splitting the batch rows when there
//    are >= 8 rows per thread (no barrier; each thread streams all of W_hh,
//    which at >= 8 rows is amortized; rows are dealt round-robin in length
//    order so that every thread gets long and short sequences alike), else
//    splitting the hidden units (each thread keeps only its slice of W_hh hot
//    and the threads of a direction meet at a barrier once per step).
//  With a projection (Pp > 0) the hidden units are not split: those threads
//  would meet twice per step, and on the 2-vCPU machine this was measured on
//  that was 2-10x slower than one thread per direction (docs/cpu.md,
//  "Projection"); the extra threads stay idle unless the batch is split.
//  BILSTM_CPU_PROJ_SPLIT=units splits them anyway (to measure elsewhere):
//  the threads also split the Pp columns of h (the projection GEMM's
//  output), in panels of NR.
bool proj_unit_split() {
  static const bool on = [] {
    const char* v = std::getenv("BILSTM_CPU_PROJ_SPLIT");
    return v && std::string(v) == "units";
  }();
  return on;
}

Plan make_plan(int64_t N, int64_t B, int64_t Hp, int64_t NR, int P, const int64_t* lengths, int64_t Pp) {
  Plan plan;
  const std::vector<int64_t> order = row_order(B, lengths);
  const int64_t tpd_max = std::max<int64_t>(1, P / N);
  const bool split_batch = P > N && B >= 8 * tpd_max;
  const bool split_units = Pp == 0 || proj_unit_split();
  const int64_t tpd = P <= N ? 1 : split_batch ? tpd_max : split_units ? std::min(tpd_max, Hp / NR) : 1;
  const int64_t groups_per_dir = split_batch ? tpd : 1;
  plan.group_rows.resize(N * groups_per_dir);
  plan.groups.resize(N * groups_per_dir);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < groups_per_dir; ++c) {
      std::vector<int64_t>& rows = plan.group_rows[n * groups_per_dir + c];
      for (int64_t i = c; i < B; i += groups_per_dir) rows.push_back(order[i]);
      plan.groups[n * groups_per_dir + c].rows = rows.data();
      plan.groups[n * groups_per_dir + c].nrows = static_cast<int64_t>(rows.size());
    }
  if (P <= N) {
    plan.nthreads = P;
    plan.jobs.resize(P);
    for (int64_t n = 0; n < N; ++n) {
      plan.jobs[n % P].push_back(RecJob{n, 0, Hp, &plan.groups[n]});
      plan.jobs[n % P].back().phi = Pp;
    }
    return plan;
  }
  plan.nthreads = static_cast<int>(tpd * N);
  plan.jobs.resize(plan.nthreads);
  const int64_t panels = Hp / NR;
  for (int64_t n = 0; n < N; ++n) {
    Barrier* bar = nullptr;
    if (!split_batch && tpd > 1) {
      plan.barriers.push_back(std::make_unique<Barrier>(static_cast<int>(tpd)));
      bar = plan.barriers.back().get();
    }
    for (int64_t c = 0; c < tpd; ++c) {
      RecJob j{n, 0, Hp, &plan.groups[n * groups_per_dir + (split_batch ? c : 0)], bar};
      j.phi = Pp;
      if (!split_batch) {
        j.lo = panels * c / tpd * NR;
        j.hi = panels * (c + 1) / tpd * NR;
        j.plo = Pp / NR * c / tpd * NR;
        j.phi = Pp / NR * (c + 1) / tpd * NR;
      }
      plan.jobs[n * tpd + c].push_back(j);
    }
  }
  return plan;
}

template <class Params>
void run_recurrence(const Params& p, int num_threads) {
  const DType dt = p.dtype;
  constexpr bool forward = std::is_same_v<Params, FwdParams>;
  const KernelTable& ks = *g_active.load();
  // esize: A's element size (fp16 / bf16 compute in float; their panels, in
  // X or float, fit the same bytes).
  const int64_t esize = dt == DType::f64 ? 8 : 4, NR = 2 * ks.vec_bytes / esize;
  const int64_t Hp = round_up(p.H, NR), G = 4 * p.H;
  const bool proj = p.w_hr.ptr != nullptr;
  const int64_t P = proj ? p.P : p.H, Pp = round_up(P, NR);  // features of h
  std::lock_guard<std::mutex> lock(ThreadPool::call_mutex());
  Plan plan = make_plan(p.N, p.B, Hp, NR, num_threads < 1 ? 1 : num_threads, p.lengths, proj ? Pp : 0);

  // Scratch: per group h, c, g (+ m, r with a projection; + h16 forward in
  // bf16; cpu_kernels.h: RowGroup), per job its packed W_hh slice: forward 4 gates x (hi-lo) units
  // x H, backward (hi-lo) x 4H; with a projection (K = P for the gate GEMM)
  // forward 4 (hi-lo) P + (phi-plo) H (W_hr), backward (phi-plo) 4H + (hi-lo) P.
  Arena arena;
  auto group_sizes = [&](const RowGroup& g) {
    const int64_t nr = g.nrows;
    return std::array<int64_t, 6>{esize * (forward ? 2 : 1) * nr * Pp, esize * nr * Hp,
                                  esize * (forward ? nr * 4 * Hp : 2 * nr * G),
                                  proj ? esize * nr * Hp : 0, proj && !forward ? esize * nr * Pp : 0,
                                  forward && !proj && dt == DType::bf16 ? 2 * 2 * nr * Hp : 0};
  };
  auto pack_size = [&](const RecJob& j) {
    if (!proj) return esize * (j.hi - j.lo) * G;
    return esize * (forward ? 4 * (j.hi - j.lo) * P + (j.phi - j.plo) * p.H
                            : (j.phi - j.plo) * G + (j.hi - j.lo) * P);
  };
  for (const RowGroup& g : plan.groups)
    for (int64_t sz : group_sizes(g)) arena.add(sz);
  for (auto& tj : plan.jobs)
    for (RecJob& j : tj) arena.add(pack_size(j));
  arena.start(0);
  for (RowGroup& g : plan.groups) {
    const auto sz = group_sizes(g);
    g.h = arena.take(sz[0]);
    g.c = arena.take(sz[1]);
    g.g = arena.take(sz[2]);
    if (sz[3]) g.m = arena.take(sz[3]);
    if (sz[4]) g.r = arena.take(sz[4]);
    if (sz[5]) g.h16 = arena.take(sz[5]);
  }
  for (auto& tj : plan.jobs)
    for (RecJob& j : tj) j.wpack = arena.take(pack_size(j));

  // Backward with a projection: dr = dh + dy and m = o * tanh(c) of every
  // step ([T, B, N, P] and [T, B, N, H], slot 1: the dW_hr GEMM below uses
  // slot 0), the operands of dW_hr = sum over (t, b) of dr^T m.
  View dr_seq, m_seq;
  if (proj && !forward) {
    const int64_t rows = p.T * p.B * p.N;
    const int64_t dr_bytes = round_up(esize * rows * P, 64);
    char* base = static_cast<char*>(scratch(1, static_cast<size_t>(dr_bytes + esize * rows * p.H)));
    dr_seq.ptr = base;
    m_seq.ptr = base + dr_bytes;
    dr_seq.stride[0] = p.B * p.N * P, dr_seq.stride[1] = p.N * P, dr_seq.stride[2] = P;
    m_seq.stride[0] = p.B * p.N * p.H, m_seq.stride[1] = p.N * p.H, m_seq.stride[2] = p.H;
    for (auto& tj : plan.jobs)
      for (RecJob& j : tj) j.dr_seq = dr_seq, j.m_seq = m_seq;
  }

  const auto kernel = [&] {
    if constexpr (forward) return (proj ? ks.forward_proj : ks.forward)[kernel_index(dt)];
    else return (proj ? ks.backward_proj : ks.backward)[kernel_index(dt)];
  }();
  if (!kernel)  // a table without this dtype's projected kernels (cpu_lstm.py declines those calls)
    throw std::invalid_argument("the cpu kernels have no recurrence for this dtype with a projection");
  if (plan.barriers.empty()) {  // no job waits for another: claimed dynamically
    std::vector<const RecJob*> all;
    for (auto& tj : plan.jobs)
      for (const RecJob& j : tj) all.push_back(&j);
    ThreadPool::instance().run_jobs(static_cast<int>(all.size()), plan.nthreads,
                                    [&](int j) { kernel(p, *all[j], Hp); });
  } else {
    ThreadPool::instance().run(plan.nthreads, [&](int tid) {
      for (const RecJob& j : plan.jobs[tid]) kernel(p, j, Hp);
    });
  }
  if constexpr (!forward) {
    if (proj) {  // dW_hr[n] [P, H] = dr_seq[:, :, n]^T m_seq[:, :, n]: M = P, N = H, K = T*B
      std::vector<GemmParams> problems(p.N);
      for (int64_t n = 0; n < p.N; ++n) {
        GemmParams& g = problems[n];
        g.M = P, g.N = p.H, g.K = p.T * p.B;
        g.a = static_cast<const char*>(dr_seq.ptr) + esize * n * P, g.lda = 1, g.ldk = p.N * P;
        g.bkind = BKind::k_rows, g.b = static_cast<const char*>(m_seq.ptr) + esize * n * p.H,
        g.ldb = p.N * p.H;
        g.c = static_cast<char*>(p.dw_hr.ptr) + esize * n * p.dw_hr.stride[0], g.ldc = p.dw_hr.stride[1];
      }
      // On as many threads as the recurrence used: N=1 at 2 threads runs the
      // recurrence inline, and a parallel region for this small GEMM alone
      // cost 10-20 ms per call on the loaded 2-vCPU machine (waking a thread
      // whose core was taken) against ~0.1-0.5 ms of work at B <= 8.
      run_gemm_locked(problems, dt, plan.nthreads);
    }
  }
}

}  // namespace

const KernelTable& active_kernels() { return *g_active.load(); }

std::vector<std::string> supported_isas() {
  std::vector<std::string> out;
  for (const KernelTable* k : all_kernels)
    if (cpu_has(k->isa)) out.push_back(k->isa);
  return out;
}

void set_isa(const std::string& name) {
  for (const KernelTable* k : all_kernels)
    if (name == k->isa && cpu_has(k->isa)) {
      g_active.store(k);
      return;
    }
  throw std::invalid_argument("isa: '" + name + "' is not built or not supported by this CPU");
}

bool cpu_has_bf16_dot() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

int bf16_dot_mode() { return g_bf16_dot.load(std::memory_order_relaxed); }

void set_bf16_dot(const std::string& mode) { g_bf16_dot.store(parse_bf16_dot(mode)); }

void run_gemm(const std::vector<GemmParams>& problems, DType dt, int num_threads) {
  run_gemm_impl(problems, dt, num_threads < 1 ? 1 : num_threads);
}

void run_forward(const FwdParams& p, int num_threads) { run_recurrence(p, num_threads); }

void run_backward(const BwdParams& p, int num_threads) { run_recurrence(p, num_threads); }

}  // namespace bilstm_cpu
