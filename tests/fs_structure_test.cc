// Tests of the file system's structure alone (src/fs), without spaces: every
// name operation, the descriptor layer, large files through the double
// indirect block, hard links, rename over an existing name, readdir order,
// and fsck after each scenario.
#include <fcntl.h>
#include <unistd.h>

#include <string>

#include "fs_helpers.h"

namespace detux::fs {
namespace {

using testing::expect_sound;
using testing::format_in;
using testing::names;
using testing::read_file;
using testing::Region;
using testing::write_file;

constexpr size_t kSmall = 8 << 20;

TEST(FsStructure, FormatGivesAnEmptySoundRoot) {
  Region r(kSmall);
  Fs fs = format_in(r);
  EXPECT_EQ(names(fs, "/"), "");
  auto st = fs.stat("/");
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->type, kTypeDir);
  EXPECT_EQ(st->nlink, 2u);
  expect_sound(fs);
}

TEST(FsStructure, FormatRefusesUnalignedOrTinyRegions) {
  Region r(kSmall);
  EXPECT_EQ(Fs::format(static_cast<char*>(r.base()) + 8, kSmall - 8).err(), -EINVAL);
  EXPECT_EQ(Fs::format(r.base(), 4096).err(), -EINVAL);
}

TEST(FsStructure, WriteThenReadGivesTheBytesBack) {
  Region r(kSmall);
  Fs fs = format_in(r);
  write_file(fs, "/a", "hello, world");
  EXPECT_EQ(read_file(fs, "/a"), "hello, world");
  EXPECT_EQ(fs.stat("/a")->size, 12u);
  expect_sound(fs);
}

TEST(FsStructure, ReaddirIsSortedByNameWhateverTheCreationOrder) {
  Region r(kSmall);
  Fs fs = format_in(r);
  for (const char* n : {"zeta", "alpha", "mid", "Alpha", "al", "b"}) write_file(fs, n, "x");
  ASSERT_TRUE(fs.mkdir("/dir").ok());
  EXPECT_EQ(names(fs, "/"), "Alpha al alpha b dir mid zeta");
  expect_sound(fs);
}

TEST(FsStructure, ManyEntriesAcrossDirectoryBlocksStaySortedAndFindable) {
  Region r(kSmall);
  Fs fs = format_in(r);
  ASSERT_TRUE(fs.mkdir("/d").ok());
  for (int i = 99; i >= 0; --i) write_file(fs, "/d/f" + std::to_string(1000 + i * 7 % 100), "");
  auto es = fs.readdir("/d");
  ASSERT_TRUE(es.ok());
  ASSERT_EQ(es->size(), 100u);
  for (size_t i = 1; i < es->size(); ++i) EXPECT_LT((*es)[i - 1].name, (*es)[i].name);
  for (int i = 0; i < 100; i += 3) ASSERT_TRUE(fs.unlink("/d/f" + std::to_string(1000 + i)).ok());
  EXPECT_EQ(fs.readdir("/d")->size(), 66u);
  EXPECT_TRUE(fs.stat("/d/f1001").ok());
  EXPECT_EQ(fs.stat("/d/f1003").err(), -ENOENT);
  expect_sound(fs);
}

TEST(FsStructure, LargeFileThroughTheDoubleIndirectBlockReadsBackExactly) {
  Region r(64 << 20);
  Fs fs = format_in(r);
  // 10 direct + 512 single-indirect blocks is ~2 MiB: 12 MiB needs the
  // double-indirect tree.
  std::string data(12 << 20, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 2654435761u >> 24);
  write_file(fs, "/big", data);
  EXPECT_EQ(fs.stat("/big")->size, data.size());
  EXPECT_EQ(read_file(fs, "/big"), data);
  auto fd = fs.open("/big", O_RDONLY);
  char buf[100];
  uint64_t off = (kNDirect + kPtrsPerBlock + 700) * kBlockSize - 50;
  ASSERT_EQ(*fs.pread(*fd, buf, sizeof buf, off), sizeof buf);
  EXPECT_EQ(std::string(buf, sizeof buf), data.substr(off, sizeof buf));
  ASSERT_TRUE(fs.close(*fd).ok());
  expect_sound(fs);
  uint64_t free_before = fs.super().free_blocks;
  ASSERT_TRUE(fs.truncate("/big", 5000).ok());
  EXPECT_EQ(read_file(fs, "/big"), data.substr(0, 5000));
  EXPECT_GT(fs.super().free_blocks, free_before + 3000);
  expect_sound(fs);
}

TEST(FsStructure, FileBiggerThanTheMaximumFailsWithEFBIG) {
  Region r(kSmall);
  Fs fs = format_in(r);
  auto fd = fs.open("/f", O_RDWR | O_CREAT);
  EXPECT_EQ(fs.pwrite(*fd, "x", 1, kMaxFileSize).err(), -EFBIG);
  EXPECT_EQ(fs.ftruncate(*fd, kMaxFileSize + 1).err(), -EFBIG);
  ASSERT_TRUE(fs.close(*fd).ok());
}

TEST(FsStructure, FullFileSystemGivesENOSPCAndStaysSound) {
  Region r(1 << 20);
  Fs fs = format_in(r);
  auto fd = fs.open("/f", O_WRONLY | O_CREAT);
  std::string chunk(64 << 10, 'x');
  long err = 0;
  for (int i = 0; i < 100 && err == 0; ++i) {
    auto n = fs.write(*fd, chunk.data(), chunk.size());
    if (!n.ok()) err = n.err();
  }
  EXPECT_EQ(err, -ENOSPC);
  ASSERT_TRUE(fs.close(*fd).ok());
  expect_sound(fs);
  ASSERT_TRUE(fs.unlink("/f").ok());
  write_file(fs, "/g", "fits again");
  expect_sound(fs);
}

TEST(FsStructure, TruncateGrowsWithZerosAndShrinkZeroesTheTail) {
  Region r(kSmall);
  Fs fs = format_in(r);
  write_file(fs, "/f", "abcdef");
  ASSERT_TRUE(fs.truncate("/f", 3).ok());
  ASSERT_TRUE(fs.truncate("/f", 6).ok());
  EXPECT_EQ(read_file(fs, "/f"), std::string("abc\0\0\0", 6));
  expect_sound(fs);
}

TEST(FsStructure, SparseWriteLeavesAHoleThatReadsAsZeros) {
  Region r(kSmall);
  Fs fs = format_in(r);
  auto fd = fs.open("/s", O_RDWR | O_CREAT);
  ASSERT_EQ(*fs.pwrite(*fd, "end", 3, 100000), 3u);
  auto st = fs.fstat(*fd);
  EXPECT_EQ(st->size, 100003u);
  EXPECT_EQ(st->blocks, 2u);  // the data block and the single-indirect block
  char buf[10];
  ASSERT_EQ(*fs.pread(*fd, buf, 10, 50000), 10u);
  EXPECT_EQ(std::string(buf, 10), std::string(10, '\0'));
  ASSERT_TRUE(fs.close(*fd).ok());
  expect_sound(fs);
}

TEST(FsStructure, HardLinksShareContentAndCountLinks) {
  Region r(kSmall);
  Fs fs = format_in(r);
  ASSERT_TRUE(fs.mkdir("/d").ok());
  write_file(fs, "/a", "shared");
  ASSERT_TRUE(fs.link("/a", "/d/b").ok());
  EXPECT_EQ(fs.stat("/a")->nlink, 2u);
  EXPECT_EQ(fs.stat("/a")->ino, fs.stat("/d/b")->ino);
  write_file(fs, "/d/b", "changed", O_WRONLY | O_TRUNC);
  EXPECT_EQ(read_file(fs, "/a"), "changed");
  ASSERT_TRUE(fs.unlink("/a").ok());
  EXPECT_EQ(fs.stat("/d/b")->nlink, 1u);
  EXPECT_EQ(read_file(fs, "/d/b"), "changed");
  EXPECT_EQ(fs.link("/d", "/e").err(), -EPERM);
  EXPECT_EQ(fs.link("/d/b", "/d/b").err(), -EEXIST);
  expect_sound(fs);
}

TEST(FsStructure, UnlinkedOpenFileLivesUntilItsLastClose) {
  Region r(kSmall);
  Fs fs = format_in(r);
  write_file(fs, "/t", "temporary");
  uint32_t free_inodes = fs.super().free_inodes;
  auto fd = fs.open("/t", O_RDONLY);
  ASSERT_TRUE(fs.unlink("/t").ok());
  EXPECT_EQ(fs.stat("/t").err(), -ENOENT);
  char buf[9];
  ASSERT_EQ(*fs.read(*fd, buf, 9), 9u);
  EXPECT_EQ(std::string(buf, 9), "temporary");
  expect_sound(fs);
  ASSERT_TRUE(fs.close(*fd).ok());
  EXPECT_EQ(fs.super().free_inodes, free_inodes + 1);
  expect_sound(fs);
}

TEST(FsStructure, MkdirRmdirAndRmdirOfNonEmptyFails) {
  Region r(kSmall);
  Fs fs = format_in(r);
  ASSERT_TRUE(fs.mkdir("/a").ok());
  ASSERT_TRUE(fs.mkdir("/a/b").ok());
  EXPECT_EQ(fs.stat("/a")->nlink, 3u);
  EXPECT_EQ(fs.mkdir("/a").err(), -EEXIST);
  EXPECT_EQ(fs.mkdir("/nope/x").err(), -ENOENT);
  EXPECT_EQ(fs.rmdir("/a").err(), -ENOTEMPTY);
  write_file(fs, "/f", "");
  EXPECT_EQ(fs.rmdir("/f").err(), -ENOTDIR);
  EXPECT_EQ(fs.unlink("/a").err(), -EISDIR);
  EXPECT_EQ(fs.rmdir("/").err(), -EBUSY);
  ASSERT_TRUE(fs.rmdir("/a/b").ok());
  ASSERT_TRUE(fs.rmdir("/a").ok());
  EXPECT_EQ(names(fs, "/"), "f");
  EXPECT_EQ(fs.stat("/")->nlink, 2u);
  expect_sound(fs);
}

TEST(FsStructure, PathsResolveDotDotAndRepeatedSlashes) {
  Region r(kSmall);
  Fs fs = format_in(r);
  ASSERT_TRUE(fs.mkdir("/a").ok());
  ASSERT_TRUE(fs.mkdir("a/b").ok());
  write_file(fs, "//a/./b/../b/f", "x");
  EXPECT_EQ(read_file(fs, "/a/b/f"), "x");
  EXPECT_EQ(fs.stat("/..")->ino, kRootIno);
  EXPECT_EQ(fs.stat("/a/b/f/g").err(), -ENOTDIR);
  EXPECT_EQ(fs.open(std::string(kNameMax + 1, 'n'), O_CREAT | O_WRONLY).err(), -ENAMETOOLONG);
  write_file(fs, std::string(kNameMax, 'n'), "longest name");
  expect_sound(fs);
}

TEST(FsStructure, RenameOverAnExistingFileReplacesIt) {
  Region r(kSmall);
  Fs fs = format_in(r);
  write_file(fs, "/a", "new");
  write_file(fs, "/b", "old");
  uint32_t free_inodes = fs.super().free_inodes;
  ASSERT_TRUE(fs.rename("/a", "/b").ok());
  EXPECT_EQ(names(fs, "/"), "b");
  EXPECT_EQ(read_file(fs, "/b"), "new");
  EXPECT_EQ(fs.super().free_inodes, free_inodes + 1);
  expect_sound(fs);
}

TEST(FsStructure, RenameOfDirectoriesChecksTypesEmptinessAndCycles) {
  Region r(kSmall);
  Fs fs = format_in(r);
  ASSERT_TRUE(fs.mkdir("/a").ok());
  ASSERT_TRUE(fs.mkdir("/a/sub").ok());
  ASSERT_TRUE(fs.mkdir("/empty").ok());
  ASSERT_TRUE(fs.mkdir("/full").ok());
  write_file(fs, "/full/x", "");
  write_file(fs, "/file", "");
  EXPECT_EQ(fs.rename("/a", "/a/sub/a").err(), -EINVAL);
  EXPECT_EQ(fs.rename("/a", "/full").err(), -ENOTEMPTY);
  EXPECT_EQ(fs.rename("/a", "/file").err(), -ENOTDIR);
  EXPECT_EQ(fs.rename("/file", "/empty").err(), -EISDIR);
  ASSERT_TRUE(fs.rename("/a", "/empty").ok());
  EXPECT_EQ(names(fs, "/"), "empty file full");
  EXPECT_EQ(names(fs, "/empty"), "sub");
  ASSERT_TRUE(fs.rename("/empty", "/full/moved").ok());
  EXPECT_EQ(fs.stat("/")->nlink, 3u);
  EXPECT_EQ(fs.stat("/full")->nlink, 3u);
  EXPECT_TRUE(fs.stat("/full/moved/sub/..").ok());
  EXPECT_EQ(fs.stat("/full/moved/sub/../..")->ino, fs.stat("/full")->ino);
  ASSERT_TRUE(fs.rename("/file", "/file").ok());
  expect_sound(fs);
}

TEST(FsStructure, DescriptorsAreLowestFreeFromThree) {
  Region r(kSmall);
  Fs fs = format_in(r);
  write_file(fs, "/f", "0123456789");
  int a = *fs.open("/f", O_RDONLY), b = *fs.open("/f", O_RDONLY), c = *fs.open("/f", O_RDONLY);
  EXPECT_EQ(a, 3);
  EXPECT_EQ(b, 4);
  EXPECT_EQ(c, 5);
  ASSERT_TRUE(fs.close(b).ok());
  EXPECT_EQ(*fs.dup(a), 4);
  EXPECT_EQ(*fs.open("/f", O_RDONLY), 6);
  EXPECT_EQ(fs.close(b + 100).err(), -EBADF);
  EXPECT_EQ(fs.read(2, nullptr, 0).err(), -EBADF);
  expect_sound(fs);
}

TEST(FsStructure, DupSharesTheOffsetAndCloseKeepsTheOther) {
  Region r(kSmall);
  Fs fs = format_in(r);
  write_file(fs, "/f", "abcdef");
  int a = *fs.open("/f", O_RDONLY);
  int b = *fs.dup(a);
  char buf[3];
  ASSERT_EQ(*fs.read(a, buf, 3), 3u);
  ASSERT_EQ(*fs.read(b, buf, 3), 3u);
  EXPECT_EQ(std::string(buf, 3), "def");
  ASSERT_TRUE(fs.close(a).ok());
  EXPECT_EQ(*fs.lseek(b, 1, SEEK_SET), 1u);
  ASSERT_EQ(*fs.read(b, buf, 3), 3u);
  EXPECT_EQ(std::string(buf, 3), "bcd");
  ASSERT_TRUE(fs.close(b).ok());
  expect_sound(fs);
}

TEST(FsStructure, OpenFlagsAccessModesAndSeek) {
  Region r(kSmall);
  Fs fs = format_in(r);
  EXPECT_EQ(fs.open("/f", O_RDONLY).err(), -ENOENT);
  int w = *fs.open("/f", O_WRONLY | O_CREAT | O_EXCL);
  EXPECT_EQ(fs.open("/f", O_WRONLY | O_CREAT | O_EXCL).err(), -EEXIST);
  char c;
  EXPECT_EQ(fs.read(w, &c, 1).err(), -EBADF);
  ASSERT_EQ(*fs.write(w, "hello", 5), 5u);
  EXPECT_EQ(*fs.lseek(w, -2, SEEK_END), 3u);
  ASSERT_EQ(*fs.write(w, "P!", 2), 2u);
  EXPECT_EQ(fs.lseek(w, -10, SEEK_CUR).err(), -EINVAL);
  int rd = *fs.open("/f", O_RDONLY);
  EXPECT_EQ(fs.write(rd, "x", 1).err(), -EBADF);
  int ap = *fs.open("/f", O_WRONLY | O_APPEND);
  ASSERT_EQ(*fs.lseek(ap, 0, SEEK_SET), 0u);
  ASSERT_EQ(*fs.write(ap, "++", 2), 2u);
  EXPECT_EQ(read_file(fs, "/f"), "helP!++");
  int tr = *fs.open("/f", O_RDWR | O_TRUNC);
  EXPECT_EQ(fs.fstat(tr)->size, 0u);
  EXPECT_EQ(fs.open("/", O_WRONLY).err(), -EISDIR);
  int d = *fs.open("/", O_RDONLY);
  EXPECT_EQ(fs.read(d, &c, 1).err(), -EISDIR);
  for (int fd : {w, rd, ap, tr, d}) ASSERT_TRUE(fs.close(fd).ok());
  expect_sound(fs);
}

TEST(FsStructure, VersionCountsOnlyExclusiveChangesAndTimesAreLogical) {
  Region r(kSmall);
  Fs fs = format_in(r);
  write_file(fs, "/f", "abc");
  auto v0 = fs.stat("/f")->version;
  testing::append_file(fs, "/f", "def");
  EXPECT_EQ(fs.stat("/f")->version, v0);  // appends keep the version
  auto fd = fs.open("/f", O_WRONLY);
  ASSERT_EQ(*fs.write(*fd, "X", 1), 1u);  // an overwrite bumps it
  ASSERT_TRUE(fs.close(*fd).ok());
  EXPECT_EQ(fs.stat("/f")->version, v0 + 1);
  auto m1 = fs.stat("/f")->mtime;
  write_file(fs, "/g", "later");
  EXPECT_GT(fs.stat("/g")->mtime, m1);
  EXPECT_LT(fs.stat("/g")->mtime, 1000u);  // a clock of operations, not host time
}

TEST(FsStructure, TooManyOpenFilesGivesEMFILE) {
  Region r(kSmall);
  Fs fs = format_in(r);
  write_file(fs, "/f", "");
  int last = 0;
  for (uint32_t i = kFirstFd; i < kMaxFds; ++i) last = *fs.open("/f", O_RDONLY);
  EXPECT_EQ(last, static_cast<int>(kMaxFds) - 1);
  EXPECT_EQ(fs.open("/f", O_RDONLY).err(), -EMFILE);
  expect_sound(fs);
}

TEST(FsStructure, TheSameOperationsGiveTheSameBytes) {
  Region r1(kSmall), r2(kSmall);
  for (Region* r : {&r1, &r2}) {
    Fs fs = format_in(*r);
    ASSERT_TRUE(fs.mkdir("/d").ok());
    write_file(fs, "/d/a", std::string(10000, 'a'));
    write_file(fs, "/b", "b");
    ASSERT_TRUE(fs.rename("/b", "/d/b").ok());
    ASSERT_TRUE(fs.unlink("/d/a").ok());
  }
  EXPECT_EQ(std::memcmp(r1.base(), r2.base(), kSmall), 0);
}

}  // namespace
}  // namespace detux::fs
