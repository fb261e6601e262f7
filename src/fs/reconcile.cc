// reconcile.cc: bringing a joined child's file-system changes into its
// parent, per inode and per name, as Determinator does.
//
// What the child changed is on its changed list (alloc.cc), so a join costs
// what the child changed, never the size of the file system.  For each
// changed inode the child recorded, at its first change, the version and
// size it had at the fork (the *base*), and for each changed directory a
// shadow copy of its entries at the fork.
//
// Names first.  Each changed directory of the child is diffed against its
// shadow (a new directory against nothing).  For every name that differs,
// with b the child's base entry, c the child's entry and p the parent's:
//   - the parent left the name alone (p is b, the same file): the child's
//     change applies: add, replace or remove;
//   - both created a directory of that name: they are merged (the child's
//     directory's contents are added to the parent's);
//   - otherwise both changed the name: a conflict, reported; a file of the
//     parent's there is marked conflicted; the parent's entry stays.
// New inodes of the child get fresh inode numbers and blocks in the parent.
// Additions run first, parents before children (by depth in the child's
// tree), so that a new directory exists before its contents are added and a
// renamed file gains its new name before it loses its old one; removals run
// after, deepest first, so that "rm -r" empties a directory before removing
// it.  A directory moved by the child is taken out of wherever it is in the
// parent before it is put in its new place, so it is never named twice, and
// a move that would make a cycle is a conflict.
//
// Then contents, for each regular file the child changed, with the base
// (version v, size s) the child recorded:
//   - the parent's file is still at (v, s): the child's side wins (its
//     appended bytes are added, or its whole content taken);
//   - both only appended (versions still v): the child's bytes past s are
//     appended after the parent's, so several children joined in order give
//     the parent's appends, then each child's, in join order;
//   - otherwise both changed it: the parent's file is marked conflicted and
//     reported; opening it fails until it is truncated to 0 or removed.
//
// The child's region is read through ChildView, which checks everything.
// Changed files' block trees are checked before anything changes; a
// malformed directory found later stops the join with -EIO part way, the
// parent sound but only partly reconciled.
// Changes to the parent go through the Fs primitives, so the parent stays
// sound and, if it is itself a child, records them for its own join.
#include <errno.h>
#include <stddef.h>

#include <algorithm>
#include <cstring>
#include <unordered_map>
#include <vector>

#include "fs/child_view.h"
#include "fs/fs.h"

namespace detux::fs {

class Reconciler {
 public:
  Reconciler(Fs& parent, RegionReader& child) : p_(parent), c_(child) {}
  Result<JoinReport> run();

 private:
  struct NameOp {
    uint32_t pdir;  // the parent's directory
    std::string name;
    uint32_t base, now;  // the child's inodes (0: no entry)
  };

  Status collect();
  Status check_tree(const Inode& n);
  Status diff_dir(uint32_t cdir, const Inode& cn);
  Status apply_add(const NameOp& op);
  Status apply_remove(const NameOp& op);
  Status copy_content(uint32_t cino, const Inode& cn);
  Status take_all(uint32_t pino, const Inode& cn);
  Status append_tail(uint32_t pino, const Inode& cn, uint64_t from);

  bool same_file(uint32_t cino, uint32_t pino);
  Result<uint32_t> target_for(uint32_t cino, uint32_t pdir, const NameOp& op);
  Status move_dir_out(uint32_t pino);
  uint32_t parent_dir_of(uint32_t cdir, const Inode& cn);
  void conflict(std::string path, std::string what, uint32_t mark = 0);
  std::string path_in_parent(uint32_t pino);
  std::string path_of_name(uint32_t pdir, const std::string& name);

