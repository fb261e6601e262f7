// ops.cc: the name operations of a file system: mkdir, rmdir, unlink, link,
// rename, truncate, stat, readdir.
//
// Each is a short sequence of the entry primitives in dir.cc, ordered so
// that no inode is ever left with a link count of zero while it is still
// meant to be reachable (rename inserts the new name before it removes the
// old one).  A file whose last name goes away while it is open lives on as
// an orphan until its last descriptor closes (fd.cc), as in POSIX.
#include <errno.h>
#include <string.h>

#include "fs/fs.h"

namespace detux::fs {

void Fs::maybe_free(uint32_t ino) {
  Inode& n = inode(ino);
  if (n.state == kLive && n.type == kTypeFile && n.nlink == 0 && n.opens == 0)
    release_inode(ino);
}

Stat Fs::stat_of(uint32_t ino) {
  const Inode& n = inode(ino);
  Stat s;
  s.ino = ino;
  s.gen = n.gen;
  s.type = n.type;
  s.perm = n.perm;
  s.nlink = n.nlink;
  s.size = n.size;
  s.blocks = n.nblocks;
  s.version = n.version;
  s.mtime = n.mtime;
  s.ctime = n.ctime;
  s.conflicted = (n.flags & kFlagConflict) != 0;
  return s;
}

Result<uint32_t> Fs::create_file(const Parent& where, uint32_t perm) {
  auto ino = alloc_inode(kTypeFile, perm);
  if (!ino.ok()) return ino;
  Status st = dir_insert(where.dir, where.name, *ino);
  if (!st.ok()) {
    release_inode(*ino);
    return Err{st.err()};
  }
  return ino;
}

Status Fs::mkdir(std::string_view path, uint32_t perm) {
  auto p = resolve_parent(path);
  if (!p.ok()) return Err{p.err() == -EINVAL ? -EEXIST : p.err()};
  if (lookup(p->dir, p->name).ok()) return Err{-EEXIST};
  auto ino = alloc_inode(kTypeDir, perm);
  if (!ino.ok()) return Err{ino.err()};
  Status st = dir_insert(p->dir, p->name, *ino);
  if (!st.ok()) {
    release_inode(*ino);
    return st;
  }
  inode(*ino).nlink = 2;
  return ok_status();
}

Status Fs::rmdir(std::string_view path) {
  auto p = resolve_parent(path);
  if (!p.ok()) return Err{p.err() == -EINVAL ? -EBUSY : p.err()};
  auto ino = lookup(p->dir, p->name);
  if (!ino.ok()) return Err{ino.err()};
  Inode& n = inode(*ino);
  if (n.type != kTypeDir) return Err{-ENOTDIR};
  if (dir_count(*ino) != 0) return Err{-ENOTEMPTY};
  if (n.opens != 0) return Err{-EBUSY};
  DETUX_TRY(dir_remove(p->dir, p->name));
  inode(*ino).nlink = 0;
  release_inode(*ino);
  return ok_status();
}

Status Fs::unlink(std::string_view path) {
  auto p = resolve_parent(path);
  if (!p.ok()) return Err{p.err()};
  auto ino = lookup(p->dir, p->name);
  if (!ino.ok()) return Err{ino.err()};
  if (inode(*ino).type == kTypeDir) return Err{-EISDIR};
  DETUX_TRY(dir_remove(p->dir, p->name));
  maybe_free(*ino);
  return ok_status();
}

Status Fs::link(std::string_view existing, std::string_view new_path) {
  auto src = resolve(existing);
  if (!src.ok()) return Err{src.err()};
  if (inode(*src).type == kTypeDir) return Err{-EPERM};
  auto p = resolve_parent(new_path);
  if (!p.ok()) return Err{p.err()};
  return dir_insert(p->dir, p->name, *src);
}

// May a rename put src where dst is?
static Status check_replace(const Inode& src, const Inode& dst, uint64_t dst_entries) {
  if (src.type == kTypeDir) {
    if (dst.type != kTypeDir) return Err{-ENOTDIR};
    if (dst_entries != 0) return Err{-ENOTEMPTY};
    if (dst.opens != 0) return Err{-EBUSY};
  } else if (dst.type == kTypeDir) {
    return Err{-EISDIR};
  }
  return ok_status();
}

Status Fs::rename(std::string_view from, std::string_view to) {
  auto pf = resolve_parent(from);
  if (!pf.ok()) return Err{pf.err()};
  auto src = lookup(pf->dir, pf->name);
  if (!src.ok()) return Err{src.err()};
  auto pt = resolve_parent(to);
  if (!pt.ok()) return Err{pt.err()};
  auto dst = lookup(pt->dir, pt->name);
  if (dst.ok() && *dst == *src) return ok_status();
  if (inode(*src).type == kTypeDir && is_ancestor(*src, pt->dir)) return Err{-EINVAL};
  if (dst.ok()) {
    DETUX_TRY(check_replace(inode(*src), inode(*dst), dir_count(*dst)));
    DETUX_TRY(dir_remove(pt->dir, pt->name));
    if (inode(*dst).type == kTypeDir) {
      inode(*dst).nlink = 0;
      release_inode(*dst);
    } else {
      maybe_free(*dst);
    }
  } else if (dst.err() != -ENOENT) {
    return Err{dst.err()};
  }
  DETUX_TRY(dir_insert(pt->dir, pt->name, *src));
  return dir_remove(pf->dir, pf->name);
}

Status Fs::truncate(std::string_view path, uint64_t size) {
  auto ino = resolve(path);
  if (!ino.ok()) return Err{ino.err()};
  if (inode(*ino).type == kTypeDir) return Err{-EISDIR};
  return resize(*ino, size);
}

Result<Stat> Fs::stat(std::string_view path) {
  auto ino = resolve(path);
  if (!ino.ok()) return Err{ino.err()};
  return stat_of(*ino);
}

Result<std::vector<DirEntry>> Fs::readdir(std::string_view path) {
  auto ino = resolve(path);
  if (!ino.ok()) return Err{ino.err()};
  if (inode(*ino).type != kTypeDir) return Err{-ENOTDIR};
  std::vector<DirEntry> out;
  uint64_t count = dir_count(*ino);
  out.reserve(count);
  for (uint64_t i = 0; i < count; ++i) {
    const Dirent& e = dirent_at(*ino, i);
    out.push_back({std::string(e.name, e.name_len), e.ino, e.type});
  }
  return out;
}

}  // namespace detux::fs

namespace detux::fs {

std::string error_text(long err) {
  if (err == -kEConflict) return "ECONFLICT (conflicting changes at a join; truncate or remove it)";
  const char* name = strerrorname_np(static_cast<int>(-err));
  return name ? name : "error " + std::to_string(err);
}

}  // namespace detux::fs
