// exec.cc: execve and its family inside spaces, and the arrival of the new
// program.
//
// In a space, execve(path, argv, envp) replaces the space's program, as in
// Determinator, with a detux program image from one of two places: the
// space's own file system (a regular file at `path`: the image is its
// bytes), or else the images the master registered (det_exec_register,
// `detux run --image NAME=PATH`) under the name `path`.  There is no PATH
// search: execvp and execlp take the name as given.  The space keeps its id
// and its parent, which waits for it as before; its children are killed.
// What the new program starts with:
//   * argv and envp as given (the master drops variables that would steer
//     the dynamic loader, see ptrace/exec.cc);
//   * the console: output the old program wrote (stdio is flushed first,
//     unlike Linux, so that printf before exec is never lost) is handed to
//     the parent at the wait as usual, before the new program's; standard
//     input goes on from the byte the old program had reached;
//   * the file system, whole, with its open descriptors (directory streams
//     are closed);
//   * the memory limit; a fresh heap over the whole heap region, which is
//     this program's alone (a process's memory is never merged).
// In the master these functions are the C library's.
//
// The new program's side is a constructor of libdetux: every detux program
// runs it before its own initialisers.  Started by the master with
// DETUX_EXEC_SPACE set, it maps the runtime's regions, confines the process
// (ptrace/birth.cc, exec_birth), receives the carried bytes with kOpBirth
// and rebuilds the runtime's state from them.
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <dlfcn.h>

#include <vector>

#include "abi.h"
#include "ptrace/birth.h"
#include "rt/console.h"
#include "rt/fault.h"
#include "rt/fsemu.h"
#include "rt/heap.h"
#include "rt/interpose.h"
#include "rt/join.h"

