// edgecls-runner: runs and benchmarks a TVM-compiled (Relax VM) image classifier on a board with
// no Python.
//
// Links only against libtvm_runtime.so + libtvm_ffi.so, which ship next to this binary and are
// found through an $ORIGIN rpath. Only tvm::ffi headers are used: tvm/runtime/tensor.h in the
// wheel includes a header the wheel does not ship. System facts (cpufreq, thermal, affinity,
// device) come from sysinfo.cc; TVM's parallel loops run on parallel.cc's threads.
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

#include "parallel.h"
#include "sysinfo.h"

namespace ffi = tvm::ffi;

namespace {

struct Fail : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// ---- .npy I/O ---------------------------------------------------------------------------------

// The dtypes we accept, as numpy "descr" codes (little-endian, or byte-order free for 1 byte).
struct DType {
  const char* name;
  const char* descr;
  DLDataType dl;
};
const DType kDTypes[] = {
    {"float32", "<f4", {kDLFloat, 32, 1}}, {"float64", "<f8", {kDLFloat, 64, 1}},
    {"int8", "|i1", {kDLInt, 8, 1}},       {"uint8", "|u1", {kDLUInt, 8, 1}},
    {"int16", "<i2", {kDLInt, 16, 1}},     {"uint16", "<u2", {kDLUInt, 16, 1}},
    {"int32", "<i4", {kDLInt, 32, 1}},     {"int64", "<i8", {kDLInt, 64, 1}},
};

const DType& DTypeFromDescr(std::string d) {
  // '=' (native) is little-endian on every board we target; 1-byte types may use any marker.
  if (!d.empty() && d[0] == '=') d[0] = '<';
  if (d.size() == 3 && d[2] == '1' && (d[0] == '<' || d[0] == '>')) d[0] = '|';
  for (const DType& t : kDTypes)
    if (d == t.descr) return t;
  throw Fail("unsupported npy dtype '" + d +
             "' (supported: float32, float64, int8, uint8, int16, uint16, int32, int64, "
             "little-endian)");
}

const DType& DTypeFromDL(DLDataType dl) {
  for (const DType& t : kDTypes)
    if (t.dl.code == dl.code && t.dl.bits == dl.bits && dl.lanes == 1) return t;
  throw Fail("model output has an unsupported dtype (code " + std::to_string(dl.code) + ", bits " +
             std::to_string(dl.bits) + ", lanes " + std::to_string(dl.lanes) + ")");
}

// TVM kernels may assume 64-byte aligned buffers (TVM's own kAllocAlignment), so allocate so.
struct AlignedAlloc {
  void AllocData(DLTensor* t) {
    size_t n = ffi::GetDataSize(*t);
    t->data = std::aligned_alloc(64, std::max<size_t>(64, (n + 63) / 64 * 64));
    if (!t->data) throw Fail("out of memory allocating input tensor");
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

// Value of `key` in the npy header dict, e.g. "'<f4'" or "(1, 3, 64, 64)".
std::string HeaderField(const std::string& h, const std::string& key) {
  size_t p = h.find("'" + key + "'");
  if (p == std::string::npos) throw Fail("bad npy header: no '" + key + "'");
  p = h.find(':', p);
  if (p == std::string::npos) throw Fail("bad npy header near '" + key + "'");
  ++p;
  while (p < h.size() && h[p] == ' ') ++p;
  size_t e = (p < h.size() && h[p] == '(') ? h.find(')', p) + 1 : h.find(',', p);
  if (e == std::string::npos || e == 0) throw Fail("bad npy header near '" + key + "'");
  return h.substr(p, e - p);
}

// An open .npy file, positioned at its data: ReadNpy reads it whole, --val-x one image at a time.
struct NpyFile {
  std::string path;
  std::ifstream f;
  const DType* dt = nullptr;
  std::vector<int64_t> shape;

  explicit NpyFile(const std::string& p) : path(p), f(p, std::ios::binary) {
    if (!f) throw Fail("cannot open input '" + path + "'");
    char magic[8];
    if (!f.read(magic, 8) || std::memcmp(magic, "\x93NUMPY", 6) != 0)
      throw Fail("'" + path + "' is not a .npy file");
    unsigned char b[4] = {0, 0, 0, 0};
    if (magic[6] == 1) {
      f.read(reinterpret_cast<char*>(b), 2);
    } else if (magic[6] == 2 || magic[6] == 3) {
      f.read(reinterpret_cast<char*>(b), 4);
    } else {
      throw Fail("unsupported npy version " + std::to_string(int(magic[6])) + " in '" + path + "'");
    }
    uint32_t hlen = b[0] | (b[1] << 8) | (b[2] << 16) | (uint32_t(b[3]) << 24);
    if (!f || hlen > (1u << 20)) throw Fail("bad npy header in '" + path + "'");
    std::string h(hlen, '\0');
    if (!f.read(&h[0], hlen)) throw Fail("truncated npy header in '" + path + "'");

    std::string descr = HeaderField(h, "descr");
    if (descr.size() < 2 || descr.front() != '\'' || descr.back() != '\'')
      throw Fail("unsupported npy dtype " + descr);
    dt = &DTypeFromDescr(descr.substr(1, descr.size() - 2));
    if (HeaderField(h, "fortran_order").rfind("False", 0) != 0)
      throw Fail("'" + path + "' is in Fortran order; save it C-contiguous (np.ascontiguousarray)");
    std::string s = HeaderField(h, "shape");
    for (size_t i = 1; i < s.size();) {
      if (std::isdigit(static_cast<unsigned char>(s[i]))) {
        size_t used = 0;
        shape.push_back(std::stoll(s.substr(i), &used));
        i += used;
      } else {
        ++i;
      }
    }
  }

  // A new tensor of `shape` (default: the file's) filled with the next bytes of the file.
  ffi::Tensor Read(std::vector<int64_t> shp = {}) {
    if (shp.empty()) shp = shape;
    ffi::Tensor t = ffi::Tensor::FromNDAlloc(AlignedAlloc(), ffi::ShapeView(shp.data(), shp.size()),
                                             dt->dl, DLDevice{kDLCPU, 0});
    ReadInto(t);
    return t;
  }
  void ReadInto(const ffi::Tensor& t) {
    size_t n = ffi::GetDataSize(t);
    if (n && !f.read(static_cast<char*>(t.data_ptr()), n))
      throw Fail("'" + path + "' is truncated: expected " + std::to_string(n) + " more data bytes");
  }
};

ffi::Tensor ReadNpy(const std::string& path) { return NpyFile(path).Read(); }

std::string ShapeStr(ffi::ShapeView s, const char* open, const char* close, bool py_tuple) {
  std::string r = open;
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  if (py_tuple && s.size() == 1) r += ",";
  return r + close;
}

const char* Bytes(const ffi::Tensor& t) {
  return static_cast<const char*>(t.data_ptr()) + t.byte_offset();
}

// Version 1.0 .npy: magic(6)+version(2)+len(2)+header, padded with spaces to 64 bytes, ending '\n'.
void WriteNpyBytes(const std::string& path, const std::string& descr, const std::string& shape, const char* data,
                   size_t size) {
  std::string h = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
  size_t total = 10 + h.size() + 1;
  h.append((64 - total % 64) % 64, ' ');
  h += '\n';
  std::ofstream f(path, std::ios::binary);
  if (!f) throw Fail("cannot write output '" + path + "'");
  uint16_t hl = static_cast<uint16_t>(h.size());
  const char pre[10] = {'\x93', 'N', 'U', 'M', 'P', 'Y', 1, 0, char(hl & 0xff), char(hl >> 8)};
  f.write(pre, 10);
  f.write(h.data(), h.size());
  f.write(data, size);
  if (!f) throw Fail("error writing output '" + path + "'");
}

void WriteNpy(const std::string& path, const ffi::Tensor& t) {
  if (!t.IsContiguous()) throw Fail("model output is not contiguous");
  WriteNpyBytes(path, DTypeFromDL(t.dtype()).descr, ShapeStr(t.shape(), "(", ")", true), Bytes(t),
                ffi::GetDataSize(t));
}

double ElementAsDouble(const ffi::Tensor& t, int64_t i) {
  const char* p = Bytes(t);
  DLDataType d = t.dtype();
  if (d.code == kDLFloat && d.bits == 32) return reinterpret_cast<const float*>(p)[i];
  if (d.code == kDLFloat && d.bits == 64) return reinterpret_cast<const double*>(p)[i];
  if (d.code == kDLInt && d.bits == 8) return reinterpret_cast<const int8_t*>(p)[i];
  if (d.code == kDLUInt && d.bits == 8) return reinterpret_cast<const uint8_t*>(p)[i];
  if (d.code == kDLInt && d.bits == 16) return reinterpret_cast<const int16_t*>(p)[i];
  if (d.code == kDLUInt && d.bits == 16) return reinterpret_cast<const uint16_t*>(p)[i];
  if (d.code == kDLInt && d.bits == 32) return reinterpret_cast<const int32_t*>(p)[i];
  if (d.code == kDLInt && d.bits == 64) return static_cast<double>(reinterpret_cast<const int64_t*>(p)[i]);
  throw Fail("cannot read scores of this output dtype");
}

// ---- options ----------------------------------------------------------------------------------

const char* kUsage =
    "usage: edgecls-runner --model model.so --input in.npy [options]\n"
    "  --output out.npy      write the model output of the last timed run\n"
    "  --topk K              top-k classes to report (default 5)\n"
    "  --warmup N            warm-up runs (default 1) ...\n"
    "  --warmup-ms T         ... and keep warming up until they took T ms in all (default 0)\n"
    "  --runs N              timed runs (default 1) ...\n"
    "  --min-ms T            ... and keep running until they took T ms in all (default 0;\n"
    "                        time-driven runs stop at 100000)\n"
    "  --cooldown-ms T       sleep T ms between timed runs (default 0)\n"
    "  --cores CPULIST       run on these CPUs only, e.g. 4,5 or 0-3 (default: the CPUs this\n"
    "                        process may use); threads are never pinned to single cores\n"
    "  --threads N           threads for the model's parallel loops (default: number of cores)\n"
    "  --val-x X.npy --val-y Y.npy\n"
    "                        accuracy over N images (X: N x input shape, Y: N integer labels)\n"
    "  --val-pred P.npy      with --val-x: also write each image's top-1 class (N int64)\n"
    "  --ref-input in.npy --ref-output out.npy\n"
    "                        compare the model output on in.npy with out.npy\n"
    "                        (--input defaults to --ref-input)\n"
    "  --json-out FILE       also write the JSON report to FILE\n"
    "Validation and reference runs come before the warm-up and are not timed.\n";

struct Options {
  std::string model, input, output, cores, val_x, val_y, val_pred, ref_input, ref_output, json_out;
  int topk = 5, warmup = 1, runs = 1, threads = 0;
  double warmup_ms = 0, min_ms = 0, cooldown_ms = 0;
};

int ParseInt(const std::string& flag, const std::string& v, int min) {
  size_t used = 0;
  long x = 0;
  try {
    x = std::stol(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != v.size() || v.empty() || x < min || x > 1000000)
    throw Fail(flag + " expects an integer >= " + std::to_string(min) + ", got '" + v + "'");
  return static_cast<int>(x);
}

double ParseMs(const std::string& flag, const std::string& v) {
  char* end = nullptr;
  double x = std::strtod(v.c_str(), &end);
  if (v.empty() || *end != '\0' || !(x >= 0) || x > 1e9)
    throw Fail(flag + " expects a number of milliseconds >= 0, got '" + v + "'");
  return x;
}

Options ParseArgs(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    }
    if (i + 1 >= argc) throw Fail("unknown option or missing value: '" + a + "'");
    std::string v = argv[++i];
    if (a == "--model") o.model = v;
    else if (a == "--input") o.input = v;
    else if (a == "--output") o.output = v;
    else if (a == "--topk") o.topk = ParseInt(a, v, 0);
    else if (a == "--warmup") o.warmup = ParseInt(a, v, 0);
    else if (a == "--warmup-ms") o.warmup_ms = ParseMs(a, v);
    else if (a == "--runs") o.runs = ParseInt(a, v, 1);
    else if (a == "--min-ms") o.min_ms = ParseMs(a, v);
    else if (a == "--cooldown-ms") o.cooldown_ms = ParseMs(a, v);
    else if (a == "--threads") o.threads = ParseInt(a, v, 1);
    else if (a == "--cores") o.cores = v;
    else if (a == "--val-x") o.val_x = v;
    else if (a == "--val-y") o.val_y = v;
    else if (a == "--val-pred") o.val_pred = v;
    else if (a == "--ref-input") o.ref_input = v;
    else if (a == "--ref-output") o.ref_output = v;
    else if (a == "--json-out") o.json_out = v;
    else throw Fail("unknown option '" + a + "'");
  }
  if (o.input.empty()) o.input = o.ref_input;
  if (o.model.empty() || o.input.empty()) throw Fail("--model and --input are required");
  if (o.val_x.empty() != o.val_y.empty()) throw Fail("--val-x and --val-y go together");
  if (!o.val_pred.empty() && o.val_x.empty()) throw Fail("--val-pred needs --val-x and --val-y");
  if (o.ref_input.empty() != o.ref_output.empty()) throw Fail("--ref-input and --ref-output go together");
  return o;
}

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

