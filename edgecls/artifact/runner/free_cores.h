// How many threads a parallel loop should use now: the requested count, less the cores that
// other processes keep busy.
//
// Why (measured on a 2-core AMD EPYC Zen 4, benchmarks/busy_board.py): beside one busy process
// the runner gets about one core whatever its thread count, and a second thread only adds
// waiting: MobileNetV2 fp32 at 2 threads went 4.3 ms quiet -> 9.7-10.9 ms busy, at 1 thread
// 7.6-8.8 ms busy; ResNet-18 19.5 -> 39-42 ms at 2 threads, 37-40 ms at 1. A thread that shares
// its core with another process also stalls every parallel loop whose chunk it holds when it
// is descheduled. So the launcher follows the cores actually free.
//
// How: every 100 ms (checked when a loop starts) it reads the idle time of the process's allowed
// CPUs from /proc/stat and the process's own CPU time; what is neither idle nor ours is other
// processes' load, in cores (smoothed over two samples). Niced processes' time counts as free
// (they give way to us), unless the runner itself is niced. The estimate never counts our own threads,
// so using fewer threads does not feed back into it. Without /proc/stat it keeps the requested
// count.
#pragma once

#include <chrono>
#include <string>
#include <vector>

namespace edgecls {

class FreeCoreMonitor {
 public:
  // cpus: the CPUs this process may run on; threads: the requested count (may exceed cpus).
  FreeCoreMonitor(std::vector<int> cpus, int threads);

  // Threads for the loop starting now (1..threads). Called by the launching thread only.
  int ThreadsNow();

  // {"follow_free_cores": true, "other_busy_cores": x, "loops_by_threads": {"2": n, ...}}
  std::string StatsJson() const;

 private:
  struct Sample {
    std::chrono::steady_clock::time_point at;
    double idle_s = 0;  // idle + iowait of the allowed CPUs
    double own_s = 0;   // this process's CPU time, all threads
  };
  bool Take(Sample* s) const;
  void Update(const Sample& now);

  std::vector<int> cpus_;
  int threads_;
  int active_;
  bool count_nice_as_free_;  // our own time counts as nice when we are niced
  bool enabled_;
  double other_busy_ = 0;  // cores used by other processes, smoothed
  Sample last_;
  std::vector<long> loops_by_threads_;  // [n]: parallel loops run on n threads
};

}  // namespace edgecls
