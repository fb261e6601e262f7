// fs_spaces_test.cc: the detux file system inside real spaces -- files made
// with fopen/fprintf and std::fstream, children working at once, every
// reconciliation rule at a real join, and images saved and loaded by the
// master.  Each scenario runs twice and must report the same bytes.
//
// The master's own file calls are Linux's, so each scenario runs in a
// "driver" space that uses the detux file system and reports in g_report,
// which djoin merges back to the master.
#include <detux/detux.hpp>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>

#include "harness.h"

using namespace detux::test;

namespace {


char g_report[4096];

void say(const std::string& s) {
  size_t n = strlen(g_report);
  snprintf(g_report + n, sizeof g_report - n, "%s", s.c_str());
}

std::string slurp(const char* path) {
  FILE* f = fopen(path, "r");
  if (!f) return std::string("<") + strerror(errno) + ">";
  std::string s;
  char buf[256];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, f)) > 0) s.append(buf, n);
  fclose(f);
  return s;
}

void spit(const char* path, const char* text, const char* mode = "w") {
  FILE* f = fopen(path, mode);
  if (!f) return say(std::string("fopen ") + path + ": " + strerror(errno) + "\n");
  fputs(text, f);
  fclose(f);
}

// Runs body in a driver space and returns what it said.
template <typename F>
std::string in_driver(F body) {
  g_report[0] = 0;
  if (dfork(100) == 0) {
    body();
    fflush(nullptr);
    for (;;) dret();
  }
  int r = djoin(100);
  return std::string(g_report) + (r ? " djoin " + std::to_string(r) : "");
}

}  // namespace

TEST(FsSpaces, FilesMadeByChildrenAtOnceAllAppearAfterTheJoins) {
  NEEDS_DETUX_MALLOC();
  std::string out = twice([](std::string& out) {
    out = in_driver([] {
      mkdir("/out", 0755);
      for (int c = 0; c < 4; ++c) {
        if (dfork(c) == 0) {
          char path[32], text[64];
          snprintf(path, sizeof path, "/out/part%d", c);
          snprintf(text, sizeof text, "child %d was here\n", c);
          spit(path, text);
          fflush(nullptr);
          for (;;) dret();
        }
      }
      for (int c = 0; c < 4; ++c) djoin(c);
      for (int c = 0; c < 4; ++c) {
        char path[32];
        snprintf(path, sizeof path, "/out/part%d", c);
        say(slurp(path));
      }
    });
  });
  EXPECT_EQ(out, "child 0 was here\nchild 1 was here\nchild 2 was here\nchild 3 was here\n");
}

TEST(FsSpaces, AppendsOnBothSidesAreBothKeptParentFirstThenChildrenInJoinOrder) {
  NEEDS_DETUX_MALLOC();
  std::string out = twice([](std::string& out) {
    out = in_driver([] {
      spit("/log", "start\n");
      for (int c = 0; c < 2; ++c) {
        if (dfork(c) == 0) {
          spit("/log", c ? "from child 1\n" : "from child 0\n", "a");
          fflush(nullptr);
          for (;;) dret();
        }
      }
      spit("/log", "from the parent\n", "a");
      djoin(1);  // joined out of id order on purpose
      djoin(0);
      say(slurp("/log"));
    });
  });
  EXPECT_EQ(out, "start\nfrom the parent\nfrom child 1\nfrom child 0\n");
}

TEST(FsSpaces, AFileOneSideRewroteTakesThatSideAndOneBothRewroteIsAConflict) {
  NEEDS_DETUX_MALLOC();
  std::string out = twice([](std::string& out) {
    out = in_driver([] {
      spit("/only-child", "old\n");
      spit("/both", "old\n");
      if (dfork(0) == 0) {
        spit("/only-child", "new from the child\n");
        spit("/both", "the child's\n");
        fflush(nullptr);
        for (;;) dret();
      }
      spit("/both", "the parent's\n");
      det_status st{};
      int r = djoin_status(0, &st);
      say("join " + std::to_string(r) + " fs_conflicts " + std::to_string(st.fs_conflicts) + "\n");
      say(std::string("conflicts: ") + det_fs_conflicts());
      say(slurp("/only-child"));
      int fd = open("/both", O_RDONLY);
      say("open /both: " + std::string(fd < 0 ? std::to_string(errno) : "opened") + "\n");
      spit("/both", "rewritten\n");  // O_TRUNC clears the conflict
      say(slurp("/both"));
    });
  });
  EXPECT_EQ(out.substr(0, 22), "join 0 fs_conflicts 1\n") << out;
  EXPECT_NE(out.find("/both"), std::string::npos) << out;
  EXPECT_NE(out.find("new from the child\nopen /both: 1001\nrewritten\n"), std::string::npos) << out;
}

