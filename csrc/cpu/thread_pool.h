// A small persistent thread pool and a spin-then-yield step barrier.
//
// Why persistent: creating and joining a thread costs ~75-100 us here
// (measured from Python on the 2-vCPU EPYC guest, see docs/cpu.md), ~5% of a
// whole T=64, B=1 forward; waking a pool worker and joining it costs ~7.5 us.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace bilstm_cpu {

// Sense-reversing barrier for the threads that split one direction's hidden
// units. Waiters spin on the generation word (a step is ~10-100 us, the
// straggler is usually < 1 us behind) and fall back to
// std::this_thread::yield() after kSpins polls so an oversubscribed machine
// still makes progress (thread_pool.cpp says why the polls do not PAUSE).
class Barrier {
 public:
  explicit Barrier(int count) : count_(count), waiting_(0), generation_(0) {}
  void wait();

 private:
  const int count_;
  alignas(64) std::atomic<int> waiting_;
  alignas(64) std::atomic<uint32_t> generation_;
};

class ThreadPool {
 public:
  static ThreadPool& instance();
  // Runs fn(tid) for tid in [0, nthreads) at once, tid 0 on the calling
  // thread: for jobs that meet at a step barrier (all must be running).
  // The caller must hold call_mutex() (one call at a time: the pool and the
  // scratch buffers are shared); it is also held across fork().
  void run(int nthreads, const std::function<void(int)>& fn);
  // Runs fn(job) for job in [0, njobs) on up to nthreads threads, jobs that
  // never wait for each other: each thread (the caller too) claims the next
  // unclaimed job until none is left, so a thread that starts late -- a
  // worker still asleep, or its core taken by another process -- leaves its
  // share to the others instead of holding up the call (thread_pool.cpp).
  void run_jobs(int njobs, int nthreads, const std::function<void(int)>& fn);
  static std::mutex& call_mutex();
  ~ThreadPool();

 private:
  void worker_loop(int tid, uint64_t seen);
  void ensure_workers(int n);
  void run_jobs_on_pool(int njobs, int nthreads, const std::function<void(int)>& fn);
  void claim_jobs();
  std::mutex m_;
  std::condition_variable cv_;
  std::vector<std::thread> workers_;
  enum class Mode { together, jobs } mode_ = Mode::together;  // what the current generation asks
  const std::function<void(int)>* fn_ = nullptr;
  int active_ = 0;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> remaining_{0};
  bool stop_ = false;
  // run_jobs on the pool: who may still join the call. Bit 31 = the call is
  // open, bits 0-30 = workers inside it; a worker joins only by a CAS that
  // sees the call open, and the caller, out of jobs, closes it and waits only
  // for the workers inside (thread_pool.cpp).
  std::atomic<uint32_t> job_state_{0};
  std::atomic<int> job_next_{0};
  int job_count_ = 0;
  const std::function<void(int)>* job_fn_ = nullptr;
};

// Raw, 64-byte aligned, growable scratch memory reused across calls (under
// ThreadPool::call_mutex()), so a call does not page-fault in megabytes
// of fresh memory: at T=64, B=1 that was ~60 us per call.
void* scratch(int slot, size_t bytes);

}  // namespace bilstm_cpu
