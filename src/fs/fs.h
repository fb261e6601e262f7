// fs.h: the deterministic file system of a space, as a pure data structure.
//
// An Fs is a handle on a region [base, base+size) that holds a whole file
// system (layout.h): superblock, block bitmap, inode table, data blocks and
// the owning space's descriptor table.  The handle is two words outside the
// region; the region stores no pointers.  So a forked space, whose region is
// a copy-on-write copy at the same address, simply keeps using its handle,
// and a copy of a region anywhere else is attached with Fs::attach.
//
// Nothing here knows about spaces or ptrace.  The kernel side uses three
// things:
//   - Fs::begin_child() in a child right after the fork, O(1);
//   - reconcile(parent, reader) in the parent at the join, reading the
//     child's region through a RegionReader (process_vm_readv in spaces,
//     memcpy in tests);
//   - save/load to move a file system between a region and a disk image.
//
// Every operation a program can make fail returns Result (negative errno);
// opening a file marked conflicted by a join gives -DET_ECONFLICT.  Broken
// invariants of the structure itself are DETUX_ASSERTs.  The region is the
// program's own memory and the program may scribble over it: operations on a
// live Fs trust it (as the C library trusts its own heap), but everything
// that reads a region or an image from someone else (reconcile, load, fsck)
// checks every number before using it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fs/layout.h"
#include "util/result.h"

namespace detux::fs {

// -DET_ECONFLICT without pulling in the public header's C API.
constexpr long kEConflict = 1001;

struct Stat {
  uint32_t ino = 0, gen = 0;
  uint8_t type = kTypeNone;  // kTypeFile or kTypeDir
  uint32_t perm = 0, nlink = 0;
  uint64_t size = 0, blocks = 0, version = 0, mtime = 0, ctime = 0;
  bool conflicted = false;
};

struct DirEntry {
  std::string name;
  uint32_t ino = 0;
  uint8_t type = kTypeNone;
};

// Reads bytes of another space's region (the child at a join), by offset
// from the start of that region.
class RegionReader {
 public:
  virtual ~RegionReader() = default;
  virtual Status read(uint64_t offset_in_region, void* dst, size_t len) = 0;
};

struct Conflict {
  std::string path;  // in the parent after the join
  std::string what;
};

struct JoinReport {
  std::vector<Conflict> conflicts;
  uint64_t files_taken = 0;     // child's version replaced the parent's
  uint64_t files_appended = 0;  // child's appended bytes added
  uint64_t names_applied = 0;   // directory entries added, replaced or removed
};

struct FormatOptions {
  uint32_t ninodes = 0;  // 0: one inode per 8 blocks (at least 64)
  bool region_is_zero = false;  // the caller guarantees zeros (fresh mmap): not cleared again
};

struct FsckReport {
  std::vector<std::string> problems;  // empty: the file system is sound
  uint64_t files = 0, dirs = 0, used_blocks = 0;
  bool ok() const { return problems.empty(); }
};

class Fs {
 public:
  Fs() = default;
  // Makes an empty file system (a root directory) in the region.  base must
  // be 4 KiB aligned and size at least 64 KiB; the tail of a size that is
  // not a whole number of blocks is left unused.
  static Result<Fs> format(void* base, size_t size, FormatOptions opt = {});
  // A handle on a region that already holds a file system (a copy of a
  // child's region, a fork).  Checks the superblock's layout only; use fsck
  // for the rest.
  static Result<Fs> attach(void* base, size_t size);

  void* base() const { return base_; }
  size_t size() const { return size_; }
  const Super& super() const { return *reinterpret_cast<const Super*>(base_); }

  // Names.  Paths are taken from the root whether or not they start with
  // '/'; "." and ".." resolve; names are at most kNameMax bytes.
  Status mkdir(std::string_view path, uint32_t perm = 0755);
  Status rmdir(std::string_view path);
  Status unlink(std::string_view path);
  Status link(std::string_view existing, std::string_view new_path);
  Status rename(std::string_view from, std::string_view to);
  Status truncate(std::string_view path, uint64_t size);
  Result<Stat> stat(std::string_view path);
  Result<std::vector<DirEntry>> readdir(std::string_view path);  // sorted by name

  // Descriptors, lowest free from kFirstFd.  Flags are Linux's O_* values:
  // O_RDONLY/O_WRONLY/O_RDWR, O_CREAT, O_EXCL, O_TRUNC, O_APPEND.
  Result<int> open(std::string_view path, int flags, uint32_t perm = 0644);
  Result<size_t> read(int fd, void* buf, size_t len);
  Result<size_t> write(int fd, const void* buf, size_t len);
  Result<size_t> pread(int fd, void* buf, size_t len, uint64_t offset);
  Result<size_t> pwrite(int fd, const void* buf, size_t len, uint64_t offset);
  Result<uint64_t> lseek(int fd, int64_t offset, int whence);
  Status close(int fd);
  Result<Stat> fstat(int fd);
  Result<int> dup(int fd);
  Status ftruncate(int fd, uint64_t size);

  // Called in a child right after the fork: starts recording what the child
  // changes (lazily, per inode, on first change).  O(1).
  void begin_child();

 private:
  friend class Reconciler;
  friend class Checker;
  friend class ImageIo;
  friend class Dir;

