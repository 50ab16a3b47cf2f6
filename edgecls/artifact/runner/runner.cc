// edgecls-runner: runs a TVM-compiled (Relax VM) image classifier on a board with no Python.
//
// Links only against libtvm_runtime.so + libtvm_ffi.so, which ship next to this binary and are
// found through an $ORIGIN rpath. Only tvm::ffi headers are used: tvm/runtime/tensor.h in the
// wheel includes a header the wheel does not ship.
//
//   edgecls-runner --model model.so --input in.npy [--output out.npy] [--topk 5]
//                  [--warmup 1] [--runs 1] [--threads N]
//
// Prints exactly one JSON object on stdout. Any failure prints one line
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
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

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

ffi::Tensor ReadNpy(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Fail("cannot open input '" + path + "'");
  char magic[8];
  if (!f.read(magic, 8) || std::memcmp(magic, "\x93NUMPY", 6) != 0)
    throw Fail("'" + path + "' is not a .npy file");
  uint32_t hlen = 0;
  unsigned char b[4] = {0, 0, 0, 0};
  if (magic[6] == 1) {
    f.read(reinterpret_cast<char*>(b), 2);
  } else if (magic[6] == 2 || magic[6] == 3) {
    f.read(reinterpret_cast<char*>(b), 4);
  } else {
    throw Fail("unsupported npy version " + std::to_string(int(magic[6])) + " in '" + path + "'");
  }
  hlen = b[0] | (b[1] << 8) | (b[2] << 16) | (uint32_t(b[3]) << 24);
  if (!f || hlen > (1u << 20)) throw Fail("bad npy header in '" + path + "'");
  std::string h(hlen, '\0');
  if (!f.read(&h[0], hlen)) throw Fail("truncated npy header in '" + path + "'");

  std::string descr = HeaderField(h, "descr");
  if (descr.size() < 2 || descr.front() != '\'' || descr.back() != '\'')
    throw Fail("unsupported npy dtype " + descr);
  const DType& dt = DTypeFromDescr(descr.substr(1, descr.size() - 2));
  if (HeaderField(h, "fortran_order").rfind("False", 0) != 0)
    throw Fail("'" + path + "' is in Fortran order; save it C-contiguous (np.ascontiguousarray)");
  std::string s = HeaderField(h, "shape");
  std::vector<int64_t> shape;
  for (size_t i = 1; i < s.size();) {
    if (std::isdigit(static_cast<unsigned char>(s[i]))) {
      size_t used = 0;
      shape.push_back(std::stoll(s.substr(i), &used));
      i += used;
    } else {
      ++i;
    }
  }

  ffi::Tensor t = ffi::Tensor::FromNDAlloc(AlignedAlloc(), ffi::ShapeView(shape.data(), shape.size()),
                                           dt.dl, DLDevice{kDLCPU, 0});
  size_t n = ffi::GetDataSize(t);
  if (n && !f.read(static_cast<char*>(t.data_ptr()), n))
    throw Fail("'" + path + "' is truncated: expected " + std::to_string(n) + " data bytes");
  return t;
}

std::string ShapeStr(ffi::ShapeView s, const char* open, const char* close, bool py_tuple) {
  std::string r = open;
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  if (py_tuple && s.size() == 1) r += ",";
  return r + close;
}

const char* Bytes(const ffi::Tensor& t) {
  return static_cast<const char*>(t.data_ptr()) + t.byte_offset();
}

void WriteNpy(const std::string& path, const ffi::Tensor& t) {
  if (!t.IsContiguous()) throw Fail("model output is not contiguous");
  std::string h = std::string("{'descr': '") + DTypeFromDL(t.dtype()).descr +
                  "', 'fortran_order': False, 'shape': " + ShapeStr(t.shape(), "(", ")", true) + ", }";
  // Version 1.0: magic(6)+version(2)+len(2)+header, padded with spaces to 64 bytes, ending '\n'.
  size_t total = 10 + h.size() + 1;
  h.append((64 - total % 64) % 64, ' ');
  h += '\n';
  std::ofstream f(path, std::ios::binary);
  if (!f) throw Fail("cannot write output '" + path + "'");
  uint16_t hl = static_cast<uint16_t>(h.size());
  const char pre[10] = {'\x93', 'N', 'U', 'M', 'P', 'Y', 1, 0, char(hl & 0xff), char(hl >> 8)};
  f.write(pre, 10);
  f.write(h.data(), h.size());
  f.write(Bytes(t), ffi::GetDataSize(t));
  if (!f) throw Fail("error writing output '" + path + "'");
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

// ---- JSON helpers -----------------------------------------------------------------------------

std::string Num(double v) {
  if (!std::isfinite(v)) return "null";  // JSON has no NaN/Inf
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

std::string Str(const std::string& s) {
  std::string r = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      r += '\\';
      r += char(c);
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      r += buf;
    } else {
      r += char(c);
    }
  }
  return r + "\"";
}

std::string List(const std::vector<double>& v) {
  std::string r = "[";
  for (size_t i = 0; i < v.size(); ++i) r += (i ? ", " : "") + Num(v[i]);
  return r + "]";
}

// ---- main flow --------------------------------------------------------------------------------