TEST(FsSpaces, TheSameNameMadeOnBothSidesIsAConflictNotAnOverwrite) {
  NEEDS_DETUX_MALLOC();
  std::string out = twice([](std::string& out) {
    out = in_driver([] {
      if (dfork(0) == 0) {
        spit("/new", "child\n");
        fflush(nullptr);
        for (;;) dret();
      }
      spit("/new", "parent\n");
      det_status st{};
      djoin_status(0, &st);
      say("fs_conflicts " + std::to_string(st.fs_conflicts) + "\n");
    });
  });
  EXPECT_EQ(out, "fs_conflicts 1\n");
}

TEST(FsSpaces, ReaddirListsADirectoryInNameOrder) {
  NEEDS_DETUX_MALLOC();
  std::string out = twice([](std::string& out) {
    out = in_driver([] {
      mkdir("/d", 0755);
      for (const char* n : {"/d/zeta", "/d/alpha", "/d/mid"}) spit(n, "x");
      mkdir("/d/sub", 0755);
      DIR* d = opendir("/d");
      if (!d) return say(std::string("opendir: ") + strerror(errno));
      while (dirent* e = readdir(d)) say(std::string(e->d_name) + (e->d_type == DT_DIR ? "/ " : " "));
      closedir(d);
    });
  });
  EXPECT_EQ(out, "alpha mid sub/ zeta ");
}

TEST(FsSpaces, FstreamAndStatWorkInSpaces) {
  NEEDS_DETUX_MALLOC();
  std::string out = twice([](std::string& out) {
    out = in_driver([] {
      {
        std::ofstream f("/numbers.txt");
        for (int i = 1; i <= 100; ++i) f << i << "\n";
      }
      std::ifstream in("/numbers.txt");
      long x, sum = 0;
      while (in >> x) sum += x;
      struct stat st;
      int r = stat("/numbers.txt", &st);
      int u = unlink("/numbers.txt");
      int after = access("/numbers.txt", F_OK);
      say("sum " + std::to_string(sum) + " stat " + std::to_string(r) + " size " +
          std::to_string(st.st_size) + " unlink " + std::to_string(u) + " then " +
          std::to_string(after));
    });
  });
  EXPECT_EQ(out, "sum 5050 stat 0 size 292 unlink 0 then -1");
}

// A master that ever ran a second thread leaves glibc's single-threaded flag
// false in every fork; libstdc++ then initialises a stream's locale through
// pthread_once's slow path, whose futex call is refused in a space.  Birth
// sets the flag again (a space has one thread).
TEST(FsSpaces, StreamsWorkInASpaceOfAMasterThatRanAThread) {
  NEEDS_DETUX_MALLOC();
  std::string out = twice([](std::string& out) {
    pthread_t t;
    CHECK_EQ(pthread_create(&t, nullptr, [](void*) -> void* { return nullptr; }, nullptr), 0);
    CHECK_EQ(pthread_join(t, nullptr), 0);
    out = in_driver([] {
      {
        std::ofstream f("/n.txt");
        f << 42 << "\n";
      }
      std::ifstream in("/n.txt");
      long x = 0;
      in >> x;
      say("read " + std::to_string(x));
    });
  });
  EXPECT_EQ(out, "read 42");
}

TEST(FsSpaces, AnImageSavedByOneMasterIsLoadedByAnotherAndACorruptOneIsRefused) {
  NEEDS_DETUX_MALLOC();
  char dir[] = "/tmp/detux-fs-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  static std::string image;
  image = std::string(dir) + "/fs.img";
  detux::test::Run a = in_master([](std::string& out) {
    out = in_driver([] { spit("/kept", "across masters\n"); });
    CHECK_EQ(det_fs_save(image.c_str()), 0);
  });
  ASSERT_TRUE(a.ok()) << a.out;
  detux::test::Run b = in_master([](std::string& out) {
    char why[256] = "";
    CHECK_EQ(det_fs_load(image.c_str(), why, sizeof why), 0);
    out = in_driver([] { say(slurp("/kept")); });
  });
  ASSERT_TRUE(b.ok()) << b.out;
  EXPECT_EQ(b.out, "across masters\n");
  // Flip a byte in the middle: refused with a reason, the file system unchanged.
  FILE* f = fopen(image.c_str(), "r+b");
  ASSERT_NE(f, nullptr);
  fseek(f, 0, SEEK_END);
  long size = ftell(f);
  fseek(f, size / 2, SEEK_SET);
  int c = fgetc(f);
  fseek(f, size / 2, SEEK_SET);
  fputc(c ^ 0x5a, f);
  fclose(f);
  detux::test::Run c2 = in_master([](std::string& out) {
    out = in_driver([] { spit("/mine", "still here\n"); });
    char why[256] = "";
    int r = det_fs_load(image.c_str(), why, sizeof why);
    out += std::string(r < 0 ? "refused: " : "loaded: ") + (why[0] ? "reason given" : "no reason");
    out += " " + in_driver([] { say(slurp("/mine")); });
  });
  EXPECT_EQ(c2.out, "refused: reason given still here\n") << c2.out;
  unlink(image.c_str());
  rmdir(dir);
}
