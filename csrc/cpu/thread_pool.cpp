#include "thread_pool.h"

#include <pthread.h>

#include <new>

#include <cstdlib>
#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif

// Spin loops poll with plain loads, no PAUSE instruction: on this KVM guest
// (2-vCPU AMD EPYC) PAUSE in a loop triggers pause-loop exits to the
// hypervisor, and waking a pool worker took ~210 us median with _mm_pause()
// in its poll loop vs ~7.5 us with plain loads (T=1 call, 2 vs 1 thread).
#define BILSTM_SPIN() std::atomic_signal_fence(std::memory_order_seq_cst)

namespace bilstm_cpu {

namespace {
// Polls before yielding / parking: 32768 polls of a cached atomic are
// ~30-60 us here: longer than the usual straggler delay at a step barrier
// and than the Python work between two back-to-back calls, shorter than a
// scheduler time slice.
constexpr int kSpins = 1 << 15;
}  // namespace

void Barrier::wait() {
  const uint32_t gen = generation_.load(std::memory_order_acquire);
  if (waiting_.fetch_add(1, std::memory_order_acq_rel) + 1 == count_) {
    waiting_.store(0, std::memory_order_relaxed);
    generation_.store(gen + 1, std::memory_order_release);
    return;
  }
  for (int i = 0; generation_.load(std::memory_order_acquire) == gen; ++i) {
    if (i < kSpins) BILSTM_SPIN();
    else std::this_thread::yield();
  }
}

namespace {
// The pool lives for the whole process (never destroyed: a static
// destructor joining workers at interpreter exit is a classic hang). After
// fork() the child has none of the parent's worker threads, so it gets a
// fresh pool (the old object is leaked on purpose: its std::thread handles
// name threads that do not exist in the child). prepare/parent/child hold
// the run mutex across fork() so the child never inherits it locked.
ThreadPool* g_pool = nullptr;
std::mutex g_pool_mutex;
// GNU OpenMP cannot run a parallel region in a forked child once the parent
// has used it (it hangs; so does torch's own matmul there), so after fork()
// every job goes to the (fork-safe) pool.
bool g_forked_child = false;

void before_fork() { g_pool_mutex.lock(); }
void after_fork_parent() { g_pool_mutex.unlock(); }
void after_fork_child() {
  g_forked_child = true;
  new (&g_pool_mutex) std::mutex();
  g_pool = nullptr;
}
// Registered when the module is loaded, so a child forked before our first
// call also knows it is one.
const int g_atfork_registered = pthread_atfork(before_fork, after_fork_parent, after_fork_child);
}  // namespace

ThreadPool& ThreadPool::instance() {
  if (!g_pool) g_pool = new ThreadPool();
  return *g_pool;
}

std::mutex& ThreadPool::call_mutex() { return g_pool_mutex; }

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lk(m_);
    stop_ = true;
    generation_.fetch_add(1);
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
}