struct Options {
  std::string model, input, output;
  int topk = 5, warmup = 1, runs = 1, threads = 0;
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

const char* kUsage =
    "usage: edgecls-runner --model model.so --input in.npy [--output out.npy] [--topk 5]\n"
    "                      [--warmup 1] [--runs 1] [--threads N]\n";

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
    else if (a == "--runs") o.runs = ParseInt(a, v, 1);
    else if (a == "--threads") o.threads = ParseInt(a, v, 1);
    else throw Fail("unknown option '" + a + "'");
  }
  if (o.model.empty() || o.input.empty()) throw Fail("--model and --input are required");
  return o;
}

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

int Run(const Options& o) {
  // TVM's CPU thread pool sizes itself from TVM_NUM_THREADS when it is first created (on the
  // first parallel kernel launch), so the variable must be set before the model runs.
  if (o.threads > 0) setenv("TVM_NUM_THREADS", std::to_string(o.threads).c_str(), 1);

  ffi::Tensor input = ReadNpy(o.input);
  std::string model = CheckModel(o.model);

  auto t0 = Clock::now();
  ffi::Module lib = ffi::Module::LoadFromFile(model);
  auto load_exec = lib->GetFunction("vm_load_executable", true);
  if (!load_exec) throw Fail("'" + o.model + "' is not a TVM Relax VM library (no vm_load_executable)");
  ffi::Module vm = (*load_exec)().cast<ffi::Module>();
  auto t1 = Clock::now();
  // Same convention as tvm.runtime.vm.VirtualMachine._setup_device: (device_type, device_id,
  // allocator) per device; CPU only, allocator 2 = pooled so repeated runs reuse buffers.
  auto init = vm->GetFunction("vm_initialization", false);
  if (!init) throw Fail("VM has no vm_initialization");
  (*init)(static_cast<int>(kDLCPU), 0, 2);
  auto main_fn = vm->GetFunction("main", false);
  if (!main_fn) throw Fail("model has no 'main' function");
  auto t2 = Clock::now();

  std::vector<double> warm, runs;
  ffi::Tensor out;
  for (int i = 0; i < o.warmup + o.runs; ++i) {
    auto a = Clock::now();
    ffi::Any r = (*main_fn)(input);
    auto b = Clock::now();
    (i < o.warmup ? warm : runs).push_back(Ms(a, b));
    if (i == o.warmup + o.runs - 1) out = FirstOutput(r);
  }
  if (out.device().device_type != kDLCPU) throw Fail("model output is not on the CPU");

  // Report the pool size TVM actually uses: it caps TVM_NUM_THREADS at the available cores.
  int threads = o.threads;
  if (auto nt = ffi::Function::GetGlobal("runtime.NumThreads")) threads = (*nt)().cast<int>();

  if (!o.output.empty()) WriteNpy(o.output, out);

  // Top-k over the last axis of the first row (index [0, ..., 0, :]).
  std::vector<std::pair<double, int64_t>> scores;
  int64_t classes = out.ndim() ? out.shape()[out.ndim() - 1] : 1;
  if (!out.IsContiguous()) throw Fail("model output is not contiguous");
  for (int64_t c = 0; c < classes && out.numel() > 0; ++c) scores.emplace_back(ElementAsDouble(out, c), c);
  size_t k = std::min<size_t>(o.topk, scores.size());
  std::partial_sort(scores.begin(), scores.begin() + k, scores.end(), [](auto& x, auto& y) {
    return x.first > y.first || (x.first == y.first && x.second < y.second);
  });

  std::vector<double> sorted = runs;
  std::sort(sorted.begin(), sorted.end());
  size_t n = sorted.size();
  double mean = std::accumulate(sorted.begin(), sorted.end(), 0.0) / n;
  double median = n % 2 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
  double var = 0;
  for (double x : sorted) var += (x - mean) * (x - mean);

  std::ostringstream js;
  js << "{\"schema\": 1, \"runner\": \"edgecls-runner\", \"model\": " << Str(o.model)
     << ", \"input\": {\"shape\": " << ShapeStr(input.shape(), "[", "]", false)
     << ", \"dtype\": \"" << DTypeFromDL(input.dtype()).name << "\"}"
     << ", \"output\": {\"shape\": " << ShapeStr(out.shape(), "[", "]", false)
     << ", \"dtype\": \"" << DTypeFromDL(out.dtype()).name << "\"}, \"topk\": [";
  for (size_t i = 0; i < k; ++i)
    js << (i ? ", " : "") << "{\"index\": " << scores[i].second << ", \"score\": " << Num(scores[i].first) << "}";
  js << "], \"timings_ms\": {\"load\": " << Num(Ms(t0, t1)) << ", \"init\": " << Num(Ms(t1, t2))
     << ", \"warmup\": " << List(warm) << ", \"runs\": " << List(runs) << ", \"mean\": " << Num(mean)
     << ", \"median\": " << Num(median) << ", \"min\": " << Num(sorted.front())
     << ", \"max\": " << Num(sorted.back()) << ", \"std\": " << Num(std::sqrt(var / n))
     << "}, \"threads\": " << threads << "}\n";
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
