// image.cc: saving a file system to a disk image and loading it back.
//
// An image is compact: only the blocks in use are written.
//
//   header     magic "DETUXIMG", format version, the file system's block and
//              inode counts, section sizes, a CRC-32 per section, and a CRC
//              of the header itself
//   super      the superblock (one block)
//   bitmap     the block bitmap (which data blocks follow)
//   inomap     one bit per inode-table block: which ones follow
//   inodes     the inode-table blocks that hold any non-free inode
//   data       every used data block, in block-number order
//
// The descriptor table is not saved: descriptors belong to a running space.
//
// Saving is atomic: the image goes to a temporary file in the same directory,
// is fsync'd, renamed over the old image, and the directory is fsync'd, so
// a crash at any point leaves either the old image or the new one.
//
// Loading trusts nothing.  Sizes are checked before anything is read (with
// overflow-safe arithmetic), every section's checksum before its bytes are
// used, and then the whole structure is validated by fsck (fsck.cc) before
// an Fs is handed out.  A refused image gives -EINVAL (or -EFBIG when it is
// sound but larger than the region) and a one-line reason.  A loaded file
// system starts a new life: no descriptors, epoch 0, and whatever a child's
// save left behind (dead inodes, shadows, unnamed files) is freed.
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "fs/fs.h"

namespace detux::fs {

FsckReport fsck_image(const Fs& fs);

namespace {

constexpr uint64_t kImageMagic = 0x474d495855544544ull;  // "DETUXIMG"
constexpr uint32_t kImageVersion = 1;

struct Header {
  uint64_t magic;
  uint32_t version;
  uint32_t header_size;
  uint64_t nblocks;
  uint64_t ninodes;
  uint64_t inode_blocks_saved;
  uint64_t data_blocks_saved;
  uint32_t crc_super, crc_bitmap, crc_inomap, crc_inodes, crc_data;
  uint32_t crc_header;  // over the header with this field zero
};
static_assert(sizeof(Header) == 72);

// zlib's crc32, opened on first use.  Linked, zlib would be five more
// mappings in every master, and every fork and every space's exit pays for
// each one (rt/names_module.cc says the same of elfutils).  Null if
// libz.so.1 cannot be loaded: every entry point below checks have_crc().
using Crc32 = decltype(&::crc32);
Crc32 zlib_crc32() {
  static const Crc32 fn = [] {
    void* h = dlopen("libz.so.1", RTLD_NOW | RTLD_LOCAL);
    return h ? reinterpret_cast<Crc32>(dlsym(h, "crc32")) : nullptr;
  }();
  return fn;
}

bool have_crc(std::string* why) {
  if (zlib_crc32()) return true;
  if (why) *why = "cannot load libz.so.1 for CRC-32 checksums";
  return false;
}

uint32_t crc(uint32_t c, const void* p, uint64_t n) {
  const Crc32 crc32 = zlib_crc32();
  DETUX_ASSERT(crc32 != nullptr);  // the entry points checked have_crc()
  const auto* b = static_cast<const Bytef*>(p);
  for (uint64_t done = 0; done < n;) {  // zlib takes 32-bit lengths
    uInt chunk = static_cast<uInt>(std::min<uint64_t>(n - done, 1u << 30));
    c = static_cast<uint32_t>(crc32(c, b + done, chunk));
    done += chunk;
  }
  return c;
}

uint32_t header_crc(Header h) {
  h.crc_header = 0;
  return crc(0, &h, sizeof h);
}

bool bit(const uint8_t* map, uint64_t i) { return (map[i / 8] >> (i % 8)) & 1; }

// Zeroes a block that is not zero already: on most kernels a fresh region
// reads as zeros without holding memory, and writing zeros over zeros would
// fill it with an image's whole, mostly empty, inode table.
void clear_block(uint8_t* b) {
  const auto* w = reinterpret_cast<const uint64_t*>(b);
  for (size_t i = 0; i < kBlockSize / sizeof *w; ++i)
    if (w[i] != 0) return (void)std::memset(b, 0, kBlockSize);
}

// Appends to a file through a buffer, remembering the first error.
class Writer {
 public:
  explicit Writer(int fd) : fd_(fd) { buf_.reserve(kChunk); }
  void put(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    buf_.insert(buf_.end(), b, b + n);
    if (buf_.size() >= kChunk) flush();
  }
  void flush() {
    for (size_t done = 0; done < buf_.size() && err_ == 0;) {
      ssize_t w = ::write(fd_, buf_.data() + done, buf_.size() - done);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) err_ = w < 0 ? errno : EIO;
      else done += static_cast<size_t>(w);
    }
    buf_.clear();
  }
  int err() const { return err_; }

