// symbolize.cc: addresses to names (see symbolize.h for the contract).
//
// The pieces, in the order a question meets them:
//
//   find_loaded_object  dl_iterate_phdr: which ELF object's PT_LOAD segment
//                       covers the address, its load bias, its file, and the
//                       build ID read from its PT_NOTE segment in memory.
//   ElfObject           one libdwfl session per object, opened once and kept
//                       in the cache.  libdwfl finds the debug info (in the
//                       file, or by build ID in the debug directory), reads
//                       the symbol tables and maps sections; we check that
//                       its bias equals the loader's and that the file's
//                       build ID is the one in memory.
//   VariableIndex       (dwarf_vars.h) the object's variables with fixed
//                       addresses, built on the first question about it,
//                       and the walk from one of them down to the byte.
//   symbol_at           the ELF symbol tables, through libdwfl, when DWARF
//                       has no variable there.
//   maps_entry          /proc/self/maps, for an address in no object.
//
// One lock serialises everything: libdwfl sessions are not thread-safe, and
// the questions are rare.
#include "rt/symbolize.h"

#include <elf.h>
#include <elfutils/libdwfl.h>
#include <errno.h>
#include <gelf.h>
#include <inttypes.h>
#include <link.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <tuple>
#include <vector>

#include "rt/dwarf_vars.h"
#include "util/result.h"

namespace detux {

namespace {

std::string hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%" PRIx64, v);
  return buf;
}

// Names come from files that may be damaged: control bytes never reach the
// caller's terminal or log.
std::string printable(std::string s) {
  for (char& ch : s)
    if (static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f) ch = '?';
  return s;
}

// ---- Which loaded object covers the address ------------------------------

struct LoadedObject {
  std::string open_path;     // the file to read ("/proc/self/exe" for the executable)
  std::string display_path;  // the file as the user knows it
  uint64_t bias = 0;         // runtime address minus link-time address
  std::string build_id;      // raw bytes from the PT_NOTE in memory; may be empty
};

// The GNU build ID note of a loaded object, read from its mapped PT_NOTE.
std::string build_id_in_memory(const dl_phdr_info* info) {
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[i];
    if (ph.p_type != PT_NOTE) continue;
    auto p = reinterpret_cast<const uint8_t*>(info->dlpi_addr + ph.p_vaddr);
    uint64_t left = ph.p_memsz;
    uint64_t pad = ph.p_align == 8 ? 7 : 3;  // notes are 4- or 8-byte aligned, per segment
    while (left >= sizeof(ElfW(Nhdr))) {
      ElfW(Nhdr) nh;
      std::memcpy(&nh, p, sizeof nh);
      uint64_t name_sz = (nh.n_namesz + pad) & ~pad, desc_sz = (nh.n_descsz + pad) & ~pad;
      uint64_t total = sizeof nh + name_sz + desc_sz;
      if (total > left) break;
      const uint8_t* name = p + sizeof nh;
      if (nh.n_type == NT_GNU_BUILD_ID && nh.n_namesz == 4 && std::memcmp(name, "GNU", 4) == 0)
        return std::string(reinterpret_cast<const char*>(name + name_sz), nh.n_descsz);
      p += total;
      left -= total;
    }
  }
  return "";
}

std::string self_exe_path() {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return "/proc/self/exe";
  return std::string(buf, static_cast<size_t>(n));
}

LoadedObject loaded_object(const dl_phdr_info* info) {
  LoadedObject o;
  o.bias = info->dlpi_addr;
  const char* name = info->dlpi_name;
  if (name == nullptr || name[0] == '\0') {  // the executable
    o.open_path = "/proc/self/exe";  // the running file, even if replaced on disk
    o.display_path = self_exe_path();
  } else {
    o.open_path = o.display_path = name;
  }
  o.build_id = build_id_in_memory(info);
  return o;
}

struct PhdrSearch {
  uint64_t addr;
  bool found = false;
  LoadedObject obj;
  unsigned long long unloads = 0;  // objects the loader has removed, ever
};

int visit_object(dl_phdr_info* info, size_t, void* arg) {
  auto* s = static_cast<PhdrSearch*>(arg);
  s->unloads = info->dlpi_subs;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[i];
    if (ph.p_type != PT_LOAD) continue;
    uint64_t start = info->dlpi_addr + ph.p_vaddr;
    if (s->addr < start || s->addr - start >= ph.p_memsz) continue;
    s->found = true;
    s->obj = loaded_object(info);
    return 1;
  }
  return 0;
}

Result<LoadedObject> find_loaded_object(uint64_t addr, unsigned long long* unloads) {
  PhdrSearch s{addr};
  dl_iterate_phdr(visit_object, &s);
  *unloads = s.unloads;
  if (!s.found) return Err{-ENOENT};
  return s.obj;
}

// What identifies a loaded object in the cache: its file, its bias and its
// in-memory build ID, so that an object unloaded and another loaded in its
// place are never confused.
using ObjectKey = std::tuple<std::string, uint64_t, std::string>;

