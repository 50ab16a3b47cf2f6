// See options.h.
#include "options.h"

#include <cstdio>
#include <cstdlib>
#include <stdexcept>

#include "npy.h"  // Fail

namespace edgecls {
namespace {

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

}  // namespace

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

}  // namespace edgecls
