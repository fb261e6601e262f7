// Tests of fork/join reconciliation (src/fs/reconcile.cc), one rule each.
//
// A fork is simulated as the kernel will do it: the child's region is a
// byte copy of the parent's and the child calls begin_child(); both sides
// then change their own copy, and the parent reconciles, reading the
// child's region through a RegionReader (memcpy here).
#include <fcntl.h>

#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "fs_helpers.h"

namespace detux::fs {
namespace {

using testing::append_file;
using testing::expect_sound;
using testing::fork_of;
using testing::format_in;
using testing::MemReader;
using testing::names;
using testing::read_file;
using testing::Region;
using testing::write_file;

constexpr size_t kSize = 8 << 20;

struct Family {
  Region pr{kSize};
  Fs parent;
  std::vector<std::unique_ptr<Region>> regions;
  std::deque<Fs> kids;  // references stay valid as it grows

  Family() { parent = format_in(pr); }
  Fs& fork() {
    regions.push_back(std::make_unique<Region>(kSize));
    kids.push_back(fork_of(parent, *regions.back()));
    return kids.back();
  }
  JoinReport join(size_t k) {
    MemReader reader(*regions[k]);
    auto r = reconcile(parent, reader);
    EXPECT_TRUE(r.ok()) << error_text(r.err());
    expect_sound(parent);
    return r.ok() ? *r : JoinReport{};
  }
};

std::string conflicts(const JoinReport& r) {
  std::string out;
  for (auto& c : r.conflicts) out += (out.empty() ? "" : "; ") + c.path + ": " + c.what;
  return out;
}

TEST(FsReconcile, BeginChildIsConstantTimeAndRecordsNothingYet) {
  Family f;
  for (int i = 0; i < 200; ++i) write_file(f.parent, "/f" + std::to_string(i), "x");
  Fs& c = f.fork();
  EXPECT_EQ(c.super().changed_count, 0u);
  EXPECT_EQ(c.super().epoch, f.parent.super().epoch + 1);
  EXPECT_EQ(std::memcmp(static_cast<char*>(c.base()) + kBlockSize,
                        static_cast<char*>(f.parent.base()) + kBlockSize, kSize - kBlockSize),
            0);  // only the superblock differs
}

TEST(FsReconcile, AChildChangesOnlyTheInodesItTouchesOntoItsList) {
  Family f;
  for (int i = 0; i < 50; ++i) write_file(f.parent, "/f" + std::to_string(i), "x");
  Fs& c = f.fork();
  write_file(c, "/f7", "y", O_WRONLY | O_TRUNC);
  EXPECT_EQ(c.super().changed_count, 1u);
  append_file(c, "/f7", "z");
  EXPECT_EQ(c.super().changed_count, 1u);
  expect_sound(c);
}

TEST(FsReconcile, OnlyTheChildChangedAFileSoTheChildWins) {
  Family f;
  write_file(f.parent, "/a", "original");
  Fs& c = f.fork();
  write_file(c, "/a", "rewritten by the child");
  auto r = f.join(0);
  EXPECT_EQ(conflicts(r), "");
  EXPECT_EQ(r.files_taken, 1u);
  EXPECT_EQ(read_file(f.parent, "/a"), "rewritten by the child");
}

TEST(FsReconcile, OnlyTheParentChangedAFileSoTheParentKeepsIt) {
  Family f;
  write_file(f.parent, "/a", "original");
  Fs& c = f.fork();
  write_file(c, "/other", "x");
  write_file(f.parent, "/a", "parent's");
  auto r = f.join(0);
  EXPECT_EQ(conflicts(r), "");
  EXPECT_EQ(read_file(f.parent, "/a"), "parent's");
  EXPECT_EQ(read_file(f.parent, "/other"), "x");
}

TEST(FsReconcile, BothAppendedKeepsTheParentsAppendThenTheChilds) {
  Family f;
  write_file(f.parent, "/log", "start\n");
  Fs& c = f.fork();
  append_file(c, "/log", "child\n");
  append_file(f.parent, "/log", "parent\n");
  auto r = f.join(0);
  EXPECT_EQ(conflicts(r), "");
  EXPECT_EQ(r.files_appended, 1u);
  EXPECT_EQ(read_file(f.parent, "/log"), "start\nparent\nchild\n");
}

TEST(FsReconcile, OnlyTheChildAppendedAddsItsBytes) {
  Family f;
  write_file(f.parent, "/log", std::string(5000, 'p'));
  Fs& c = f.fork();
  append_file(c, "/log", std::string(9000, 'c'));
  auto r = f.join(0);
  EXPECT_EQ(r.files_appended, 1u);
  EXPECT_EQ(read_file(f.parent, "/log"), std::string(5000, 'p') + std::string(9000, 'c'));
}

TEST(FsReconcile, BothRewroteAFileSoItIsConflictedAndOpenFailsUntilTruncated) {
  Family f;
  write_file(f.parent, "/a", "original");
  Fs& c = f.fork();
  write_file(c, "/a", "child");
  write_file(f.parent, "/a", "parent");
  auto r = f.join(0);
  EXPECT_EQ(conflicts(r), "/a: changed on both sides");
  EXPECT_EQ(f.parent.open("/a", O_RDONLY).err(), -kEConflict);
  EXPECT_EQ(f.parent.open("/a", O_RDWR).err(), -kEConflict);
  EXPECT_TRUE(f.parent.stat("/a")->conflicted);
  write_file(f.parent, "/a", "resolved");  // O_TRUNC rewrites it
  EXPECT_EQ(read_file(f.parent, "/a"), "resolved");
  EXPECT_FALSE(f.parent.stat("/a")->conflicted);
}

TEST(FsReconcile, ConflictIsClearedByTruncateToZeroOrRemoval) {
  Family f;
  write_file(f.parent, "/a", "o");
  write_file(f.parent, "/b", "o");
  Fs& c = f.fork();
  write_file(c, "/a", "c");
  write_file(c, "/b", "c");
  write_file(f.parent, "/a", "p");
  write_file(f.parent, "/b", "p");
  EXPECT_EQ(f.join(0).conflicts.size(), 2u);
  ASSERT_TRUE(f.parent.truncate("/a", 0).ok());
  EXPECT_EQ(read_file(f.parent, "/a"), "");
  ASSERT_TRUE(f.parent.unlink("/b").ok());
  write_file(f.parent, "/b", "new");
  EXPECT_EQ(read_file(f.parent, "/b"), "new");
}

TEST(FsReconcile, AppendOnOneSideAndRewriteOnTheOtherIsAConflict) {
  Family f;
  write_file(f.parent, "/a", "base");
  Fs& c = f.fork();
  append_file(c, "/a", "+child");
  write_file(f.parent, "/a", "rewritten");
  EXPECT_EQ(conflicts(f.join(0)), "/a: changed on both sides");
}

TEST(FsReconcile, NewFilesAndDirectoriesOfTheChildAllAppear) {
  Family f;
  ASSERT_TRUE(f.parent.mkdir("/out").ok());
  Fs& c = f.fork();
  ASSERT_TRUE(c.mkdir("/out/deep").ok());
  ASSERT_TRUE(c.mkdir("/out/deep/er").ok());
  write_file(c, "/out/deep/er/f", "deep file");
  write_file(c, "/top", "top file");
  write_file(f.parent, "/parents", "p");
  auto r = f.join(0);
  EXPECT_EQ(conflicts(r), "");
  EXPECT_EQ(names(f.parent, "/"), "out parents top");
  EXPECT_EQ(read_file(f.parent, "/out/deep/er/f"), "deep file");
  EXPECT_EQ(read_file(f.parent, "/top"), "top file");
  EXPECT_EQ(f.parent.stat("/out/deep/er/..")->ino, f.parent.stat("/out/deep")->ino);
}

TEST(FsReconcile, ChildInodeNumbersAreRemappedWhenTheParentUsedThemToo) {
  Family f;
  Fs& c = f.fork();
  write_file(c, "/from_child", "child's");
  write_file(f.parent, "/from_parent", "parent's");  // takes the same inode number
  ASSERT_EQ(c.stat("/from_child")->ino, f.parent.stat("/from_parent")->ino);
  EXPECT_EQ(conflicts(f.join(0)), "");
  EXPECT_EQ(read_file(f.parent, "/from_child"), "child's");
  EXPECT_EQ(read_file(f.parent, "/from_parent"), "parent's");
  EXPECT_NE(f.parent.stat("/from_child")->ino, f.parent.stat("/from_parent")->ino);
}

TEST(FsReconcile, TheSameNameCreatedOnBothSidesIsAConflictNotAnOverwrite) {
  Family f;
  Fs& c = f.fork();
  write_file(c, "/same", "child's");
  write_file(f.parent, "/same", "parent's");
  auto r = f.join(0);
  EXPECT_EQ(conflicts(r), "/same: created or replaced on both sides");
  EXPECT_EQ(f.parent.open("/same", O_RDONLY).err(), -kEConflict);
  write_file(f.parent, "/same", "fixed");
  EXPECT_EQ(read_file(f.parent, "/same"), "fixed");
}

TEST(FsReconcile, TheSameDirectoryMadeOnBothSidesIsMergedWithBothContents) {
  Family f;
  Fs& c = f.fork();
  ASSERT_TRUE(c.mkdir("/out").ok());
  write_file(c, "/out/c", "c");
  ASSERT_TRUE(f.parent.mkdir("/out").ok());
  write_file(f.parent, "/out/p", "p");
  EXPECT_EQ(conflicts(f.join(0)), "");
  EXPECT_EQ(names(f.parent, "/out"), "c p");
}

TEST(FsReconcile, UnlinkInTheChildIsApplied) {
  Family f;
  write_file(f.parent, "/gone", "x");
  write_file(f.parent, "/kept", "y");
  uint32_t free_inodes = f.parent.super().free_inodes;
  Fs& c = f.fork();
  ASSERT_TRUE(c.unlink("/gone").ok());
  EXPECT_EQ(conflicts(f.join(0)), "");
  EXPECT_EQ(names(f.parent, "/"), "kept");
  EXPECT_EQ(f.parent.super().free_inodes, free_inodes + 1);
}

TEST(FsReconcile, RenameInTheChildIsAppliedAcrossDirectories) {
  Family f;
  ASSERT_TRUE(f.parent.mkdir("/a").ok());
  ASSERT_TRUE(f.parent.mkdir("/b").ok());
  write_file(f.parent, "/a/f", "content");
  uint32_t ino = f.parent.stat("/a/f")->ino;
  Fs& c = f.fork();
  ASSERT_TRUE(c.rename("/a/f", "/b/g").ok());
  EXPECT_EQ(conflicts(f.join(0)), "");
  EXPECT_EQ(names(f.parent, "/a"), "");
  EXPECT_EQ(names(f.parent, "/b"), "g");
  EXPECT_EQ(f.parent.stat("/b/g")->ino, ino);
  EXPECT_EQ(f.parent.stat("/b/g")->nlink, 1u);
}

TEST(FsReconcile, RenameOverAnExistingFileInTheChildReplacesItInTheParent) {
  Family f;
  write_file(f.parent, "/config", "old");
  Fs& c = f.fork();
  write_file(c, "/config.tmp", "new");
  ASSERT_TRUE(c.rename("/config.tmp", "/config").ok());
  EXPECT_EQ(conflicts(f.join(0)), "");
  EXPECT_EQ(names(f.parent, "/"), "config");
  EXPECT_EQ(read_file(f.parent, "/config"), "new");
}

TEST(FsReconcile, DirectoryMovedInTheChildIsMovedInTheParent) {
  Family f;
  ASSERT_TRUE(f.parent.mkdir("/src").ok());
  ASSERT_TRUE(f.parent.mkdir("/src/d").ok());
  write_file(f.parent, "/src/d/x", "x");
  ASSERT_TRUE(f.parent.mkdir("/dst").ok());
  Fs& c = f.fork();
  ASSERT_TRUE(c.rename("/src/d", "/dst/d2").ok());
  EXPECT_EQ(conflicts(f.join(0)), "");
  EXPECT_EQ(names(f.parent, "/src"), "");
  EXPECT_EQ(read_file(f.parent, "/dst/d2/x"), "x");
}

TEST(FsReconcile, RecursiveRemovalInTheChildIsApplied) {
  Family f;
  ASSERT_TRUE(f.parent.mkdir("/t").ok());
  ASSERT_TRUE(f.parent.mkdir("/t/u").ok());
  write_file(f.parent, "/t/u/f", "x");
  Fs& c = f.fork();
  ASSERT_TRUE(c.unlink("/t/u/f").ok());
  ASSERT_TRUE(c.rmdir("/t/u").ok());
  ASSERT_TRUE(c.rmdir("/t").ok());
  EXPECT_EQ(conflicts(f.join(0)), "");
  EXPECT_EQ(names(f.parent, "/"), "");
}

TEST(FsReconcile, RemovedDirectoryThatTheParentFilledIsAConflictAndKept) {
  Family f;
  ASSERT_TRUE(f.parent.mkdir("/d").ok());
  Fs& c = f.fork();
  ASSERT_TRUE(c.rmdir("/d").ok());
  write_file(f.parent, "/d/new", "x");
  auto r = f.join(0);
  EXPECT_EQ(conflicts(r), "/d: removed in the child, not empty or open in the parent");
  EXPECT_EQ(read_file(f.parent, "/d/new"), "x");
}

TEST(FsReconcile, CrossedDirectoryMovesGiveAConflictNotACycle) {
  Family f;
  ASSERT_TRUE(f.parent.mkdir("/a").ok());
  ASSERT_TRUE(f.parent.mkdir("/b").ok());
  Fs& c1 = f.fork();
  Fs& c2 = f.fork();
  ASSERT_TRUE(c1.rename("/a", "/b/a").ok());
  ASSERT_TRUE(c2.rename("/b", "/a/b").ok());
  EXPECT_EQ(conflicts(f.join(0)), "");
  EXPECT_EQ(conflicts(f.join(1)), "/b/a/b: moving this directory here would make a cycle");
  EXPECT_EQ(names(f.parent, "/"), "b");
  EXPECT_EQ(names(f.parent, "/b"), "a");
}

TEST(FsReconcile, ChangeInTheChildToAFileThatTheParentRemovedIsReported) {
  Family f;
  write_file(f.parent, "/a", "x");
  Fs& c = f.fork();
  write_file(c, "/a", "changed");
  ASSERT_TRUE(f.parent.unlink("/a").ok());
  auto r = f.join(0);
  ASSERT_EQ(r.conflicts.size(), 1u);
  EXPECT_EQ(r.conflicts[0].what, "changed in the child, removed in the parent");
  EXPECT_EQ(names(f.parent, "/"), "");
}

TEST(FsReconcile, HardLinkMadeInTheChildToANewFileGivesOneInodeInTheParent) {
  Family f;
  Fs& c = f.fork();
  write_file(c, "/one", "linked");
  ASSERT_TRUE(c.link("/one", "/two").ok());
  EXPECT_EQ(conflicts(f.join(0)), "");
  EXPECT_EQ(f.parent.stat("/one")->ino, f.parent.stat("/two")->ino);
  EXPECT_EQ(f.parent.stat("/one")->nlink, 2u);
}

TEST(FsReconcile, SeveralChildrenJoinedInOrderAppendInJoinOrder) {
  Family f;
  write_file(f.parent, "/log", "");
  for (int k = 0; k < 4; ++k) f.fork();
  for (int k = 3; k >= 0; --k) append_file(f.kids[k], "/log", "child" + std::to_string(k) + "\n");
  append_file(f.parent, "/log", "parent\n");
  for (int k = 0; k < 4; ++k) EXPECT_EQ(conflicts(f.join(k)), "");
  EXPECT_EQ(read_file(f.parent, "/log"), "parent\nchild0\nchild1\nchild2\nchild3\n");
}

TEST(FsReconcile, SeveralChildrenMakingDifferentFilesAllAppear) {
  Family f;
  ASSERT_TRUE(f.parent.mkdir("/out").ok());
  for (int k = 0; k < 5; ++k) write_file(f.fork(), "/out/part" + std::to_string(k), "p" + std::to_string(k));
  for (int k = 0; k < 5; ++k) EXPECT_EQ(conflicts(f.join(k)), "");
  EXPECT_EQ(names(f.parent, "/out"), "part0 part1 part2 part3 part4");
  EXPECT_EQ(read_file(f.parent, "/out/part3"), "p3");
}

TEST(FsReconcile, TwoChildrenRewritingTheSameFileConflictAtTheSecondJoin) {
  Family f;
  write_file(f.parent, "/a", "base");
  write_file(f.fork(), "/a", "one");
  write_file(f.fork(), "/a", "two");
  EXPECT_EQ(conflicts(f.join(0)), "");
  EXPECT_EQ(read_file(f.parent, "/a"), "one");
  EXPECT_EQ(conflicts(f.join(1)), "/a: changed on both sides");
}

TEST(FsReconcile, JoiningChildrenInIdOrderGivesTheSameBytesEveryTime) {
  std::string first;
  for (int run = 0; run < 3; ++run) {
    Family f;
    ASSERT_TRUE(f.parent.mkdir("/d").ok());
    write_file(f.parent, "/log", "");
    for (int k = 0; k < 3; ++k) {
      Fs& c = f.fork();
      append_file(c, "/log", std::string(100 * (k + 1), char('a' + k)));
      write_file(c, "/d/f" + std::to_string(k), std::string(5000, char('0' + k)));
      ASSERT_TRUE(c.mkdir("/d/sub" + std::to_string(k % 2)).ok());
    }
    for (int k = 0; k < 3; ++k) (void)f.join(k);
    std::string image(static_cast<char*>(f.parent.base()), kSize);
    if (run == 0) first = image;
    EXPECT_TRUE(image == first) << "run " << run << " differs";
  }
}

TEST(FsReconcile, GrandchildJoinedIntoChildThenChildIntoParent) {
  Family f;
  write_file(f.parent, "/log", "p\n");
  Fs& c = f.fork();
  Region gr(kSize);
  Fs g = fork_of(c, gr);
  append_file(g, "/log", "grandchild\n");
  write_file(g, "/g", "from the grandchild");
  append_file(c, "/log", "child\n");
  MemReader reader(gr);
  auto r = reconcile(c, reader);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(conflicts(*r), "");
  expect_sound(c);
  EXPECT_EQ(conflicts(f.join(0)), "");
  EXPECT_EQ(read_file(f.parent, "/log"), "p\nchild\ngrandchild\n");
  EXPECT_EQ(read_file(f.parent, "/g"), "from the grandchild");
}

// The usual child changes nothing in the file system.  Its join must not
// write the parent's superblock (in the master that page is shared with the
// newest space, so a write costs a copy); a child that changed something
// still ticks the clock.
TEST(FsReconcile, AJoinOfAChildThatChangedNothingLeavesTheParentsSuperblockUnwritten) {
  Family f;
  write_file(f.parent, "/a", "a");
  Fs& idle = f.fork();
  (void)idle;
  Fs& busy = f.fork();
  write_file(busy, "/b", "b");
  std::vector<char> before(static_cast<char*>(f.parent.base()),
                           static_cast<char*>(f.parent.base()) + kBlockSize);
  JoinReport r = f.join(0);
  EXPECT_EQ(r.files_taken + r.names_applied, 0u);
  EXPECT_EQ(std::memcmp(before.data(), f.parent.base(), kBlockSize), 0);
  uint64_t clock = f.parent.super().clock;
  f.join(1);
  EXPECT_GT(f.parent.super().clock, clock);
  EXPECT_EQ(read_file(f.parent, "/b"), "b");
}

TEST(FsReconcile, ChildThatLooksLikeAnotherFileSystemIsRefusedWithEIO) {
  Family f;
  Fs& c = f.fork();
  write_file(c, "/x", "x");
  auto* sb = reinterpret_cast<Super*>(c.base());
  sb->ninodes += 16;
  MemReader reader(*f.regions[0]);
  EXPECT_EQ(reconcile(f.parent, reader).err(), -EIO);
}

TEST(FsReconcile, ChildWithACorruptChangedListOrPointersGivesEIONotACrash) {
  for (int mode = 0; mode < 3; ++mode) {
    Family f;
    write_file(f.parent, "/a", "a");
    Fs& c = f.fork();
    write_file(c, "/a", std::string(50000, 'x'));
    uint32_t ino = c.stat("/a")->ino;
    auto* sb = reinterpret_cast<Super*>(c.base());
    auto* table = reinterpret_cast<Inode*>(static_cast<char*>(c.base()) + sb->inode_start * kBlockSize);
    if (mode == 0) table[ino].rec_next = ino;             // a loop
    if (mode == 1) table[ino].indirect = sb->nblocks + 5;  // out of range
    if (mode == 2) sb->changed_head = sb->ninodes + 1;
    MemReader reader(*f.regions[0]);
    EXPECT_EQ(reconcile(f.parent, reader).err(), -EIO) << "mode " << mode;
    expect_sound(f.parent);
  }
}

// A review (December 7) found these three: a child's entries could give a
// directory two names, and running out of blocks half-way through a join
// could leave the parent unsound.

Inode* raw_inode(Fs& fs, uint32_t ino) {
  auto* sb = reinterpret_cast<Super*>(fs.base());
  return reinterpret_cast<Inode*>(static_cast<char*>(fs.base()) + sb->inode_start * kBlockSize) + ino;
}

TEST(FsReconcile, AChildWhoseEntriesGiveANewDirectoryTwoNamesIsRefusedWithEIO) {
  Family f;
  Fs& c = f.fork();
  ASSERT_TRUE(c.mkdir("/n").ok());
  ASSERT_TRUE(c.mkdir("/m").ok());
  ASSERT_TRUE(c.mkdir("/m/x").ok());
  const uint32_t n = c.stat("/n")->ino, m = c.stat("/m")->ino;
  auto* entries = reinterpret_cast<Dirent*>(static_cast<char*>(c.base()) +
                                            raw_inode(c, m)->direct[0] * kBlockSize);
  ASSERT_EQ(std::string(entries[0].name, entries[0].name_len), "x");
  entries[0].ino = n;  // /m/x now names /n as well
  MemReader reader(*f.regions[0]);
  EXPECT_EQ(reconcile(f.parent, reader).err(), -EIO);
  expect_sound(f.parent);
}

// Appends to a new file until the file system is full.
void fill(Fs& fs, const std::string& path) {
  auto fd = fs.open(path, O_WRONLY | O_CREAT);
  ASSERT_TRUE(fd.ok());
  std::string block(kBlockSize, 'f');
  while (fs.write(*fd, block.data(), block.size()).ok()) {
  }
  ASSERT_TRUE(fs.close(*fd).ok());
}

TEST(FsReconcile, NoRoomForAFileTheChildRewroteLeavesTheParentsFileWhole) {
  Family f;
  write_file(f.parent, "/f", "the parent's bytes");
  Fs& c = f.fork();
  write_file(c, "/f", std::string(30 * kBlockSize, 'c'));
  fill(f.parent, "/filler");
  MemReader reader(*f.regions[0]);
  EXPECT_EQ(reconcile(f.parent, reader).err(), -ENOSPC);
  EXPECT_EQ(read_file(f.parent, "/f"), "the parent's bytes");
  expect_sound(f.parent);
}

TEST(FsReconcile, NoRoomForADirectoryTheChildMovedLeavesItWhereItWas) {
  Family f;
  ASSERT_TRUE(f.parent.mkdir("/a").ok());
  ASSERT_TRUE(f.parent.mkdir("/a/d").ok());
  ASSERT_TRUE(f.parent.mkdir("/b").ok());
  write_file(f.parent, "/a/d/keep", "kept");
  Fs& c = f.fork();
  ASSERT_TRUE(c.rename("/a/d", "/b/d").ok());
  fill(f.parent, "/filler");
  MemReader reader(*f.regions[0]);
  EXPECT_EQ(reconcile(f.parent, reader).err(), -ENOSPC);
  EXPECT_EQ(read_file(f.parent, "/a/d/keep"), "kept");
  expect_sound(f.parent);
}

}  // namespace
}  // namespace detux::fs
