// layout.h: the bytes of a detux file system, as they lie in its region.
//
// A file system lives entirely inside one contiguous region [base, base+size)
// of a space's memory.  Everything stored in the region names other parts of
// it by *block number* or *inode number*, never by pointer, so that the
// region means the same wherever it is mapped: at the same fixed address in
// a forked child (Snap), in a buffer the master copied the child's image into
// (reconciliation), or in a file on disk (an image).
//
// The layout follows the thesis (§4.4), itself modelled on BSD FFS:
//
//   block 0                  superblock (counts, layout, logical clock, the
//                            reconciliation epoch and changed-inode list)
//   [fd_start, +kFdBlocks)   the descriptor table of the space that owns the
//                            region (per space, copied at fork like the rest)
//   [bitmap_start, ...)      block bitmap, one bit per block of the region
//   [inode_start, ...)       inode table, kInodesPerBlock inodes per block
//   [data_start, nblocks)    data blocks: file bytes, directory entries and
//                            indirect blocks
//
// Block pointers are 64-bit, 512 to a block: 10 direct + 512 single-indirect
// + 512*512 double-indirect blocks of 4 KiB is just over 1 GiB per file, the
// thesis's figure.  Block number 0 (the superblock) doubles as "no block":
// a hole reads as zeros.
//
// Directories hold fixed-size entries kept sorted by name (memcmp order), so
// readdir is deterministic for free, lookup is a binary search, and the
// reconciler diffs a directory against its base in one linear pass.  There
// are no "." or ".." entries: a directory's parent is a field of its inode.
//
// Times are logical: the superblock's clock ticks once per change, and an
// inode's mtime/ctime are clock values, never host time.  `version` counts
// the *exclusive* changes of a file (any write that is not a pure append,
// any truncate); a pure append leaves it alone and only grows the size.
// That is what lets the reconciler tell "only appended since the fork" from
// "rewritten", on both sides, from two numbers recorded at the fork.
#pragma once

#include <cstddef>
#include <cstdint>

