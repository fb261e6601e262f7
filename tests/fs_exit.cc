// fs_exit.cc: a space that ends with exit() under `detux run --fs IMAGE`
// (cli_run.sh).  A space runs its program's exit handlers and destructors,
// the master's included: they closed, in the space, its own file with the
// number of the master's image lock (so the file lost its bytes), and freed
// the image's path, which the master then saved to after a dlopen had
// reused the bytes (a review, December 8: the image went over a system
// library).  cli_run.sh reads /out.txt from the saved image.
#include <detux/detux.h>

#include <cstdio>
#include <cstdlib>

int main() {
  if (dfork(0) == 0) {
    FILE* f = std::fopen("/out.txt", "w");
    if (!f) std::exit(3);
    std::fprintf(f, "written by the space\n");  // buffered: exit() flushes it
    std::exit(0);
  }
  std::printf("join %d\n", djoin(0));
  return 0;
}
