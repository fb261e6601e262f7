// exec_target.cc: a detux program that spaces exec in exec_test.cc.
//
//   exec_target hello ARGS...   prints its arguments and FOO, echoes one
//                               line of standard input, exits with argc
//   exec_target fs              prints /data/in.txt, writes /data/out.txt
//   exec_target thread          runs a thread of its own and joins it
//   exec_target again ARGS...   execs exec_target hello ARGS... in turn
//   exec_target fault           writes through a null pointer
#include <detux/detux.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

namespace {

int g_shared = 1;

int hello(int argc, char** argv) {
  printf("exec'd: argc %d:", argc);
  for (int i = 0; i < argc; ++i) printf(" [%s]", argv[i]);
  const char* foo = getenv("FOO");
  const char* pre = getenv("LD_PRELOAD");
  printf("\nFOO=%s LD_PRELOAD=%s in_space=%d\n", foo ? foo : "(none)", pre ? pre : "(none)",
         !det_is_master());
  char line[128];
  if (fgets(line, sizeof line, stdin)) printf("stdin: %s", line);
  else printf("stdin: end\n");
  return argc;
}

int fs() {
  char buf[256] = {};
  FILE* f = fopen("/data/in.txt", "r");
  if (!f) {
    printf("no /data/in.txt\n");
    return 3;
  }
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  printf("in.txt: %.*s", static_cast<int>(n), buf);
  f = fopen("/data/out.txt", "w");
  if (!f) return 4;
  fprintf(f, "written by the exec'd program\n");
  fclose(f);
  return 0;
}

int thread() {
  if (dfork(1) == 0) {
    g_shared = 42;
    printf("in the exec'd program's thread\n");
    fflush(stdout);
    dret();
  }
  int r = djoin(1);
  printf("joined %d, shared %d\n", r, g_shared);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return 100;
  if (!strcmp(argv[1], "hello")) return hello(argc, argv);
  if (!strcmp(argv[1], "fs")) return fs();
  if (!strcmp(argv[1], "thread")) return thread();
  if (!strcmp(argv[1], "again")) {
    printf("first program, about to exec again\n");
    argv[1] = const_cast<char*>("hello");
    execv("target", argv);
    printf("exec failed\n");
    return 99;
  }
  if (!strcmp(argv[1], "fault")) {
    *static_cast<volatile int*>(nullptr) = 1;
  }
  return 101;
}
