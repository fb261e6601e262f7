// data.cc: the bytes of a file, through its block tree.
//
// A file's block i lives in direct[i] for i < 10, then in the single
// indirect block, then in the double indirect tree (layout.h).  A zero
// pointer is a hole and reads as zeros.  The bytes of the last block past
// the file's size are always zero, so growing a file never reveals stale
// data.
//
// The version rule (layout.h) is applied here: a write that starts at or
// beyond the end of the file is an append and leaves the version alone;
// any other write, and any truncate, bumps it.
#include <errno.h>

#include <algorithm>
#include <cstring>

#include "fs/fs.h"

namespace detux::fs {

Result<uint64_t> Fs::bmap(Inode& n, uint64_t fblock, bool alloc, bool zero) {
  DETUX_ASSERT(fblock < kMaxFileBlocks);
  // Follows (or, with alloc, fills) one pointer slot.
  auto step = [&](uint64_t& slot, bool is_data) -> Result<uint64_t> {
    if (slot == 0 && alloc) {
      auto b = alloc_block(!is_data || zero);
      if (!b.ok()) return b;
      slot = *b;
      ++n.nblocks;
    }
    DETUX_ASSERT(slot == 0 || (slot >= sb().data_start && slot < sb().nblocks));
    return slot;
  };
  auto table = [&](uint64_t bno) { return reinterpret_cast<uint64_t*>(block(bno)); };
  if (fblock < kNDirect) return step(n.direct[fblock], true);
  fblock -= kNDirect;
  if (fblock < kPtrsPerBlock) {
    auto ind = step(n.indirect, false);
    if (!ind.ok() || *ind == 0) return ind;
    return step(table(*ind)[fblock], true);
  }
  fblock -= kPtrsPerBlock;
  auto top = step(n.dindirect, false);
  if (!top.ok() || *top == 0) return top;
  auto mid = step(table(*top)[fblock / kPtrsPerBlock], false);
  if (!mid.ok() || *mid == 0) return mid;
  return step(table(*mid)[fblock % kPtrsPerBlock], true);
}

Result<size_t> Fs::read_data(uint32_t ino, void* buf, size_t len, uint64_t off) {
  Inode& n = inode(ino);
  if (off >= n.size) return size_t{0};
  len = static_cast<size_t>(std::min<uint64_t>(len, n.size - off));
  auto* out = static_cast<uint8_t*>(buf);
  size_t done = 0;
  while (done < len) {
    uint64_t pos = off + done;
    uint64_t in_block = pos % kBlockSize;
    size_t chunk = static_cast<size_t>(std::min<uint64_t>(kBlockSize - in_block, len - done));
    auto b = bmap(n, pos / kBlockSize, false);
    if (!b.ok()) return Err{b.err()};
    if (*b == 0)
      std::memset(out + done, 0, chunk);
    else
      std::memcpy(out + done, block(*b) + in_block, chunk);
    done += chunk;
  }
  return done;
}

Result<size_t> Fs::write_data(uint32_t ino, const void* buf, size_t len, uint64_t off) {
  if (len == 0) return size_t{0};
  if (off > kMaxFileSize || len > kMaxFileSize - off) return Err{-EFBIG};
  DETUX_TRY(touch(ino));
  Inode& n = inode(ino);
  if (off < n.size) ++n.version;  // overwrites existing bytes: exclusive
  const auto* in = static_cast<const uint8_t*>(buf);
  size_t done = 0;
  long err = 0;
  while (done < len) {
    uint64_t pos = off + done;
    uint64_t in_block = pos % kBlockSize;
    size_t chunk = static_cast<size_t>(std::min<uint64_t>(kBlockSize - in_block, len - done));
    bool whole = in_block == 0 && chunk == kBlockSize;
    auto b = bmap(n, pos / kBlockSize, true, !whole);
    if (!b.ok()) {
      err = b.err();
      break;
    }
    std::memcpy(block(*b) + in_block, in + done, chunk);
    done += chunk;
  }
  n.size = std::max<uint64_t>(n.size, off + done);
  n.mtime = n.ctime;
  if (done == 0) return Err{err};
  return done;
}

Status Fs::resize(uint32_t ino, uint64_t size) {
  if (size > kMaxFileSize) return Err{-EFBIG};
  DETUX_TRY(touch(ino));
  Inode& n = inode(ino);
  ++n.version;
  if (size < n.size) {
    uint64_t keep = (size + kBlockSize - 1) / kBlockSize;
    free_blocks_from(n, keep);
    if (size % kBlockSize) {
      auto b = bmap(n, size / kBlockSize, false);
      DETUX_ASSERT(b.ok());
      if (*b) std::memset(block(*b) + size % kBlockSize, 0, kBlockSize - size % kBlockSize);
    }
  }
  n.size = size;
  if (size == 0) n.flags &= uint8_t(~kFlagConflict);
  n.mtime = n.ctime;
  return ok_status();
}

void Fs::free_blocks_from(Inode& n, uint64_t first) {
  auto drop = [&](uint64_t& slot) {
    if (slot == 0) return;
    free_block(slot);
    slot = 0;
    --n.nblocks;
  };
  auto table = [&](uint64_t bno) { return reinterpret_cast<uint64_t*>(block(bno)); };
  for (uint64_t i = first; i < kNDirect; ++i) drop(n.direct[i]);
  uint64_t start = first > kNDirect ? first - kNDirect : 0;
  if (n.indirect && start < kPtrsPerBlock) {
    uint64_t* t = table(n.indirect);
    for (uint64_t i = start; i < kPtrsPerBlock; ++i) drop(t[i]);
    if (start == 0) drop(n.indirect);
  }
  start = first > kNDirect + kPtrsPerBlock ? first - kNDirect - kPtrsPerBlock : 0;
  if (n.dindirect) {
    uint64_t* top = table(n.dindirect);
    for (uint64_t t = start / kPtrsPerBlock; t < kPtrsPerBlock; ++t) {
      if (!top[t]) continue;
      uint64_t from = t == start / kPtrsPerBlock ? start % kPtrsPerBlock : 0;
      uint64_t* mid = table(top[t]);
      for (uint64_t i = from; i < kPtrsPerBlock; ++i) drop(mid[i]);
      if (from == 0) drop(top[t]);
    }
    if (start == 0) drop(n.dindirect);
  }
}

Status Fs::copy_blocks(uint32_t from, uint32_t to) {
  uint64_t size = inode(from).size;
  uint64_t count = (size + kBlockSize - 1) / kBlockSize;
  for (uint64_t fb = 0; fb < count; ++fb) {
    auto src = bmap(inode(from), fb, false);
    DETUX_ASSERT(src.ok());
    if (*src == 0) continue;
    auto dst = bmap(inode(to), fb, true, false);
    if (!dst.ok()) return Err{dst.err()};
    std::memcpy(block(*dst), block(*src), kBlockSize);
  }
  inode(to).size = size;
  return ok_status();
}

}  // namespace detux::fs
