// Tasks shared among at::parallel_for's threads by a counter: each thread takes the next task when
// it finishes one, instead of a fixed share of them. On the 2-vCPU machines we tune on, one vCPU
// often runs slower than the other for a while (the host's other load), and with fixed shares the
// faster thread then waited at the region's end (benchmarks/NOTES.md, v44).
// Which thread runs a task changes no value: a task's results depend on the task only.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace nin_ext {
namespace cpu {

class SharedTasks {
 public:
  explicit SharedTasks(int64_t count) : count_(count) {}

  // The threads worth starting: one per task at most.
  int64_t threads() const { return std::min<int64_t>(count_, at::get_num_threads()); }

  // The next task that no thread has taken, or -1 once all are taken.
  int64_t take() {
    const int64_t task = next_.fetch_add(1, std::memory_order_relaxed);
    return task < count_ ? task : -1;
  }

 private:
  int64_t count_;
  std::atomic<int64_t> next_{0};
};

// Runs `thread_fn(tasks)` on each thread of a parallel region sized for `count` tasks; thread_fn
// builds its workspace, then loops on tasks.take(). Inside another parallel region it runs once, on
// the calling thread, and takes every task.
template <typename ThreadFn>
void parallel_shared_tasks(int64_t count, const ThreadFn& thread_fn) {
  SharedTasks tasks(count);
  at::parallel_for(0, tasks.threads(), 1, [&](int64_t, int64_t) { thread_fn(tasks); });
}

}  // namespace cpu
}  // namespace nin_ext
