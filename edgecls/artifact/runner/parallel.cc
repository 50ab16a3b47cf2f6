// See parallel.h for why the runner launches TVM's parallel loops itself.
#include "parallel.h"

#include "free_cores.h"

#include <dlfcn.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <tvm/ffi/c_api.h>
#include <tvm/ffi/extra/c_env_api.h>
#include <tvm/runtime/c_backend_api.h>

#include <atomic>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <string>
#include <stdexcept>
#include <thread>
#include <vector>

namespace edgecls {
namespace {

// Defaults, measured (benchmarks/busy_board.py): 4 chunks per thread keeps the quiet latency
// and bounds what one descheduled thread holds back; a 50 us spin covers the gap between two
// kernels of one inference, so a quiet run rarely sleeps.
constexpr int kChunksPerThread = 4;
constexpr int kSpinMicros = 50;

int EnvInt(const char* name, int fallback, int min) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  int x = std::atoi(v);
  return x >= min ? x : fallback;
}

void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
  asm volatile("yield" ::: "memory");
#endif
}

void FutexWait(std::atomic<uint32_t>* word, uint32_t expected) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
}

void FutexWake(std::atomic<uint32_t>* word, int n) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE_PRIVATE, n, nullptr, nullptr, 0);
}

// Waits until *word != value: spins for spin_us, then sleeps; *sleepers counts the sleepers so
// that the writer only pays for a wake-up when someone sleeps.
void WaitWhileEquals(std::atomic<uint32_t>* word, uint32_t value, std::atomic<int>* sleepers, int spin_us) {
  auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(spin_us);
  for (int i = 1; word->load(std::memory_order_acquire) == value; ++i) {
    CpuRelax();
    if (i % 64 == 0 && std::chrono::steady_clock::now() >= until) {
      sleepers->fetch_add(1);
      while (word->load() == value) FutexWait(word, value);
      sleepers->fetch_sub(1);
      return;
    }
  }
}

class Pool {
 public:
  Pool(int threads, int chunks_per_thread, int spin_us, std::vector<int> cpus)
      : chunks_per_thread_(chunks_per_thread), spin_us_(spin_us),
        free_cores_(std::move(cpus), threads), workers_(threads > 1 ? threads - 1 : 0) {
    for (Worker& w : workers_) w.thread = std::thread([this, &w] { WorkerLoop(&w); });
  }
  // The pool lives until the process exits (kernels may run from static destructors); workers
  // sleep on a futex, so exit() does not wait for them.
  ~Pool() = delete;

  int Launch(FTVMParallelLambda fn, void* cdata, int num_task) {
    std::unique_lock<std::mutex> lock(launch_, std::try_to_lock);
    if (!lock.owns_lock() || in_job_) return RunInline(fn, cdata);  // nested or concurrent
    int active = free_cores_.ThreadsNow();
    if (active == 1 && num_task <= 0) return RunInline(fn, cdata);
    in_job_ = true;
    int chunks = num_task > 0 ? num_task : active * chunks_per_thread_;
    fn_ = fn;
    cdata_ = cdata;
    env_.num_task = chunks;
    env_.sync_handle = nullptr;
    error_.store(nullptr);
    pending_.store(static_cast<uint32_t>(chunks));
    uint32_t job = ++job_;
    ticket_.store(uint64_t(job) << 32, std::memory_order_release);
    // Only the first active - 1 workers get the job; the others stay asleep.
    for (int i = 0; i + 1 < active; ++i) {
      workers_[i].job.store(job, std::memory_order_release);
      if (workers_[i].sleeping.load() > 0) FutexWake(&workers_[i].job, 1);
    }
    RunChunks(job);
    for (uint32_t left; (left = pending_.load(std::memory_order_acquire)) != 0;)
      WaitWhileEquals(&pending_, left, &main_sleeping_, spin_us_);
    in_job_ = false;
    if (void* err = error_.exchange(nullptr)) {
      TVMFFIErrorSetRaised(err);
      TVMFFIObjectDecRef(err);
      return -1;
    }
    return 0;
  }

  std::string StatsJson() const { return free_cores_.StatsJson(); }

