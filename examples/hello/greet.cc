// greet.cc: the program spawn.cc's processes exec.  It greets, appends a
// line to /log in the spaces' file system, and exits with its name's length.
#include <stdio.h>
#include <string.h>

int main(int argc, char** argv) {
  const char* who = argc > 1 ? argv[1] : "nobody";
  printf("greet: hello, %s (I am %s)\n", who, argv[0]);
  if (FILE* log = fopen("/log", "a")) {
    fprintf(log, "%s was here\n", who);
    fclose(log);
  }
  return static_cast<int>(strlen(who));
}
