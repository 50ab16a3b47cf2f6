// edgecls-runner's command line: the options (../harness/contract.py holds the same names) and
// their checks; every bad value is one Fail line.
#pragma once

#include <string>

namespace edgecls {

struct Options {
  std::string model, input, output, cores, val_x, val_y, val_pred, ref_input, ref_output, json_out;
  int topk = 5, warmup = 1, runs = 1, threads = 0;
  double warmup_ms = 0, min_ms = 0, cooldown_ms = 0;
};

// Parses argv (-h/--help prints the usage and exits 0); throws Fail on a bad option or value.
Options ParseArgs(int argc, char** argv);

}  // namespace edgecls