 private:
  static constexpr size_t kChunk = 1 << 20;
  int fd_;
  int err_ = 0;
  std::vector<uint8_t> buf_;
};

}  // namespace

// The mode a saved image gets: the old image's, or 0666 less the umask.
static mode_t image_mode(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) == 0) return st.st_mode & 07777;
  mode_t mask = umask(022);
  umask(mask);
  return 0666 & ~mask;
}

// What is wrong with an image header on its own, or "" if nothing.
std::string header_problem(const Header& h) {
  if (h.magic != kImageMagic) return "not a detux file-system image (bad magic)";
  if (h.version != kImageVersion)
    return "image format version " + std::to_string(h.version) + " is not supported";
  if (h.header_size != sizeof h || h.crc_header != header_crc(h))
    return "image header is corrupt (checksum mismatch)";
  if (h.ninodes < 2 || h.ninodes > kMaxInodes || h.ninodes % kInodesPerBlock != 0 ||
      h.nblocks > (1ull << 40))
    return "image header has impossible counts";
  Geometry g = geometry(h.nblocks, h.ninodes);
  if (g.data_start >= h.nblocks) return "image header has impossible counts";
  if (h.inode_blocks_saved > g.inode_blocks || h.data_blocks_saved > h.nblocks - g.data_start)
    return "image header has impossible section sizes";
  return "";
}

// The exact length of the image a sound header describes.
uint64_t described_length(const Header& h) {
  Geometry g = geometry(h.nblocks, h.ninodes);
  return sizeof h + kBlockSize * (1 + g.bitmap_blocks) + (g.inode_blocks + 7) / 8 +
         kBlockSize * (h.inode_blocks_saved + h.data_blocks_saved);
}

// The header of the image file open on fd, in *h, and what is wrong with
// it ("" if nothing).  The caller has checked have_crc().
std::string header_of(int fd, Header* h) {
  if (::pread(fd, h, sizeof *h, 0) != static_cast<ssize_t>(sizeof *h))
    return "truncated image: no complete header";
  return header_problem(*h);
}

// described_length for the image file open on fd; 0 if its header is unsound.
uint64_t described_length(int fd) {
  Header h{};
  return have_crc(nullptr) && header_of(fd, &h).empty() ? described_length(h) : 0;
}

class ImageIo {
 public:
  static Status save(const Fs& fs, const std::string& path, std::string* why, ImageLock* lock);
  static Result<Fs> load(const uint8_t* data, size_t len, void* base, size_t size, std::string* why);

 private:
  static int write_image(const Fs& fs, int fd);
  static void normalize(Fs& fs);
};

int ImageIo::write_image(const Fs& fs, int fd) {
  const Super& s = fs.super();
  auto blk = [&](uint64_t b) { return static_cast<const uint8_t*>(fs.base()) + b * kBlockSize; };
  const uint8_t* bitmap = blk(s.bitmap_start);
  std::vector<uint8_t> inomap((s.inode_blocks + 7) / 8, 0);
  Header h{};
  h.magic = kImageMagic;
  h.version = kImageVersion;
  h.header_size = sizeof(Header);
  h.nblocks = s.nblocks;
  h.ninodes = s.ninodes;
  for (uint64_t k = 0; k < s.inode_blocks; ++k) {
    const auto* inodes = reinterpret_cast<const Inode*>(blk(s.inode_start + k));
    for (uint64_t i = 0; i < kInodesPerBlock; ++i)
      if (inodes[i].state != kFree) {
        inomap[k / 8] |= uint8_t(1u << (k % 8));
        ++h.inode_blocks_saved;
        break;
      }
  }
  for (uint64_t b = s.data_start; b < s.nblocks; ++b) h.data_blocks_saved += bit(bitmap, b);
  h.crc_super = crc(0, blk(0), kBlockSize);
  h.crc_bitmap = crc(0, bitmap, s.bitmap_blocks * kBlockSize);
  h.crc_inomap = crc(0, inomap.data(), inomap.size());
  Writer w(fd);
  w.put(&h, sizeof h);  // rewritten with its checksums at the end
  w.put(blk(0), kBlockSize);
  w.put(bitmap, s.bitmap_blocks * kBlockSize);
  w.put(inomap.data(), inomap.size());
  for (uint64_t k = 0; k < s.inode_blocks; ++k) {
    if (!bit(inomap.data(), k)) continue;
    h.crc_inodes = crc(h.crc_inodes, blk(s.inode_start + k), kBlockSize);
    w.put(blk(s.inode_start + k), kBlockSize);
  }
  for (uint64_t b = s.data_start; b < s.nblocks; ++b) {
    if (!bit(bitmap, b)) continue;
    h.crc_data = crc(h.crc_data, blk(b), kBlockSize);
    w.put(blk(b), kBlockSize);
  }
  w.flush();
  if (w.err()) return w.err();
  h.crc_header = header_crc(h);
  if (pwrite(fd, &h, sizeof h, 0) != static_cast<ssize_t>(sizeof h)) return errno ? errno : EIO;
  return 0;
}

