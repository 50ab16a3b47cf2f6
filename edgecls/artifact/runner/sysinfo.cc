// System facts for edgecls-runner; see sysinfo.h.

#include "sysinfo.h"

#include <dirent.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/utsname.h>
#include <unistd.h>
#if defined(__GLIBC__)
#include <gnu/libc-version.h>
#endif

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <utility>

namespace edgecls {

// ---- JSON writers -----------------------------------------------------------------------------

std::string JsonNum(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

std::string JsonOpt(const std::optional<double>& v) { return v ? JsonNum(*v) : "null"; }

std::string JsonStr(const std::string& s) {
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

std::string JsonOptStr(const std::optional<std::string>& s) { return s ? JsonStr(*s) : "null"; }

std::string JsonList(const std::vector<double>& v) {
  std::string r = "[";
  for (size_t i = 0; i < v.size(); ++i) r += (i ? ", " : "") + JsonNum(v[i]);
  return r + "]";
}

std::string JsonList(const std::vector<int>& v) {
  std::string r = "[";
  for (size_t i = 0; i < v.size(); ++i) r += (i ? ", " : "") + std::to_string(v[i]);
  return r + "]";
}

// ---- optional file reads ----------------------------------------------------------------------

namespace {

std::string Trim(const std::string& s) {
  size_t a = s.find_first_not_of(" \t\r\n");
  if (a == std::string::npos) return "";
  return s.substr(a, s.find_last_not_of(" \t\r\n") - a + 1);
}

std::optional<std::string> ReadText(const std::string& path) {
  std::ifstream f(path);
  if (!f) return std::nullopt;
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) return std::nullopt;
  std::string s = ss.str();
  s.erase(std::find(s.begin(), s.end(), '\0'), s.end());  // device-tree strings end in NUL
  s = Trim(s);
  if (s.empty()) return std::nullopt;
  return s;
}

std::optional<double> ReadNumber(const std::string& path) {
  auto s = ReadText(path);
  if (!s) return std::nullopt;
  char* end = nullptr;
  errno = 0;
  double v = std::strtod(s->c_str(), &end);
  if (end == s->c_str() || errno != 0 || !std::isfinite(v)) return std::nullopt;
  return v;
}

std::vector<std::string> DirEntries(const std::string& dir) {
  std::vector<std::string> r;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d))
      if (e->d_name[0] != '.') r.push_back(e->d_name);
    closedir(d);
  }
  return r;
}

// Natural order for names like thermal_zone10 / 2: prefix, then the trailing number.
bool NaturalLess(const std::string& a, const std::string& b) {
  size_t ia = a.find_last_not_of("0123456789") + 1, ib = b.find_last_not_of("0123456789") + 1;
  if (a.compare(0, ia, b, 0, ib) != 0 || ia == a.size() || ib == b.size()) return a < b;
  return std::stoll(a.substr(ia)) < std::stoll(b.substr(ib));
}

}  // namespace

// ---- CPU sets ---------------------------------------------------------------------------------

std::vector<int> ParseCpuList(const std::string& s) {
  auto bad = [&s](const std::string& why) {
    return std::runtime_error("bad CPU list '" + s + "': " + why + " (expected e.g. 0-3 or 4,5)");
  };
  auto num = [&](const std::string& t) {
    if (t.empty() || t.size() > 5 || t.find_first_not_of("0123456789") != std::string::npos)
      throw bad("'" + t + "' is not a CPU number");
    int v = std::stoi(t);
    if (v >= CPU_SETSIZE) throw bad("CPU " + t + " is out of range");
    return v;
  };
  std::vector<int> r;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    item = Trim(item);
    size_t dash = item.find('-');
    int lo = num(item.substr(0, dash)), hi = dash == std::string::npos ? lo : num(item.substr(dash + 1));
    if (hi < lo) throw bad("range " + item + " is reversed");
    for (int c = lo; c <= hi; ++c) r.push_back(c);
  }
  if (r.empty() || (!s.empty() && s.back() == ',')) throw bad("empty entry");
  std::sort(r.begin(), r.end());
  r.erase(std::unique(r.begin(), r.end()), r.end());
  return r;
}

