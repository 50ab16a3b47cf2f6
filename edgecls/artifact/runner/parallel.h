// The runner's own parallel launcher for TVM kernels: more chunks than threads, handed out
// dynamically, waiting workers sleep on a futex after a short spin, no thread pinning.
//
// Why (measured on a 2-core AMD EPYC Zen 4, ResNet-18 fp32, 2 threads, one busy process; see
// benchmarks/busy_board.py): TVM's own pool cuts each parallel loop into exactly one static
// chunk per thread, ends every kernel in a join, pins each worker to one core and spins
// (TVM_THREAD_POOL_SPIN_COUNT, 300000 sched_yield rounds) while waiting. When another process
// takes one core, the worker pinned there holds up every layer for a scheduler time slice, and
// the spinning threads compete with the process that took the core: latency went from ~11 ms
// to 100+ ms (issue #17). Here any thread that is running takes the next chunk, so a descheduled thread
// delays at most one small chunk, and idle threads give their core away.
//
// The model .so reaches the runtime through function pointers (__TVMBackendParallelLaunch) that
// the library loader fills from tvm-ffi's context-symbol registry; registering ours before the
// model is loaded makes its kernels call it. Kernels that synchronise inside a parallel loop
// (__TVMBackendParallelBarrier) need all chunks running at once, which dynamic hand-out cannot
// give: those models keep TVM's pool (UsesParallelBarrier).
#pragma once

#include <string>
#include <vector>

namespace edgecls {

// Whether the model library's kernels call TVMBackendParallelBarrier (it holds that slot).
bool UsesParallelBarrier(const std::string& model_path);

// Starts `threads` - 1 workers (the calling thread is the other one) and registers the launcher
// for every model library loaded afterwards. Each parallel loop runs on as many of them as the
// CPUs `cpus` have free (free_cores.h; EDGECLS_RUNNER_FOLLOW_FREE=0: always all) and is cut into
// 4 chunks per thread taking part (none with one thread); a waiting thread spins 50 us before it
// sleeps. EDGECLS_RUNNER_CHUNKS (chunks per thread) and EDGECLS_RUNNER_SPIN_US override those
// defaults, for measurements.
void InstallParallelLauncher(int threads, const std::vector<int>& cpus);

// The launcher's record for the report: whether it follows free cores, the last estimate of
// the cores other processes use, how many parallel loops ran on how many threads ("null" when
// the launcher is not installed).
std::string ParallelLauncherStatsJson();

}  // namespace edgecls