Status ImageIo::save(const Fs& fs, const std::string& given, std::string* why, ImageLock* lock) {
  auto fail = [&](int err, const std::string& what) {
    if (why) *why = what + ": " + std::strerror(err);
    return err_status(-err);
  };
  if (fs.base() == nullptr) return fail(EINVAL, "no file system");
  // Through a symbolic link to its target: a rename over the link itself
  // would replace the link with a file and leave the target as it was.
  char* real = realpath(given.c_str(), nullptr);
  const std::string path = real ? real : given;
  free(real);
  size_t slash = path.rfind('/');
  std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  std::string tmp = path + ".tmp-XXXXXX";
  int fd = mkstemp(tmp.data());
  if (fd < 0) return fail(errno, "cannot create a temporary file beside " + path);
  int err = fchmod(fd, image_mode(path)) == 0 ? 0 : errno;
  if (err == 0) err = write_image(fs, fd);
  if (err == 0 && fsync(fd) != 0) err = errno;
  if (err == 0 && lock && flock(fd, LOCK_EX) != 0) err = errno;  // no one knows the file yet
  if (err == 0 && ::rename(tmp.c_str(), path.c_str()) != 0) err = errno;
  if (err != 0) {
    ::close(fd);
    ::unlink(tmp.c_str());
    return fail(err, "cannot write " + path);
  }
  if (lock) {
    *lock = ImageLock();
    lock->fd_ = fd;
  } else if (::close(fd) != 0) {
    return fail(errno, "cannot write " + path);
  }
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return fail(errno, "cannot open " + dir + " to sync it");
  err = fsync(dfd) == 0 ? 0 : errno;
  ::close(dfd);
  if (err != 0) return fail(err, "cannot sync " + dir);
  return ok_status();
}

// Gives a loaded file system a fresh start (see the file comment).
void ImageIo::normalize(Fs& fs) {
  Super& s = fs.sb();
  s.epoch = 0;
  s.changed_head = 0;
  s.changed_count = 0;
  s.inode_hint = kRootIno;
  s.block_hint = s.data_start;
  std::memset(&fs.fdt(), 0, kFdBlocks * kBlockSize);
  for (uint32_t i = 1; i < s.ninodes; ++i) {
    Inode& n = fs.inode(i);
    if (n.opens != 0) n.opens = 0;  // not stored into every free inode
    if (n.state == kDead || n.state == kShadow) {
      fs.reclaim(n);
    } else if (n.state == kLive && n.type == kTypeFile && n.nlink == 0) {
      fs.release_inode(i);
    }
    if (n.state == kLive) {  // no join is in progress: no record may claim one
      n.rec_epoch = 0;
      n.rec_flags = 0;
      n.rec_next = 0;
      n.rec_shadow = 0;
    }
  }
}