  struct Parent {
    uint32_t dir;
    std::string name;
  };

  Super& sb() { return *reinterpret_cast<Super*>(base_); }
  Inode& inode(uint32_t ino);
  uint8_t* block(uint64_t bno) { return static_cast<uint8_t*>(base_) + bno * kBlockSize; }
  FdTable& fdt() { return *reinterpret_cast<FdTable*>(block(sb().fd_start)); }
  uint64_t tick() { return ++sb().clock; }

  // alloc.cc: blocks, inodes, recording.
  Result<uint64_t> alloc_block(bool zero);
  void free_block(uint64_t bno);
  bool block_used(uint64_t bno);
  Result<uint32_t> alloc_inode(uint8_t type, uint32_t perm);
  void release_inode(uint32_t ino);
  bool reclaimable(const Inode& n) const;
  void reclaim(Inode& n);
  Status touch(uint32_t ino);
  Status touch_entries(uint32_t dir);
  Status shadow_dir(uint32_t ino);
  void collect_stale_shadows();

  // data.cc: file bytes.
  Result<uint64_t> bmap(Inode& n, uint64_t fblock, bool alloc, bool zero = true);
  Result<size_t> read_data(uint32_t ino, void* buf, size_t len, uint64_t off);
  Result<size_t> write_data(uint32_t ino, const void* buf, size_t len, uint64_t off);
  Status resize(uint32_t ino, uint64_t size);
  void free_blocks_from(Inode& n, uint64_t first);
  Status copy_blocks(uint32_t from, uint32_t to);

  // dir.cc: entries and paths.
  Result<uint32_t> resolve(std::string_view path);
  Result<Parent> resolve_parent(std::string_view path);
  Result<uint32_t> lookup(uint32_t dir, std::string_view name);
  Status dir_insert(uint32_t dir, std::string_view name, uint32_t ino);
  Status dir_remove(uint32_t dir, std::string_view name);
  uint64_t dir_count(uint32_t dir) { return inode(dir).size / sizeof(Dirent); }
  Dirent& dirent_at(uint32_t dir, uint64_t i);
  uint64_t dir_find(uint32_t dir, std::string_view name, bool* found);
  bool is_ancestor(uint32_t maybe_ancestor, uint32_t dir);

  // ops.cc
  void maybe_free(uint32_t ino);
  Stat stat_of(uint32_t ino);
  Result<uint32_t> create_file(const Parent& where, uint32_t perm);

  // fd.cc
  Result<OpenFile*> file_of(int fd);

  void* base_ = nullptr;
  size_t size_ = 0;
};

// Brings a joined child's changes into the parent (the rules are in
// reconcile.cc).  Conflicts are reported, not errors; an error (-EIO for a
// malformed child region, -ENOSPC) may leave the parent partly reconciled
// but always structurally sound.
Result<JoinReport> reconcile(Fs& parent, RegionReader& child);

// An exclusive lock on an image file, for one who will save it back (a
// `detux fs` command that changes it, or `detux run --fs`): a second writer
// waits, so that neither's save drops the other's change.  Readers take none:
// a save replaces the file whole.  The lock is the image file's own flock;
// save() moves it to the file it renames into place.
class ImageLock {
 public:
  ImageLock() = default;
  ImageLock(ImageLock&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  ImageLock& operator=(ImageLock&& o) noexcept;
  ImageLock(const ImageLock&) = delete;
  ~ImageLock();
  // Waits until no one else holds the image at path, then holds it; an
  // image that does not exist yet holds nothing.  Says on stderr that it
  // waits.
  Status take(const std::string& path, std::string* why = nullptr);

 private:
  friend class ImageIo;
  int fd_ = -1;
};

// Writes a compact image (only used blocks) atomically: a temporary file in
// the same directory, fsync, rename, fsync of the directory.  A path that is
// a symbolic link saves to its target.  With lock, the new file is locked
// before it is renamed into place and the lock moves to it.
Status save(const Fs& fs, const std::string& path, std::string* why = nullptr,
            ImageLock* lock = nullptr);
// Loads an image into [base, base+size), refusing anything corrupt,
// truncated or hostile with a message in *why.  The descriptor table comes
// back empty.
Result<Fs> load(const std::string& path, void* base, size_t size, std::string* why = nullptr);
// The bytes of the image file at path, no more than its header says it
// holds (a longer file is refused with a message in *why).
Result<std::vector<uint8_t>> read_image(const std::string& path, std::string* why = nullptr);
// Same as load, from bytes in memory (what the loader's fuzz target drives).
Result<Fs> load_bytes(const uint8_t* data, size_t len, void* base, size_t size,
                      std::string* why = nullptr);
// Rewrites the checksums of an image in memory to match its bytes, so that
// a fuzzer's mutations reach the structural checks.  False if the header's
// sizes do not fit the buffer.  For fuzzing and tests only.
bool fix_image_checksums(uint8_t* data, size_t len);
// The region size an image needs (from its header); -EINVAL, and the reason
// in *why, if it is not a sound image header.
Result<uint64_t> image_region_bytes(const std::string& path, std::string* why = nullptr);
// Full structural check of a live file system.
FsckReport fsck(const Fs& fs);

// "ENOENT"-style name of an error this library returns.
std::string error_text(long err);

}  // namespace detux::fs