namespace detux::rt {
namespace {

constexpr uint64_t kCarryMagic = 0x6465747578657863ULL;  // "detuxexc"
constexpr size_t kCarryCap = 256 << 20;                  // as the kernel's limit

// The carried block: this header, then the pending console records, then
// the input stream received so far.
struct CarryHeader {
  uint64_t magic = kCarryMagic;
  uint64_t self = 0;
  uint64_t heap_limit = 0;
  uint64_t out_len = 0;
  uint64_t in_len = 0, in_pos = 0, in_eof = 0;
};

std::vector<uint8_t> pack() {
  RtState& st = rt_state();
  CarryHeader h;
  h.self = st.self;
  h.heap_limit = heap_state().limit;
  h.out_len = st.out.len;
  h.in_len = st.in.len;
  h.in_pos = st.in.pos;
  h.in_eof = st.in.eof;
  std::vector<uint8_t> out(sizeof h + h.out_len + h.in_len);
  memcpy(out.data(), &h, sizeof h);
  if (h.out_len) memcpy(out.data() + sizeof h, reinterpret_cast<void*>(st.out.buf), h.out_len);
  if (h.in_len)
    memcpy(out.data() + sizeof h + h.out_len, reinterpret_cast<void*>(st.in.buf), h.in_len);
  return out;
}

// A heap copy of n bytes at p (0 for none).
uint64_t copy_to_heap(const uint8_t* p, uint64_t n) {
  if (n == 0) return 0;
  void* b = heap_alloc(n);
  if (!b) __builtin_trap();
  memcpy(b, p, n);
  return reinterpret_cast<uint64_t>(b);
}

void unpack(const uint8_t* p, uint64_t n) {
  CarryHeader h;
  if (n < sizeof h) __builtin_trap();
  memcpy(&h, p, sizeof h);
  if (h.magic != kCarryMagic || h.out_len > n || h.in_len > n - h.out_len ||
      sizeof h + h.out_len + h.in_len != n || h.in_pos > h.in_len)
    __builtin_trap();
  heap_exec_start(h.heap_limit);
  RtState& st = rt_state();
  st = RtState{};
  st.self = h.self;
  st.out.buf = copy_to_heap(p + sizeof h, h.out_len);
  st.out.len = st.out.cap = h.out_len;
  st.out.owned = h.out_len != 0;
  st.in.buf = copy_to_heap(p + sizeof h + h.out_len, h.in_len);
  st.in.len = st.in.cap = h.in_len;
  st.in.owned = h.in_len != 0;
  st.in.pos = h.in_pos;
  st.in.eof = h.in_eof != 0;
}

__attribute__((constructor)) void arrive() {
  if (!getenv("DETUX_EXEC_SPACE")) return;
  unsetenv("DETUX_EXEC_SPACE");
  rt_init(false);
  void* scratch = mmap(nullptr, kCarryCap, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (scratch == MAP_FAILED) _exit(126);
  long n = exec_birth(on_sigsys, scratch, kCarryCap);
  // Confined from here on.
  if (n < 0 || static_cast<size_t>(n) > kCarryCap) __builtin_trap();
  unpack(static_cast<const uint8_t*>(scratch), static_cast<uint64_t>(n));
  fs_exec_attach();
  size_t used = (static_cast<size_t>(n) + 4095) & ~size_t{4095};
  if (used) dget(0, DET_ZERO | DET_PROT_READ | DET_PROT_WRITE, scratch, used, nullptr);
}

int space_exec(const char* path, char* const argv[], char* const envp[]) {
  if (!path || !argv) {
    errno = EFAULT;
    return -1;
  }
  fflush(nullptr);             // printf before exec reaches the console
  console_give_back_input();   // stdio's read-ahead goes back to the stream
  std::vector<uint8_t> carry = pack();
  std::vector<uint8_t> image;
  abi::ExecRequest req;
  if (fs_read_file(path, &image)) {
    req.image = reinterpret_cast<uint64_t>(image.data());
    req.image_len = image.size();
  } else {
    req.image_name = reinterpret_cast<uint64_t>(path);
    req.image_name_len = strlen(path);
  }
  req.argv = reinterpret_cast<uint64_t>(argv);
  req.envp = reinterpret_cast<uint64_t>(envp ? envp : environ);
  req.carry = reinterpret_cast<uint64_t>(carry.data());
  req.carry_len = carry.size();
  fs_region(&req.keep, &req.keep_len);
  long r = detux_trap(abi::kOpExec, 0, 0, reinterpret_cast<long>(&req), sizeof req, 0);
  errno = static_cast<int>(-r);  // only a refused exec comes back
  return -1;
}

// execl's arguments (up to the NULL) as an array.
std::vector<char*> collect(const char* first, va_list ap) {
  std::vector<char*> v{const_cast<char*>(first)};
  while (char* a = va_arg(ap, char*)) v.push_back(a);
  v.push_back(nullptr);
  return v;
}

}  // namespace
}  // namespace detux::rt

using detux::g_in_space;
using detux::rt::real;
using detux::rt::space_exec;

extern "C" {

int execve(const char* path, char* const argv[], char* const envp[]) {
  if (g_in_space) return space_exec(path, argv, envp);
  detux::rt::master_before_exec();
  static auto f = real<int (*)(const char*, char* const*, char* const*)>("execve");
  return f(path, argv, envp);
}

int execv(const char* path, char* const argv[]) { return execve(path, argv, environ); }

int execvpe(const char* file, char* const argv[], char* const envp[]) {
  if (g_in_space) return space_exec(file, argv, envp);
  detux::rt::master_before_exec();
  static auto f = real<int (*)(const char*, char* const*, char* const*)>("execvpe");
  return f(file, argv, envp);
}

int execvp(const char* file, char* const argv[]) { return execvpe(file, argv, environ); }

int execl(const char* path, const char* arg, ...) {
  va_list ap;
  va_start(ap, arg);
  std::vector<char*> v = detux::rt::collect(arg, ap);
  va_end(ap);
  return execve(path, v.data(), environ);
}

int execlp(const char* file, const char* arg, ...) {
  va_list ap;
  va_start(ap, arg);
  std::vector<char*> v = detux::rt::collect(arg, ap);
  va_end(ap);
  return execvpe(file, v.data(), environ);
}

int execle(const char* path, const char* arg, ...) {
  va_list ap;
  va_start(ap, arg);
  std::vector<char*> v = detux::rt::collect(arg, ap);
  char* const* envp = va_arg(ap, char* const*);
  va_end(ap);
  return execve(path, v.data(), envp);
}

}  // extern "C"
