// edgecls-runner: runs and benchmarks a TVM-compiled (Relax VM) image classifier on a board with
// no Python.
//
// Links only against libtvm_runtime.so + libtvm_ffi.so, which ship next to this binary and are
// found through an $ORIGIN rpath. Only tvm::ffi headers are used: tvm/runtime/tensor.h in the
// wheel includes a header the wheel does not ship. System facts (cpufreq, thermal, affinity,
// device) come from sysinfo.cc, .npy files from npy.cc, the command line from options.cc; TVM's
// parallel loops run on parallel.cc's threads.
//
//   edgecls-runner --model model.so --input in.npy [--output out.npy] [--topk 5]
//                  [--warmup 1] [--warmup-ms 0] [--runs 1] [--min-ms 0] [--cooldown-ms 0]
//                  [--cores CPULIST] [--threads N] [--val-x X.npy --val-y Y.npy [--val-pred P.npy]]
//                  [--ref-input in.npy --ref-output out.npy] [--json-out report.json]
// Options, statistics and JSON (schema 2) are ../harness/contract.py's; tests hold this file to it.
// Prints exactly one JSON object (schema 2) on stdout. Any failure prints one line
// "edgecls-runner: error: <message>" on stderr and exits with status 2.

#include <dlpack/dlpack.h>
#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <stdlib.h>  // realpath

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <climits>
#include <cstring>
#include <fstream>
#include <numeric>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "npy.h"
#include "options.h"
#include "parallel.h"
#include "sysinfo.h"

namespace ffi = tvm::ffi;

