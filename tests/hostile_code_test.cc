// hostile_code_test.cc: a space that scribbles outside what is merged,
// rewrites the code the supervisor injects calls through, or is sent signals
// from outside.  The rules are in hostile.h.
#include "hostile.h"

using namespace detux::hostile;

namespace {

// ---- 10. Scribbling outside the merged range ---------------------------------------

alignas(4096) volatile uint8_t g_big[1 << 20];
volatile uint8_t* g_frame;    // a buffer in the master's stack frame
volatile uint8_t* g_deep_lo;  // [lo, hi): stack pages far below the master's rsp
volatile uint8_t* g_deep_hi;
constexpr size_t kFrame = 8192;

__attribute__((noinline)) void grow_stack() {
  volatile uint8_t buf[1536 * 1024];
  for (size_t i = 0; i < sizeof buf; i += kPage) buf[i] = 0;
}

uint8_t big_pattern(size_t i) { return static_cast<uint8_t>(i * 13 + 5); }

TEST(Scribble, WritesOutsideTheMergedRangeNeverReachTheMaster) {
  std::string out = twice([](std::string& out) {
    volatile uint8_t frame[kFrame];
    for (size_t i = 0; i < kFrame; ++i) frame[i] = 0x22;
    g_frame = frame;
    grow_stack();  // the deep pages are mapped in the master, hence in the child
    uint64_t rsp;
    asm volatile("mov %%rsp, %0" : "=r"(rsp));
    g_deep_lo = reinterpret_cast<volatile uint8_t*>((rsp - (1 << 20)) & ~(kPage - 1));
    g_deep_hi = reinterpret_cast<volatile uint8_t*>((rsp - (512 << 10)) & ~(kPage - 1));
    for (volatile uint8_t* p = g_deep_lo; p < g_deep_hi; ++p) *p = 0x5a;
    for (size_t i = 0; i < sizeof g_big; ++i) g_big[i] = big_pattern(i);
    if (dfork(0) == 0) {
      for (size_t i = 0; i < sizeof g_big; ++i) g_big[i] = 0xee;
      for (size_t i = 0; i < kFrame; ++i) g_frame[i] = 0xee;
      for (volatile uint8_t* p = g_deep_lo; p < g_deep_hi; ++p) *p = 0xee;
      uint64_t my_rsp;
      asm volatile("mov %%rsp, %0" : "=r"(my_rsp));
      // Also far below its own stack pointer, inside the mapped stack.
      for (uint64_t a = (my_rsp - (256 << 10)) & ~(kPage - 1);
           a > reinterpret_cast<uint64_t>(g_deep_hi); a -= kPage)
        *reinterpret_cast<volatile uint8_t*>(a) = 0xee;
      ret_forever();
    }
    CHECK_EQ(status_of(0).state, DET_S_STOPPED);
    void* at = const_cast<uint8_t*>(&g_big[5000]);
    CHECK_EQ(dget(0, DET_MERGE, at, 100, at), 0L);
    size_t wrong_big = 0, wrong_frame = 0, wrong_deep = 0;
    for (size_t i = 0; i < sizeof g_big; ++i) {
      uint8_t want = (i >= 5000 && i < 5100) ? 0xee : big_pattern(i);
      if (g_big[i] != want) ++wrong_big;
    }
    for (size_t i = 0; i < kFrame; ++i)
      if (frame[i] != 0x22) ++wrong_frame;
    for (volatile uint8_t* p = g_deep_lo; p < g_deep_hi; ++p)
      if (*p != 0x5a) ++wrong_deep;
    out += "big " + std::to_string(wrong_big) + " frame " + std::to_string(wrong_frame) + " deep " +
           std::to_string(wrong_deep);
    kill_child(0);
    master_still_works(out);
  });
  note(out);
  EXPECT_EQ(out, "big 0 frame 0 deep 0 master-ok");
}

// ---- 11. Rewriting code: the injection gadget --------------------------------------

// The supervisor makes a stopped space run system calls through a
// `syscall; int3` gadget in libdetux (src/ptrace/gadget.S), followed 16 bytes
// later by the space's call stub detux_trap.  Both are hidden symbols: find
// them in libdetux's code by their bytes.
uint8_t* g_gadget;

int find_gadget_cb(dl_phdr_info* info, size_t, void* data) {
  auto* found = static_cast<std::vector<uint8_t*>*>(data);
  const uint64_t dput_at = reinterpret_cast<uint64_t>(&dput);
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[i];
    if (ph.p_type != PT_LOAD || !(ph.p_flags & PF_X)) continue;
    uint64_t lo = info->dlpi_addr + ph.p_vaddr, hi = lo + ph.p_memsz;
    if (dput_at < lo || dput_at >= hi) continue;
    static const uint8_t trap[] = {0x49, 0x89, 0xca, 0x6a, 0x00, 0xb8, 0xe7,
                                   0x0d, 0x00, 0x00, 0x0f, 0x05, 0x59};
    for (uint64_t a = (lo + 15) & ~15ULL; a + 16 + sizeof trap <= hi; a += 16) {
      auto* p = reinterpret_cast<uint8_t*>(a);
      if (p[0] == 0x0f && p[1] == 0x05 && p[2] == 0xcc &&
          std::memcmp(p + 16, trap, sizeof trap) == 0)
        found->push_back(p);
    }
  }
  return 0;
}