std::string CpuListStr(const std::vector<int>& cpus) {
  std::string r;
  for (size_t i = 0; i < cpus.size();) {
    size_t j = i;
    while (j + 1 < cpus.size() && cpus[j + 1] == cpus[j] + 1) ++j;
    r += (r.empty() ? "" : ",") + std::to_string(cpus[i]);
    if (j > i) r += "-" + std::to_string(cpus[j]);
    i = j + 1;
  }
  return r;
}

std::vector<int> Affinity(int tid) {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> r;
  if (sched_getaffinity(tid, sizeof set, &set) != 0) return r;
  for (int c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &set)) r.push_back(c);
  return r;
}

std::vector<int> OnlineCpus() {
  try {
    if (auto online = ReadText("/sys/devices/system/cpu/online")) return ParseCpuList(*online);
  } catch (const std::exception&) {
  }
  return {};
}

void SetProcessAffinity(const std::vector<int>& cpus) {
  std::string want = CpuListStr(cpus);
  std::vector<int> on = OnlineCpus();
  for (int c : cpus)
    if (!on.empty() && !std::binary_search(on.begin(), on.end(), c))
      throw std::runtime_error("--cores " + want + ": CPU " + std::to_string(c) +
                               " is not online (online: " + CpuListStr(on) + ")");
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int c : cpus) CPU_SET(c, &set);
  // sched_setaffinity(0) binds only the calling thread: apply it to every thread there is.
  std::vector<std::string> tids = DirEntries("/proc/self/task");
  if (tids.empty()) tids.push_back("0");
  for (const std::string& t : tids)
    if (sched_setaffinity(std::atoi(t.c_str()), sizeof set, &set) != 0)
      throw std::runtime_error("--cores " + want + ": sched_setaffinity failed: " + std::strerror(errno) +
                               " (allowed here: " + CpuListStr(Affinity(0)) + ")");
  // The kernel silently drops CPUs outside this process's cpuset cgroup: insist on all of them.
  std::vector<int> got = Affinity(0);
  if (got != cpus)
    throw std::runtime_error("--cores " + want + ": the kernel allowed only " + CpuListStr(got) +
                             " (cpuset restrictions?)");
}

// ---- samples ----------------------------------------------------------------------------------

SystemSample TakeSample(const std::vector<int>& cores) {
  SystemSample s;
  for (int c : cores) {
    std::string d = "/sys/devices/system/cpu/cpu" + std::to_string(c) + "/cpufreq/";
    CoreSample cs;
    cs.cpu = c;
    cs.governor = ReadText(d + "scaling_governor");
    cs.cur_khz = ReadNumber(d + "scaling_cur_freq");
    cs.cpuinfo_max_khz = ReadNumber(d + "cpuinfo_max_freq");
    cs.scaling_max_khz = ReadNumber(d + "scaling_max_freq");
    s.cores.push_back(cs);
  }
  std::vector<std::string> zones;
  for (const std::string& n : DirEntries("/sys/class/thermal"))
    if (n.rfind("thermal_zone", 0) == 0) zones.push_back(n);
  std::sort(zones.begin(), zones.end(), NaturalLess);
  for (const std::string& z : zones) {
    ZoneSample zs;
    zs.zone = z;
    zs.type = ReadText("/sys/class/thermal/" + z + "/type");
    if (auto t = ReadNumber("/sys/class/thermal/" + z + "/temp")) zs.temp_c = *t / 1000.0;
    s.zones.push_back(zs);
  }
  if (auto la = ReadText("/proc/loadavg")) {
    char* end = nullptr;
    double v = std::strtod(la->c_str(), &end);
    if (end != la->c_str()) s.load1 = v;
  }
  return s;
}

