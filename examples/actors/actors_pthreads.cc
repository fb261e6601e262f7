// actors_pthreads.cc: the lock-step actor simulation (Determinator, figure 1)
// with ordinary threads.  The code has the same shape as actors_detux.cc: one
// thread per actor per time step, each updating its actor in place in the
// shared global array, then join them all.  But the threads share that array,
// so a thread reads whatever its neighbours have written so far: the old
// state, the new one, or a partial one.  The output varies from run to run.
//
//   actors_pthreads              run the racy simulation
//   actors_pthreads --reference  print the correct lock-step result, computed
//                                sequentially with a second buffer
#include <pthread.h>

#include <cstdio>
#include <cstring>

#include "actors.h"

namespace actors {
Actor g_actors[kActors];  // global (bss), shared by all threads
}  // namespace actors

namespace {

struct Job {
  int actor;
  int step;
};

void *worker(void *arg) {
  const Job *job = static_cast<const Job *>(arg);
  actors::update(actors::g_actors, actors::g_actors, job->actor, job->step);
  return nullptr;
}

}  // namespace

int main(int argc, char **argv) {
  using namespace actors;
  if (argc == 2 && std::strcmp(argv[1], "--reference") == 0) {
    reference_run(g_actors);
    print_state(g_actors);
    return 0;
  }
  if (argc != 1) {
    std::fprintf(stderr, "usage: %s [--reference]\n", argv[0]);
    return 2;
  }

  init(g_actors);
  pthread_t threads[kActors];
  Job jobs[kActors];
  for (int step = 0; step < kSteps; step++) {
    for (int i = 0; i < kActors; i++) {
      jobs[i] = Job{i, step};
      const int err = pthread_create(&threads[i], nullptr, worker, &jobs[i]);
      if (err != 0) {
        std::fprintf(stderr, "actors_pthreads: pthread_create(step %d, actor %d): %s\n", step,
                     i, std::strerror(err));
        return 1;
      }
    }
    for (int i = 0; i < kActors; i++) {
      const int err = pthread_join(threads[i], nullptr);
      if (err != 0) {
        std::fprintf(stderr, "actors_pthreads: pthread_join(step %d, actor %d): %s\n", step, i,
                     std::strerror(err));
        return 1;
      }
    }
  }
  print_state(g_actors);
  return 0;
}
