// harness.h: run a scenario in a fresh master process.
//
// The master is per process, so every scenario runs in its own fork of the
// test binary, which becomes master on its first detux call and exits when
// the scenario ends (taking all its spaces with it).  The scenario writes
// what it observed into `out`; CHECK failures end it with a message.  Tests
// that run spaces compare `out` across two runs: determinism is the product.
#pragma once

#include <detux/detux.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <dirent.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

namespace detux::test {

struct Run {
  int status = -1;  // wait status of the master process
  std::string out;  // what the scenario reported
  bool ok() const { return WIFEXITED(status) && WEXITSTATUS(status) == 0; }
};

// The scenario's report; also where CHECK writes its failure.
inline std::string* g_out = nullptr;

[[noreturn]] inline void fail_now(const char* file, int line, const std::string& what) {
  *g_out += "\nFAIL " + std::string(file) + ":" + std::to_string(line) + ": " + what + "\n";
  throw 1;  // unwinds to in_master(), which reports and exits 1
}

#define CHECK(cond)                                                          \
  do {                                                                       \
    if (!(cond)) ::detux::test::fail_now(__FILE__, __LINE__, #cond);         \
  } while (0)
#define CHECK_EQ(a, b)                                                       \
  do {                                                                       \
    auto va_ = (a);                                                          \
    auto vb_ = (b);                                                          \
    if (!(va_ == vb_))                                                       \
      ::detux::test::fail_now(__FILE__, __LINE__,                            \
                              std::string(#a " == " #b ": ") +               \
                                  std::to_string(va_) + " vs " + std::to_string(vb_)); \
  } while (0)

inline Run in_master(const std::function<void(std::string&)>& scenario, int timeout_s = 60) {
  int fds[2];
  if (pipe(fds) != 0) return {};
  std::fflush(nullptr);
  pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    alarm(timeout_s);
    std::string out;
    g_out = &out;
    int code = 0;
    try {
      scenario(out);
    } catch (int) {
      code = 1;
    }
    (void)!write(fds[1], out.data(), out.size());
    _exit(code);
  }
  close(fds[1]);
  Run r;
  char buf[4096];
  ssize_t n;
  while ((n = read(fds[0], buf, sizeof buf)) > 0) r.out.append(buf, n);
  close(fds[0]);
  waitpid(pid, &r.status, 0);
  return r;
}

// Runs the scenario twice; both runs must pass and report the same thing.
inline std::string twice(const std::function<void(std::string&)>& scenario) {
  Run a = in_master(scenario), b = in_master(scenario);
  EXPECT_TRUE(a.ok()) << "status " << a.status << ": " << a.out;
  EXPECT_TRUE(b.ok()) << "status " << b.status << ": " << b.out;
  EXPECT_EQ(a.out, b.out) << "two runs differ";
  return a.out;
}

// Runs fn with fd 1 and 2 going to one memory file; returns what was written.
template <typename F>
inline std::string captured(F fn) {
  fflush(nullptr);
  int mem = memfd_create("out", 0);
  int o = dup(1), e = dup(2);
  dup2(mem, 1);
  dup2(mem, 2);
  fn();
  fflush(nullptr);
  dup2(o, 1);
  dup2(e, 2);
  close(o);
  close(e);
  std::string s;
  char buf[4096];
  ssize_t n;
  lseek(mem, 0, SEEK_SET);
  while ((n = read(mem, buf, sizeof buf)) > 0) s.append(buf, n);
  close(mem);
  return s;
}

// The runtime in spaces needs detux's malloc, which the sanitizer build
// does not export (AddressSanitizer's allocator asks Linux for memory).
#ifdef DETUX_SANITIZED
#define NEEDS_DETUX_MALLOC() GTEST_SKIP() << "the sanitizer's malloc cannot run in spaces"
#else
#define NEEDS_DETUX_MALLOC() (void)0
#endif

// A space's usual ending: stop and stay stopped until killed.
[[noreturn]] inline void ret_forever() {
  for (;;) dret();
}

// The status of child c (waits until it stops).  Master code only.
inline det_status status_of(det_child_t c) {
  det_status st{};
  long r = dget(c, DET_STATUS, &st, sizeof st, nullptr);
  CHECK_EQ(r, 0L);
  return st;
}

// Kills child c and its subtree (Put DET_KILL).  Master code only.
inline void kill_child(det_child_t c) { CHECK_EQ(dput(c, DET_KILL, nullptr, 0, nullptr), 0L); }

// SIGKILL is pending for pid (or pid is gone): it can never run user code
// again.  This covers a task held in its PTRACE_EVENT_EXIT stop.
inline bool kill_pending(long pid) {
  char path[64], line[256];
  std::snprintf(path, sizeof path, "/proc/%ld/status", pid);
  FILE* f = std::fopen(path, "re");
  if (!f) return true;
  bool killed = false;
  while (std::fgets(line, sizeof line, f)) {
    unsigned long long mask;
    if ((std::sscanf(line, "SigPnd: %llx", &mask) == 1 ||
         std::sscanf(line, "ShdPnd: %llx", &mask) == 1) &&
        (mask & (1ULL << (SIGKILL - 1))))
      killed = true;
  }
  std::fclose(f);
  return killed;
}

// The processes whose parent is `parent` (from /proc/*/stat); every space is
// a direct Linux child of its master.  `keep`, if given, filters by pid and
// state letter.
inline std::vector<pid_t> children_of(pid_t parent, bool (*keep)(pid_t, char) = nullptr) {
  std::vector<pid_t> out;
  DIR* d = opendir("/proc");
  if (!d) return out;
  while (dirent* e = readdir(d)) {
    char* end;
    long pid = std::strtol(e->d_name, &end, 10);
    if (*end || pid <= 0) continue;
    char path[64], buf[512];
    std::snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE* f = std::fopen(path, "re");
    if (!f) continue;
    size_t n = std::fread(buf, 1, sizeof buf - 1, f);
    std::fclose(f);
    buf[n] = 0;
    char* rp = std::strrchr(buf, ')');
    if (!rp) continue;
    char state;
    long ppid;
    if (std::sscanf(rp + 1, " %c %ld", &state, &ppid) != 2 || ppid != parent) continue;
    if (keep && !keep(static_cast<pid_t>(pid), state)) continue;
    out.push_back(static_cast<pid_t>(pid));
  }
  closedir(d);
  return out;
}

inline std::string status_str(const det_status& st) {
  char b[160];
  std::snprintf(b, sizeof b, "state=%d exit=%d fault=%d sig=%d sys=%lld conflict=%d", st.state,
                st.exit_code, st.fault, st.signal, static_cast<long long>(st.syscall),
                st.conflict);
  return b;
}

}  // namespace detux::test
