// placement_test.cc: where spaces may run.
//
// The supervisor keeps a space on the master's CPU while it works on it (a
// same-CPU handoff is a few microseconds, a cross-CPU wakeup 70-80 in these
// VMs), and gives the space back its own affinity, its creator's, as soon as
// it runs.  A space that was left pinned would still compute the right
// result, only on one CPU: a parallel program would silently stop being
// parallel.  So these tests read each space's affinity from Linux.
//
// Every space is a direct Linux child of the master (clone(CLONE_PARENT)),
// so the master's children in /proc are exactly its spaces (no snapshots are
// taken here: Put with START and no SNAP).  Without a snapshot is also how
// the bug showed: a clone injected into a space inherited the pinning of the
// injection, and only a later injection into the clone itself (its
// snapshot) happened to give it its own affinity back.
#include <detux/detux.h>
#include <sched.h>
#include <stdlib.h>
#include <unistd.h>

#include <string>

#include "harness.h"

using detux::test::children_of;
using detux::test::in_master;

namespace {

// "pid: cpus" for every child of the master whose affinity is not `want`.
std::string pinned_children(const cpu_set_t& want) {
  std::string out;
  for (pid_t pid : children_of(getpid())) {
    cpu_set_t has;
    CPU_ZERO(&has);
    CHECK_EQ(sched_getaffinity(pid, sizeof has, &has), 0);
    if (CPU_EQUAL(&has, &want)) continue;
    out += std::to_string(pid) + ":";
    for (int c = 0; c < CPU_SETSIZE; ++c)
      if (CPU_ISSET(c, &has)) out += " " + std::to_string(c);
    out += ";";
  }
  return out;
}

// Child 0 of the master makes its own child 5 (no snapshot), starts it and
// waits for it; child 5 just returns.
void make_grandchild_and_return() {
  long r = dput(5, DET_START, nullptr, 0, nullptr);
  if (r == DET_CHILD)
    for (;;) dret();
  det_status st{};
  if (r < 0 || dget(5, DET_STATUS, &st, sizeof st, nullptr) < 0) _exit(3);
  for (;;) dret();
}

// The master starts child 0, which makes and waits for its own child 5.
void start_child_and_grandchild() {
  long c = dput(0, DET_START, nullptr, 0, nullptr);
  if (c == DET_CHILD) make_grandchild_and_return();
  CHECK_EQ(c, 0L);
  det_status st{};
  CHECK_EQ(dget(0, DET_STATUS, &st, sizeof st, nullptr), 0L);
  CHECK_EQ(st.state, DET_S_STOPPED);
  CHECK_EQ(children_of(getpid()).size(), size_t{2});
}

}  // namespace

TEST(Placement, ASpaceMadeByASpaceRunsWithItsCreatorsAffinityNotPinnedToTheMastersCpu) {
  static cpu_set_t mine;  // the test's own CPUs, which the master inherits
  CPU_ZERO(&mine);
  ASSERT_EQ(sched_getaffinity(0, sizeof mine, &mine), 0);
  if (CPU_COUNT(&mine) < 2) GTEST_SKIP() << "needs two CPUs";
  auto r = in_master([](std::string& out) {
    start_child_and_grandchild();
    out = pinned_children(mine);
  });
  ASSERT_TRUE(r.ok()) << r.out;
  EXPECT_EQ(r.out, "") << "spaces left pinned to one CPU (pid: cpus)";
}

namespace {

// "pid: policy" for every child of the master whose policy is not `want`.
std::string children_not_at(int want) {
  std::string out;
  for (pid_t pid : children_of(getpid())) {
    int policy = sched_getscheduler(pid);
    if (policy != want) out += std::to_string(pid) + ": " + std::to_string(policy) + ";";
  }
  return out;
}

}  // namespace

// The master's work (forks, merges) must not wait behind its own spaces: a
// started space runs SCHED_IDLE, and so does every space it makes.  At
// normal priority lu 2048^2's 64 runnable children left the master 1/33 of
// its CPU and the program 40 % idle.
TEST(Placement, StartedSpacesAndTheSpacesTheyMakeRunBehindTheMasterAtSchedIdle) {
  auto r = in_master([](std::string& out) {
    start_child_and_grandchild();
    CHECK_EQ(sched_getscheduler(0), SCHED_OTHER);  // the master itself is not demoted
    out = children_not_at(SCHED_IDLE);
  });
  ASSERT_TRUE(r.ok()) << r.out;
  EXPECT_EQ(r.out, "") << "spaces not at SCHED_IDLE (pid: policy)";
}

TEST(Placement, DetuxSpaceSchedNormalKeepsSpacesAtNormalPriority) {
  auto r = in_master([](std::string& out) {
    setenv("DETUX_SPACE_SCHED", "normal", 1);  // read when the process becomes master
    start_child_and_grandchild();
    out = children_not_at(SCHED_OTHER);
  });
  ASSERT_TRUE(r.ok()) << r.out;
  EXPECT_EQ(r.out, "") << "spaces not at SCHED_OTHER (pid: policy)";
}
