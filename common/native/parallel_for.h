// A parallel loop over XLA's intra-op thread pool for the FFI handlers of common/native.
#ifndef HEADLAB_NATIVE_PARALLEL_FOR_H_
#define HEADLAB_NATIVE_PARALLEL_FOR_H_

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace headlab {

// Runs f(i) for i in [0, n) on the intra-op pool's threads and the caller's. The caller waits
// only for items that a running thread has claimed, never for a scheduled task to start: XLA may
// run this call on a pool thread beside other calls that wait too, and a task queued behind them
// must not be needed. A task that starts after every item was claimed returns at once; the state
// it reads is shared, so it outlives this call.
template <typename F>
void ParallelFor(xla::ffi::ThreadPool& pool, int64_t n, const F& f) {
  int64_t helpers = std::min<int64_t>(pool.num_threads(), n) - 1;
  if (helpers <= 0) {
    for (int64_t i = 0; i < n; ++i) f(i);
    return;
  }
  struct State {
    std::atomic<int64_t> next{0};
    int64_t finished = 0;
    std::mutex mu;
    std::condition_variable cv;
  };
  auto state = std::make_shared<State>();
  auto work = [state, n, &f] {
    for (int64_t i = state->next.fetch_add(1); i < n; i = state->next.fetch_add(1)) {
      f(i);
      std::lock_guard<std::mutex> lock(state->mu);
      if (++state->finished == n) state->cv.notify_all();
    }
  };
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([work] { work(); });
  work();
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->finished == n; });
}

}  // namespace headlab

#endif  // HEADLAB_NATIVE_PARALLEL_FOR_H_
