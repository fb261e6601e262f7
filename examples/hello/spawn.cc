// spawn.cc: fork, exec and wait inside a space, as in Determinator.
//
//   detux run --image greet=build/examples/hello/greet build/examples/hello/spawn
//
// A space acts as a little shell: it forks three processes, each execs the
// `greet` program (an image the master registered), and waits for them in
// order.  Each greeting appends a line to /log in the spaces' file system;
// the shell's waits reconcile those appends (in wait order), so the shell
// reads all three.
// Output and exit codes are the same on every run, whatever ran first.
#include <detux/detux.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

int main() {
  if (dfork(0) == 0) {
    const char* names[] = {"ada", "barbara", "edsger"};
    pid_t pids[3];
    fclose(fopen("/log", "w"));  // made before the forks: each child appends
    for (int i = 0; i < 3; ++i) {
      fflush(stdout);
      if ((pids[i] = fork()) == 0) {
        execlp("greet", "greet", names[i], static_cast<char*>(nullptr));
        perror("exec greet");
        _exit(127);
      }
    }
    for (int i = 0; i < 3; ++i) {
      int st = 0;
      waitpid(pids[i], &st, 0);
      printf("shell: process %d (%s) exited %d\n", pids[i], names[i], WEXITSTATUS(st));
    }
    if (FILE* log = fopen("/log", "r")) {
      char line[128];
      while (fgets(line, sizeof line, log)) printf("shell reads /log: %s", line);
      fclose(log);
    }
    fflush(stdout);
    dret();
  }
  int r = djoin(0);
  printf("master: the shell's join returned %d\n", r);
  return r == 0 ? 0 : 1;
}
