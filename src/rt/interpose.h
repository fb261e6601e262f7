// interpose.h: the C library's own version of a function libdetux exports
// under the same name (fork, waitpid, execve ...), for use in the master.
#pragma once

#include <dlfcn.h>

namespace detux::rt {

template <typename F>
F real(const char* name) {
  return reinterpret_cast<F>(dlsym(RTLD_NEXT, name));
}

}  // namespace detux::rt