  auto t0 = Clock::now();
  ffi::Module lib = ffi::Module::LoadFromFile(model);
  DumpMaps();
  auto load_exec = lib->GetFunction("vm_load_executable", true);
  if (!load_exec) throw Fail("'" + o.model + "' is not a TVM Relax VM library (no vm_load_executable)");
  ffi::Module vm = (*load_exec)().cast<ffi::Module>();
  auto t1 = Clock::now();
  // Same convention as tvm.runtime.vm.VirtualMachine._setup_device: (device_type, device_id,
  // allocator) per device; CPU only, allocator 2 = pooled so repeated runs reuse buffers.
  auto init = vm->GetFunction("vm_initialization", false);
  if (!init) throw Fail("VM has no vm_initialization");
  (*init)(static_cast<int>(kDLCPU), 0, 2);
  auto main_opt = vm->GetFunction("main", false);
  if (!main_opt) throw Fail("model has no 'main' function");
  const ffi::Function main_fn = *main_opt;
  auto t2 = Clock::now();

  std::string reference = o.ref_input.empty() ? "null" : Reference(main_fn, o);
  std::string accuracy = o.val_x.empty() ? "null" : Accuracy(main_fn, o);

  // Warm-up and timed runs: by count, extended by time; time-driven runs stop at kMaxRuns.
  const size_t kMaxRuns = 100000;
  std::vector<double> warm, runs;
  while (warm.size() < size_t(o.warmup) || (Sum(warm) < o.warmup_ms && warm.size() < kMaxRuns)) {
    auto a = Clock::now();
    main_fn(input);
    warm.push_back(Ms(a, Clock::now()));
  }
  edgecls::SystemSample before = edgecls::TakeSample(cores);
  ffi::Tensor out;
  auto tb = Clock::now();
  double timed = 0;
  while (runs.size() < size_t(o.runs) || (timed < o.min_ms && runs.size() < kMaxRuns)) {
    if (!runs.empty() && o.cooldown_ms > 0)
      std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(o.cooldown_ms));
    auto a = Clock::now();
    ffi::Any r = main_fn(input);
    runs.push_back(Ms(a, Clock::now()));
    timed += runs.back();
    out = FirstOutput(r);
  }
  double wall = Ms(tb, Clock::now());
  edgecls::SystemSample after = edgecls::TakeSample(cores);
  std::string tasks = edgecls::TasksJson();
  if (out.device().device_type != kDLCPU) throw Fail("model output is not on the CPU");
  if (!out.IsContiguous()) throw Fail("model output is not contiguous");

