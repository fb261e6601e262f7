// fsck.cc: full structural validation of a file system region.
//
// The checker is what stands between the master and a hostile image: the
// loader runs it on every image before handing out an Fs, so it must never
// crash and never loop, whatever the bytes.  It reads the region only
// through bounds-checked helpers, follows no pointer it has not range
// checked, and bounds every walk by a count it knows (blocks, inodes).
//
// What it checks:
//   - the superblock's layout is exactly what its counts give;
//   - every inode's state, type and size make sense, every block pointer is
//     a data block marked used in the bitmap and claimed by nothing else
//     (which also rules out cycles in the block trees), no block lies past
//     the end of the file, and the block count is right;
//   - the bitmap marks exactly the metadata and the claimed blocks, and the
//     free counts agree with it;
//   - every directory's entries are valid names, strictly sorted, naming
//     live inodes of the right type; every directory but the root is named
//     exactly once and points back to its parent; every directory is
//     reachable from the root (no detached cycles); link counts agree;
//   - on a live file system, the changed list and the descriptor table.
#include <cstring>
#include <deque>
#include <string>
#include <vector>

#include "fs/fs.h"

namespace detux::fs {

class Checker {
 public:
  Checker(const Fs& fs, bool image) : fs_(fs), image_(image) {}
  FsckReport run();

 private:
  const Super& sb() const { return fs_.super(); }
  const uint8_t* blk(uint64_t bno) const {
    return static_cast<const uint8_t*>(fs_.base()) + bno * kBlockSize;
  }
  const Inode& ino(uint32_t i) const {
    return reinterpret_cast<const Inode*>(blk(sb().inode_start))[i];
  }
  bool marked(uint64_t bno) const { return (blk(sb().bitmap_start)[bno / 8] >> (bno % 8)) & 1; }
  void problem(std::string what) {
    if (r_.problems.size() < 50) r_.problems.push_back(std::move(what));
  }
  bool check_super();
  void check_inodes();
  bool claim(uint32_t i, uint64_t bno, const char* what);
  void check_tree(uint32_t i);
  uint64_t map(const Inode& n, uint64_t fblock) const;
  void check_bitmap();
  void check_dir(uint32_t d);
  void check_links();
  void check_reachable();
  void check_changed_list();
  void check_fds();

