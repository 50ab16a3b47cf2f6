// System facts for edgecls-runner: CPU sets and affinity, cpufreq/thermal/load samples, device
// description, and the small JSON writers the runner shares. Linux only, no TVM dependency.
//
// Every /proc and /sys read is optional: a missing or unreadable file gives an empty optional
// (JSON null), never an error. Only SetProcessAffinity and ParseCpuList throw.

#pragma once

#include <optional>
#include <string>
#include <vector>

namespace edgecls {

// ---- JSON writers ----
std::string JsonNum(double v);  // non-finite -> null (JSON has no NaN/Inf)
std::string JsonOpt(const std::optional<double>& v);
std::string JsonStr(const std::string& s);
std::string JsonOptStr(const std::optional<std::string>& s);
std::string JsonList(const std::vector<double>& v);
std::string JsonList(const std::vector<int>& v);

// ---- CPU sets ----
// "0-3,6" -> {0, 1, 2, 3, 6} (sorted, unique); throws std::runtime_error on bad syntax.
std::vector<int> ParseCpuList(const std::string& s);
std::string CpuListStr(const std::vector<int>& cpus);  // {0, 1, 2, 3, 6} -> "0-3,6"
std::vector<int> Affinity(int tid);                     // tid 0: calling thread; {} on failure
std::vector<int> OnlineCpus();                          // /sys/devices/system/cpu/online; {} if unknown
// Restricts every thread of this process to `cpus` (call it before any worker thread starts:
// threads inherit the mask of their creator). Throws if a CPU is offline or not permitted.
void SetProcessAffinity(const std::vector<int>& cpus);

// ---- samples ----
struct CoreSample {
  int cpu = 0;
  std::optional<std::string> governor;
  std::optional<double> cur_khz, cpuinfo_max_khz, scaling_max_khz;
};
struct ZoneSample {
  std::string zone;
  std::optional<std::string> type;
  std::optional<double> temp_c;
};
struct SystemSample {
  std::vector<CoreSample> cores;
  std::vector<ZoneSample> zones;
  std::optional<double> load1;
};
SystemSample TakeSample(const std::vector<int>& cores);
std::string ToJson(const SystemSample& s);
// True when a core's scaling_cur_freq is below 95% of its max (cpuinfo_max_freq, else
// scaling_max_freq) in either sample; nullopt when no core has both numbers in any sample.
std::optional<bool> Throttled(const SystemSample& a, const SystemSample& b);
long PeakRssKb();  // getrusage ru_maxrss; -1 if unavailable

// {"uname": {...}, "cpu_model": ..., "hardware": ..., "board": ..., "online_cpus": N,
//  "mem_total_kb": N, "glibc": "2.36"}
std::string DeviceJson();
// [{"tid": N, "comm": "...", "allowed": [cpus], "last_cpu": N}, ...] for every thread now.
std::string TasksJson();

}  // namespace edgecls