  Fs& p_;
  ChildView c_;
  JoinReport report_;
  std::vector<std::pair<uint32_t, uint32_t>> dirs_;  // (depth, child ino)
  std::vector<uint32_t> files_;
  std::unordered_map<uint32_t, uint32_t> new_map_;  // child's new inode -> parent's
  std::vector<NameOp> adds_, removes_;
  std::vector<uint32_t> unlinked_;  // parent files that lost a name
};

// ---- collecting what changed ----------------------------------------------

Status Reconciler::collect() {
  DETUX_TRY(c_.open(p_.sb()));
  uint32_t ino = c_.sb().changed_head;
  for (uint32_t steps = 0; ino != 0; ++steps) {
    if (steps > c_.sb().ninodes) return err_status(-EIO);  // a loop
    auto n = c_.inode(ino);
    if (!n.ok()) return Err{n.err()};
    if (n->rec_epoch != c_.sb().epoch) return err_status(-EIO);
    // A removed directory's base entries are removals too ("rm -r").
    bool removed_dir = n->state == kDead && !c_.is_new(*n) && n->rec_shadow != 0;
    if ((n->state == kLive || removed_dir) && n->type == kTypeDir) {
      uint32_t depth = 0;
      for (uint32_t d = ino; d != kRootIno; ++depth) {
        auto dn = c_.inode(d);
        if (!dn.ok() || depth > c_.sb().ninodes) return err_status(-EIO);
        d = dn->parent;
      }
      dirs_.push_back({depth, ino});
    } else if (n->state == kLive && n->type == kTypeFile) {
      DETUX_TRY(check_tree(*n));
      files_.push_back(ino);
    }
    ino = n->rec_next;
  }
  std::sort(dirs_.begin(), dirs_.end());
  return ok_status();
}

// Follows every block pointer of a changed file once, so that a malformed
// child is refused before anything in the parent changes.
Status Reconciler::check_tree(const Inode& n) {
  uint64_t count = (n.size + kBlockSize - 1) / kBlockSize;
  for (uint64_t fb = 0; fb < count; ++fb) {
    auto b = c_.bmap(n, fb);
    if (!b.ok()) return Err{b.err()};
  }
  return ok_status();
}

bool Reconciler::same_file(uint32_t cino, uint32_t pino) {
  if (cino == 0 || cino != pino || pino >= p_.sb().ninodes) return false;
  auto cn = c_.inode(cino);
  if (!cn.ok() || c_.is_new(*cn)) return false;
  const Inode& pn = p_.inode(pino);
  return pn.state == kLive && pn.gen == cn->gen && pn.type == cn->type;
}

// The parent's directory for a changed directory of the child, or 0.
uint32_t Reconciler::parent_dir_of(uint32_t cdir, const Inode& cn) {
  if (c_.is_new(cn)) {
    auto it = new_map_.find(cdir);
    return it == new_map_.end() ? 0 : it->second;
  }
  return same_file(cdir, cdir) ? cdir : 0;
}

// Queues the name operations that turn the directory's base into its now.
Status Reconciler::diff_dir(uint32_t cdir, const Inode& cn) {
  uint32_t pdir = parent_dir_of(cdir, cn);
  if (pdir == 0) {
    if (!c_.is_new(cn)) conflict("(a directory)", "changed in the child, removed in the parent");
    return ok_status();
  }
  std::vector<ChildEntry> base;
  if (!c_.is_new(cn)) {
    if (cn.rec_shadow == 0) return ok_status();  // entries unchanged
    auto sh = c_.inode(cn.rec_shadow);
    if (!sh.ok() || sh->state != kShadow) return err_status(-EIO);
    auto b = c_.entries(*sh);
    if (!b.ok()) return Err{b.err()};
    base = std::move(*b);
  }
  auto now = c_.entries(cn);
  if (!now.ok()) return Err{now.err()};
  size_t i = 0, j = 0;
  while (i < base.size() || j < now->size()) {
    int cmp = i == base.size() ? 1 : j == now->size() ? -1 : base[i].name.compare((*now)[j].name);
    if (cmp < 0) {
      removes_.push_back({pdir, base[i].name, base[i].ino, 0});
      ++i;
    } else if (cmp > 0) {
      adds_.push_back({pdir, (*now)[j].name, 0, (*now)[j].ino});
      ++j;
    } else {
      if (base[i].ino != (*now)[j].ino) adds_.push_back({pdir, base[i].name, base[i].ino, (*now)[j].ino});
      ++i;
      ++j;
    }
  }
  return ok_status();
}

// ---- names -----------------------------------------------------------------

// Takes a directory out of its current place in the parent.
Status Reconciler::move_dir_out(uint32_t pino) {
  uint32_t from = p_.inode(pino).parent;
  uint64_t count = p_.dir_count(from);
  for (uint64_t k = 0; k < count; ++k) {
    const Dirent& e = p_.dirent_at(from, k);
    if (e.ino == pino) return p_.dir_remove(from, std::string(e.name, e.name_len));
  }
  DETUX_ASSERT(!"a directory is missing from its parent");
  return ok_status();
}

// The parent's inode the child's entry should name, made if new; 0 after a
// conflict.
Result<uint32_t> Reconciler::target_for(uint32_t cino, uint32_t pdir, const NameOp& op) {
  auto cn = c_.inode(cino);
  if (!cn.ok()) return Err{cn.err()};
  if (cn->state != kLive) return Err{-EIO};
  if (!c_.is_new(*cn)) {
    if (!same_file(cino, cino)) {
      conflict(path_of_name(pdir, op.name), "renamed or linked in the child, removed in the parent");
      return uint32_t{0};
    }
    if (cn->type == kTypeDir) {
      if (p_.is_ancestor(cino, pdir)) {
        conflict(path_of_name(pdir, op.name), "moving this directory here would make a cycle");
        return uint32_t{0};
      }
      DETUX_TRY(move_dir_out(cino));
    }
    return cino;
  }
  if (auto it = new_map_.find(cino); it != new_map_.end()) {
    // A second link.  A directory has one name: a child whose entries give
    // one two is damaged (or hostile), and its join is refused here, before
    // the parent's tree could get a second name or a cycle.
    if (cn->type == kTypeDir) return Err{-EIO};
    return it->second;
  }
  auto made = p_.alloc_inode(cn->type, cn->perm);
  if (!made.ok()) return made;
  if (cn->type == kTypeDir) p_.inode(*made).nlink = 2;
  new_map_[cino] = *made;
  return made;
}

Status Reconciler::apply_add(const NameOp& op) {
  auto found = p_.lookup(op.pdir, op.name);
  uint32_t p = found.ok() ? *found : 0;
  auto cn = c_.inode(op.now);
  if (!cn.ok()) return Err{cn.err()};
  bool untouched = op.base ? same_file(op.base, p) : p == 0;
  if (!untouched) {
    auto it = new_map_.find(op.now);
    if (op.base == 0 && p != 0 && cn->type == kTypeDir && p_.inode(p).type == kTypeDir &&
        c_.is_new(*cn) && it == new_map_.end()) {
      new_map_[op.now] = p;  // both made this directory: merge them
      return ok_status();
    }
    if ((it != new_map_.end() && it->second == p) || (p == op.now && same_file(op.now, p)))
      return ok_status();  // the same change on both sides
    conflict(path_of_name(op.pdir, op.name), "created or replaced on both sides", p);
    return ok_status();
  }
  if (p != 0 && p_.inode(p).type == kTypeDir) {
    auto old = c_.inode(p);
    if (p_.dir_count(p) != 0 || p_.inode(p).opens != 0 || !old.ok() || old->state == kLive) {
      conflict(path_of_name(op.pdir, op.name), "directory replaced in the child, changed in the parent");
      return ok_status();
    }
  }
  // The new name may need a block for the directory (and one for its map):
  // refused now rather than after target_for() has moved a directory out of
  // its old parent or made an inode that no name would then hold.
  if (p_.sb().free_blocks < 2) return Err{-ENOSPC};
  auto target = target_for(op.now, op.pdir, op);
  if (!target.ok()) return Err{target.err()};
  if (*target == 0) return ok_status();
  if (p != 0) {
    DETUX_TRY(p_.dir_remove(op.pdir, op.name));
    if (p_.inode(p).type == kTypeDir) {
      p_.inode(p).nlink = 0;
      p_.release_inode(p);
    } else {
      unlinked_.push_back(p);
    }
  }
  Status st = p_.dir_insert(op.pdir, op.name, *target);
  if (!st.ok()) return st;
  ++report_.names_applied;
  return ok_status();
}

Status Reconciler::apply_remove(const NameOp& op) {
  auto found = p_.lookup(op.pdir, op.name);
  if (!found.ok()) return ok_status();  // removed on both sides (or moved away)
  uint32_t p = *found;
  if (!same_file(op.base, p)) {
    conflict(path_of_name(op.pdir, op.name), "removed in the child, replaced in the parent");
    return ok_status();
  }
  auto cn = c_.inode(op.base);
  if (!cn.ok()) return Err{cn.err()};
  if (p_.inode(p).type == kTypeDir) {
    if (cn->state == kLive) return ok_status();  // moved in the child; the move failed
    if (p_.dir_count(p) != 0 || p_.inode(p).opens != 0) {
      conflict(path_of_name(op.pdir, op.name), "removed in the child, not empty or open in the parent");
      return ok_status();
    }
    DETUX_TRY(p_.dir_remove(op.pdir, op.name));
    p_.inode(p).nlink = 0;
    p_.release_inode(p);
  } else {
    DETUX_TRY(p_.dir_remove(op.pdir, op.name));
    unlinked_.push_back(p);
  }
  ++report_.names_applied;
  return ok_status();
}

// ---- contents --------------------------------------------------------------

// Replaces the parent's content of pino by the child's.  The blocks it
// needs are counted first, against the blocks free now (not counting those
// the parent's old content will free): running out half-way would leave a
// file of size 0 holding blocks, which the next load refuses.
Status Reconciler::take_all(uint32_t pino, const Inode& cn) {
  const uint64_t count = (cn.size + kBlockSize - 1) / kBlockSize;
  std::vector<uint64_t> cbs(count);  // the child's blocks, read once (0: a hole)
  uint64_t data = 0;
  for (uint64_t fb = 0; fb < count; ++fb) {
    auto cb = c_.bmap(cn, fb);
    if (!cb.ok()) return Err{cb.err()};
    cbs[fb] = *cb;
    data += *cb != 0;
  }
  uint64_t maps = 0;  // indirect blocks, at most
  if (count > kNDirect) maps += 1;
  if (count > kNDirect + kPtrsPerBlock)
    maps += 1 + (count - kNDirect - kPtrsPerBlock + kPtrsPerBlock - 1) / kPtrsPerBlock;
  if (data + maps > p_.sb().free_blocks) return Err{-ENOSPC};
  DETUX_TRY(p_.touch(pino));
  Inode& pn = p_.inode(pino);
  p_.free_blocks_from(pn, 0);
  pn.size = 0;
  for (uint64_t fb = 0; fb < count; ++fb) {
    if (cbs[fb] == 0) continue;
    auto pb = p_.bmap(p_.inode(pino), fb, true, false);
    if (!pb.ok()) return Err{pb.err()};
    DETUX_TRY(c_.read_block(cbs[fb], p_.block(*pb)));
    if (fb == count - 1 && cn.size % kBlockSize)  // keep the tail-is-zero invariant
      std::memset(p_.block(*pb) + cn.size % kBlockSize, 0, kBlockSize - cn.size % kBlockSize);
  }
  pn.size = cn.size;
  pn.version = cn.version;
  pn.flags = cn.flags & kFlagConflict;
  pn.mtime = pn.ctime;
  return ok_status();
}

// Appends the child's bytes [from, size) at the end of the parent's file.
Status Reconciler::append_tail(uint32_t pino, const Inode& cn, uint64_t from) {
  uint8_t buf[kBlockSize];
  for (uint64_t pos = from; pos < cn.size;) {
    uint64_t in_block = pos % kBlockSize;
    size_t chunk = static_cast<size_t>(std::min(kBlockSize - in_block, cn.size - pos));
    auto cb = c_.bmap(cn, pos / kBlockSize);
    if (!cb.ok()) return Err{cb.err()};
    if (*cb == 0)
      std::memset(buf, 0, kBlockSize);
    else
      DETUX_TRY(c_.read_block(*cb, buf));
    auto n = p_.write_data(pino, buf + in_block, chunk, p_.inode(pino).size);
    if (!n.ok()) return Err{n.err()};
    if (*n != chunk) return err_status(-ENOSPC);
    pos += chunk;
  }
  return ok_status();
}

Status Reconciler::copy_content(uint32_t cino, const Inode& cn) {
  if (c_.is_new(cn)) {
    auto it = new_map_.find(cino);
    if (it == new_map_.end()) return ok_status();  // never named in the parent
    ++report_.files_taken;
    return take_all(it->second, cn);
  }
  bool child_changed = cn.version != cn.base_version || cn.size != cn.base_size;
  if (!child_changed || cn.nlink == 0) return ok_status();
  if (!same_file(cino, cino)) {
    conflict("(inode " + std::to_string(cino) + " of the child)", "changed in the child, removed in the parent");
    return ok_status();
  }
  const Inode& pn = p_.inode(cino);
  bool child_appended = cn.version == cn.base_version && cn.size > cn.base_size;
  bool parent_same = pn.version == cn.base_version && pn.size == cn.base_size;
  bool parent_appended = pn.version == cn.base_version && pn.size > cn.base_size;
  if (parent_same && child_appended) {
    ++report_.files_appended;
    return append_tail(cino, cn, cn.base_size);
  }
  if (parent_same) {
    ++report_.files_taken;
    return take_all(cino, cn);
  }
  if (parent_appended && child_appended) {
    ++report_.files_appended;
    return append_tail(cino, cn, cn.base_size);
  }
  conflict(path_in_parent(cino), "changed on both sides", cino);
  Inode& n = p_.inode(cino);
  n.version = std::max(n.version, cn.version) + 1;
  return ok_status();
}

// ---- reports ---------------------------------------------------------------

void Reconciler::conflict(std::string path, std::string what, uint32_t mark) {
  if (mark != 0 && p_.inode(mark).type == kTypeFile && p_.touch(mark).ok())
    p_.inode(mark).flags |= kFlagConflict;
  report_.conflicts.push_back({std::move(path), std::move(what)});
}

std::string Reconciler::path_of_name(uint32_t pdir, const std::string& name) {
  std::string dir = path_in_parent(pdir);
  return (dir == "/" ? "" : dir) + "/" + name;
}

// A path naming pino in the parent (for directories exact; for files, the
// name in the directory of its latest link).
std::string Reconciler::path_in_parent(uint32_t pino) {
  std::string path;
  for (uint32_t steps = 0; pino != kRootIno && steps < p_.sb().ninodes; ++steps) {
    uint32_t up = p_.inode(pino).parent;
    if (p_.inode(up).state != kLive || p_.inode(up).type != kTypeDir) break;  // a stale hint
    std::string name;
    for (uint64_t k = 0; k < p_.dir_count(up) && name.empty(); ++k) {
      const Dirent& e = p_.dirent_at(up, k);
      if (e.ino == pino) name.assign(e.name, e.name_len);
    }
    if (name.empty()) return "(inode " + std::to_string(pino) + ")" + path;
    path = "/" + name + path;
    pino = up;
  }
  if (pino != kRootIno) return "(inode " + std::to_string(pino) + ")" + path;
  return path.empty() ? "/" : path;
}

// ---- the whole join --------------------------------------------------------

Result<JoinReport> Reconciler::run() {
  DETUX_TRY(collect());
  for (const auto& [depth, cdir] : dirs_) {
    (void)depth;
    auto cn = c_.inode(cdir);
    if (!cn.ok()) return Err{cn.err()};
    // Additions of shallower directories may have mapped this one: diff
    // lazily, in depth order, applying additions as they come.
    size_t first = adds_.size();
    DETUX_TRY(diff_dir(cdir, *cn));
    for (size_t k = first; k < adds_.size(); ++k) DETUX_TRY(apply_add(adds_[k]));
  }
  for (auto it = removes_.rbegin(); it != removes_.rend(); ++it) DETUX_TRY(apply_remove(*it));
  for (uint32_t ino : unlinked_) p_.maybe_free(ino);
  for (uint32_t cino : files_) {
    auto cn = c_.inode(cino);
    if (!cn.ok()) return Err{cn.err()};
    DETUX_TRY(copy_content(cino, *cn));
  }
  p_.sb().clock = std::max(p_.sb().clock, c_.sb().clock) + 1;
  return report_;
}

namespace {

// Most children change nothing in the file system: an empty changed list,
// and a clock not ahead of the parent's.  Nothing of such a child is taken,
// so its join reads those fields and builds no Reconciler, whose 16 KiB
// frame (the child's superblock and block tables) the compiler probes page
// by page: four stack pages that a fork shares with the newest space, so
// four copy-on-write faults in the master at every join.
bool child_changed_nothing(const Fs& parent, RegionReader& child) {
  struct {
    uint64_t clock, epoch;
    uint32_t changed_head, changed_count;
  } tail;
  static_assert(offsetof(Super, epoch) == offsetof(Super, clock) + 8 &&
                offsetof(Super, changed_head) == offsetof(Super, clock) + 16 &&
                offsetof(Super, changed_count) == offsetof(Super, clock) + 20);
  if (!child.read(offsetof(Super, clock), &tail, sizeof tail).ok()) return false;
  return tail.changed_head == 0 && tail.clock <= parent.super().clock;
}

[[gnu::noinline]] Result<JoinReport> reconcile_changes(Fs& parent, RegionReader& child) {
  return Reconciler(parent, child).run();
}

}  // namespace

Result<JoinReport> reconcile(Fs& parent, RegionReader& child) {
  if (child_changed_nothing(parent, child)) return JoinReport{};
  return reconcile_changes(parent, child);
}

}  // namespace detux::fs
