// A persistent pool for the kernels: starting threads per call costs ~50-100 us, more than a whole
// decode-sized matmul. Workers spin briefly after a job (the next matmul of a decode step follows
// within microseconds), then sleep on a condition variable.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

namespace macllm_cpu {

class ThreadPool {
 public:
  using TaskFn = void (*)(void* ctx, int task);

  // The process-wide pool: MACLLM_CPU_THREADS threads in all (default: every core), the
  // calling thread being one of them.
  static ThreadPool& instance();

  int threads() const { return static_cast<int>(workers_.size()) + 1; }

  // Runs fn(ctx, t) for every t in [0, n_tasks) on the workers and the calling thread; returns when
  // all are done. A second caller while a job runs (another MLX stream) runs its tasks inline.
  void parallel_for(int n_tasks, TaskFn fn, void* ctx);

  ~ThreadPool();

 private:
  explicit ThreadPool(int threads);
  void worker_loop();
  // Claims and runs tasks of job `generation` until none are left.
  void run_tasks(uint32_t generation);

  std::vector<std::thread> workers_;
  std::mutex job_mutex_;  // one job at a time
  // (generation << 48) | (task count << 24) | next task index, all in one word: a claim is one
  // compare-exchange against the count of the same job, so a worker that wakes late can never take a
  // task of a newer job, nor count a task of the old job against the new one's total (with the count
  // in a separate atomic, a late worker could read the new count beside the old generation and run a
  // task twice: the job then never finished).
  std::atomic<uint64_t> state_{0};
  std::atomic<int> completed_{0};
  TaskFn fn_ = nullptr;
  void* ctx_ = nullptr;

  std::mutex sleep_mutex_;
  std::condition_variable wake_;
  std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
};

}  // namespace macllm_cpu
