// A fixed-size pool of worker threads that runs parallel_for jobs.
//
// parallel_for(n, fn) calls fn(i) once for every i in [0, n), spread over the
// workers and the calling thread, and returns when all calls are done. The
// first exception thrown by any fn is rethrown in the caller (the remaining
// indices still run, so every lane ends in a defined state).
#pragma once
#include <condition_variable>
#include <cstddef>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace arib {

class ThreadPool {
 public:
  // threads = total parallelism including the caller; 0 picks the number of
  // hardware threads. A pool of 1 runs everything on the caller.
  explicit ThreadPool(size_t threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  size_t size() const { return workers_.size() + 1; }
  void parallel_for(size_t n, const std::function<void(size_t)>& fn);

 private:
  void worker_loop();
  void run_indices(std::unique_lock<std::mutex>& lock);

  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  const std::function<void(size_t)>* job_ = nullptr;
  size_t job_size_ = 0;
  size_t next_index_ = 0;
  size_t busy_ = 0;        // workers inside the current job
  size_t generation_ = 0;  // bumps for every job, wakes the workers
  bool stop_ = false;
  std::exception_ptr error_;
};

}  // namespace arib