namespace detux::fs {

constexpr uint64_t kBlockSize = 4096;
constexpr uint64_t kMagic = 0x3153465855544544ull;  // "DETUXFS1" little-endian
constexpr uint32_t kLayoutVersion = 1;

constexpr uint32_t kNameMax = 119;       // bytes in one name
constexpr uint32_t kNDirect = 10;
constexpr uint64_t kPtrsPerBlock = kBlockSize / 8;  // 512
constexpr uint64_t kMaxFileBlocks = kNDirect + kPtrsPerBlock + kPtrsPerBlock * kPtrsPerBlock;
constexpr uint64_t kMaxFileSize = kMaxFileBlocks * kBlockSize;  // ~1.0 GiB
constexpr uint32_t kRootIno = 1;         // inode 0 is never used
constexpr uint32_t kMaxFds = 256;
constexpr int kFirstFd = 3;              // 0-2 belong to the console
constexpr uint32_t kFdBlocks = 2;

// Inode states.  Dead and shadow inodes exist only in a child (epoch != 0):
// see Inode::rec_*.
enum InodeState : uint8_t {
  kFree = 0,
  kLive = 1,
  kDead = 2,    // removed in this child, kept (no blocks) until the join
  kShadow = 3,  // a directory's entries as they were at the fork
};

enum InodeType : uint8_t { kTypeNone = 0, kTypeFile = 1, kTypeDir = 2 };

enum InodeFlags : uint8_t {
  kFlagConflict = 1,  // both sides changed it at a join; open fails until
                      // it is truncated to 0 or removed
};

enum RecFlags : uint8_t {
  kRecNew = 1,  // allocated in this child's epoch (did not exist at the fork)
};

struct Super {
  uint64_t magic;
  uint32_t layout_version;
  uint32_t block_size;
  uint64_t nblocks;       // blocks in the region the FS was made for
  uint32_t ninodes;       // inode 0 included (never used)
  uint32_t root;
  uint64_t fd_start;
  uint64_t bitmap_start, bitmap_blocks;
  uint64_t inode_start, inode_blocks;
  uint64_t data_start;
  uint64_t free_blocks;
  uint32_t free_inodes;
  uint32_t inode_hint;    // where the next inode search starts
  uint64_t block_hint;    // where the next block search starts
  uint64_t clock;         // logical time
  // Reconciliation.  epoch 0: not a child, nothing is recorded.  A child's
  // begin_child() sets epoch = parent's epoch + 1 and empties the list.
  uint64_t epoch;
  uint32_t changed_head;  // first inode changed in this epoch (0: none)
  uint32_t changed_count;
  uint8_t pad[kBlockSize - 128];
};
static_assert(sizeof(Super) == kBlockSize);

struct Inode {
  uint8_t state;          // InodeState
  uint8_t type;           // InodeType
  uint8_t flags;          // InodeFlags
  uint8_t rec_flags;      // RecFlags
  uint32_t nlink;         // files: directory entries; dirs: 2 + subdirectories
  uint32_t opens;         // open file descriptions of the owning space
  uint32_t gen;           // bumped each time the inode number is reused
  uint32_t parent;        // dirs: the parent; files: dir of the latest link (a hint)
  uint32_t perm;          // permission bits (fixed at creation)
  uint64_t size;
  uint64_t version;       // exclusive changes (see the file comment)
  uint64_t mtime, ctime;  // logical clock values
  uint64_t nblocks;       // blocks held, indirect blocks included
  uint64_t direct[kNDirect];
  uint64_t indirect, dindirect;
  // Reconciliation record, valid when rec_epoch == Super::epoch.
  uint64_t rec_epoch;
  uint64_t base_version;  // version and size at the fork
  uint64_t base_size;
  uint32_t rec_next;      // next inode on the changed list
  uint32_t rec_shadow;    // dirs: the shadow inode holding the base entries
  uint8_t pad[256 - 192];
};
static_assert(sizeof(Inode) == 256);
constexpr uint64_t kInodesPerBlock = kBlockSize / sizeof(Inode);
// At most 1M inodes (a 256 MiB table).  Loading an image reads every inode
// (fsck) and clears every inode block the image leaves out, and some kernels
// (this project's PVM guests) give even a read of untouched memory a page of
// its own: the old limit of 2^31 let an image's header make the loader fill
// the whole 64 GiB region and die of it.
constexpr uint64_t kMaxInodes = 1ull << 20;

struct Dirent {
  uint32_t ino;           // 0: unused (never stored inside the sorted run)
  uint8_t type;           // InodeType of the target
  uint8_t name_len;
  uint8_t pad[2];
  char name[kNameMax + 1];
};
static_assert(sizeof(Dirent) == 128);
constexpr uint64_t kDirentsPerBlock = kBlockSize / sizeof(Dirent);

// An open file description (shared by dup'd descriptors, as in POSIX).
struct OpenFile {
  uint32_t ino;           // 0: unused
  uint32_t flags;         // open flags (O_ACCMODE | O_APPEND)
  uint64_t offset;
  uint32_t refs;          // descriptors pointing here
  uint32_t gen;           // the inode's gen when opened
};
static_assert(sizeof(OpenFile) == 24);

struct FdTable {
  uint16_t fd[kMaxFds];   // 0: closed; otherwise an index into files + 1
  OpenFile files[kMaxFds];
};
static_assert(sizeof(FdTable) <= kFdBlocks * kBlockSize);

// The layout a given region size and inode count gives.  Used by format and,
// to check a superblock, by the loader, fsck and the reconciler.
struct Geometry {
  uint64_t nblocks, ninodes;
  uint64_t fd_start, bitmap_start, bitmap_blocks, inode_start, inode_blocks, data_start;
};

inline Geometry geometry(uint64_t nblocks, uint64_t ninodes) {
  Geometry g{};
  g.nblocks = nblocks;
  g.ninodes = ninodes;
  g.fd_start = 1;
  g.bitmap_start = g.fd_start + kFdBlocks;
  g.bitmap_blocks = (nblocks + kBlockSize * 8 - 1) / (kBlockSize * 8);
  g.inode_start = g.bitmap_start + g.bitmap_blocks;
  g.inode_blocks = (ninodes + kInodesPerBlock - 1) / kInodesPerBlock;
  g.data_start = g.inode_start + g.inode_blocks;
  return g;
}

// True when the superblock's layout fields are exactly what its counts give.
inline bool super_layout_ok(const Super& s) {
  if (s.magic != kMagic || s.layout_version != kLayoutVersion || s.block_size != kBlockSize)
    return false;
  if (s.ninodes < 2 || s.ninodes > kMaxInodes || s.ninodes % kInodesPerBlock != 0 ||
      s.nblocks > (1ull << 40))
    return false;
  Geometry g = geometry(s.nblocks, s.ninodes);
  return s.fd_start == g.fd_start && s.bitmap_start == g.bitmap_start &&
         s.bitmap_blocks == g.bitmap_blocks && s.inode_start == g.inode_start &&
         s.inode_blocks == g.inode_blocks && s.data_start == g.data_start &&
         g.data_start < s.nblocks && s.root == kRootIno;
}

}  // namespace detux::fs