void locate_gadget() {
  std::vector<uint8_t*> found;
  dl_iterate_phdr(find_gadget_cb, &found);
  CHECK_EQ(found.size(), size_t{1});
  g_gadget = found[0];
}

constexpr uint64_t kLowData = 0x30000000;  // addresses that fit in ebx/ecx
constexpr uint64_t kLowCode = 0x30001000;
constexpr uint64_t kUnmapped = 0x31000000;
constexpr unsigned long kRW = DET_PROT_READ | DET_PROT_WRITE;
constexpr unsigned long kRWX = DET_PROT_READ | DET_PROT_WRITE | DET_PROT_EXEC;

// In a space: make the gadget's page writable (this runs an mprotect through
// the gadget while it is still intact).
long unlock_gadget() {
  void* page = reinterpret_cast<void*>(reinterpret_cast<uint64_t>(g_gadget) & ~(kPage - 1));
  return dget(0, DET_PERM | kRWX, page, kPage, nullptr);
}

void copy_str(char* to, const char* from) {
  for (int k = 0; k < 127 && (to[k] = from[k]); ++k) {
  }
}

volatile long g_res[4];

// Common epilogue: the space's attack is over; nothing on the host changed
// and the master goes on.
void after_attack(std::string& out, int child) {
  det_status st{};
  CHECK_EQ(dget(child, DET_STATUS, &st, sizeof st, nullptr), 0L);
  long res[4] = {};
  if (st.state == DET_S_STOPPED || st.state == DET_S_FAULTED)
    dget(child, DET_COPY, res, sizeof res, const_cast<long*>(g_res));
  out += status_str(st) + " res " + std::to_string(res[0]) + " " + std::to_string(res[1]) + " " +
         std::to_string(res[2]) + "; ";
  kill_child(child);
  check_host_unchanged();
  check_no_signal();
  master_still_works(out);
}

// Machine code written byte by byte into a space's executable page.
struct Code {
  uint8_t* at;
  size_t n = 0;
  void emit(std::initializer_list<uint8_t> b) {
    for (uint8_t x : b) at[n++] = x;
  }
  void emit64(uint64_t v) {
    for (int k = 0; k < 8; ++k) at[n++] = static_cast<uint8_t>(v >> (8 * k));
  }
};

// The gadget's `syscall` made `int $0x80`.
void plant_int80() {
  volatile uint8_t* g = g_gadget;
  g[0] = 0xcd;
  g[1] = 0x80;
}

// A space (child 0) runs `attack` against the gadget and stops; the master
// then checks that no host file changed, no signal arrived, and it goes on.
void gadget_attack(void (*attack)()) {
  auto r = in_master(
      [attack](std::string& out) {
        watch_signals();
        HostFiles files;
        locate_gadget();
        if (dfork(0) == 0) {
          attack();
          ret_forever();
        }
        after_attack(out, 0);
      },
      20);
  note(r.out);
  EXPECT_TRUE(r.ok()) << "status " << r.status << ": " << r.out;
}

