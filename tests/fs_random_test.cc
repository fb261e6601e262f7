// Randomised tests of reconciliation: a parent and two children make random
// changes (create, append, rewrite, truncate, unlink, link, rename, mkdir,
// rmdir) from one seed; the children are joined in order.  Whatever the
// mix, every join must succeed (conflicts are reported, not errors), leave
// the parent sound by fsck, and give the same bytes when run again.
#include <fcntl.h>

#include <random>
#include <string>

#include "fs_helpers.h"

namespace detux::fs {
namespace {

using testing::fork_of;
using testing::format_in;
using testing::MemReader;
using testing::Region;

constexpr size_t kSize = 4 << 20;

std::string pick_path(std::mt19937& rng) {
  static const char* dirs[] = {"", "/a", "/b", "/a/c"};
  static const char* files[] = {"x", "y", "z", "w"};
  return std::string(dirs[rng() % 4]) + "/" + files[rng() % 4];
}

std::string pick_dir(std::mt19937& rng) {
  static const char* dirs[] = {"/a", "/b", "/a/c", "/b/d"};
  return dirs[rng() % 4];
}

// One random change; failures (ENOENT, EEXIST, ...) are part of the game.
void random_op(Fs& fs, std::mt19937& rng) {
  std::string p = pick_path(rng), q = pick_path(rng);
  std::string data(rng() % 9000, static_cast<char>('a' + rng() % 26));
  switch (rng() % 10) {
    case 0:
    case 1: {
      auto fd = fs.open(p, O_WRONLY | O_CREAT | O_APPEND);
      if (fd.ok()) (void)fs.write(*fd, data.data(), data.size()), (void)fs.close(*fd);
      break;
    }
    case 2: {
      auto fd = fs.open(p, O_WRONLY | O_CREAT | O_TRUNC);
      if (fd.ok()) (void)fs.write(*fd, data.data(), data.size()), (void)fs.close(*fd);
      break;
    }
    case 3: (void)fs.truncate(p, rng() % 5000); break;
    case 4: (void)fs.unlink(p); break;
    case 5: (void)fs.link(p, q); break;
    case 6: (void)fs.rename(p, q); break;
    case 7: (void)fs.mkdir(pick_dir(rng)); break;
    case 8: (void)fs.rmdir(pick_dir(rng)); break;
    case 9: (void)fs.rename(pick_dir(rng), pick_dir(rng)); break;
  }
}

std::string run(uint32_t seed) {
  std::mt19937 rng(seed);
  Region pr(kSize), c1r(kSize), c2r(kSize);
  Fs parent = format_in(pr);
  for (int i = 0; i < 30; ++i) random_op(parent, rng);
  Fs c1 = fork_of(parent, c1r);
  Fs c2 = fork_of(parent, c2r);
  for (int i = 0; i < 25; ++i) {
    random_op(c1, rng);
    random_op(c2, rng);
    random_op(parent, rng);
  }
  testing::expect_sound(c1);
  testing::expect_sound(c2);
  for (Region* r : {&c1r, &c2r}) {
    MemReader reader(*r);
    auto rep = reconcile(parent, reader);
    EXPECT_TRUE(rep.ok()) << "seed " << seed << ": " << error_text(rep.err());
    FsckReport f = fsck(parent);
    for (auto& prob : f.problems) ADD_FAILURE() << "seed " << seed << ": " << prob;
  }
  return std::string(static_cast<char*>(pr.base()), kSize);
}

TEST(FsRandom, RandomChangesOnBothSidesAlwaysJoinSoundly) {
  for (uint32_t seed = 1; seed <= 150; ++seed) run(seed);
}

TEST(FsRandom, TheSameSeedGivesTheSameParentBytes) {
  for (uint32_t seed = 1000; seed < 1010; ++seed) EXPECT_TRUE(run(seed) == run(seed)) << seed;
}

}  // namespace
}  // namespace detux::fs
