// alloc.cc: making a file system, allocating blocks and inodes, and the
// child's lazy record of what it changed.
//
// Allocation is first-fit from a rotating hint kept in the superblock, so it
// is deterministic (the same operations on the same region pick the same
// numbers) and O(1) amortised for the common sequential case.
//
// Recording.  begin_child() only bumps the superblock's epoch and empties
// the changed list: O(1), whatever the size of the file system.  The first
// time the child changes an inode in that epoch, touch() stamps it with the
// epoch, saves its version and size as they were at the fork, and links it
// onto the changed list; the first change of a directory also copies its
// entries into a *shadow* inode, the base the reconciler diffs against.
// Inodes allocated in the epoch are marked new.  An inode that was recorded
// is never reused within the epoch: one that dies becomes *dead* (its blocks
// freed, its number held) so that the parent never confuses "the child
// removed X" with "the child made a new file that happens to be X".  Dead
// inodes and shadows of an older epoch are reclaimed by later allocations.
#include <errno.h>

#include <algorithm>
#include <cstring>

#include "fs/fs.h"

namespace detux::fs {

Inode& Fs::inode(uint32_t ino) {
  DETUX_ASSERT(ino > 0 && ino < sb().ninodes);
  auto* table = reinterpret_cast<Inode*>(block(sb().inode_start));
  return table[ino];
}

Result<Fs> Fs::format(void* base, size_t size, FormatOptions opt) {
  if (reinterpret_cast<uintptr_t>(base) % kBlockSize != 0 || size < 16 * kBlockSize)
    return Err{-EINVAL};
  uint64_t nblocks = std::min<uint64_t>(size / kBlockSize, 1ull << 40);
  uint64_t ninodes = opt.ninodes ? opt.ninodes : std::max<uint64_t>(64, nblocks / 8);
  ninodes = std::min<uint64_t>((ninodes + kInodesPerBlock - 1) / kInodesPerBlock * kInodesPerBlock,
                               kMaxInodes);
  Geometry g = geometry(nblocks, ninodes);
  if (g.data_start + 4 > nblocks) return Err{-ENOSPC};
  // A region fresh from mmap is zero already: touching it would only fill
  // memory (16 MB of inode table for 64 GiB) that every fork then copies.
  if (!opt.region_is_zero) std::memset(base, 0, g.data_start * kBlockSize);
  Fs fs;
  fs.base_ = base;
  fs.size_ = size;
  Super& s = fs.sb();
  s.magic = kMagic;
  s.layout_version = kLayoutVersion;
  s.block_size = kBlockSize;
  s.nblocks = nblocks;
  s.ninodes = static_cast<uint32_t>(ninodes);
  s.root = kRootIno;
  s.fd_start = g.fd_start;
  s.bitmap_start = g.bitmap_start;
  s.bitmap_blocks = g.bitmap_blocks;
  s.inode_start = g.inode_start;
  s.inode_blocks = g.inode_blocks;
  s.data_start = g.data_start;
  auto* bits = fs.block(s.bitmap_start);
  for (uint64_t b = 0; b < g.data_start; ++b) bits[b / 8] |= uint8_t(1u << (b % 8));
  s.free_blocks = nblocks - g.data_start;
  s.free_inodes = s.ninodes - 1;  // inode 0 is never used
  s.inode_hint = kRootIno;
  s.block_hint = g.data_start;
  auto root = fs.alloc_inode(kTypeDir, 0755);
  DETUX_ASSERT(root.ok() && *root == kRootIno);
  Inode& r = fs.inode(kRootIno);
  r.nlink = 2;
  r.parent = kRootIno;
  return fs;
}

Result<Fs> Fs::attach(void* base, size_t size) {
  if (reinterpret_cast<uintptr_t>(base) % kBlockSize != 0 || size < kBlockSize)
    return Err{-EINVAL};
  const auto* s = static_cast<const Super*>(base);
  if (!super_layout_ok(*s) || s->nblocks * kBlockSize > size) return Err{-EINVAL};
  Fs fs;
  fs.base_ = base;
  fs.size_ = size;
  return fs;
}

bool Fs::block_used(uint64_t bno) {
  return (block(sb().bitmap_start)[bno / 8] >> (bno % 8)) & 1;
}

Result<uint64_t> Fs::alloc_block(bool zero) {
  Super& s = sb();
  if (s.free_blocks == 0) collect_stale_shadows();
  if (s.free_blocks == 0) return Err{-ENOSPC};
  auto* words = reinterpret_cast<uint64_t*>(block(s.bitmap_start));
  uint64_t nwords = (s.nblocks + 63) / 64;
  uint64_t w = std::min(s.block_hint, s.nblocks - 1) / 64;
  for (uint64_t k = 0; k <= nwords; ++k, ++w) {
    if (w >= nwords) w = 0;
    uint64_t avail = ~words[w];
    if (w == nwords - 1 && s.nblocks % 64) avail &= (1ull << (s.nblocks % 64)) - 1;
    if (!avail) continue;
    uint64_t bno = w * 64 + static_cast<uint64_t>(__builtin_ctzll(avail));
    words[w] |= 1ull << (bno % 64);
    --s.free_blocks;
    s.block_hint = bno + 1;
    if (zero) std::memset(block(bno), 0, kBlockSize);
    return bno;
  }
  DETUX_ASSERT(!"free_blocks says a block is free but the bitmap has none");
  return Err{-ENOSPC};
}

void Fs::free_block(uint64_t bno) {
  Super& s = sb();
  DETUX_ASSERT(bno >= s.data_start && bno < s.nblocks && block_used(bno));
  block(s.bitmap_start)[bno / 8] &= uint8_t(~(1u << (bno % 8)));
  ++s.free_blocks;
}

bool Fs::reclaimable(const Inode& n) const {
  if (n.state == kFree) return true;
  return (n.state == kDead || n.state == kShadow) && n.rec_epoch != super().epoch;
}

// Releases what a reclaimable inode still holds, making it plainly free.
void Fs::reclaim(Inode& n) {
  if (n.state == kFree) return;
  free_blocks_from(n, 0);
  n.size = 0;
  n.state = kFree;
  ++sb().free_inodes;
}

Result<uint32_t> Fs::alloc_inode(uint8_t type, uint32_t perm) {
  Super& s = sb();
  uint32_t ino = s.inode_hint;
  for (uint32_t k = 0; k < s.ninodes; ++k, ++ino) {
    if (ino >= s.ninodes) ino = 1;
    Inode& n = inode(ino);
    if (!reclaimable(n)) continue;
    reclaim(n);
    uint32_t gen = n.gen + 1;
    std::memset(&n, 0, sizeof n);
    n.state = kLive;
    n.type = type;
    n.perm = perm & 07777;
    n.gen = gen;
    n.mtime = n.ctime = tick();
    --s.free_inodes;
    s.inode_hint = ino + 1;
    if (s.epoch != 0) {
      n.rec_epoch = s.epoch;
      n.rec_flags = kRecNew;
      n.rec_next = s.changed_head;
      s.changed_head = ino;
      ++s.changed_count;
    }
    return ino;
  }
  return Err{-ENOSPC};
}

void Fs::release_inode(uint32_t ino) {
  Super& s = sb();
  Inode& n = inode(ino);
  DETUX_ASSERT(n.state == kLive && n.nlink == 0 && n.opens == 0);
  free_blocks_from(n, 0);
  n.size = 0;
  if (s.epoch != 0 && n.rec_epoch == s.epoch) {
    n.state = kDead;  // hold the number until the join
  } else {
    n.state = kFree;
    ++s.free_inodes;
  }
}

Status Fs::touch(uint32_t ino) {
  Super& s = sb();
  Inode& n = inode(ino);
  n.ctime = tick();
  if (s.epoch == 0 || n.rec_epoch == s.epoch) return ok_status();
  n.rec_epoch = s.epoch;
  n.rec_flags = 0;
  n.rec_shadow = 0;
  n.base_version = n.version;
  n.base_size = n.size;
  n.rec_next = s.changed_head;
  s.changed_head = ino;
  ++s.changed_count;
  return ok_status();
}

// Before the first change to a directory's entries in this epoch: records
// the directory and, unless it is new in the epoch, shadows its entries.
Status Fs::touch_entries(uint32_t dir) {
  DETUX_TRY(touch(dir));
  const Inode& n = inode(dir);
  if (sb().epoch == 0 || (n.rec_flags & kRecNew) || n.rec_shadow != 0) return ok_status();
  return shadow_dir(dir);
}

// Copies a directory's entries, as they are before its first change in
// this epoch, into a fresh shadow inode.
Status Fs::shadow_dir(uint32_t ino) {
  auto sh = alloc_inode(kTypeDir, 0);
  if (!sh.ok()) return Err{sh.err()};
  Status st = copy_blocks(ino, *sh);
  Inode& shadow = inode(*sh);
  shadow.state = kShadow;
  if (!st.ok()) {
    free_blocks_from(shadow, 0);
    shadow.size = 0;
    return st;
  }
  inode(ino).rec_shadow = *sh;
  return ok_status();
}

void Fs::collect_stale_shadows() {
  Super& s = sb();
  for (uint32_t ino = 1; ino < s.ninodes; ++ino) {
    Inode& n = inode(ino);
    if (n.state != kFree && reclaimable(n)) reclaim(n);
  }
}

void Fs::begin_child() {
  Super& s = sb();
  ++s.epoch;
  s.changed_head = 0;
  s.changed_count = 0;
}

}  // namespace detux::fs