namespace {

using edgecls::DTypeFromDL;
using edgecls::ElementAsDouble;
using edgecls::Fail;
using edgecls::NpyFile;
using edgecls::Options;
using edgecls::ParseArgs;
using edgecls::ReadNpy;
using edgecls::ShapeStr;
using edgecls::WriteNpy;
using edgecls::WriteNpyBytes;

// ---- running the model ------------------------------------------------------------------------

using Clock = std::chrono::steady_clock;
double Ms(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

// The VM returns a Tensor, or an Array of outputs for tuple-returning models: use the first.
ffi::Tensor FirstOutput(const ffi::Any& r) {
  if (auto t = r.as<ffi::Tensor>()) return *t;
  if (auto arr = r.as<ffi::Array<ffi::Any>>()) {
    if (arr->size() == 0) throw Fail("model returned an empty tuple");
    return FirstOutput((*arr)[0]);
  }
  throw Fail("model returned " + r.GetTypeKey() + ", expected a tensor or a tuple of tensors");
}

ffi::Tensor Infer(const ffi::Function& main_fn, const ffi::Tensor& x) {
  ffi::Tensor out = FirstOutput(main_fn(x));
  if (out.device().device_type != kDLCPU) throw Fail("model output is not on the CPU");
  if (!out.IsContiguous()) throw Fail("model output is not contiguous");
  return out;
}

int64_t Classes(const ffi::Tensor& out) { return out.ndim() ? out.shape()[out.ndim() - 1] : 1; }

// The k best (score, class) over the last axis of the first row (index [0, ..., 0, :]); ties go
// to the lower class index.
std::vector<std::pair<double, int64_t>> TopK(const ffi::Tensor& out, size_t k) {
  std::vector<std::pair<double, int64_t>> scores;
  for (int64_t c = 0; c < Classes(out) && out.numel() > 0; ++c) scores.emplace_back(ElementAsDouble(out, c), c);
  k = std::min(k, scores.size());
  std::partial_sort(scores.begin(), scores.begin() + k, scores.end(), [](auto& x, auto& y) {
    return x.first > y.first || (x.first == y.first && x.second < y.second);
  });
  scores.resize(k);
  return scores;
}

// EDGECLS_RUNNER_MAPS=PATH: copy this process's memory map there once the model is loaded, so
// an instruction counter's block addresses can be named by the model's kernels (qemu-user shows
// the guest's own addresses in /proc/self/maps). Best effort: a counting run needs no more.
void DumpMaps() {
  const char* path = std::getenv("EDGECLS_RUNNER_MAPS");
  if (!path || !*path) return;
  std::ifstream in("/proc/self/maps");
  std::ofstream out(path);
  out << in.rdbuf();
}

// dlopen() gives poor messages for the common mistakes (a relative name is searched on the
// library path, a model for another CPU reads "No such file"), so check those first.
std::string CheckModel(const std::string& path) {
  char buf[PATH_MAX];
  if (!realpath(path.c_str(), buf)) throw Fail("cannot open model '" + path + "'");
  std::ifstream f(buf, std::ios::binary);
  unsigned char h[20] = {0};
  if (!f.read(reinterpret_cast<char*>(h), sizeof h) || std::memcmp(h, "\x7f" "ELF", 4) != 0)
    throw Fail("model '" + path + "' is not a shared library (ELF)");
  unsigned machine = h[5] == 1 ? h[18] | (h[19] << 8) : (h[18] << 8) | h[19];
#if defined(__aarch64__)
  const unsigned self = 183;  // EM_AARCH64
#elif defined(__x86_64__)
  const unsigned self = 62;  // EM_X86_64
#else
  const unsigned self = machine;
#endif
  if (machine != self)
    throw Fail("model '" + path + "' was compiled for another CPU architecture (ELF machine " +
               std::to_string(machine) + ", this runner: " + std::to_string(self) + ")");
  return buf;
}

// Pins the process to --cores (threads inherit the mask; none is pinned to one core) and sets up
// the threads that run the model's parallel loops: the runner's launcher (parallel.h: dynamic
// chunks, futex waits), or TVM's pool for a model whose kernels need TVM's barrier. TVM's pool
// would re-pin its workers to single cores taken from ALL online CPUs, ignoring the process mask
// (threading_backend.cc), so TVM_BIND_THREADS=0 turns that off, and config_threadpool(
// kSpecifyThreadShareAllCore, N, <N ids>) sizes it to exactly N (it caps TVM_NUM_THREADS alone
// at the big cores). Returns the cores in use.
std::vector<int> SetUpThreads(const Options& o, const std::string& model, int* threads, bool* own_pool) {
  std::vector<int> cores = edgecls::Affinity(0);
  if (!o.cores.empty()) {
    try {
      cores = edgecls::ParseCpuList(o.cores);
    } catch (const std::exception& e) {
      throw Fail(std::string("--cores: ") + e.what());
    }
    edgecls::SetProcessAffinity(cores);  // before any worker thread exists
  }
  *threads = o.threads > 0 ? o.threads : std::max<int>(1, static_cast<int>(cores.size()));
  setenv("TVM_BIND_THREADS", "0", 1);
  const char* launcher = std::getenv("EDGECLS_RUNNER_LAUNCHER");  // "tvm": TVM's pool, to compare
  *own_pool = !(launcher && std::string(launcher) == "tvm") && !edgecls::UsesParallelBarrier(model);
  if (*own_pool) {
    edgecls::InstallParallelLauncher(*threads, cores);  // before the model is loaded
    return cores;
  }
  setenv("TVM_NUM_THREADS", std::to_string(*threads).c_str(), 1);
  if (auto config = ffi::Function::GetGlobal("runtime.config_threadpool")) {
    ffi::Array<ffi::String> ids;  // its length sets the pool size; the ids are unused unbound
    for (int i = 0; i < *threads; ++i) ids.push_back(std::to_string(cores.empty() ? i : cores[i % cores.size()]));
    (*config)(-3 /* kSpecifyThreadShareAllCore */, *threads, ids);
  }
  return cores;
}

// ---- statistics -------------------------------------------------------------------------------

double Percentile(const std::vector<double>& sorted, double p) {  // numpy's default (linear)
  double pos = p / 100 * (sorted.size() - 1);
  size_t lo = static_cast<size_t>(pos);
  if (lo + 1 >= sorted.size()) return sorted.back();
  return sorted[lo] + (sorted[lo + 1] - sorted[lo]) * (pos - lo);
}

double Sum(const std::vector<double>& v) { return std::accumulate(v.begin(), v.end(), 0.0); }

std::string Stats(const std::vector<double>& runs, double* mean_out) {
  std::vector<double> s = runs;
  std::sort(s.begin(), s.end());
  size_t n = s.size();
  double mean = Sum(s) / n, var = 0;
  for (double x : s) var += (x - mean) * (x - mean);
  *mean_out = mean;
  using edgecls::JsonNum;
  return "\"mean\": " + JsonNum(mean) + ", \"median\": " + JsonNum(Percentile(s, 50)) +
         ", \"p90\": " + JsonNum(Percentile(s, 90)) + ", \"p95\": " + JsonNum(Percentile(s, 95)) +
         ", \"p99\": " + JsonNum(Percentile(s, 99)) + ", \"min\": " + JsonNum(s.front()) +
         ", \"max\": " + JsonNum(s.back()) + ", \"std\": " + JsonNum(std::sqrt(var / n));
}

// ---- untimed checks ---------------------------------------------------------------------------

std::string Reference(const ffi::Function& main_fn, const Options& o) {
  ffi::Tensor x = ReadNpy(o.ref_input), want = ReadNpy(o.ref_output);
  auto a = Clock::now();
  ffi::Tensor got = Infer(main_fn, x);
  double ms = Ms(a, Clock::now());
  if (got.numel() != want.numel())
    throw Fail("--ref-output holds " + ShapeStr(want.shape(), "(", ")", true) + " but the model returned " +
               ShapeStr(got.shape(), "(", ")", true));
  double diff = 0;
  for (int64_t i = 0; i < got.numel(); ++i)
    diff = std::max(diff, std::fabs(ElementAsDouble(got, i) - ElementAsDouble(want, i)));
  bool match = got.numel() == 0 || TopK(got, 1)[0].second == TopK(want, 1)[0].second;
  return "{\"max_abs_diff\": " + edgecls::JsonNum(diff) + ", \"top1_match\": " + (match ? "true" : "false") +
         ", \"time_ms\": " + edgecls::JsonNum(ms) + "}";
}

// Runs image i of X (shape N x ...) as a batch of one, reading X from disk one image at a time.
std::string Accuracy(const ffi::Function& main_fn, const Options& o) {
  NpyFile xs(o.val_x);
  ffi::Tensor ys = ReadNpy(o.val_y);
  if (xs.shape.empty()) throw Fail("--val-x '" + o.val_x + "' has no batch axis");
  int64_t n = xs.shape[0];
  if (n == 0) throw Fail("--val-x '" + o.val_x + "' holds no images");
  if (ys.dtype().code != kDLInt && ys.dtype().code != kDLUInt)
    throw Fail("--val-y '" + o.val_y + "' must hold integer labels, not " + DTypeFromDL(ys.dtype()).name);
  if (ys.numel() != n)
    throw Fail("--val-y holds " + std::to_string(ys.numel()) + " labels for " + std::to_string(n) + " images");
  std::vector<int64_t> one = xs.shape;
  one[0] = 1;
  ffi::Tensor x = xs.Read(one);
  int64_t top1 = 0, top5 = 0, classes = 0;
  std::vector<int64_t> predicted;  // --val-pred: per-image top-1, for paired comparisons
  auto a = Clock::now();
  for (int64_t i = 0; i < n; ++i) {
    if (i) xs.ReadInto(x);
    ffi::Tensor out = Infer(main_fn, x);
    classes = Classes(out);
    auto best = TopK(out, 5);
    int64_t label = static_cast<int64_t>(ElementAsDouble(ys, i));
    predicted.push_back(best.empty() ? -1 : best[0].second);
    for (size_t j = 0; j < best.size(); ++j)
      if (best[j].second == label) {
        top1 += j == 0;
        ++top5;
      }
  }
  double ms = Ms(a, Clock::now());
  if (!o.val_pred.empty())
    WriteNpyBytes(o.val_pred, "<i8", "(" + std::to_string(predicted.size()) + ",)",
                  reinterpret_cast<const char*>(predicted.data()), predicted.size() * sizeof(int64_t));
  using edgecls::JsonNum;
  return "{\"n\": " + std::to_string(n) + ", \"top1\": " + JsonNum(double(top1) / n) +
         ", \"top5\": " + (classes > 5 ? JsonNum(double(top5) / n) : "null") +
         ", \"time_ms\": " + JsonNum(ms) + "}";
}

// ---- main flow --------------------------------------------------------------------------------

// Warm-up and timed runs: by count, extended by time; time-driven runs stop at kMaxRuns.
struct Timed {
  std::vector<double> warm, runs;
  double wall_ms = 0, timed_ms = 0;
  edgecls::SystemSample before, after;
  ffi::Tensor out;
};

Timed TimeRuns(const ffi::Function& main_fn, const ffi::Tensor& input, const Options& o,
               const std::vector<int>& cores) {
  const size_t kMaxRuns = 100000;
  Timed t;
  while (t.warm.size() < size_t(o.warmup) || (Sum(t.warm) < o.warmup_ms && t.warm.size() < kMaxRuns)) {
    auto a = Clock::now();
    main_fn(input);
    t.warm.push_back(Ms(a, Clock::now()));
  }
  t.before = edgecls::TakeSample(cores);
  auto tb = Clock::now();
  while (t.runs.size() < size_t(o.runs) || (t.timed_ms < o.min_ms && t.runs.size() < kMaxRuns)) {
    if (!t.runs.empty() && o.cooldown_ms > 0)
      std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(o.cooldown_ms));
    auto a = Clock::now();
    ffi::Any r = main_fn(input);
    t.runs.push_back(Ms(a, Clock::now()));
    t.timed_ms += t.runs.back();
    t.out = FirstOutput(r);
  }
  t.wall_ms = Ms(tb, Clock::now());
  t.after = edgecls::TakeSample(cores);
  if (t.out.device().device_type != kDLCPU) throw Fail("model output is not on the CPU");
  if (!t.out.IsContiguous()) throw Fail("model output is not contiguous");
  return t;
}

// The loaded model: its VM's main function and how long loading and initialising took.
struct Loaded {
  ffi::Function main_fn;
  double load_ms = 0, init_ms = 0;
};

Loaded LoadModel(const std::string& model) {
  auto t0 = Clock::now();
  ffi::Module lib = ffi::Module::LoadFromFile(model);
  DumpMaps();
  auto load_exec = lib->GetFunction("vm_load_executable", true);
  if (!load_exec) throw Fail("'" + model + "' is not a TVM Relax VM library (no vm_load_executable)");
  ffi::Module vm = (*load_exec)().cast<ffi::Module>();
  auto t1 = Clock::now();
  // Same convention as tvm.runtime.vm.VirtualMachine._setup_device: (device_type, device_id,
  // allocator) per device; CPU only, allocator 2 = pooled so repeated runs reuse buffers.
  auto init = vm->GetFunction("vm_initialization", false);
  if (!init) throw Fail("VM has no vm_initialization");
  (*init)(static_cast<int>(kDLCPU), 0, 2);
  auto main_opt = vm->GetFunction("main", false);
  if (!main_opt) throw Fail("model has no 'main' function");
  return Loaded{*main_opt, Ms(t0, t1), Ms(t1, Clock::now())};
}

int Run(const Options& o) {
  using edgecls::JsonNum;
  using edgecls::JsonStr;
  // Fail before a long benchmark, not after it, if the report cannot be written.
  std::ofstream json_out;
  if (!o.json_out.empty()) {
    json_out.open(o.json_out);
    if (!json_out) throw Fail("cannot write --json-out '" + o.json_out + "'");
  }
  std::string model = CheckModel(o.model);
  int threads = 0;
  bool own_pool = false;
  std::vector<int> cores = SetUpThreads(o, model, &threads, &own_pool);
  ffi::Tensor input = ReadNpy(o.input);

  Loaded loaded = LoadModel(model);
  const ffi::Function& main_fn = loaded.main_fn;
  std::string reference = o.ref_input.empty() ? "null" : Reference(main_fn, o);
  std::string accuracy = o.val_x.empty() ? "null" : Accuracy(main_fn, o);

  Timed t = TimeRuns(main_fn, input, o, cores);
  std::string tasks = edgecls::TasksJson();

  if (auto nt = ffi::Function::GetGlobal("runtime.NumThreads"); nt && !own_pool) threads = (*nt)().cast<int>();
  if (!o.output.empty()) WriteNpy(o.output, t.out);
  auto top = TopK(t.out, o.topk);
  double mean = 0;
  std::string stats = Stats(t.runs, &mean);
  std::optional<bool> throttled = edgecls::Throttled(t.before, t.after);
  const char* bind = std::getenv("TVM_BIND_THREADS");

  std::ostringstream js;
  js << "{\"schema\": 2, \"runner\": \"edgecls-runner\", \"model\": " << JsonStr(o.model)
     << ", \"input\": {\"shape\": " << ShapeStr(input.shape(), "[", "]", false)
     << ", \"dtype\": \"" << DTypeFromDL(input.dtype()).name << "\"}"
     << ", \"output\": {\"shape\": " << ShapeStr(t.out.shape(), "[", "]", false)
     << ", \"dtype\": \"" << DTypeFromDL(t.out.dtype()).name << "\"}, \"topk\": [";
  for (size_t i = 0; i < top.size(); ++i)
    js << (i ? ", " : "") << "{\"index\": " << top[i].second << ", \"score\": " << JsonNum(top[i].first) << "}";
  js << "], \"timings_ms\": {\"load\": " << JsonNum(loaded.load_ms) << ", \"init\": " << JsonNum(loaded.init_ms)
     << ", \"warmup\": " << edgecls::JsonList(t.warm) << ", \"runs\": " << edgecls::JsonList(t.runs) << ", "
     << stats << "}, \"bench\": {\"fps\": " << JsonNum(1000 / mean) << ", \"warmup_runs\": " << t.warm.size()
     << ", \"warmup_total_ms\": " << JsonNum(Sum(t.warm)) << ", \"runs\": " << t.runs.size()
     << ", \"timed_total_ms\": " << JsonNum(t.timed_ms) << ", \"wall_ms\": " << JsonNum(t.wall_ms)
     << ", \"requested\": {\"warmup\": " << o.warmup << ", \"warmup_ms\": " << JsonNum(o.warmup_ms)
     << ", \"runs\": " << o.runs << ", \"min_ms\": " << JsonNum(o.min_ms) << ", \"cooldown_ms\": "
     << JsonNum(o.cooldown_ms) << "}}, \"threads\": " << threads << ", \"cores\": " << edgecls::JsonList(cores)
     << ", \"affinity\": {\"tvm_bind_threads\": " << edgecls::JsonOptStr(bind ? std::optional<std::string>(bind) : std::nullopt)
     << ", \"launcher\": \"" << (own_pool ? "edgecls" : "tvm") << "\", \"launcher_stats\": "
     << edgecls::ParallelLauncherStatsJson() << ", \"tasks\": " << tasks
     << "}, \"accuracy\": " << accuracy << ", \"reference\": " << reference
     << ", \"system\": {\"before\": " << edgecls::ToJson(t.before) << ", \"after\": " << edgecls::ToJson(t.after)
     << ", \"peak_rss_kb\": " << edgecls::PeakRssKb()
     << ", \"throttled\": " << (throttled ? (*throttled ? "true" : "false") : "null")
     << "}, \"device\": " << edgecls::DeviceJson() << "}\n";
  if (json_out.is_open()) {
    json_out << js.str();
    json_out.close();
    if (!json_out) throw Fail("error writing --json-out '" + o.json_out + "'");
  }
  std::fputs(js.str().c_str(), stdout);
  return 0;
}

// Error messages must fit on one line: TVM messages may span several.
std::string OneLine(std::string s) {
  std::string r;
  bool space = false;
  for (char c : s) {
    if (std::isspace(static_cast<unsigned char>(c))) {
      space = !r.empty();
    } else {
      if (space) r += ' ';
      r += c;
      space = false;
    }
  }
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  std::string msg;
  try {
    return Run(ParseArgs(argc, argv));
  } catch (const ffi::Error& e) {
    msg = e.kind() + ": " + e.message();
  } catch (const std::exception& e) {
    msg = e.what();
  } catch (...) {
    msg = "unknown error";
  }
  std::fflush(stdout);
  std::fprintf(stderr, "edgecls-runner: error: %s\n", OneLine(msg).c_str());
  return 2;
}