 private:
  // One per worker thread, on its own cache line: the job it is to help with, and whether it
  // sleeps on that word (then the launcher wakes it).
  struct alignas(64) Worker {
    std::atomic<uint32_t> job{0};
    std::atomic<int> sleeping{0};
    std::thread thread;
  };

  static int RunInline(FTVMParallelLambda fn, void* cdata) {
    TVMParallelGroupEnv env{nullptr, 1};
    return fn(0, &env, cdata);
  }

  // Takes chunks of job `job` until none is left. A chunk is taken by compare-and-swap on a
  // ticket tagged with the job, so a thread that wakes late never takes a chunk of a later job.
  void RunChunks(uint32_t job) {
    uint64_t t = ticket_.load(std::memory_order_acquire);
    for (;;) {
      if (uint32_t(t >> 32) != job || uint32_t(t) >= uint32_t(env_.num_task)) return;
      if (!ticket_.compare_exchange_weak(t, t + 1, std::memory_order_acq_rel)) continue;
      // The job cannot end while this chunk is pending, so fn_/cdata_/env_ are this job's.
      if (fn_(int(uint32_t(t)), &env_, cdata_) != 0) KeepError();
      if (pending_.fetch_sub(1) == 1 && main_sleeping_.load() > 0) FutexWake(&pending_, 1);
      t = ticket_.load(std::memory_order_acquire);
    }
  }

  void KeepError() {
    void* err = nullptr;
    TVMFFIErrorMoveFromRaised(&err);
    void* none = nullptr;
    if (err && !error_.compare_exchange_strong(none, err)) TVMFFIObjectDecRef(err);
  }

  void WorkerLoop(Worker* w) {
    uint32_t seen = 0;
    for (;;) {
      WaitWhileEquals(&w->job, seen, &w->sleeping, spin_us_);
      seen = w->job.load(std::memory_order_acquire);
      RunChunks(seen);
    }
  }

  const int chunks_per_thread_, spin_us_;
  FreeCoreMonitor free_cores_;
  std::vector<Worker> workers_;
  std::mutex launch_;
  bool in_job_ = false;
  FTVMParallelLambda fn_ = nullptr;
  void* cdata_ = nullptr;
  TVMParallelGroupEnv env_{nullptr, 0};
  uint32_t job_ = 0;  // the launcher's job counter (launching thread only)
  std::atomic<uint32_t> pending_{0};
  std::atomic<uint64_t> ticket_{0};
  std::atomic<int> main_sleeping_{0};
  std::atomic<void*> error_{nullptr};
};

Pool* g_pool = nullptr;

int Launch(FTVMParallelLambda fn, void* cdata, int num_task) { return g_pool->Launch(fn, cdata, num_task); }

int Barrier(int, TVMParallelGroupEnv*) {
  // Never reached: models with barriers keep TVM's pool (UsesParallelBarrier).
  TVMFFIErrorSetRaisedFromCStr("RuntimeError", "edgecls-runner: parallel barrier without TVM's pool");
  return -1;
}

}  // namespace

bool UsesParallelBarrier(const std::string& model_path) {
  void* h = dlopen(model_path.c_str(), RTLD_LAZY | RTLD_LOCAL);
  if (!h) return false;  // the loader reports the real problem
  bool uses = dlsym(h, "__TVMBackendParallelBarrier") != nullptr;
  dlclose(h);
  return uses;
}

void InstallParallelLauncher(int threads, const std::vector<int>& cpus) {
  if (g_pool) throw std::logic_error("parallel launcher installed twice");
  g_pool = new Pool(threads, EnvInt("EDGECLS_RUNNER_CHUNKS", kChunksPerThread, 1),
                    EnvInt("EDGECLS_RUNNER_SPIN_US", kSpinMicros, 0), cpus);
  TVMFFIEnvModRegisterContextSymbol("__TVMBackendParallelLaunch", reinterpret_cast<void*>(&Launch));
  TVMFFIEnvModRegisterContextSymbol("__TVMBackendParallelBarrier", reinterpret_cast<void*>(&Barrier));
}

std::string ParallelLauncherStatsJson() { return g_pool ? g_pool->StatsJson() : "null"; }

}  // namespace edgecls