  const Fs& fs_;
  bool image_;
  FsckReport r_;
  std::vector<uint8_t> claimed_;
  std::vector<uint32_t> refs_, subdirs_, opens_;
};

static std::string num(uint64_t v) { return std::to_string(v); }

bool Checker::check_super() {
  if (fs_.size() < sizeof(Super)) {
    problem("region smaller than a superblock");
    return false;
  }
  if (sb().magic != kMagic) {
    problem("bad magic number");
    return false;
  }
  if (!super_layout_ok(sb())) {
    problem("superblock layout fields do not match its counts (version " +
            num(sb().layout_version) + ")");
    return false;
  }
  if (sb().nblocks * kBlockSize > fs_.size()) {
    problem("file system of " + num(sb().nblocks) + " blocks does not fit its region");
    return false;
  }
  return true;
}

bool Checker::claim(uint32_t i, uint64_t bno, const char* what) {
  if (bno < sb().data_start || bno >= sb().nblocks) {
    problem("inode " + num(i) + ": " + what + " pointer " + num(bno) + " out of range");
    return false;
  }
  if (claimed_[bno]) {
    problem("inode " + num(i) + ": block " + num(bno) + " claimed twice (shared or cyclic)");
    return false;
  }
  if (!marked(bno)) problem("inode " + num(i) + ": block " + num(bno) + " in use but free in bitmap");
  claimed_[bno] = 1;
  return true;
}

// Claims every block of inode i's tree and checks nothing lies past its end.
void Checker::check_tree(uint32_t i) {
  const Inode& n = ino(i);
  uint64_t end = (n.size + kBlockSize - 1) / kBlockSize;  // first block past the end
  uint64_t count = 0;
  auto data = [&](uint64_t bno, uint64_t fblock) {
    if (bno == 0) return;
    if (fblock >= end) problem("inode " + num(i) + ": block past the end of the file");
    if (claim(i, bno, "data")) ++count;
  };
  auto table = [&](uint64_t bno) { return reinterpret_cast<const uint64_t*>(blk(bno)); };
  for (uint64_t k = 0; k < kNDirect; ++k) data(n.direct[k], k);
  if (n.indirect && claim(i, n.indirect, "indirect")) {
    ++count;
    for (uint64_t k = 0; k < kPtrsPerBlock; ++k) data(table(n.indirect)[k], kNDirect + k);
  }
  if (n.dindirect && claim(i, n.dindirect, "double indirect")) {
    ++count;
    for (uint64_t t = 0; t < kPtrsPerBlock; ++t) {
      uint64_t mid = table(n.dindirect)[t];
      if (!mid || !claim(i, mid, "indirect")) continue;
      ++count;
      for (uint64_t k = 0; k < kPtrsPerBlock; ++k)
        data(table(mid)[k], kNDirect + kPtrsPerBlock + t * kPtrsPerBlock + k);
    }
  }
  if (count != n.nblocks)
    problem("inode " + num(i) + ": holds " + num(count) + " blocks, says " + num(n.nblocks));
}

// Block number of a file block, 0 for a hole or anything out of range.
uint64_t Checker::map(const Inode& n, uint64_t fblock) const {
  auto ok = [&](uint64_t b) { return b >= sb().data_start && b < sb().nblocks; };
  auto table = [&](uint64_t bno) { return reinterpret_cast<const uint64_t*>(blk(bno)); };
  if (fblock < kNDirect) return ok(n.direct[fblock]) ? n.direct[fblock] : 0;
  fblock -= kNDirect;
  if (fblock < kPtrsPerBlock) return ok(n.indirect) && ok(table(n.indirect)[fblock]) ? table(n.indirect)[fblock] : 0;
  fblock -= kPtrsPerBlock;
  if (fblock >= kPtrsPerBlock * kPtrsPerBlock || !ok(n.dindirect)) return 0;
  uint64_t mid = table(n.dindirect)[fblock / kPtrsPerBlock];
  if (!ok(mid)) return 0;
  uint64_t b = table(mid)[fblock % kPtrsPerBlock];
  return ok(b) ? b : 0;
}

void Checker::check_inodes() {
  uint32_t free_count = 0;
  for (uint32_t i = 1; i < sb().ninodes; ++i) {
    const Inode& n = ino(i);
    if (n.state == kFree) {
      ++free_count;
      continue;
    }
    if (n.state > kShadow) {
      problem("inode " + num(i) + ": bad state " + num(n.state));
      continue;
    }
    if (n.type != kTypeFile && n.type != kTypeDir) {
      problem("inode " + num(i) + ": bad type " + num(n.type));
      continue;
    }
    if (n.size > kMaxFileSize) {
      problem("inode " + num(i) + ": size " + num(n.size) + " too large");
      continue;
    }
    if (n.state == kLive && (n.parent == 0 || n.parent >= sb().ninodes)) {
      problem("inode " + num(i) + ": parent " + num(n.parent) + " out of range");
      continue;
    }
    if (n.type == kTypeDir && n.size % sizeof(Dirent) != 0)
      problem("directory " + num(i) + ": size not a whole number of entries");
    if (n.state == kDead && n.nblocks != 0) problem("dead inode " + num(i) + " holds blocks");
    check_tree(i);
    if (n.state == kLive) n.type == kTypeDir ? ++r_.dirs : ++r_.files;
  }
  if (free_count != sb().free_inodes)
    problem("superblock counts " + num(sb().free_inodes) + " free inodes, table has " +
            num(free_count));
  if (ino(kRootIno).state != kLive || ino(kRootIno).type != kTypeDir ||
      ino(kRootIno).parent != kRootIno)
    problem("root is not a live directory that is its own parent");
}

void Checker::check_bitmap() {
  uint64_t used = 0;
  for (uint64_t b = 0; b < sb().nblocks; ++b) {
    bool meta = b < sb().data_start;
    if (marked(b)) ++used;
    if (meta && !marked(b)) problem("metadata block " + num(b) + " free in bitmap");
    if (!meta && marked(b) && !claimed_[b]) problem("block " + num(b) + " used but unreferenced");
  }
  if (sb().nblocks - used != sb().free_blocks)
    problem("superblock counts " + num(sb().free_blocks) + " free blocks, bitmap has " +
            num(sb().nblocks - used));
  r_.used_blocks = used;
}

void Checker::check_dir(uint32_t d) {
  const Inode& n = ino(d);
  uint64_t count = n.size / sizeof(Dirent);
  std::string prev;
  for (uint64_t k = 0; k < count; ++k) {
    uint64_t b = map(n, k / kDirentsPerBlock);
    if (b == 0) {
      problem("directory " + num(d) + ": hole in its entries");
      return;
    }
    const Dirent& e = reinterpret_cast<const Dirent*>(blk(b))[k % kDirentsPerBlock];
    if (e.name_len == 0 || e.name_len > kNameMax) {
      problem("directory " + num(d) + ": entry with bad name length");
      continue;
    }
    std::string name(e.name, e.name_len);
    if (name == "." || name == ".." || name.find('/') != std::string::npos ||
        name.find('\0') != std::string::npos)
      problem("directory " + num(d) + ": bad name");
    if (k > 0 && !(prev < name)) problem("directory " + num(d) + ": entries not sorted");
    prev = name;
    if (e.ino == 0 || e.ino >= sb().ninodes || ino(e.ino).state != kLive) {
      problem("directory " + num(d) + ": '" + name + "' names a missing inode");
      continue;
    }
    if (e.type != ino(e.ino).type) problem("directory " + num(d) + ": '" + name + "' wrong type");
    ++refs_[e.ino];
    if (ino(e.ino).type == kTypeDir) {
      ++subdirs_[d];
      if (ino(e.ino).parent != d) problem("directory " + num(e.ino) + ": parent is not its directory");
    }
  }
}

void Checker::check_links() {
  for (uint32_t i = 1; i < sb().ninodes; ++i) {
    const Inode& n = ino(i);
    if (n.state != kLive || n.size > kMaxFileSize) continue;
    if (n.type == kTypeDir) {
      uint32_t want_refs = i == kRootIno ? 0 : 1;
      if (refs_[i] != want_refs)
        problem("directory " + num(i) + " is named " + num(refs_[i]) + " times");
      if (n.nlink != 2 + subdirs_[i])
        problem("directory " + num(i) + ": link count " + num(n.nlink) + ", expected " +
                num(2 + subdirs_[i]));
    } else if (n.type == kTypeFile) {
      if (refs_[i] != n.nlink)
        problem("file " + num(i) + ": link count " + num(n.nlink) + ", named " + num(refs_[i]) +
                " times");
      else if (n.nlink == 0 && !image_ && n.opens == 0)
        problem("file " + num(i) + ": unnamed and not open");
    }
  }
}

void Checker::check_reachable() {
  std::vector<uint8_t> seen(sb().ninodes, 0);
  std::deque<uint32_t> todo{kRootIno};
  seen[kRootIno] = 1;
  while (!todo.empty()) {
    uint32_t d = todo.front();
    todo.pop_front();
    const Inode& n = ino(d);
    uint64_t count = n.size / sizeof(Dirent);
    for (uint64_t k = 0; k < count; ++k) {
      uint64_t b = map(n, k / kDirentsPerBlock);
      if (b == 0) break;
      const Dirent& e = reinterpret_cast<const Dirent*>(blk(b))[k % kDirentsPerBlock];
      if (e.ino == 0 || e.ino >= sb().ninodes || seen[e.ino]) continue;
      if (ino(e.ino).state != kLive || ino(e.ino).type != kTypeDir) continue;
      seen[e.ino] = 1;
      todo.push_back(e.ino);
    }
  }
  for (uint32_t i = 1; i < sb().ninodes; ++i)
    if (ino(i).state == kLive && ino(i).type == kTypeDir && !seen[i])
      problem("directory " + num(i) + " not reachable from the root");
}

void Checker::check_changed_list() {
  if (sb().epoch == 0) return;
  uint32_t i = sb().changed_head, steps = 0;
  for (; i != 0 && steps <= sb().ninodes; ++steps) {
    if (i >= sb().ninodes) {
      problem("changed list leaves the inode table");
      return;
    }
    if (ino(i).rec_epoch != sb().epoch) problem("inode " + num(i) + " on the changed list of another epoch");
    i = ino(i).rec_next;
  }
  if (i != 0) problem("changed list loops");
  else if (steps != sb().changed_count) problem("changed list length disagrees with its count");
}

void Checker::check_fds() {
  const auto& t = *reinterpret_cast<const FdTable*>(blk(sb().fd_start));
  std::vector<uint32_t> refs(kMaxFds, 0);
  for (uint32_t fd = 0; fd < kMaxFds; ++fd) {
    if (t.fd[fd] == 0) continue;
    if (fd < kFirstFd || t.fd[fd] > kMaxFds || t.files[t.fd[fd] - 1].ino == 0)
      problem("descriptor " + num(fd) + " is bad");
    else
      ++refs[t.fd[fd] - 1];
  }
  for (uint32_t k = 0; k < kMaxFds; ++k) {
    const OpenFile& f = t.files[k];
    if (f.ino == 0) continue;
    if (f.refs != refs[k]) problem("open file " + num(k) + ": reference count wrong");
    if (f.ino >= sb().ninodes || ino(f.ino).state != kLive) problem("open file " + num(k) + ": no inode");
    else ++opens_[f.ino];
  }
  for (uint32_t i = 1; i < sb().ninodes; ++i)
    if (ino(i).state == kLive && ino(i).opens != opens_[i]) problem("inode " + num(i) + ": open count wrong");
}

FsckReport Checker::run() {
  if (fs_.base() == nullptr || !check_super()) return r_;
  claimed_.assign(sb().nblocks, 0);
  refs_.assign(sb().ninodes, 0);
  subdirs_.assign(sb().ninodes, 0);
  opens_.assign(sb().ninodes, 0);
  check_inodes();
  if (!r_.ok()) return r_;  // the rest reads through block trees: only sound ones
  check_bitmap();
  for (uint32_t i = 1; i < sb().ninodes; ++i)
    if (ino(i).state == kLive && ino(i).type == kTypeDir) check_dir(i);
  check_links();
  check_reachable();
  if (!image_) {
    check_changed_list();
    check_fds();
  }
  return r_;
}

FsckReport fsck(const Fs& fs) { return Checker(fs, false).run(); }

// The loader's variant (image.cc): descriptors and open counts are not part
// of an image, so orphans are allowed and the table is not checked.
FsckReport fsck_image(const Fs& fs) { return Checker(fs, true).run(); }

}  // namespace detux::fs
