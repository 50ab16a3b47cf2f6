// See free_cores.h for why the launcher follows the cores other processes leave free.
#include "free_cores.h"

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <sstream>

namespace edgecls {
namespace {

constexpr auto kSampleEvery = std::chrono::milliseconds(100);  // /proc/stat counts in 10 ms ticks

// The whole of /proc/stat (a few KB; one read of a procfs file is atomic up to its buffer).
std::string ReadProcStat() {
  int fd = open("/proc/stat", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return {};
  std::string out;
  char buf[16384];
  for (ssize_t n; (n = read(fd, buf, sizeof buf)) > 0;) out.append(buf, static_cast<size_t>(n));
  close(fd);
  return out;
}

}  // namespace

FreeCoreMonitor::FreeCoreMonitor(std::vector<int> cpus, int threads)
    : cpus_(std::move(cpus)),
      threads_(threads),
      active_(threads),
      count_nice_as_free_(getpriority(PRIO_PROCESS, 0) <= 0),
      loops_by_threads_(threads + 1, 0) {
  const char* v = std::getenv("EDGECLS_RUNNER_FOLLOW_FREE");  // "0": always the requested count
  enabled_ = threads_ > 1 && !cpus_.empty() && !(v && std::string(v) == "0");
  if (enabled_) enabled_ = Take(&last_);
}

bool FreeCoreMonitor::Take(Sample* s) const {
  std::string stat = ReadProcStat();
  static const double tick = 1.0 / static_cast<double>(sysconf(_SC_CLK_TCK));
  double idle = 0;
  size_t found = 0;
  std::istringstream in(stat);
  for (std::string line; std::getline(in, line);) {
    // "cpuN user nice system idle iowait irq softirq steal ...": idle and iowait are free time,
    // and so is the time of niced processes when we are not niced (they give way to us).
    if (line.compare(0, 3, "cpu") != 0 || line.size() < 4 || line[3] < '0' || line[3] > '9') continue;
    int id = std::atoi(line.c_str() + 3);
    if (std::find(cpus_.begin(), cpus_.end(), id) == cpus_.end()) continue;
    unsigned long long f[5] = {0, 0, 0, 0, 0};
    if (std::sscanf(line.c_str() + 3, "%*d %llu %llu %llu %llu %llu", &f[0], &f[1], &f[2], &f[3], &f[4]) != 5)
      return false;
    idle += static_cast<double>(f[3] + f[4] + (count_nice_as_free_ ? f[1] : 0)) * tick;
    ++found;
  }
  if (found != cpus_.size()) return false;
  timespec ts{};
  if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts) != 0) return false;
  s->at = std::chrono::steady_clock::now();
  s->idle_s = idle;
  s->own_s = static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
  return true;
}

// Other processes' load = allowed CPU time - idle - ours, per second of the window; the threads
// are the requested count less the busy cores beyond those the request leaves unused anyway.
void FreeCoreMonitor::Update(const Sample& now) {
  double wall = std::chrono::duration<double>(now.at - last_.at).count();
  double cores = static_cast<double>(cpus_.size());
  double other = (cores * wall - (now.idle_s - last_.idle_s) - (now.own_s - last_.own_s)) / wall;
  other = std::clamp(other, 0.0, cores);
  other_busy_ = 0.5 * other_busy_ + 0.5 * other;
  double unused = std::max(0.0, cores - threads_);
  int taken = static_cast<int>(std::lround(std::max(0.0, other_busy_ - unused)));
  active_ = std::clamp(threads_ - taken, 1, threads_);
  last_ = now;
}

int FreeCoreMonitor::ThreadsNow() {
  if (enabled_ && std::chrono::steady_clock::now() - last_.at >= kSampleEvery) {
    Sample now;
    if (Take(&now)) Update(now);
  }
  ++loops_by_threads_[active_];
  return active_;
}

std::string FreeCoreMonitor::StatsJson() const {
  std::ostringstream js;
  js << "{\"follow_free_cores\": " << (enabled_ ? "true" : "false") << ", \"other_busy_cores\": ";
  if (enabled_) {
    js << std::round(other_busy_ * 100) / 100;
  } else {
    js << "null";
  }
  js << ", \"loops_by_threads\": {";
  bool first = true;
  for (size_t n = 1; n < loops_by_threads_.size(); ++n) {
    if (!loops_by_threads_[n]) continue;
    js << (first ? "" : ", ") << "\"" << n << "\": " << loops_by_threads_[n];
    first = false;
  }
  js << "}}";
  return js.str();
}

}  // namespace edgecls