  if (auto nt = ffi::Function::GetGlobal("runtime.NumThreads"); nt && !own_pool) threads = (*nt)().cast<int>();
  if (!o.output.empty()) WriteNpy(o.output, out);
  auto top = TopK(out, o.topk);
  double mean = 0;
  std::string stats = Stats(runs, &mean);
  std::optional<bool> throttled = edgecls::Throttled(before, after);
  const char* bind = std::getenv("TVM_BIND_THREADS");

  std::ostringstream js;
  js << "{\"schema\": 2, \"runner\": \"edgecls-runner\", \"model\": " << JsonStr(o.model)
     << ", \"input\": {\"shape\": " << ShapeStr(input.shape(), "[", "]", false)
     << ", \"dtype\": \"" << DTypeFromDL(input.dtype()).name << "\"}"
     << ", \"output\": {\"shape\": " << ShapeStr(out.shape(), "[", "]", false)
     << ", \"dtype\": \"" << DTypeFromDL(out.dtype()).name << "\"}, \"topk\": [";
  for (size_t i = 0; i < top.size(); ++i)
    js << (i ? ", " : "") << "{\"index\": " << top[i].second << ", \"score\": " << JsonNum(top[i].first) << "}";
  js << "], \"timings_ms\": {\"load\": " << JsonNum(Ms(t0, t1)) << ", \"init\": " << JsonNum(Ms(t1, t2))
     << ", \"warmup\": " << edgecls::JsonList(warm) << ", \"runs\": " << edgecls::JsonList(runs) << ", "
     << stats << "}, \"bench\": {\"fps\": " << JsonNum(1000 / mean) << ", \"warmup_runs\": " << warm.size()
     << ", \"warmup_total_ms\": " << JsonNum(Sum(warm)) << ", \"runs\": " << runs.size()
     << ", \"timed_total_ms\": " << JsonNum(timed) << ", \"wall_ms\": " << JsonNum(wall)
     << ", \"requested\": {\"warmup\": " << o.warmup << ", \"warmup_ms\": " << JsonNum(o.warmup_ms)
     << ", \"runs\": " << o.runs << ", \"min_ms\": " << JsonNum(o.min_ms) << ", \"cooldown_ms\": "
     << JsonNum(o.cooldown_ms) << "}}, \"threads\": " << threads << ", \"cores\": " << edgecls::JsonList(cores)
     << ", \"affinity\": {\"tvm_bind_threads\": " << edgecls::JsonOptStr(bind ? std::optional<std::string>(bind) : std::nullopt)
     << ", \"launcher\": \"" << (own_pool ? "edgecls" : "tvm") << "\", \"launcher_stats\": "
     << edgecls::ParallelLauncherStatsJson() << ", \"tasks\": " << tasks
     << "}, \"accuracy\": " << accuracy << ", \"reference\": " << reference
     << ", \"system\": {\"before\": " << edgecls::ToJson(before) << ", \"after\": " << edgecls::ToJson(after)
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
