// child_view.cc: see child_view.h.
#include "fs/child_view.h"

#include <errno.h>

#include <cstring>

namespace detux::fs {

Status ChildView::open(const Super& parent) {
  DETUX_TRY(r_.read(0, &sb_, sizeof sb_));
  if (!super_layout_ok(sb_) || sb_.nblocks != parent.nblocks || sb_.ninodes != parent.ninodes)
    return err_status(-EIO);
  if (sb_.changed_count > sb_.ninodes || sb_.changed_head >= sb_.ninodes) return err_status(-EIO);
  return ok_status();
}

Result<Inode> ChildView::inode(uint32_t ino) {
  if (ino == 0 || ino >= sb_.ninodes) return Err{-EIO};
  auto it = inodes_.find(ino);
  if (it != inodes_.end()) return it->second;
  Inode n;
  DETUX_TRY(r_.read(sb_.inode_start * kBlockSize + uint64_t{ino} * sizeof(Inode), &n, sizeof n));
  bool ok = n.state <= kShadow && n.type <= kTypeDir && n.size <= kMaxFileSize &&
            (n.state == kFree || n.type != kTypeNone) &&
            (n.type != kTypeDir || n.size % sizeof(Dirent) == 0) && n.parent < sb_.ninodes;
  if (!ok) return Err{-EIO};
  inodes_.emplace(ino, n);
  return n;
}

Result<uint64_t> ChildView::table_entry(uint64_t table, uint64_t index) {
  if (!data_block(table)) return Err{-EIO};
  for (const Table& t : tables_)
    if (t.bno == table) return t.ptrs[index];
  Table& t = tables_[next_table_];
  next_table_ = (next_table_ + 1) % tables_.size();
  t.bno = 0;
  DETUX_TRY(r_.read(table * kBlockSize, t.ptrs.data(), kBlockSize));
  t.bno = table;
  return t.ptrs[index];
}

Result<uint64_t> ChildView::bmap(const Inode& n, uint64_t fblock) {
  uint64_t b;
  if (fblock < kNDirect) {
    b = n.direct[fblock];
  } else if (fblock < kNDirect + kPtrsPerBlock) {
    if (n.indirect == 0) return uint64_t{0};
    auto e = table_entry(n.indirect, fblock - kNDirect);
    if (!e.ok()) return e;
    b = *e;
  } else if (fblock < kMaxFileBlocks) {
    uint64_t f = fblock - kNDirect - kPtrsPerBlock;
    if (n.dindirect == 0) return uint64_t{0};
    auto mid = table_entry(n.dindirect, f / kPtrsPerBlock);
    if (!mid.ok() || *mid == 0) return mid;
    auto e = table_entry(*mid, f % kPtrsPerBlock);
    if (!e.ok()) return e;
    b = *e;
  } else {
    return Err{-EIO};
  }
  if (b != 0 && !data_block(b)) return Err{-EIO};
  return b;
}

Status ChildView::read_block(uint64_t bno, void* dst) {
  if (!data_block(bno)) return err_status(-EIO);
  return r_.read(bno * kBlockSize, dst, kBlockSize);
}

Result<std::vector<ChildEntry>> ChildView::entries(const Inode& dir) {
  std::vector<ChildEntry> out;
  uint64_t count = dir.size / sizeof(Dirent);
  out.reserve(count);
  Dirent blockbuf[kDirentsPerBlock];
  for (uint64_t k = 0; k < count; ++k) {
    if (k % kDirentsPerBlock == 0) {
      auto b = bmap(dir, k / kDirentsPerBlock);
      if (!b.ok()) return Err{b.err()};
      if (*b == 0) return Err{-EIO};
      DETUX_TRY(read_block(*b, blockbuf));
    }
    const Dirent& e = blockbuf[k % kDirentsPerBlock];
    if (e.name_len == 0 || e.name_len > kNameMax || e.ino == 0 || e.ino >= sb_.ninodes)
      return Err{-EIO};
    std::string name(e.name, e.name_len);
    if (name == "." || name == ".." || name.find('/') != std::string::npos ||
        name.find('\0') != std::string::npos)
      return Err{-EIO};
    if (!out.empty() && !(out.back().name < name)) return Err{-EIO};
    out.push_back({std::move(name), e.ino, e.type});
  }
  return out;
}

}  // namespace detux::fs
