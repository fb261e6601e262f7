// dir.cc: directory entries and path names.
//
// A directory's data is a dense array of 128-byte Dirents, sorted by name
// in byte order (shorter first on a common prefix).  Lookup is a binary
// search; insert and remove shift the tail of the array by one entry, a
// memmove per block.  Sorted storage is what makes readdir deterministic
// without sorting, and what lets the reconciler diff a directory against
// its base in one merge pass.
//
// Link accounting lives here, next to the entries: inserting an entry for a
// file bumps the file's nlink, for a directory it bumps the *containing*
// directory's nlink (the subdirectory's ".."), and removing undoes it.
// Nothing here frees an inode: callers decide (ops.cc, reconcile.cc).
#include <errno.h>

#include <cstring>

#include "fs/fs.h"

namespace detux::fs {

namespace {

int compare(const Dirent& e, std::string_view name) {
  size_t n = std::min<size_t>(e.name_len, name.size());
  int c = std::memcmp(e.name, name.data(), n);
  if (c != 0) return c;
  return e.name_len < name.size() ? -1 : (e.name_len > name.size() ? 1 : 0);
}

bool valid_name(std::string_view name) {
  return !name.empty() && name.size() <= kNameMax && name != "." && name != ".." &&
         name.find('/') == std::string_view::npos && name.find('\0') == std::string_view::npos;
}

}  // namespace

Dirent& Fs::dirent_at(uint32_t dir, uint64_t i) {
  auto b = bmap(inode(dir), i / kDirentsPerBlock, false);
  DETUX_ASSERT(b.ok() && *b != 0);
  return reinterpret_cast<Dirent*>(block(*b))[i % kDirentsPerBlock];
}

uint64_t Fs::dir_find(uint32_t dir, std::string_view name, bool* found) {
  uint64_t lo = 0, hi = dir_count(dir);
  while (lo < hi) {
    uint64_t mid = lo + (hi - lo) / 2;
    int c = compare(dirent_at(dir, mid), name);
    if (c == 0) {
      *found = true;
      return mid;
    }
    if (c < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  *found = false;
  return lo;
}

Result<uint32_t> Fs::lookup(uint32_t dir, std::string_view name) {
  if (inode(dir).type != kTypeDir) return Err{-ENOTDIR};
  if (name.size() > kNameMax) return Err{-ENAMETOOLONG};
  bool found;
  uint64_t i = dir_find(dir, name, &found);
  if (!found) return Err{-ENOENT};
  return dirent_at(dir, i).ino;
}

Status Fs::dir_insert(uint32_t dir, std::string_view name, uint32_t ino) {
  if (!valid_name(name)) return Err{name.size() > kNameMax ? -ENAMETOOLONG : -EINVAL};
  bool found;
  uint64_t pos = dir_find(dir, name, &found);
  if (found) return Err{-EEXIST};
  uint64_t count = dir_count(dir);
  DETUX_TRY(touch_entries(dir));
  DETUX_TRY(touch(ino));
  if (count % kDirentsPerBlock == 0) {
    auto b = bmap(inode(dir), count / kDirentsPerBlock, true, true);
    if (!b.ok()) return Err{b.err()};
  }
  inode(dir).size += sizeof(Dirent);
  for (uint64_t i = count; i > pos;) {  // open a hole at pos
    uint64_t first = std::max(pos, i - i % kDirentsPerBlock);
    if (first < i) {
      Dirent* e = &dirent_at(dir, first);
      std::memmove(e + 1, e, (i - first) * sizeof(Dirent));
      i = first;
    } else {
      dirent_at(dir, i) = dirent_at(dir, i - 1);
      --i;
    }
  }
  Inode& target = inode(ino);
  Dirent& e = dirent_at(dir, pos);
  std::memset(&e, 0, sizeof e);
  e.ino = ino;
  e.type = target.type;
  e.name_len = static_cast<uint8_t>(name.size());
  std::memcpy(e.name, name.data(), name.size());
  if (target.type == kTypeDir)
    ++inode(dir).nlink;
  else
    ++target.nlink;
  target.parent = dir;
  inode(dir).mtime = inode(dir).ctime;
  return ok_status();
}

Status Fs::dir_remove(uint32_t dir, std::string_view name) {
  bool found;
  uint64_t pos = dir_find(dir, name, &found);
  if (!found) return Err{-ENOENT};
  uint32_t ino = dirent_at(dir, pos).ino;
  DETUX_TRY(touch_entries(dir));
  DETUX_TRY(touch(ino));
  uint64_t count = dir_count(dir);
  for (uint64_t i = pos; i + 1 < count;) {  // close the hole at pos
    uint64_t end = std::min(count, (i / kDirentsPerBlock + 1) * kDirentsPerBlock);
    if (i + 1 < end) {
      Dirent* e = &dirent_at(dir, i);
      std::memmove(e, e + 1, (end - i - 1) * sizeof(Dirent));
      i = end - 1;
    } else {
      dirent_at(dir, i) = dirent_at(dir, i + 1);
      ++i;
    }
  }
  std::memset(&dirent_at(dir, count - 1), 0, sizeof(Dirent));
  Inode& d = inode(dir);
  d.size -= sizeof(Dirent);
  if ((count - 1) % kDirentsPerBlock == 0) free_blocks_from(d, (count - 1) / kDirentsPerBlock);
  d.mtime = d.ctime;
  Inode& target = inode(ino);
  if (target.type == kTypeDir) {
    DETUX_ASSERT(d.nlink > 2);
    --d.nlink;
  } else {
    DETUX_ASSERT(target.nlink > 0);
    --target.nlink;
  }
  return ok_status();
}

Result<uint32_t> Fs::resolve(std::string_view path) {
  uint32_t cur = kRootIno;
  size_t i = 0;
  while (i < path.size()) {
    size_t j = path.find('/', i);
    if (j == std::string_view::npos) j = path.size();
    std::string_view comp = path.substr(i, j - i);
    i = j + 1;
    if (comp.empty() || comp == ".") continue;
    if (inode(cur).type != kTypeDir) return Err{-ENOTDIR};
    if (comp == "..") {
      cur = inode(cur).parent;
      continue;
    }
    auto next = lookup(cur, comp);
    if (!next.ok()) return next;
    cur = *next;
  }
  return cur;
}

Result<Fs::Parent> Fs::resolve_parent(std::string_view path) {
  while (!path.empty() && path.back() == '/') path.remove_suffix(1);
  size_t slash = path.rfind('/');
  std::string_view dir = slash == std::string_view::npos ? "" : path.substr(0, slash);
  std::string_view name = slash == std::string_view::npos ? path : path.substr(slash + 1);
  if (name.empty() || name == "." || name == "..") return Err{-EINVAL};
  if (name.size() > kNameMax) return Err{-ENAMETOOLONG};
  auto d = resolve(dir);
  if (!d.ok()) return Err{d.err()};
  if (inode(*d).type != kTypeDir) return Err{-ENOTDIR};
  return Parent{*d, std::string(name)};
}

bool Fs::is_ancestor(uint32_t maybe_ancestor, uint32_t dir) {
  for (uint32_t steps = 0; steps < sb().ninodes; ++steps) {
    if (dir == maybe_ancestor) return true;
    if (dir == kRootIno) return false;
    dir = inode(dir).parent;
  }
  DETUX_ASSERT(!"a directory's parents do not lead to the root");
  return false;
}

}  // namespace detux::fs