ObjectKey key_of(const LoadedObject& o) { return {o.display_path, o.bias, o.build_id}; }

int collect_key(dl_phdr_info* info, size_t, void* arg) {
  static_cast<std::set<ObjectKey>*>(arg)->insert(key_of(loaded_object(info)));
  return 0;
}

std::set<ObjectKey> loaded_keys() {
  std::set<ObjectKey> keys;
  dl_iterate_phdr(collect_key, &keys);
  return keys;
}

// ---- One ELF object, through libdwfl ----------------------------------------

// Debug info is looked for only on this machine's disk (by build ID), never
// through a debuginfod server: a conflict report must not wait on a network.
const Dwfl_Callbacks kCallbacks = {
    .find_elf = dwfl_build_id_find_elf,
    .find_debuginfo = dwfl_build_id_find_debuginfo,
    .section_address = dwfl_offline_section_address,
    .debuginfo_path = nullptr,
};

class ElfObject {
 public:
  ElfObject() = default;
  ElfObject(const ElfObject&) = delete;
  ElfObject& operator=(const ElfObject&) = delete;
  ~ElfObject() {
    if (dwfl_ != nullptr) dwfl_end(dwfl_);
  }

  // -ENOENT: the file cannot be read as ELF; -EINVAL: libdwfl placed it
  // elsewhere than the loader did; -ESTALE: the file on disk is another build.
  Status open(const LoadedObject& lo) {
    dwfl_ = dwfl_begin(&kCallbacks);
    if (dwfl_ == nullptr) return err_status(-ENOMEM);
    dwfl_report_begin(dwfl_);
    mod_ = dwfl_report_elf(dwfl_, lo.display_path.c_str(), lo.open_path.c_str(), -1, lo.bias,
                           /*add_p_vaddr=*/true);
    dwfl_report_end(dwfl_, nullptr, nullptr);
    if (mod_ == nullptr) return err_status(-ENOENT);
    Dwarf_Addr elf_bias = 0;
    if (dwfl_module_getelf(mod_, &elf_bias) == nullptr) return err_status(-ENOENT);
    if (elf_bias != lo.bias) return err_status(-EINVAL);
    const unsigned char* id = nullptr;
    GElf_Addr id_vaddr;
    int id_len = dwfl_module_build_id(mod_, &id, &id_vaddr);
    if (!lo.build_id.empty() &&
        (id_len <= 0 || lo.build_id != std::string(reinterpret_cast<const char*>(id),
                                                   static_cast<size_t>(id_len))))
      return err_status(-ESTALE);
    return ok_status();
  }

  // The variable covering `addr`, from DWARF, indexed on first use.
  Result<std::string> variable_at(uint64_t addr) {
    if (!indexed_) {
      indexed_ = true;
      Dwarf_Addr bias = 0;
      Dwarf* dw = dwfl_module_getdwarf(mod_, &bias);
      if (dw == nullptr) return Err{-ENODATA};
      vars_.build(dw, bias);
    }
    return vars_.describe(addr);
  }

  // The ELF symbol that `addr` lies in: "name" or "name+0x8".
  Result<std::string> symbol_at(uint64_t addr) {
    GElf_Off off = 0;
    GElf_Sym sym;
    const char* name =
        dwfl_module_addrinfo(mod_, addr, &off, &sym, nullptr, nullptr, nullptr);
    if (name == nullptr || name[0] == '\0') return Err{-ENOENT};
    int type = GELF_ST_TYPE(sym.st_info);
    if (type == STT_SECTION || type == STT_FILE || type == STT_TLS) return Err{-ENOENT};
    // A sizeless symbol (a label like _edata) names only its own address.
    if (sym.st_size == 0 ? off != 0 : off >= sym.st_size) return Err{-ENOENT};
    std::string s = dwarf_vars::demangle(name);
    if (off != 0) s += "+" + hex(off);
    return s;
  }

  // The name of the section `addr` falls in, from the object's own headers.
  Result<std::string> section_at(uint64_t addr) {
    Dwarf_Addr rel = addr, bias = 0;
    Elf_Scn* scn = dwfl_module_address_section(mod_, &rel, &bias);
    Dwarf_Addr elf_bias;
    Elf* elf = dwfl_module_getelf(mod_, &elf_bias);
    GElf_Shdr sh;
    size_t strndx;
    if (scn == nullptr || elf == nullptr || gelf_getshdr(scn, &sh) == nullptr ||
        elf_getshdrstrndx(elf, &strndx) != 0)
      return Err{-ENOENT};
    const char* name = elf_strptr(elf, strndx, sh.sh_name);
    if (name == nullptr || name[0] == '\0') return Err{-ENOENT};
    return std::string(name);
  }

 private:
  Dwfl* dwfl_ = nullptr;
  Dwfl_Module* mod_ = nullptr;
  bool indexed_ = false;
  dwarf_vars::VariableIndex vars_;
};

