// Many small jobs of changing sizes back to back through the kernels' thread pool: every task of every
// job must run exactly once and every job must end (tests/test_thread_pool.py builds and runs this).
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "thread_pool.h"

using macllm_cpu::ThreadPool;

namespace {

struct Job {
  std::vector<std::atomic<int>>* runs;
};

void task(void* ctx, int t) {
  auto& runs = *static_cast<Job*>(ctx)->runs;
  runs[t].fetch_add(1, std::memory_order_relaxed);
}

}  // namespace

int main(int argc, char** argv) {
  const int jobs = argc > 1 ? std::atoi(argv[1]) : 200000;
  std::vector<std::atomic<int>> runs(256);
  Job job{&runs};
  unsigned seed = 12345;
  for (int j = 0; j < jobs; ++j) {
    seed = seed * 1103515245u + 12345u;
    const int n = 2 + static_cast<int>((seed >> 16) % 63);  // sizes that change every job, as a decode step's do
    for (int t = 0; t < n; ++t) runs[t].store(0, std::memory_order_relaxed);
    ThreadPool::instance().parallel_for(n, task, &job);
    for (int t = 0; t < n; ++t) {
      if (runs[t].load() != 1) {
        std::printf("job %d of %d tasks: task %d ran %d times\n", j, n, t, runs[t].load());
        return 1;
      }
    }
  }
  std::printf("ok: %d jobs on %d threads\n", jobs, ThreadPool::instance().threads());
  return 0;
}