// The layout edgecls/artifact/harness/bench_py.py writes too, so reports of all runtimes read alike:
// {"cpus": {"4": {"governor", "cur_khz", "max_khz", "cpuinfo_max_khz", "scaling_max_khz"}},
//  "thermal": {"<type>": temp_c}, "loadavg_1m": x}. max_khz: cpuinfo_max_freq, else scaling_max_freq.
std::string ToJson(const SystemSample& s) {
  std::string r = "{\"cpus\": {";
  for (size_t i = 0; i < s.cores.size(); ++i) {
    const CoreSample& c = s.cores[i];
    r += (i ? ", \"" : "\"") + std::to_string(c.cpu) + "\": {\"governor\": " + JsonOptStr(c.governor) +
         ", \"cur_khz\": " + JsonOpt(c.cur_khz) + ", \"max_khz\": " +
         JsonOpt(c.cpuinfo_max_khz ? c.cpuinfo_max_khz : c.scaling_max_khz) + ", \"cpuinfo_max_khz\": " +
         JsonOpt(c.cpuinfo_max_khz) + ", \"scaling_max_khz\": " + JsonOpt(c.scaling_max_khz) + "}";
  }
  r += "}, \"thermal\": {";
  std::vector<std::string> keys;  // by type; a repeated type gets its zone appended
  for (const ZoneSample& z : s.zones) {
    std::string key = z.type ? *z.type : z.zone;
    if (std::find(keys.begin(), keys.end(), key) != keys.end()) key += " (" + z.zone + ")";
    r += (keys.empty() ? "" : ", ") + JsonStr(key) + ": " + JsonOpt(z.temp_c);
    keys.push_back(key);
  }
  return r + "}, \"loadavg_1m\": " + JsonOpt(s.load1) + "}";
}

std::optional<bool> Throttled(const SystemSample& a, const SystemSample& b) {
  std::optional<bool> r;
  for (const SystemSample* s : {&a, &b})
    for (const CoreSample& c : s->cores) {
      std::optional<double> max = c.cpuinfo_max_khz ? c.cpuinfo_max_khz : c.scaling_max_khz;
      if (!c.cur_khz || !max || *max <= 0) continue;
      r = (r && *r) || *c.cur_khz < 0.95 * *max;
    }
  return r;
}

long PeakRssKb() {
  rusage ru;
  if (getrusage(RUSAGE_SELF, &ru) != 0) return -1;
  return ru.ru_maxrss;  // kilobytes on Linux
}

// ---- device -----------------------------------------------------------------------------------

