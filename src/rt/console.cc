// console.cc: standard input and output for spaces (see console.h).
#include "rt/console.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdio_ext.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>

#include "ptrace/birth.h"
#include "rt/fsemu.h"

namespace detux::rt {

namespace {

RtState& g_rt = rt_state();
constexpr uint64_t kInputChunk = 64 << 10;

// Room for `need` bytes in a growable buffer of this space's heap.  A
// buffer inherited from the parent (not `owned`) is copied, never freed:
// the parent still uses it.
bool ensure(uint64_t* buf, uint64_t* cap, uint64_t need, bool* owned, uint64_t used) {
  if (need <= *cap && *owned) return true;
  uint64_t n = std::max({need, *cap * 2, uint64_t{4096}});
  void* p = heap_alloc(n);
  if (!p) return false;
  if (*buf) memcpy(p, reinterpret_cast<void*>(*buf), used);
  if (*owned) heap_free(reinterpret_cast<void*>(*buf));
  *buf = reinterpret_cast<uint64_t>(p);
  *cap = n;
  *owned = true;
  return true;
}

// A space asks its parent for the next bytes of the input stream.
void request_input() {
  ConsoleIn& in = g_rt.in;
  if (!ensure(&in.buf, &in.cap, in.len + kInputChunk, &in.owned, in.len)) {
    in.eof = true;  // no memory to receive into: the stream ends here
    return;
  }
  g_rt.want = kInputChunk;
  g_rt.reply = InputReply{};
  g_rt.why = RetWhy::kInput;
  dret();
  g_rt.why = RetWhy::kNone;
  in.len += std::min(g_rt.reply.got, kInputChunk);
  if (g_rt.reply.eof) in.eof = true;
}

// How the input stream grows, everywhere: by one piece at a time, a piece
// being the bytes up to and including the next newline, or kInputChunk
// bytes without one, or what is left before end of file.  A pipe or a
// terminal hands over bytes as they happen to arrive; were the stream to
// grow by those, a space's read() counts and its buffer's growth (hence the
// addresses of its later heap blocks) would follow the arrival, not the
// bytes.  Pieces follow the bytes alone, and a line typed at a terminal
// still goes through at once.
uint64_t piece_len(const char* at, uint64_t avail, bool eof) {
  if (const void* nl = avail ? memchr(at, '\n', std::min(avail, kInputChunk)) : nullptr)
    return static_cast<uint64_t>(static_cast<const char*>(nl) - at) + 1;
  if (avail >= kInputChunk) return kInputChunk;
  return eof ? avail : 0;  // 0: not known yet
}

// What the master has read of its real standard input and not yet made a
// piece of, in libdetux's own data: never in the heap, whose layout must
// not depend on when bytes arrived.
char g_raw[kInputChunk];
uint64_t g_raw_len = 0;
bool g_raw_eof = false;

// The master reads its real standard input, and appends the next piece.
void read_real_input() {
  ConsoleIn& in = g_rt.in;
  for (;;) {
    uint64_t n = piece_len(g_raw, g_raw_len, g_raw_eof);
    if (n > 0) {
      if (!ensure(&in.buf, &in.cap, in.len + kInputChunk, &in.owned, in.len)) {
        in.eof = true;
        return;
      }
      memcpy(reinterpret_cast<char*>(in.buf) + in.len, g_raw, n);
      in.len += n;
      memmove(g_raw, g_raw + n, g_raw_len - n);
      g_raw_len -= n;
      return;
    }
    if (g_raw_eof) {
      in.eof = true;
      return;
    }
    ssize_t r = ::read(0, g_raw + g_raw_len, kInputChunk - g_raw_len);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {  // a non-blocking stdin: not its end
      pollfd in0{0, POLLIN, 0};
      poll(&in0, 1, -1);
      continue;
    }
    if (r <= 0) g_raw_eof = true;  // the end, or an error: the stream ends here either way
    else g_raw_len += static_cast<uint64_t>(r);
  }
}

void fetch_more() {
  if (g_in_space) request_input();
  else read_real_input();
}

}  // namespace

void rt_state_map() {
  constexpr size_t kSize = (sizeof(RtState) + 4095) & ~size_t{4095};
  void* p = mmap(reinterpret_cast<void*>(kRtStateAddr), kSize, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  if (p == MAP_FAILED && errno != EEXIST) {
    fprintf(stderr, "detux: cannot map the runtime's state\n");
    abort();
  }
}

long console_write(int fd, const void* buf, size_t len) {
  ConsoleOut& o = g_rt.out;
  len = std::min<size_t>(len, 1U << 30);
  if (!ensure(&o.buf, &o.cap, o.len + 5 + len, &o.owned, o.len)) return -ENOSPC;
  auto* p = reinterpret_cast<uint8_t*>(o.buf) + o.len;
  p[0] = static_cast<uint8_t>(fd);
  uint32_t n = static_cast<uint32_t>(len);
  memcpy(p + 1, &n, 4);
  memcpy(p + 5, buf, len);
  o.len += 5 + len;
  return static_cast<long>(len);
}

// Up to and including the next newline, at most len bytes, or what is left
// before end of file: never "what has arrived so far" (see piece_len).
long console_read(void* buf, size_t len) {
  ConsoleIn& in = g_rt.in;
  for (;;) {
    const uint64_t avail = in.len - in.pos;
    const char* at = reinterpret_cast<char*>(in.buf) + in.pos;
    if (len == 0 || avail >= len || in.eof || (avail && memchr(at, '\n', avail))) break;
    fetch_more();
  }
  uint64_t n = std::min<uint64_t>(len, in.len - in.pos);
  if (const void* nl = n ? memchr(reinterpret_cast<char*>(in.buf) + in.pos, '\n', n) : nullptr)
    n = static_cast<uint64_t>(static_cast<const char*>(nl) - (reinterpret_cast<char*>(in.buf) + in.pos)) + 1;
  memcpy(buf, reinterpret_cast<char*>(in.buf) + in.pos, n);
  in.pos += n;
  return static_cast<long>(n);
}

// The child's records (fd, length, bytes), printed in order, read through a
// window of at most 64 KiB: a child's output is never held whole, so no
// amount of it, and no memory limit, loses any of it.  A record cut short
// (the child faulted mid-write) ends the output.
long console_collect(det_child_t child, const RtState& crt) {
  const uint64_t len = crt.out.len;
  if (len == 0) return 0;
  // Not on the stack: a 4 KiB frame took the master's join path deeper, and
  // a space born after it then found, under load, bytes that differed from
  // run to run below its stack (DeadStack, in the sanitizer build).  Used
  // only when the heap cannot give the window.
  static uint8_t small[4096];
  uint64_t cap = std::min<uint64_t>(len, 64 << 10);
  auto* window = static_cast<uint8_t*>(heap_alloc(cap));
  if (!window) window = small, cap = sizeof small;
  FILE* f = nullptr;
  uint64_t left = 0;  // bytes of f's record still to print
  long r = 0;
  for (uint64_t off = 0; off < len && r >= 0;) {
    const uint64_t k = std::min(cap, len - off);
    r = dget(child, DET_COPY, window, k, reinterpret_cast<void*>(crt.out.buf + off));
    uint64_t i = 0;
    while (r >= 0 && i < k) {
      if (left == 0) {  // a record's header, read again with the next window if cut
        uint32_t n;
        if (k - i < 5) break;
        memcpy(&n, window + i + 1, 4);
        if (off + i + 5 + n > len) {  // torn: nothing more
          off = len;
          break;
        }
        FILE* next = window[i] == 2 ? stderr : stdout;
        if (f && f != next) fflush(f);  // keep the child's interleaving
        f = next;
        left = n;
        i += 5;
      }
      const uint64_t take = std::min(left, k - i);
      fwrite(window + i, 1, take, f);
      left -= take;
      i += take;
    }
    if (off < len) off += i;
    if (i == 0) break;  // a header cut at the very end: torn
  }
  if (f == stderr) fflush(stderr);
  if (window != small) heap_free(window);
  return r < 0 ? r : 0;
}

long console_supply(det_child_t child, const RtState& crt) {
  ConsoleIn& in = g_rt.in;
  uint64_t at = crt.in.len;  // the stream offset the child has reached
  // The next piece from there (piece_len), whatever this space has already.
  uint64_t n = 0;
  for (;;) {
    const uint64_t avail = in.len > at ? in.len - at : 0;
    n = piece_len(reinterpret_cast<char*>(in.buf) + at, avail, in.eof);
    if (n > 0 || in.eof) break;
    fetch_more();
  }
  n = std::min(crt.want, n);
  if (n) {
    long r = dput(child, DET_COPY, reinterpret_cast<char*>(in.buf) + at, n,
                  reinterpret_cast<void*>(crt.in.buf + crt.in.len));
    if (r < 0) return r;
  }
  InputReply rep{n, n == 0};
  return dput(child, DET_COPY, &rep, sizeof rep, &g_rt.reply);
}

// A stream's buffer is a block of the parent's heap: the child must not
// write into it (the merge would carry its bytes into the parent's buffer),
// nor free it (the parent still uses it).  It forgets the buffer, so stdio
// allocates a new one, in the child's own heap, at the next use.  Output the
// parent had buffered is the parent's to print.  Input it had read ahead
// came from the stream (when the parent is a space), so the child steps its
// stream position back over it and reads those bytes again.
// The input stream position steps back over what `f` read ahead.
void step_back_over_read_ahead(FILE* f) {
  if (f->_IO_read_end <= f->_IO_read_ptr) return;
  uint64_t ahead = static_cast<uint64_t>(f->_IO_read_end - f->_IO_read_ptr);
  g_rt.in.pos = g_rt.in.pos >= ahead ? g_rt.in.pos - ahead : 0;
}

void forget_buffer(FILE* f, bool input_from_stream) {
  constexpr int kUnbuffered = 0x0002, kUserBuf = 0x0001, kPutting = 0x0800;
  if (f->_flags & kUnbuffered) return;  // its one-byte buffer is inside the FILE
  if (input_from_stream) step_back_over_read_ahead(f);
  f->_IO_buf_base = f->_IO_buf_end = nullptr;
  f->_IO_read_base = f->_IO_read_ptr = f->_IO_read_end = nullptr;
  f->_IO_write_base = f->_IO_write_ptr = f->_IO_write_end = nullptr;
  f->_IO_save_base = f->_IO_backup_base = f->_IO_save_end = nullptr;
  f->_flags &= ~(kUserBuf | kPutting);
}

void console_give_back_input() {
  if (!g_in_space) return;
  step_back_over_read_ahead(stdin);
  stdin->_IO_read_end = stdin->_IO_read_ptr;
}

// A joined child read on from where this space had read; so that no byte
// is read twice, this space goes on from where the child stopped.  In a
// space, stdin's buffer may hold bytes read ahead, which the child read
// again (step_back_over_read_ahead): those the child consumed are skipped.
void console_adopt_position(const RtState& crt) {
  uint64_t ahead = 0;
  if (g_in_space && stdin->_IO_read_end > stdin->_IO_read_ptr)
    ahead = static_cast<uint64_t>(stdin->_IO_read_end - stdin->_IO_read_ptr);
  const uint64_t mine = g_rt.in.pos >= ahead ? g_rt.in.pos - ahead : 0;  // what this space has read
  if (crt.in.pos > mine && crt.in.pos <= g_rt.in.len) {
    const uint64_t consumed = crt.in.pos - mine;
    if (consumed <= ahead) {
      stdin->_IO_read_ptr += consumed;
    } else {
      stdin->_IO_read_ptr += ahead;
      g_rt.in.pos = crt.in.pos;
    }
  }
  if (crt.in.pos == g_rt.in.len && crt.in.eof) g_rt.in.eof = true;
}

void console_child_start(bool parent_in_space) {
  g_rt.out = ConsoleOut{};
  g_rt.in.owned = false;
  forget_buffer(stdout, false);
  forget_buffer(stderr, false);
  forget_buffer(stdin, parent_in_space);
}

void rt_child_start(det_child_t self, Extent e, bool parent_in_space) {
  g_rt.self = self;
  g_rt.extent = e;
  g_rt.why = RetWhy::kNone;
  g_rt.want = 0;
  g_rt.reply = InputReply{};
  heap_child_start(e);
  console_child_start(parent_in_space);
  fs_child_start();
}

}  // namespace detux::rt
