// fs_nomount.cc: `detux fs mount` when detux was built without libfuse3.
#include <cstdio>

#include "fs_cmd.h"

int mount_fs(detux::fs::Fs&, const std::string&, bool) {
  std::fprintf(stderr, "detux fs: this detux was built without libfuse3; mount is unavailable\n");
  return 1;
}