TEST(GadgetAbuse, ShellcodeInAFreshExecutablePageFaultsOnItsSyscall) {
  std::string out = twice([](std::string& out) {
    if (dfork(0) == 0) {
      auto* code = reinterpret_cast<uint8_t*>(kLowCode);
      g_res[0] = dget(0, DET_PERM | kRWX, code, kPage, nullptr);
      static const uint8_t getpid_ret[] = {0xb8, 39, 0, 0, 0, 0x0f, 0x05, 0xc3};
      for (size_t k = 0; k < sizeof getpid_ret; ++k) code[k] = getpid_ret[k];
      g_res[1] = reinterpret_cast<long (*)()>(code)();
      ret_forever();
    }
    det_status st = status_of(0);
    out += status_str(st);
    CHECK_EQ(st.state, DET_S_FAULTED);
    CHECK_EQ(st.fault, DET_FAULT_SYSCALL);
    CHECK_EQ(st.syscall, static_cast<int64_t>(SYS_getpid));
    kill_child(0);
    master_still_works(out);
  });
  note(out);
  EXPECT_NE(out.find("master-ok"), std::string::npos) << out;
}

TEST(GadgetAbuse, ShellcodePlantedAtTheGadgetCannotMakeTheSupervisorRunACall) {
  // The gadget jumps to code that creates the marker with its own syscall,
  // then traps; the supervisor runs an mprotect through the gadget for the
  // space's next Perm call.
  gadget_attack([] {
    g_res[0] = dget(0, DET_PERM | kRWX, reinterpret_cast<void*>(kLowCode), kPage, nullptr);
    g_res[1] = unlock_gadget();
    // Shellcode: open(marker, O_CREAT|O_WRONLY, 0644); int3.
    Code c{reinterpret_cast<uint8_t*>(kLowCode)};
    c.emit({0x48, 0xbf});  // movabs rdi, marker
    c.emit64(reinterpret_cast<uint64_t>(g_marker));
    c.emit({0xb8, 2, 0, 0, 0});        // mov eax, SYS_open
    c.emit({0xbe, 0x41, 0, 0, 0});     // mov esi, O_CREAT|O_WRONLY
    c.emit({0xba, 0xa4, 0x01, 0, 0});  // mov edx, 0644
    c.emit({0x0f, 0x05});              // syscall
    c.emit({0xcc});                    // int3
    // The gadget: movabs rax, kLowCode; jmp rax.
    Code jmp{g_gadget};
    jmp.emit({0x48, 0xb8});
    jmp.emit64(kLowCode);
    jmp.emit({0xff, 0xe0});
    g_res[2] = dget(0, DET_PERM | kRW, reinterpret_cast<void*>(kLowCode), kPage, nullptr);
  });
}

TEST(GadgetAbuse, Int80PlantedAtTheGadgetCannotUnlinkAHostFile) {
  gadget_attack([] {
    char* low = reinterpret_cast<char*>(kLowData);
    g_res[0] = dget(0, DET_PERM | kRW, low, kPage, nullptr);
    copy_str(low, g_victim);
    g_res[1] = unlock_gadget();
    plant_int80();
    // Any Perm makes the supervisor inject mprotect (10) at the gadget.
    g_res[2] = raw_detux(detux::abi::kOpGet, 0, DET_PERM | kRW, static_cast<long>(kLowData),
                         kPage, 0, static_cast<long>(kLowData));
  });
}

TEST(GadgetAbuse, Int80PlantedAtTheGadgetCannotCreateTheMarker) {
  gadget_attack([] {
    char* low = reinterpret_cast<char*>(kLowData);
    Code c{reinterpret_cast<uint8_t*>(kLowCode)};
    g_res[0] = dget(0, DET_PERM | kRW, low, kPage, nullptr);
    g_res[0] = g_res[0] + dget(0, DET_PERM | kRWX, c.at, kPage, nullptr);
    copy_str(low, g_victim);
    g_res[1] = unlock_gadget();
    // A detux Get/Perm on an unmapped page (the supervisor injects mmap),
    // with rbx = victim; the marker's path follows the syscall, so the
    // return address in rcx points at it.
    c.emit({0x48, 0xbb});  // movabs rbx, low (victim path)
    c.emit64(kLowData);
    c.emit({0xb8, 0xe7, 0x0d, 0, 0});  // mov eax, 0xde7
    c.emit({0xbf, 2, 0, 0, 0});        // mov edi, 2 (get)
    c.emit({0x31, 0xf6});              // xor esi, esi
    const uint32_t flags = DET_PERM | kRW;
    c.emit({0xba, static_cast<uint8_t>(flags), static_cast<uint8_t>(flags >> 8), 0, 0});
    c.emit({0x49, 0xba});  // movabs r10, kUnmapped
    c.emit64(kUnmapped);
    c.emit({0x41, 0xb8, 0x00, 0x10, 0, 0});  // mov r8d, 4096
    c.emit({0x45, 0x31, 0xc9});              // xor r9d, r9d
    c.emit({0x0f, 0x05});                    // syscall; rcx = the next byte
    copy_str(reinterpret_cast<char*>(c.at + c.n), g_marker);
    plant_int80();
    reinterpret_cast<void (*)()>(c.at)();  // ends executing the path: SIGILL
  });
}

