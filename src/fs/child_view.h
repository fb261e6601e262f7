// child_view.h: a careful reader of a child's file system region.
//
// At a join the parent reads the child's region through a RegionReader (in
// spaces, the child's memory at the same address; in tests, a copy).  The
// child is another program and may have scribbled over its region, so
// nothing read from it is trusted: every inode number, block pointer, size
// and name is range-checked here before the reconciler sees it, and a
// malformed region gives -EIO, never a crash or a wild read.
//
// Reads are small and cached where it matters: inodes by number, and the
// last few indirect tables, so copying a large file costs one read per data
// block plus one per 512 blocks.
#pragma once

#include <array>
#include <string>
#include <unordered_map>
#include <vector>

#include "fs/fs.h"

namespace detux::fs {

struct ChildEntry {
  std::string name;
  uint32_t ino;
  uint8_t type;
};

class ChildView {
 public:
  explicit ChildView(RegionReader& r) : r_(r) {}
  // Reads the child's superblock; its layout must be the parent's.
  Status open(const Super& parent);
  const Super& sb() const { return sb_; }
  Result<Inode> inode(uint32_t ino);
  // The block holding file block fblock of n (0 for a hole).
  Result<uint64_t> bmap(const Inode& n, uint64_t fblock);
  Status read_block(uint64_t bno, void* dst);
  // A directory's (or shadow's) entries, checked: valid names, strictly
  // sorted, inode numbers in range.
  Result<std::vector<ChildEntry>> entries(const Inode& dir);
  // True when the inode was allocated in the child's epoch.
  bool is_new(const Inode& n) const {
    return n.rec_epoch == sb_.epoch && (n.rec_flags & kRecNew) != 0;
  }

 private:
  bool data_block(uint64_t b) const { return b >= sb_.data_start && b < sb_.nblocks; }
  Result<uint64_t> table_entry(uint64_t table, uint64_t index);

  RegionReader& r_;
  Super sb_{};
  std::unordered_map<uint32_t, Inode> inodes_;
  struct Table {
    uint64_t bno = 0;  // 0: empty; ptrs is read only after a block filled it
    std::array<uint64_t, kPtrsPerBlock> ptrs;
  };
  // Not value-initialised: zeroing its 12 KiB on every join wrote three
  // stack pages that a fork shares with the newest space, each a
  // copy-on-write fault in the master.
  std::array<Table, 3> tables_;
  size_t next_table_ = 0;
};

}  // namespace detux::fs