Result<Fs> ImageIo::load(const uint8_t* data, size_t len, void* base, size_t size,
                         std::string* why) {
  auto refuse = [&](const std::string& what, long err = -EINVAL) {
    if (why) *why = what;
    return Result<Fs>(Err{err});
  };
  Header h;
  if (len < sizeof h) return refuse("truncated image: no complete header");
  std::memcpy(&h, data, sizeof h);
  if (std::string problem = header_problem(h); !problem.empty()) return refuse(problem);
  Geometry g = geometry(h.nblocks, h.ninodes);
  uint64_t inomap_len = (g.inode_blocks + 7) / 8;
  uint64_t want = described_length(h);
  if (len < want)
    return refuse("truncated image: " + std::to_string(len) + " bytes, expected " + std::to_string(want));
  if (len > want) return refuse("image has " + std::to_string(len - want) + " trailing bytes");
  if (h.nblocks * kBlockSize > size || reinterpret_cast<uintptr_t>(base) % kBlockSize != 0)
    return refuse("image needs a region of " + std::to_string(h.nblocks * kBlockSize) +
                  " bytes (4 KiB aligned), have " + std::to_string(size), -EFBIG);
  auto* region = static_cast<uint8_t*>(base);
  const uint8_t* p = data + sizeof h;
  if (crc(0, p, kBlockSize) != h.crc_super) return refuse("superblock checksum mismatch");
  std::memcpy(region, p, kBlockSize);
  p += kBlockSize;
  const auto& sb = *reinterpret_cast<const Super*>(region);
  if (!super_layout_ok(sb) || sb.nblocks != h.nblocks || sb.ninodes != h.ninodes)
    return refuse("superblock does not match the image header");
  uint64_t bitmap_len = g.bitmap_blocks * kBlockSize;
  if (crc(0, p, bitmap_len) != h.crc_bitmap) return refuse("block bitmap checksum mismatch");
  const uint8_t* bitmap = p;
  p += bitmap_len;
  if (crc(0, p, inomap_len) != h.crc_inomap) return refuse("inode map checksum mismatch");
  const uint8_t* inomap = p;
  p += inomap_len;
  uint64_t present = 0, used = 0;
  for (uint64_t k = 0; k < g.inode_blocks; ++k) present += bit(inomap, k);
  for (uint64_t b = g.data_start; b < h.nblocks; ++b) used += bit(bitmap, b);
  if (present != h.inode_blocks_saved || used != h.data_blocks_saved)
    return refuse("image section sizes disagree with its maps");
  if (crc(0, p, present * kBlockSize) != h.crc_inodes) return refuse("inode table checksum mismatch");
  if (crc(0, p + present * kBlockSize, used * kBlockSize) != h.crc_data)
    return refuse("data checksum mismatch");
  std::memcpy(region + g.bitmap_start * kBlockSize, bitmap, bitmap_len);
  std::memset(region + g.fd_start * kBlockSize, 0, kFdBlocks * kBlockSize);
  for (uint64_t k = 0; k < g.inode_blocks; ++k) {
    uint8_t* dst = region + (g.inode_start + k) * kBlockSize;
    if (bit(inomap, k)) {
      std::memcpy(dst, p, kBlockSize);
      p += kBlockSize;
    } else {
      clear_block(dst);
    }
  }
  for (uint64_t b = g.data_start; b < h.nblocks; ++b) {
    if (!bit(bitmap, b)) continue;
    std::memcpy(region + b * kBlockSize, p, kBlockSize);
    p += kBlockSize;
  }
  auto fs = Fs::attach(base, size);
  if (!fs.ok()) return refuse("superblock is inconsistent");
  FsckReport r = fsck_image(*fs);
  if (!r.ok()) return refuse("image structure is unsound: " + r.problems.front());
  normalize(*fs);
  return fs;
}

bool fix_image_checksums(uint8_t* data, size_t len) {
  Header h;
  if (len < sizeof h || !have_crc(nullptr)) return false;
  std::memcpy(&h, data, sizeof h);
  if (h.ninodes < 2 || h.ninodes > (1u << 31) || h.nblocks > (1ull << 40) ||
      h.inode_blocks_saved > (1ull << 30) || h.data_blocks_saved > (1ull << 40))
    return false;
  Geometry g = geometry(h.nblocks, h.ninodes);
  uint64_t inomap_len = (g.inode_blocks + 7) / 8;
  uint64_t sections[5] = {kBlockSize, g.bitmap_blocks * kBlockSize, inomap_len,
                          h.inode_blocks_saved * kBlockSize, h.data_blocks_saved * kBlockSize};
  uint32_t* crcs[5] = {&h.crc_super, &h.crc_bitmap, &h.crc_inomap, &h.crc_inodes, &h.crc_data};
  uint64_t off = sizeof h;
  for (int k = 0; k < 5; ++k) {
    if (sections[k] > len - off) return false;
    *crcs[k] = crc(0, data + off, sections[k]);
    off += sections[k];
  }
  h.crc_header = header_crc(h);
  std::memcpy(data, &h, sizeof h);
  return true;
}