TEST(GadgetAbuse, GadgetThatNeverTrapsBackDoesNotHangTheMaster) {
  auto r = in_master(
      [](std::string& out) {
        watch_signals();
        HostFiles files;
        locate_gadget();
        CHECK_EQ(det_set_wait_timeout(2000), 0);
        if (dfork(0) == 0) {
          g_res[1] = unlock_gadget();
          volatile uint8_t* g = g_gadget;
          g[2] = 0xeb;
          g[3] = 0xfe;  // int3 -> jmp .
          g_res[2] = dget(0, DET_PERM | kRW, reinterpret_cast<void*>(kLowData), kPage, nullptr);
          ret_forever();
        }
        det_status st{};
        long w = dget(0, DET_STATUS, &st, sizeof st, nullptr);
        out += "wait " + std::to_string(w) + " ";
        CHECK(w == 0 || w == -ETIMEDOUT);
        kill_child(0);
        check_host_unchanged();
        master_still_works(out);
      },
      6);
  EXPECT_TRUE(r.ok()) << "status " << r.status << ": " << r.out;
}

TEST(GadgetAbuse, SpaceThatExitsInsideTheGadgetIsReportedNotLost) {
  auto r = in_master(
      [](std::string& out) {
        locate_gadget();
        HostFiles files;
        CHECK_EQ(det_set_wait_timeout(3000), 0);
        if (dfork(0) == 0) {
          g_res[1] = unlock_gadget();
          volatile uint8_t* g = g_gadget;
          // after the syscall: mov eax, 231; syscall (exit_group, allowed)
          const uint8_t code[] = {0xb8, 231, 0, 0, 0, 0x0f, 0x05};
          for (size_t k = 0; k < sizeof code; ++k) g[2 + k] = code[k];
          g_res[2] = dget(0, DET_PERM | kRW, reinterpret_cast<void*>(kLowData), kPage, nullptr);
          ret_forever();
        }
        det_status st{};
        long w = dget(0, DET_STATUS, &st, sizeof st, nullptr);
        out += "wait " + std::to_string(w) + " " + status_str(st);
        CHECK_EQ(w, 0L);
        // Either the planted exit ran and was reported, or (what detux does)
        // the supervisor saw the altered gadget and refused to inject: the
        // Perm call returned -EPERM and the space stopped normally.
        long child_res = 0;
        if (st.state == DET_S_STOPPED)
          CHECK_EQ(dget(0, DET_COPY, &child_res, sizeof child_res, const_cast<long*>(&g_res[2])), 0L);
        CHECK(st.state == DET_S_EXITED || st.state == DET_S_FAULTED ||
              (st.state == DET_S_STOPPED && child_res == -EPERM));
        kill_child(0);
        check_host_unchanged();
        master_still_works(out);
      },
      15);
  EXPECT_TRUE(r.ok()) << "status " << r.status << ": " << r.out;
}

TEST(GadgetAbuse, ForkThroughABrokenGadgetLeavesNoUncountedProcess) {
  std::string out = twice([](std::string& out) {
    det_limits l{};
    l.max_spaces = 10;
    CHECK_EQ(det_set_limits(&l), 0);
    locate_gadget();
    if (dfork(0) == 0) {
      g_res[1] = unlock_gadget();
      volatile uint8_t* g = g_gadget;
      g[2] = 0x0f;  // int3 -> ud2
      g[3] = 0x0b;
      long failed = 0, last = 0;
      for (int k = 0; k < 40; ++k) {
        int r = dfork(k);
        if (r == 0) ret_forever();
        if (r < 0) ++failed, last = r;
      }
      g_res[0] = failed;
      g_res[2] = last;
      ret_forever();
    }
    CHECK_EQ(status_of(0).state, DET_S_STOPPED);
    long res[4] = {};
    CHECK_EQ(dget(0, DET_COPY, res, sizeof res, const_cast<long*>(g_res)), 0L);
    out += "failed " + std::to_string(res[0]) + " last " + std::to_string(res[2]);
    // The space and its snapshot, and what its successful dforks made.
    size_t live = children_of(getpid(), is_live).size();
    kill_child(0);
    usleep(100 * 1000);
    size_t left = children_of(getpid(), is_live).size();
    std::string counts = "live processes under the master: " + std::to_string(live) +
                         ", after killing the space: " + std::to_string(left);
    CHECK_MSG(live <= 2 * 10, counts);
    CHECK_MSG(left == 0, counts);
    master_still_works(out);
  });
  note(out);
  EXPECT_NE(out.find("master-ok"), std::string::npos) << out;
}

