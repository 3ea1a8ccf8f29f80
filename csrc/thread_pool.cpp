#include "thread_pool.h"

#include <chrono>
#include <cstdlib>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define MACLLM_PAUSE() _mm_pause()
#elif defined(__aarch64__)
#define MACLLM_PAUSE() asm volatile("yield")
#else
#define MACLLM_PAUSE() ((void)0)
#endif

namespace macllm_cpu {
namespace {

// How long an idle worker spins before sleeping (MACLLM_CPU_SPIN_US, default 500): longer than the
// gap between two matmuls of one decode step, short enough not to hold a core between requests.
std::chrono::microseconds spin_time() {
  static const std::chrono::microseconds spin = [] {
    const char* env = std::getenv("MACLLM_CPU_SPIN_US");
    const int us = env ? std::atoi(env) : 500;
    return std::chrono::microseconds(us < 0 ? 0 : us);
  }();
  return spin;
}

int configured_threads() {
  if (const char* env = std::getenv("MACLLM_CPU_THREADS")) {
    int n = std::atoi(env);
    if (n >= 1) return n > 256 ? 256 : n;
  }
  // Every core. While a step's ~2,200 small MLX ops kept the Python thread busy building the next
  // graph, one core was best left to it; with the fused decode ops a step is ~700 nodes and Python
  // mostly waits, so on 2 cores 2 threads decode SmolLM2 at ~47-58 tok/s vs ~38-42 with one, and
  // Qwen2.5-Coder-0.5B (bandwidth-bound) at 17.5-19.1 vs 11.6 (docs/benchmarks.md).
  const unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

constexpr uint64_t kField = (1u << 24) - 1;  // the task count and the index: 24 bits each
uint32_t generation_of(uint64_t state) { return static_cast<uint32_t>(state >> 48); }
int tasks_of(uint64_t state) { return static_cast<int>((state >> 24) & kField); }
int index_of(uint64_t state) { return static_cast<int>(state & kField); }
uint64_t job_state(uint32_t generation, int n_tasks) {
  return (static_cast<uint64_t>(generation & 0xffffu) << 48) | (static_cast<uint64_t>(n_tasks) << 24);
}

}  // namespace

ThreadPool& ThreadPool::instance() {
  // Never destroyed: worker threads must not be joined during static destruction at exit.
  static ThreadPool* pool = new ThreadPool(configured_threads());
  return *pool;
}

ThreadPool::ThreadPool(int threads) {
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { worker_loop(); });
}

ThreadPool::~ThreadPool() {
  stop_.store(true);
  {
    std::lock_guard<std::mutex> lock(sleep_mutex_);
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::run_tasks(uint32_t generation) {
  while (true) {
    uint64_t s = state_.load(std::memory_order_acquire);
    if (generation_of(s) != generation || index_of(s) >= tasks_of(s)) return;
    const int index = index_of(s);
    if (!state_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel)) continue;
    fn_(ctx_, index);
    completed_.fetch_add(1, std::memory_order_acq_rel);
  }
}

void ThreadPool::parallel_for(int n_tasks, TaskFn fn, void* ctx) {
  if (n_tasks <= 0) return;
  std::unique_lock<std::mutex> job(job_mutex_, std::try_to_lock);
  if (n_tasks == 1 || workers_.empty() || !job.owns_lock() || static_cast<uint64_t>(n_tasks) > kField) {
    for (int t = 0; t < n_tasks; ++t) fn(ctx, t);
    return;
  }
  fn_ = fn;
  ctx_ = ctx;
  completed_.store(0, std::memory_order_relaxed);
  const uint32_t generation = (generation_of(state_.load(std::memory_order_relaxed)) + 1) & 0xffffu;
  state_.store(job_state(generation, n_tasks), std::memory_order_seq_cst);
  if (sleepers_.load(std::memory_order_seq_cst) > 0) {
    std::lock_guard<std::mutex> lock(sleep_mutex_);
    wake_.notify_all();
  }
  run_tasks(generation);
  while (completed_.load(std::memory_order_acquire) != n_tasks) MACLLM_PAUSE();
}

void ThreadPool::worker_loop() {
  uint32_t seen = 0;
  while (!stop_.load(std::memory_order_relaxed)) {
    auto start = std::chrono::steady_clock::now();
    int spins = 0;
    while (generation_of(state_.load(std::memory_order_acquire)) == seen && !stop_.load(std::memory_order_relaxed)) {
      MACLLM_PAUSE();
      // Now and then offer the core: when the threads outnumber the cores (Python building the next
      // step's graph beside the kernels), a pure spin would hold a core that thread needs.
      if (++spins % 32 == 0) std::this_thread::yield();
      if (spins % 128 == 0 && std::chrono::steady_clock::now() - start > spin_time()) {
        std::unique_lock<std::mutex> lock(sleep_mutex_);
        sleepers_.fetch_add(1, std::memory_order_seq_cst);
        wake_.wait(lock, [&] {
          return generation_of(state_.load(std::memory_order_seq_cst)) != seen || stop_.load();
        });
        sleepers_.fetch_sub(1, std::memory_order_seq_cst);
        start = std::chrono::steady_clock::now();
      }
    }
    if (stop_.load()) return;
    seen = generation_of(state_.load(std::memory_order_acquire));
    run_tasks(seen);
  }
}

}  // namespace macllm_cpu