Status save(const Fs& fs, const std::string& path, std::string* why, ImageLock* lock) {
  if (!have_crc(why)) return Err{-ENOSYS};
  return ImageIo::save(fs, path, why, lock);
}

ImageLock& ImageLock::operator=(ImageLock&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = o.fd_;
    o.fd_ = -1;
  }
  return *this;
}

ImageLock::~ImageLock() {
  if (fd_ >= 0) ::close(fd_);
}

Status ImageLock::take(const std::string& path, std::string* why) {
  auto fail = [&](int err) {
    if (why) *why = "cannot lock " + path + ": " + std::strerror(err);
    return err_status(-err);
  };
  *this = ImageLock();
  for (bool said = false;;) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errno == ENOENT ? ok_status() : fail(errno);
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
      if (!said) std::fprintf(stderr, "detux: waiting for %s: another detux is changing it\n", path.c_str());
      said = true;
      while (flock(fd, LOCK_EX) != 0)
        if (errno != EINTR) return ::close(fd), fail(errno);
    }
    struct stat held, now;
    if (fstat(fd, &held) == 0 && ::stat(path.c_str(), &now) == 0 && held.st_dev == now.st_dev &&
        held.st_ino == now.st_ino) {
      fd_ = fd;
      return ok_status();
    }
    ::close(fd);  // the holder's save replaced the file meanwhile: lock the new one
  }
}

Result<Fs> load_bytes(const uint8_t* data, size_t len, void* base, size_t size, std::string* why) {
  if (!have_crc(why)) return Err{-ENOSYS};
  return ImageIo::load(data, len, base, size, why);
}

Result<uint64_t> image_region_bytes(const std::string& path, std::string* why) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (why) *why = std::strerror(errno);
    return Err{-errno};
  }
  if (!have_crc(why)) return ::close(fd), Err{-ENOSYS};
  Header h{};
  const std::string problem = header_of(fd, &h);
  ::close(fd);
  if (!problem.empty()) {
    if (why) *why = problem;
    return Err{-EINVAL};
  }
  return h.nblocks * kBlockSize;
}

Result<std::vector<uint8_t>> read_image(const std::string& path, std::string* why) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (why) *why = "cannot open " + path + ": " + std::strerror(errno);
    return Err{-errno};
  }
  // Never more than its header says it holds: a huge (or sparse) file is
  // refused from its first bytes, not read whole into memory.
  const uint64_t limit = described_length(fd);  // 0: no sound header
  struct stat st {};
  const bool sized = fstat(fd, &st) == 0;
  if (limit && sized && static_cast<uint64_t>(st.st_size) > limit) {
    ::close(fd);
    if (why) *why = "image has " + std::to_string(st.st_size - limit) + " trailing bytes";
    return Err{-EINVAL};
  }
  const uint64_t cap = limit ? limit : sizeof(Header);  // without a sound header: enough to say why
  std::vector<uint8_t> bytes;
  if (sized) bytes.reserve(std::min<uint64_t>(cap, static_cast<uint64_t>(st.st_size)));
  uint8_t buf[1 << 16];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      ::close(fd);
      if (why) *why = "cannot read " + path + ": " + std::strerror(err);
      return Err{-err};
    }
    if (n == 0) break;
    bytes.insert(bytes.end(), buf, buf + n);
    if (bytes.size() >= cap) break;
  }
  ::close(fd);
  return bytes;
}

Result<Fs> load(const std::string& path, void* base, size_t size, std::string* why) {
  auto bytes = read_image(path, why);
  if (!bytes.ok()) return Err{bytes.err()};
  return load_bytes(bytes->data(), bytes->size(), base, size, why);
}

}  // namespace detux::fs
