// detux: the command-line tool.
//
//   detux run [--trace] [--fs IMAGE] [--image NAME=PATH]... PROGRAM ARGS...
//   detux fs mkfs|ls|cat|put|get|mkdir|rm|fsck|mount IMAGE ...   (fs_cmd.cc)
//
// starts PROGRAM as a master in a fixed environment, so that a deterministic
// program prints the same bytes on every run: address-space randomisation
// off (personality ADDR_NO_RANDOMIZE), the 16 AT_RANDOM bytes (stack canary,
// pointer guard) fixed, a minimal fixed environment, every symbol bound
// at start (LD_BIND_NOW, so lazy binding never writes memory that a merge
// would see), and glibc's restartable sequences off (GLIBC_TUNABLES), so
// Linux never writes the number of the CPU it runs on into the master's
// thread data: that page is shared with the newest space, and each write
// after a fork was a copy-on-write fault.  The tool traces PROGRAM only
// until its first instruction, to write AT_RANDOM, then detaches: PROGRAM
// itself becomes the master of its spaces.  --trace makes the supervisor log
// every call and stop to stderr.
// Where this machine cannot trap rdtsc or cpuid (confine/cpuid.h), the tool
// says so on stderr before it starts PROGRAM: spaces that execute them read
// the host, and their output is then only as deterministic as their code.
#include <CLI/CLI.hpp>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <filesystem>
#include <vector>

#include "confine/cpuid.h"
#include "fs_cmd.h"
#include "util/fixed.h"

namespace {

using detux::kFixedRandom;

std::vector<std::string> fixed_env(bool trace, const std::vector<std::string>& extra) {
  std::vector<std::string> env = {"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/", "LANG=C",
                                  "LC_ALL=C", "TZ=UTC", "LD_BIND_NOW=1",
                                  "GLIBC_TUNABLES=glibc.pthread.rseq=0"};
  if (trace) env.push_back("DETUX_TRACE=1");
  // Sanitizer settings pass through so that instrumented builds can be run.
  for (const char* keep : {"ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS"})
    if (const char* v = getenv(keep)) env.push_back(std::string(keep) + "=" + v);
  for (const auto& e : extra) env.push_back(e);
  return env;
}

// Finds AT_RANDOM in /proc/PID/auxv and writes the fixed bytes there.
bool fix_at_random(pid_t pid) {
  std::string path = "/proc/" + std::to_string(pid) + "/auxv";
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  Elf64_auxv_t aux[128];
  ssize_t n = read(fd, aux, sizeof aux);
  close(fd);
  for (ssize_t i = 0; n > 0 && i < n / static_cast<ssize_t>(sizeof aux[0]); ++i) {
    if (aux[i].a_type != AT_RANDOM) continue;
    iovec local{const_cast<unsigned char*>(kFixedRandom), sizeof kFixedRandom};
    iovec remote{reinterpret_cast<void*>(aux[i].a_un.a_val), sizeof kFixedRandom};
    return process_vm_writev(pid, &local, 1, &remote, 1, 0) == sizeof kFixedRandom;
  }
  return false;
}

void warn_of_holes() {
  const bool tsc = detux::confine::tsc_faulting_honoured();
  const bool cpuid = detux::confine::cpuid_faulting_supported();
  if (tsc && cpuid) return;
  std::string what = !tsc && !cpuid ? "rdtsc, rdtscp or cpuid" : !tsc ? "rdtsc or rdtscp" : "cpuid";
  std::fprintf(stderr,
               "detux: warning: this machine cannot trap %s; spaces that execute them read the "
               "host (see the README's confinement holes)\n",
               what.c_str());
}

// The signals that ask a job to stop go on to PROGRAM, whose own handling
// (det_allow_signals, its atexit save of the file system) then decides.
// TERM and HUP, when a process sent them (kill): the kernel's own (a hang-up)
// and a terminal's INT and QUIT reach the whole process group, PROGRAM
// included, and must not arrive twice, so those are never forwarded; nor may
// they end the tool, whose death would kill PROGRAM (PDEATHSIG) before it
// had handled them: the tool ignores them and waits.
pid_t g_program = 0;
void forward_signals_to(pid_t pid) {
  g_program = pid;
  struct sigaction sa {};
  sa.sa_sigaction = [](int sig, siginfo_t* si, void*) {
    if (si->si_code == SI_USER || si->si_code == SI_QUEUE) kill(g_program, sig);
  };
  sa.sa_flags = SA_RESTART | SA_SIGINFO;
  for (int sig : {SIGHUP, SIGTERM}) sigaction(sig, &sa, nullptr);
  signal(SIGINT, SIG_IGN);
  signal(SIGQUIT, SIG_IGN);
}

int run(const std::vector<std::string>& cmd, bool trace, const std::vector<std::string>& extra) {
  warn_of_holes();
  std::vector<std::string> env = fixed_env(trace, extra);
  std::vector<char*> argv, envp;
  for (const auto& a : cmd) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  for (const auto& e : env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  std::fflush(nullptr);
  const pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) {
    std::perror("detux: fork");
    return 125;
  }
  if (pid == 0) {
    // Dies with the tool: a killed `detux run` leaves no master behind.
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent ||
        personality(ADDR_NO_RANDOMIZE) < 0 || ptrace(PTRACE_TRACEME, 0, nullptr, nullptr) != 0) {
      std::perror("detux: setting up the program");
      _exit(125);
    }
    execvpe(argv[0], argv.data(), envp.data());
    std::fprintf(stderr, "detux: cannot run %s: %s\n", argv[0], std::strerror(errno));
    _exit(127);
  }
  int st;
  if (waitpid(pid, &st, 0) < 0) return 125;
  if (WIFSTOPPED(st)) {  // stopped at exec, before its first instruction
    if (!fix_at_random(pid)) {
      std::fprintf(stderr, "detux: cannot fix AT_RANDOM of %s\n", argv[0]);
      kill(pid, SIGKILL);
    }
    forward_signals_to(pid);
    ptrace(PTRACE_DETACH, pid, nullptr, nullptr);
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
  }
  if (WIFEXITED(st)) return WEXITSTATUS(st);
  if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
  return 125;
}

