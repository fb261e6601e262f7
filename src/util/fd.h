// fd.h: a file descriptor closed when its owner goes out of scope.
#pragma once

#include <unistd.h>

namespace detux {

struct OwnedFd {
  int fd = -1;
  OwnedFd(int f = -1) : fd(f) {}
  OwnedFd(const OwnedFd&) = delete;
  OwnedFd& operator=(const OwnedFd&) = delete;
  ~OwnedFd() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace detux