namespace {

// Arm Ltd (implementer 0x41) cores, from the kernel's arch/arm64/include/asm/cputype.h.
const struct {
  int part;
  const char* name;
} kArmParts[] = {
    {0xb02, "ARM11-MPCore"}, {0xb76, "ARM1176"},       {0xc05, "Cortex-A5"},   {0xc07, "Cortex-A7"},
    {0xc08, "Cortex-A8"},    {0xc09, "Cortex-A9"},     {0xc0d, "Cortex-A12"},  {0xc0f, "Cortex-A15"},
    {0xc0e, "Cortex-A17"},   {0xd01, "Cortex-A32"},    {0xd02, "Cortex-A34"},  {0xd03, "Cortex-A53"},
    {0xd04, "Cortex-A35"},   {0xd05, "Cortex-A55"},    {0xd06, "Cortex-A65"},  {0xd07, "Cortex-A57"},
    {0xd08, "Cortex-A72"},   {0xd09, "Cortex-A73"},    {0xd0a, "Cortex-A75"},  {0xd0b, "Cortex-A76"},
    {0xd0c, "Neoverse-N1"},  {0xd0d, "Cortex-A77"},    {0xd0e, "Cortex-A76AE"}, {0xd40, "Neoverse-V1"},
    {0xd41, "Cortex-A78"},   {0xd42, "Cortex-A78AE"},  {0xd44, "Cortex-X1"},   {0xd46, "Cortex-A510"},
    {0xd47, "Cortex-A710"},  {0xd48, "Cortex-X2"},     {0xd49, "Neoverse-N2"}, {0xd4a, "Neoverse-E1"},
    {0xd4b, "Cortex-A78C"},  {0xd4d, "Cortex-A715"},   {0xd4e, "Cortex-X3"},   {0xd4f, "Neoverse-V2"},
    {0xd80, "Cortex-A520"},  {0xd81, "Cortex-A720"},   {0xd82, "Cortex-X4"},
};

struct CpuInfo {
  std::optional<std::string> model, hardware;
};

// "model name" (x86, 32-bit Arm); else the Arm core names with counts ("Cortex-A72 x2 +
// Cortex-A53 x4"); else the "Hardware" line.
CpuInfo ReadCpuInfo() {
  CpuInfo ci;
  std::ifstream f("/proc/cpuinfo");
  std::string line, implementer;
  std::vector<std::pair<std::string, int>> parts;  // name, count; in order of appearance
  while (std::getline(f, line)) {
    size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string key = Trim(line.substr(0, colon)), val = Trim(line.substr(colon + 1));
    if (key == "model name" && !ci.model && !val.empty()) ci.model = val;
    else if (key == "Hardware" && !val.empty()) ci.hardware = val;
    else if (key == "CPU implementer") implementer = val;
    else if (key == "CPU part") {
      int part = static_cast<int>(std::strtol(val.c_str(), nullptr, 0));
      std::string name = "implementer " + implementer + " part " + val;
      for (const auto& p : kArmParts)
        if (implementer == "0x41" && p.part == part) name = p.name;
      auto p = std::find_if(parts.begin(), parts.end(), [&](auto& x) { return x.first == name; });
      if (p == parts.end()) parts.emplace_back(name, 1);
      else ++p->second;
    }
  }
  if (!ci.model && !parts.empty()) {
    std::string m;
    for (auto& p : parts) m += (m.empty() ? "" : " + ") + p.first + " x" + std::to_string(p.second);
    ci.model = m;
  }
  if (!ci.model) ci.model = ci.hardware;
  return ci;
}

std::optional<double> MemTotalKb() {
  std::ifstream f("/proc/meminfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("MemTotal:", 0) == 0) return std::strtod(line.c_str() + 9, nullptr);
  return std::nullopt;
}

}  // namespace

std::string DeviceJson() {
  std::string un = "null";
  utsname u;
  if (uname(&u) == 0)
    un = "{\"sysname\": " + JsonStr(u.sysname) + ", \"release\": " + JsonStr(u.release) +
         ", \"machine\": " + JsonStr(u.machine) + "}";
  CpuInfo ci = ReadCpuInfo();
  auto board = ReadText("/proc/device-tree/model");
  if (!board) board = ReadText("/sys/firmware/devicetree/base/model");
  long online = sysconf(_SC_NPROCESSORS_ONLN);
  std::optional<std::string> glibc;
#if defined(__GLIBC__)
  glibc = gnu_get_libc_version();
#endif
  return "{\"uname\": " + un + ", \"cpu_model\": " + JsonOptStr(ci.model) + ", \"hardware\": " +
         JsonOptStr(ci.hardware) + ", \"board\": " + JsonOptStr(board) + ", \"online_cpus\": " +
         (online > 0 ? std::to_string(online) : "null") + ", \"mem_total_kb\": " + JsonOpt(MemTotalKb()) +
         ", \"glibc\": " + JsonOptStr(glibc) + "}";
}

std::string TasksJson() {
  std::vector<std::string> tids = DirEntries("/proc/self/task");
  std::sort(tids.begin(), tids.end(), NaturalLess);
  std::string r = "[";
  for (size_t i = 0; i < tids.size(); ++i) {
    const std::string dir = "/proc/self/task/" + tids[i] + "/";
    // Field 39 of stat is the CPU the thread last ran on; count fields after the ")" that ends
    // field 2 (comm may contain spaces), where field 3 comes first.
    std::optional<double> last;
    if (auto st = ReadText(dir + "stat")) {
      size_t p = st->rfind(')');
      if (p != std::string::npos) {
        std::istringstream ss(st->substr(p + 1));
        std::string tok;
        for (int field = 3; ss >> tok; ++field)
          if (field == 39) {
            last = std::strtod(tok.c_str(), nullptr);
            break;
          }
      }
    }
    r += (i ? ", " : "") + std::string("{\"tid\": ") + tids[i] + ", \"comm\": " +
         JsonOptStr(ReadText(dir + "comm")) + ", \"allowed\": " +
         JsonList(Affinity(std::atoi(tids[i].c_str()))) + ", \"last_cpu\": " + JsonOpt(last) + "}";
  }
  return r + "]";
}

}  // namespace edgecls
