// names.cc: det_describe_address, through the symbolizer module.
//
// The symbolizer and elfutils live in libdetux-names.so (names_module.cc
// says why), installed beside libdetux.  The first question loads it from
// libdetux's own directory (dladdr); later questions call straight in.  If
// it cannot be loaded, an address is still described: as hex, with the
// reason names are missing.  Like the symbolizer itself this runs in the
// master only (a space cannot open files).
#include <dlfcn.h>
#include <inttypes.h>

#include <cstdio>
#include <mutex>
#include <string>

#include "ptrace/birth.h"
#include "rt/join.h"

namespace detux::rt {

namespace {

using DescribeFn = size_t (*)(uint64_t, char*, size_t);

struct Names {
  DescribeFn describe = nullptr;
  std::string why;  // why it could not be loaded
};

Names load() {
  Names n;
  Dl_info self{};
  if (dladdr(reinterpret_cast<void*>(&describe), &self) == 0 || !self.dli_fname) {
    n.why = "libdetux cannot find its own file";
    return n;
  }
  std::string path = self.dli_fname;
  size_t slash = path.rfind('/');
  path = (slash == std::string::npos ? std::string() : path.substr(0, slash + 1)) +
         "libdetux-names.so";
  void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    const char* e = dlerror();
    n.why = e ? e : "dlopen failed";
    return n;
  }
  n.describe = reinterpret_cast<DescribeFn>(dlsym(h, "detux_names_describe"));
  if (!n.describe) n.why = path + " lacks detux_names_describe";
  return n;
}

}  // namespace

std::string describe(uint64_t addr) {
  char hex[32];
  std::snprintf(hex, sizeof hex, "0x%" PRIx64, addr);
  if (detux::g_in_space) return hex;  // a space cannot open the program's files
  static std::once_flag once;
  static Names names;
  std::call_once(once, [] { names = load(); });
  if (!names.describe) return std::string(hex) + " (no names: " + names.why + ")";
  std::string out(256, '\0');
  size_t need = names.describe(addr, out.data(), out.size());
  if (need >= out.size()) {
    out.assign(need + 1, '\0');
    names.describe(addr, out.data(), out.size());
  }
  out.resize(need);
  return out;
}

}  // namespace detux::rt