// Where PROGRAM stands in `detux run [OPTIONS] [--] PROGRAM ARGS...`: the
// first argument that is neither an option of run nor an option's value.
int program_index(int argc, char** argv) {
  auto takes_value = [](const char* a) {
    return !std::strcmp(a, "--fs") || !std::strcmp(a, "--env") || !std::strcmp(a, "--image");
  };
  int i = 2;
  while (i < argc && argv[i][0] == '-') {
    if (!std::strcmp(argv[i], "--")) return i + 1 < argc ? i + 1 : argc;  // CLI11 never sees "--"
    i += takes_value(argv[i]) ? 2 : 1;
  }
  return std::min(i, argc);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"detux: deterministic spaces on Linux"};
  app.require_subcommand(1);
  auto* run_cmd = app.add_subcommand("run", "run PROGRAM as master in a fixed environment");
  bool trace = false;
  std::vector<std::string> cmd, extra;
  std::string fs_image;
  run_cmd->add_flag("--trace", trace, "log every call and stop of every space to stderr");
  run_cmd->add_option("--fs", fs_image,
                      "the spaces' file system: load IMAGE at start (if it exists), save it at exit");
  run_cmd->add_option("--env", extra, "add VAR=VALUE to the fixed environment")
      ->allow_extra_args(false);
  std::vector<std::string> images;
  run_cmd->add_option("--image", images, "let spaces exec the program at PATH by NAME (NAME=PATH)")
      ->allow_extra_args(false);
  run_cmd->footer("PROGRAM ARGS... follow the options (or a \"--\").");
  auto* fs_cmd = add_fs_command(app);
  // CLI11 sees only what comes before PROGRAM: given the rest, it took
  // PROGRAM as one more --env value, and PROGRAM's own options as detux's.
  const int program_at = argc > 1 && std::strcmp(argv[1], "run") == 0 ? program_index(argc, argv) : argc;
  CLI11_PARSE(app, program_at, argv);
  if (fs_cmd->parsed()) return run_fs_command();
  if (run_cmd->parsed()) {
    if (program_at >= argc) {
      std::fprintf(stderr, "detux run: PROGRAM is required\nRun with --help for more information.\n");
      return 2;
    }
    cmd.assign(argv + program_at, argv + argc);
    std::string list;
    for (const auto& im : images) {
      size_t eq = im.find('=');
      if (eq == std::string::npos || eq == 0 || im.find(':') != std::string::npos) {
        std::fprintf(stderr, "detux: --image wants NAME=PATH (no ':'), not %s\n", im.c_str());
        return 2;
      }
      std::error_code ec;
      auto abs = std::filesystem::absolute(im.substr(eq + 1), ec);
      list += (list.empty() ? "" : ":") + im.substr(0, eq + 1) + (ec ? im.substr(eq + 1) : abs.string());
    }
    if (!list.empty()) extra.push_back("DETUX_IMAGES=" + list);
    if (!fs_image.empty()) {
      std::error_code ec;
      auto abs = std::filesystem::absolute(fs_image, ec);
      extra.push_back("DETUX_FS_IMAGE=" + (ec ? fs_image : abs.string()));
    }
    return run(cmd, trace, extra);
  }
  return 0;
}