// ---- The cache -------------------------------------------------------------

struct Cache {
  std::mutex mu;
  // Null when the object could not be opened; `open_error` says why.
  struct Entry {
    std::unique_ptr<ElfObject> obj;
    long open_error = 0;
  };
  std::map<ObjectKey, Entry> objects;
  size_t loaded = 0;
  unsigned long long unloads_seen = 0;
};

// Never destroyed: a space is a fork of the master, and a destructor run at
// its exit would make system calls the space is not allowed.
Cache& cache() {
  static Cache* c = new Cache;
  return *c;
}

// Called with the cache lock held.  After a dlclose, the entries of objects
// no longer loaded are dropped, so a program that loads and unloads modules
// keeps neither their memory nor their open files.
void forget_unloaded(Cache& c, unsigned long long unloads) {
  if (unloads == c.unloads_seen) return;
  c.unloads_seen = unloads;
  std::set<ObjectKey> live = loaded_keys();
  std::erase_if(c.objects, [&](const auto& kv) { return live.count(kv.first) == 0; });
}

// Called with the cache lock held.
Cache::Entry& object_entry(Cache& c, const LoadedObject& lo) {
  auto [it, fresh] = c.objects.try_emplace(key_of(lo));
  if (fresh) {
    ++c.loaded;
    auto obj = std::make_unique<ElfObject>();
    Status st = obj->open(lo);
    if (st.ok()) {
      it->second.obj = std::move(obj);
    } else {
      it->second.open_error = st.err();
    }
  }
  return it->second;
}

// ---- Outside every object: /proc/self/maps ---------------------------------

struct MapsEntry {
  uint64_t start = 0, end = 0;
  std::string perms, name;
};

Result<MapsEntry> maps_entry(uint64_t addr) {
  FILE* f = std::fopen("/proc/self/maps", "re");
  if (f == nullptr) return Err{-errno};
  char line[4352];
  Result<MapsEntry> found = Err{-ENOENT};
  while (std::fgets(line, sizeof line, f) != nullptr) {
    uint64_t start, end;
    char perms[8] = {};
    int name_at = 0;
    if (std::sscanf(line, "%" SCNx64 "-%" SCNx64 " %7s %*s %*s %*s %n", &start, &end, perms,
                    &name_at) < 3)
      continue;
    if (addr < start || addr >= end) continue;
    MapsEntry e{start, end, perms, name_at > 0 ? line + name_at : ""};
    while (!e.name.empty() && (e.name.back() == '\n' || e.name.back() == ' ')) e.name.pop_back();
    found = e;
    break;
  }
  std::fclose(f);
  return found;
}

void describe_mapping(uint64_t addr, AddressDescription* d) {
  auto m = maps_entry(addr);
  if (!m.ok()) return;
  d->mapped = true;
  d->object = m->name;
  d->map_start = m->start;
  d->map_end = m->end;
  d->perms = m->perms;
}

}  // namespace

AddressDescription symbolize(uint64_t addr) {
  AddressDescription d;
  d.addr = addr;
  unsigned long long unloads = 0;
  auto lo = find_loaded_object(addr, &unloads);
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  forget_unloaded(c, unloads);
  if (!lo.ok()) {
    describe_mapping(addr, &d);
    return d;
  }
  d.mapped = d.in_object = true;
  d.object = lo->display_path;
  Cache::Entry& e = object_entry(c, *lo);
  if (e.obj == nullptr) {
    d.stale_file = e.open_error == -ESTALE;
    return d;
  }
  if (auto sec = e.obj->section_at(addr); sec.ok()) d.section = *sec;
  if (auto var = e.obj->variable_at(addr); var.ok()) {
    d.source = NameSource::kDebugInfo;
    d.name = printable(std::move(*var));
  } else if (auto sym = e.obj->symbol_at(addr); sym.ok()) {
    d.source = NameSource::kSymbolTable;
    d.name = printable(std::move(*sym));
  }
  return d;
}

std::string to_string(const AddressDescription& d) {
  if (!d.mapped) return hex(d.addr) + " (not mapped)";
  std::string where;
  if (d.in_object) {
    where = d.object + (d.section.empty() ? "" : " " + d.section);
    if (d.stale_file) where += ", a file changed on disk since it was loaded";
  } else if (!d.object.empty()) {
    where = d.object;
  } else {
    where = "an anonymous " + d.perms + " mapping " + hex(d.map_start) + "-" + hex(d.map_end);
  }
  if (d.name.empty()) return hex(d.addr) + " (no symbol, in " + where + ")";
  return d.name + " (" + hex(d.addr) + ", in " + where + ")";
}

std::string describe_address(uint64_t addr) { return to_string(symbolize(addr)); }

size_t symbolize_objects_cached() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  return c.objects.size();
}

size_t symbolize_objects_loaded() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  return c.loaded;
}

}  // namespace detux