// ---- 12. Signals from outside ---------------------------------------------------------

volatile sig_atomic_t g_flag;
volatile unsigned long g_iters;
volatile long g_seen;
void set_flag(int) { g_flag = 1; }

TEST(OutsideSignals, NeverRunInASpaceAndNeverStopIt) {
  std::string out = twice([](std::string& out) {
    struct sigaction sa {};
    sa.sa_handler = set_flag;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, nullptr);
    sigaction(SIGUSR2, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);
    sigaction(SIGHUP, &sa, nullptr);
    g_flag = 0;
    constexpr unsigned long kSpin = 3'000'000'000UL;  // ~0.8 s: well over the signals' 150 ms
    if (dfork(0) == 0) {
      unsigned long i = 0;
      while (i < kSpin && g_flag == 0) i = i + 1;
      g_iters = i;
      g_seen = g_flag;
      ret_forever();
    }
    det_status st{};
    CHECK_EQ(dget(0, DET_STATUS | DET_DONT_WAIT, &st, sizeof st, nullptr), 0L);
    CHECK_EQ(st.state, DET_S_RUNNING);
    pid_t master = getpid();
    std::fflush(nullptr);
    pid_t helper = fork();  // an ordinary process: the outside world
    if (helper == 0) {
      timespec t0;
      clock_gettime(CLOCK_MONOTONIC, &t0);
      for (;;) {
        timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        if ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000 > 150) break;
        for (pid_t p : children_of(master)) {
          if (p == getpid()) continue;
          for (int s : {SIGUSR1, SIGSTOP, SIGCONT, SIGUSR2, SIGTERM, SIGHUP, SIGTSTP, SIGCONT})
            kill(p, s);
        }
        usleep(2000);
      }
      _exit(0);
    }
    // Meanwhile the master waits on the child, handling its stops as they
    // come, and gives up after 200 ms: the child is still spinning.
    CHECK_EQ(det_set_wait_timeout(200), 0);
    CHECK_EQ(dget(0, DET_STATUS, &st, sizeof st, nullptr), static_cast<long>(-ETIMEDOUT));
    int hs;
    CHECK_EQ(waitpid(helper, &hs, 0), helper);
    // The signals arrived while it ran: it is still running now.
    CHECK_EQ(dget(0, DET_STATUS | DET_DONT_WAIT, &st, sizeof st, nullptr), 0L);
    CHECK_EQ(st.state, DET_S_RUNNING);
    CHECK_EQ(det_set_wait_timeout(20000), 0);
    st = status_of(0);  // the child finishes its bounded spin and stops in dret()
    out += status_str(st);
    CHECK_EQ(st.state, DET_S_STOPPED);
    long seen = -1;
    unsigned long iters = 0;
    sig_atomic_t flag = -1;
    CHECK_EQ(dget(0, DET_COPY, &seen, sizeof seen, const_cast<long*>(&g_seen)), 0L);
    CHECK_EQ(dget(0, DET_COPY, &iters, sizeof iters, const_cast<unsigned long*>(&g_iters)), 0L);
    CHECK_EQ(dget(0, DET_COPY, &flag, sizeof flag, const_cast<sig_atomic_t*>(&g_flag)), 0L);
    out += " seen " + std::to_string(seen) + " flag " + std::to_string(flag) + " iters " +
           std::to_string(iters);
    CHECK_EQ(seen, 0L);
    CHECK_EQ(static_cast<long>(flag), 0L);
    CHECK_EQ(iters, kSpin);
    kill_child(0);
    master_still_works(out);
  });
  note(out);
  EXPECT_NE(out.find("seen 0 flag 0 iters 3000000000"), std::string::npos) << out;
}

}  // namespace
