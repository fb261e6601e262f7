// page_buffer.h: the supervisor's buffers for another process's pages.
//
// Linux moves bytes for process_vm_readv/writev with `rep movsb`.  On this
// project's AMD VMs that runs about five times slower when the local end is
// not 64-byte aligned: reading a remote page into a buffer at offset 8 or 16
// cost 2.3-2.9 us, at offset 0 or 64 0.4-0.7 us (a stand-alone test, 256 and
// 4096 pages a call).  A plain new[] from detux's heap starts 16 bytes into
// its block, so every merge buffer paid the slow rate: lu 2048^2 spent 1.4 s
// of its 3 s of merging reading pages.  These buffers start on a page.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>

namespace detux {

struct PageBufferFree {
  void operator()(uint8_t* p) const { ::operator delete[](p, std::align_val_t{4096}); }
};

// Not zeroed.  Throws std::bad_alloc like new[].
using PageBuffer = std::unique_ptr<uint8_t[], PageBufferFree>;

inline PageBuffer page_buffer(size_t bytes) {
  return PageBuffer(static_cast<uint8_t*>(::operator new[](bytes ? bytes : 1, std::align_val_t{4096})));
}

// A page buffer kept between uses, grown (at least doubling) to the largest
// asked for up to `keep` bytes; a larger request gets a buffer of its own,
// freed at the next request.  On a PVM guest the kernel's first store into
// each page of a buffer costs about 7 us (the host builds its shadow entry)
// and every later one 0.5-0.8 us, so the buffers a merge reads other
// processes' pages into are reused, not made afresh.  The contents of one
// request are gone at the next.
class ScratchPages {
 public:
  explicit ScratchPages(size_t keep) : keep_(keep) {}
  uint8_t* get(size_t bytes) {
    once_.reset();
    if (bytes > keep_) {
      once_ = page_buffer(bytes);
      return once_.get();
    }
    if (bytes > size_) {
      size_ = std::min(std::max(bytes, 2 * size_), keep_);  // bytes <= keep_
      kept_ = page_buffer(size_);
    }
    return kept_.get();
  }

 private:
  size_t keep_, size_ = 0;
  PageBuffer kept_, once_;
};

}  // namespace detux