// `seen` is the generation before the worker's first call: a worker created
// inside run() may start after that call's increment.
void ThreadPool::worker_loop(int tid, uint64_t seen) {
  for (;;) {
    // Spin briefly for the next call (back-to-back calls, e.g. layer after
    // layer), then park on the condition variable so an idle pool costs no CPU
    // (torch's own OpenMP threads need the cores between our calls).
    for (int i = 0; i < kSpins && generation_.load(std::memory_order_acquire) == seen; ++i)
      BILSTM_SPIN();
    Mode mode;
    {
      std::unique_lock<std::mutex> lk(m_);
      cv_.wait(lk, [&] { return generation_.load(std::memory_order_acquire) != seen; });
      if (stop_) return;
      seen = generation_.load(std::memory_order_acquire);
      mode = mode_;
    }
    if (mode == Mode::jobs) {
      claim_jobs();  // joins the call if it is still open; nobody waits for us otherwise
      continue;
    }
    if (tid < active_) (*fn_)(tid);
    remaining_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

namespace {
constexpr uint32_t kOpen = 1u << 31;
}  // namespace

void ThreadPool::claim_jobs() {
  uint32_t s = job_state_.load(std::memory_order_acquire);
  while ((s & kOpen) && !job_state_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel)) {
  }
  if (!(s & kOpen)) return;  // closed: the caller and the others did every job
  for (int j; (j = job_next_.fetch_add(1, std::memory_order_relaxed)) < job_count_;) (*job_fn_)(j);
  job_state_.fetch_sub(1, std::memory_order_release);
}

void ThreadPool::ensure_workers(int n) {
  while (static_cast<int>(workers_.size()) < n) {
    const int tid = static_cast<int>(workers_.size()) + 1;
    const uint64_t seen = generation_.load();
    workers_.emplace_back([this, tid, seen] { worker_loop(tid, seen); });
  }
}

// The caller never waits for a worker that has not started: it publishes the
// jobs, claims them like any worker, then closes the call and waits only for
// the workers that joined it (each finishing the job it holds). A worker
// that wakes after that finds the call closed and goes back to waiting.
void ThreadPool::run_jobs_on_pool(int njobs, int nthreads, const std::function<void(int)>& fn) {
  ensure_workers(nthreads - 1);
  job_fn_ = &fn;
  job_count_ = njobs;
  job_next_.store(0, std::memory_order_relaxed);
  job_state_.store(kOpen, std::memory_order_release);
  {
    std::lock_guard<std::mutex> lk(m_);
    mode_ = Mode::jobs;
    generation_.fetch_add(1, std::memory_order_acq_rel);
  }
  cv_.notify_all();
  for (int j; (j = job_next_.fetch_add(1, std::memory_order_relaxed)) < njobs;) fn(j);
  job_state_.fetch_and(~kOpen, std::memory_order_acq_rel);
  for (int i = 0; job_state_.load(std::memory_order_acquire) != 0; ++i) {
    if (i < kSpins) BILSTM_SPIN();
    else std::this_thread::yield();
  }
}

void ThreadPool::run(int nthreads, const std::function<void(int)>& fn) {
  if (nthreads <= 1) {
    fn(0);
    return;
  }
  ensure_workers(nthreads - 1);
  {
    std::lock_guard<std::mutex> lk(m_);
    mode_ = Mode::together;
    fn_ = &fn;
    active_ = nthreads;
    remaining_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_acq_rel);
  }
  cv_.notify_all();
  fn(0);
  for (int i = 0; remaining_.load(std::memory_order_acquire) != 0; ++i) {
    if (i < kSpins) BILSTM_SPIN();
    else std::this_thread::yield();
  }
}

// Independent jobs run on the OpenMP runtime already in the process: torch's
// own libgomp (the loader reuses the loaded libgomp.so.1), whose workers are
// still spinning after torch's last parallel op. Our own pool workers had to
// compete with those spinning threads for the cores: BiLSTM at T=64 D=300
// H=256 fp32, 2 threads, took 3.38 / 12.3 / 46.1 ms at B=1 / 8 / 32 vs
// 2.91 / 10.3 / 34.9 ms with OMP_WAIT_POLICY=PASSIVE (measured). Jobs are
// claimed from a counter, not dealt out by thread number: with one direction
// per thread, a worker that starts late (asleep, or its core busy with
// another process) used to hold the call up by its whole delay; now the
// caller runs the second direction itself once it is done with the first.
// BILSTM_CPU_POOL=own runs independent jobs on our pool instead of OpenMP
// (read once): an OpenMP region ends at a barrier that waits for every
// thread of the team, also one that was descheduled before it found a job.
bool use_openmp() {
  static const bool omp = [] {
    const char* v = std::getenv("BILSTM_CPU_POOL");
    return !(v && std::string(v) == "own");
  }();
  return omp;
}

void ThreadPool::run_jobs(int njobs, int nthreads, const std::function<void(int)>& fn) {
  if (nthreads > njobs) nthreads = njobs;
  if (nthreads <= 1) {
    for (int j = 0; j < njobs; ++j) fn(j);
    return;
  }
#ifdef _OPENMP
  if (use_openmp() && !g_forked_child && !omp_in_parallel()) {
    std::atomic<int> next{0};
#pragma omp parallel num_threads(nthreads)
    for (int j; (j = next.fetch_add(1, std::memory_order_relaxed)) < njobs;) fn(j);
    return;
  }
#endif
  run_jobs_on_pool(njobs, nthreads, fn);
}

void* scratch(int slot, size_t bytes) {
  struct Buf { void* p = nullptr; size_t n = 0; ~Buf() { std::free(p); } };
  static Buf bufs[8];
  Buf& b = bufs[slot];
  if (b.n < bytes) {
    std::free(b.p);
    b.n = (bytes + 63) / 64 * 64;
    b.p = std::aligned_alloc(64, b.n);
    if (!b.p) { b.n = 0; throw std::bad_alloc(); }
  }
  return b.p;
}

}  // namespace bilstm_cpu
