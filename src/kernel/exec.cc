// exec.cc: a space replaces its program (the kernel's half).
//
// A space asks with kOpExec and an abi::ExecRequest.  What it means, on any
// machine: the space keeps its place in the tree (its id, its parent, its
// quota) and gets a new program -- an image the master registered by name,
// or bytes the space holds (read from its file system) -- started with the
// argv and envp it gave.  Its children are killed, as its old program's
// memory is gone and nothing could name them any more.  The kernel carries
// two things over: an opaque block of bytes from the old runtime to the new
// one (console output not yet handed on, the input stream), and the pages
// the old program had populated in one range (its file system), written at
// the same addresses once the new program has confined itself and reported
// with kOpBirth.  Until then the space counts as running; if the new
// program faults or exits first, that is the space's end, reported to its
// parent as usual.  A request the kernel refuses (a bad pointer, no such
// image, not an ELF executable) fails the call and leaves the old program
// running, as a failed execve returns.
#include <elf.h>
#include <errno.h>

#include <algorithm>
#include <cstring>

#include "abi.h"
#include "kernel/kernel.h"

namespace detux {

namespace {

constexpr uint64_t kMaxImage = 1ULL << 30;
constexpr uint64_t kMaxCarry = 256ULL << 20;
constexpr size_t kMaxStrings = 4096, kMaxStringBytes = 2 << 20, kMaxName = 255;
constexpr uint64_t kPage = 4096;

// An x86-64 ELF executable (static or position-independent).
bool is_executable(std::span<const uint8_t> b) {
  if (b.size() < sizeof(Elf64_Ehdr)) return false;
  Elf64_Ehdr h;
  std::memcpy(&h, b.data(), sizeof h);
  return std::memcmp(h.e_ident, ELFMAG, SELFMAG) == 0 && h.e_ident[EI_CLASS] == ELFCLASS64 &&
         h.e_machine == EM_X86_64 && (h.e_type == ET_EXEC || h.e_type == ET_DYN);
}

}  // namespace

Status Kernel::register_image(const std::string& name, std::vector<uint8_t> image) {
  if (name.empty() || name.size() > kMaxName) return Err{-EINVAL};
  if (!is_executable(image)) return Err{-ENOEXEC};
  images_[name] = std::move(image);
  return ok_status();
}

// A NULL-terminated array of C strings in the space's memory.
Result<std::vector<std::string>> Kernel::read_strings(Space& s, uint64_t array) {
  std::vector<std::string> out;
  if (array == 0) return out;
  size_t total = 0;
  for (;; array += 8) {
    uint64_t ptr;
    if (!m_.read(s.proc, array, &ptr, 8).ok()) return Err{-EFAULT};
    if (ptr == 0) return out;
    if (out.size() == kMaxStrings) return Err{-E2BIG};
    auto str = read_c_string(m_, s.proc, ptr, kMaxStringBytes - total);
    if (!str.ok()) return Err{str.err()};
    total += str->size();
    out.push_back(std::move(*str));
  }
}

long Kernel::exec(Space& s, const Call& c) {
  abi::ExecRequest req;
  if (c.size != sizeof req) return -EINVAL;
  if (!m_.read(s.proc, c.addr, &req, sizeof req).ok()) return -EFAULT;
  // The image: registered by name, or the space's own bytes.
  std::vector<uint8_t> own;
  std::span<const uint8_t> image;
  if (req.image_name_len) {
    if (req.image_name_len > kMaxName) return -ENAMETOOLONG;
    std::string name(req.image_name_len, '\0');
    if (!m_.read(s.proc, req.image_name, name.data(), name.size()).ok()) return -EFAULT;
    auto it = images_.find(name);
    if (it == images_.end()) return -ENOENT;
    image = it->second;
  } else {
    if (req.image_len == 0 || req.image_len > kMaxImage) return -ENOEXEC;
    own.resize(req.image_len);
    if (!m_.read(s.proc, req.image, own.data(), own.size()).ok()) return -EFAULT;
    image = own;
  }
  if (!is_executable(image)) return -ENOEXEC;
  auto argv = read_strings(s, req.argv);
  if (!argv.ok()) return argv.err();
  auto envp = read_strings(s, req.envp);
  if (!envp.ok()) return envp.err();
  if (argv->empty()) return -EINVAL;
  // What the new program will get.
  auto x = std::make_unique<ExecCarry>();
  if (req.carry_len > kMaxCarry) return -E2BIG;
  x->carry.resize(req.carry_len);
  if (req.carry_len && !m_.read(s.proc, req.carry, x->carry.data(), req.carry_len).ok())
    return -EFAULT;
  if (req.keep_len) {
    if ((req.keep | req.keep_len) & (kPage - 1) || req.keep + req.keep_len < req.keep)
      return -EINVAL;
    auto pages = m_.populated_pages(s.proc, MemRange{req.keep, req.keep_len});
    if (!pages.ok()) return pages.err();
    x->pages = std::move(*pages);
    x->data.resize(x->pages.size() * kPage);
    Status rd = m_.read_pages(s.proc, false, x->pages, x->data.data());
    if (!rd.ok()) return rd.err();
  }
  auto fresh = m_.exec_space(image, *argv, *envp);
  if (!fresh.ok()) return fresh.err();
  // The point of no return: the old program is gone.
  forget_subtree(s);
  by_proc_.erase(s.proc);
  m_.destroy(s.proc);
  s.proc = *fresh;
  by_proc_[s.proc] = &s;
  s.exec = std::move(x);
  s.run = Space::Run::kRunning;
  s.status = det_status{};
  s.status.state = DET_S_RUNNING;
  return kBlocked;  // nothing to answer: the caller is no more
}

// The new program's kOpBirth: hand it what was carried; the answer is the
// carried block's length (it asked for it at [ev.addr, ev.addr+ev.size)).
void Kernel::exec_arrived(Space& s, const StopEvent& ev) {
  if (!m_.confine_born(s.proc, ev.addr, ev.size).ok()) {
    fault(s, DET_FAULT_BADCALL, 0, 0, 0);
    return;
  }
  std::unique_ptr<ExecCarry> x = std::move(s.exec);
  long r = static_cast<long>(x->carry.size());
  uint64_t n = std::min<uint64_t>(ev.size, x->carry.size());
  if (n && !m_.write(s.proc, ev.addr, x->carry.data(), n).ok()) r = -EFAULT;
  if (r >= 0 && !x->pages.empty() && !m_.write_pages(s.proc, x->pages, x->data.data()).ok())
    r = -EFAULT;
  finish(s, r);
}

}  // namespace detux
