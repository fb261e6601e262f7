// fd.cc: file descriptors, kept in the region itself.
//
// The descriptor table (layout.h FdTable) is part of the region, so it is
// per space and a forked child starts with a copy of its parent's open
// files, like a Unix fork.  Descriptors are chosen lowest-free from
// kFirstFd (0-2 are the console's, handled elsewhere), which makes the
// numbers a program sees depend only on what it did.  dup'd descriptors
// share one open file description (offset and flags), as in POSIX.  An
// inode counts the descriptions open on it, so that an unlinked file lives
// until its last close.
//
// Opening a file that a join marked conflicted fails with -DET_ECONFLICT,
// unless the open truncates it (O_TRUNC with write access), which resolves
// the conflict by rewriting the file.
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>

#include "fs/fs.h"

namespace detux::fs {

namespace {

constexpr int kKeptFlags = O_ACCMODE | O_APPEND;

bool can_read(const OpenFile& f) { return (f.flags & O_ACCMODE) != O_WRONLY; }
bool can_write(const OpenFile& f) { return (f.flags & O_ACCMODE) != O_RDONLY; }

int lowest_free_fd(const FdTable& t) {
  for (int fd = kFirstFd; fd < static_cast<int>(kMaxFds); ++fd)
    if (t.fd[fd] == 0) return fd;
  return -1;
}

int free_file_slot(const FdTable& t) {
  for (int i = 0; i < static_cast<int>(kMaxFds); ++i)
    if (t.files[i].ino == 0) return i;
  return -1;
}

}  // namespace

Result<OpenFile*> Fs::file_of(int fd) {
  if (fd < 0 || fd >= static_cast<int>(kMaxFds) || fdt().fd[fd] == 0) return Err{-EBADF};
  OpenFile* f = &fdt().files[fdt().fd[fd] - 1];
  DETUX_ASSERT(f->ino != 0 && f->refs > 0);
  return f;
}

Result<int> Fs::open(std::string_view path, int flags, uint32_t perm) {
  int acc = flags & O_ACCMODE;
  if (acc != O_RDONLY && acc != O_WRONLY && acc != O_RDWR) return Err{-EINVAL};
  int fd = lowest_free_fd(fdt());
  int slot = free_file_slot(fdt());
  if (fd < 0 || slot < 0) return Err{-EMFILE};
  auto ino = resolve(path);
  bool created = false;
  if (ino.ok() && (flags & O_CREAT) && (flags & O_EXCL)) return Err{-EEXIST};
  if (!ino.ok() && ino.err() == -ENOENT && (flags & O_CREAT)) {
    auto p = resolve_parent(path);
    if (!p.ok()) return Err{p.err()};
    ino = create_file(*p, perm);
    created = true;
  }
  if (!ino.ok()) return Err{ino.err()};
  Inode& n = inode(*ino);
  bool truncating = (flags & O_TRUNC) && acc != O_RDONLY;
  if (n.type == kTypeDir && (acc != O_RDONLY || (flags & O_TRUNC))) return Err{-EISDIR};
  if (!created && (n.flags & kFlagConflict) && !truncating) return Err{-kEConflict};
  if (truncating && n.type == kTypeFile && (n.size != 0 || (n.flags & kFlagConflict)))
    DETUX_TRY(resize(*ino, 0));
  OpenFile& f = fdt().files[slot];
  f.ino = *ino;
  f.flags = static_cast<uint32_t>(flags & kKeptFlags);
  f.offset = 0;
  f.refs = 1;
  f.gen = n.gen;
  ++n.opens;
  fdt().fd[fd] = static_cast<uint16_t>(slot + 1);
  return fd;
}

Result<size_t> Fs::read(int fd, void* buf, size_t len) {
  auto f = file_of(fd);
  if (!f.ok()) return Err{f.err()};
  auto n = pread(fd, buf, len, (*f)->offset);
  if (n.ok()) (*f)->offset += *n;
  return n;
}

Result<size_t> Fs::write(int fd, const void* buf, size_t len) {
  auto f = file_of(fd);
  if (!f.ok()) return Err{f.err()};
  if (can_write(**f) && ((*f)->flags & O_APPEND)) (*f)->offset = inode((*f)->ino).size;
  auto n = pwrite(fd, buf, len, (*f)->offset);
  if (n.ok()) (*f)->offset += *n;
  return n;
}

Result<size_t> Fs::pread(int fd, void* buf, size_t len, uint64_t offset) {
  auto f = file_of(fd);
  if (!f.ok()) return Err{f.err()};
  if (!can_read(**f)) return Err{-EBADF};
  if (inode((*f)->ino).type == kTypeDir) return Err{-EISDIR};
  return read_data((*f)->ino, buf, len, offset);
}

Result<size_t> Fs::pwrite(int fd, const void* buf, size_t len, uint64_t offset) {
  auto f = file_of(fd);
  if (!f.ok()) return Err{f.err()};
  if (!can_write(**f)) return Err{-EBADF};
  return write_data((*f)->ino, buf, len, offset);
}

Result<uint64_t> Fs::lseek(int fd, int64_t offset, int whence) {
  auto f = file_of(fd);
  if (!f.ok()) return Err{f.err()};
  int64_t from;
  switch (whence) {
    case SEEK_SET: from = 0; break;
    case SEEK_CUR: from = static_cast<int64_t>((*f)->offset); break;
    case SEEK_END: from = static_cast<int64_t>(inode((*f)->ino).size); break;
    default: return Err{-EINVAL};
  }
  int64_t pos;
  if (__builtin_add_overflow(from, offset, &pos) || pos < 0) return Err{-EINVAL};
  (*f)->offset = static_cast<uint64_t>(pos);
  return (*f)->offset;
}

Status Fs::close(int fd) {
  auto f = file_of(fd);
  if (!f.ok()) return Err{f.err()};
  fdt().fd[fd] = 0;
  OpenFile& of = **f;
  if (--of.refs > 0) return ok_status();
  uint32_t ino = of.ino;
  of = OpenFile{};
  Inode& n = inode(ino);
  DETUX_ASSERT(n.opens > 0);
  --n.opens;
  maybe_free(ino);
  return ok_status();
}

Result<Stat> Fs::fstat(int fd) {
  auto f = file_of(fd);
  if (!f.ok()) return Err{f.err()};
  return stat_of((*f)->ino);
}

Result<int> Fs::dup(int fd) {
  auto f = file_of(fd);
  if (!f.ok()) return Err{f.err()};
  int nfd = lowest_free_fd(fdt());
  if (nfd < 0) return Err{-EMFILE};
  fdt().fd[nfd] = fdt().fd[fd];
  ++(*f)->refs;
  return nfd;
}

Status Fs::ftruncate(int fd, uint64_t size) {
  auto f = file_of(fd);
  if (!f.ok()) return Err{f.err()};
  if (!can_write(**f) || inode((*f)->ino).type == kTypeDir) return Err{-EINVAL};
  return resize((*f)->ino, size);
}

}  // namespace detux::fs
