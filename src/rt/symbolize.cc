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
//   VariableIndex       every DW_TAG_variable with a static address
//                       (DW_OP_addr, DW_OP_addrx), as runtime address ranges
//                       sorted by start, with a running maximum of the ends
//                       so that a lookup is a binary search and a short walk
//                       back even when ranges nest.
//   TypeWalker          from a variable's type and a byte offset down to the
//                       innermost member or element: `[i][j]`, `.m`, `+n`.
//   maps_entry          /proc/self/maps, for an address in no object.
//
// The walk trusts nothing in the DWARF: every attribute may be missing or
// malformed, every size may be zero, every reference may be circular.  Each
// step either makes progress or stops and reports what it has; type walks
// and scope nesting have fixed depth limits.
//
// Names: a variable with a linkage name (C++ globals in namespaces, class
// statics, function statics) is named by demangling it, which gives
// `sim::ticks`, `Pool::count` or `step()::calls`.  Otherwise the name is
// the DWARF name behind the enclosing namespaces and functions, so a C
// static inside main() is `main::calls`, as gdb would accept it.
//
// In a union the first member covering the byte wins; in a byte shared by
// several bit-fields, the first bit-field wins, and the path stops there.
#include "rt/symbolize.h"

#include <cxxabi.h>
#include <dwarf.h>
#include <elf.h>
#include <elfutils/libdw.h>
#include <elfutils/libdwfl.h>
#include <errno.h>
#include <gelf.h>
#include <inttypes.h>
#include <link.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <vector>

#include "util/result.h"

namespace detux {

namespace {

constexpr int kMaxTypeSteps = 64;     // array/struct levels walked for one address
constexpr int kMaxScopeNesting = 128;  // namespaces/functions/blocks in one CU

std::string hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%" PRIx64, v);
  return buf;
}

// A C++ mangled name made readable; anything else returned as it is.
std::string demangle(const char* name) {
  if (name == nullptr) return "";
  if (name[0] != '_' || name[1] != 'Z') return name;
  int status = 0;
  char* out = abi::__cxa_demangle(name, nullptr, nullptr, &status);
  if (status != 0 || out == nullptr) return name;
  std::string s(out);
  std::free(out);
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
    while (left >= sizeof(ElfW(Nhdr))) {
      ElfW(Nhdr) nh;
      std::memcpy(&nh, p, sizeof nh);
      uint64_t name_sz = (nh.n_namesz + 3ull) & ~3ull, desc_sz = (nh.n_descsz + 3ull) & ~3ull;
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

struct PhdrSearch {
  uint64_t addr;
  bool found = false;
  LoadedObject obj;
};

int visit_object(dl_phdr_info* info, size_t, void* arg) {
  auto* s = static_cast<PhdrSearch*>(arg);
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[i];
    if (ph.p_type != PT_LOAD) continue;
    uint64_t start = info->dlpi_addr + ph.p_vaddr;
    if (s->addr < start || s->addr - start >= ph.p_memsz) continue;
    s->found = true;
    s->obj.bias = info->dlpi_addr;
    const char* name = info->dlpi_name;
    if (name == nullptr || name[0] == '\0') {  // the executable
      s->obj.open_path = "/proc/self/exe";  // the running file, even if replaced on disk
      s->obj.display_path = self_exe_path();
    } else {
      s->obj.open_path = s->obj.display_path = name;
    }
    s->obj.build_id = build_id_in_memory(info);
    return 1;
  }
  return 0;
}

Result<LoadedObject> find_loaded_object(uint64_t addr) {
  PhdrSearch s{addr};
  dl_iterate_phdr(visit_object, &s);
  if (!s.found) return Err{-ENOENT};
  return s.obj;
}

// ---- Walking a type down to a byte -----------------------------------------

// libdw clears a DIE it cannot provide; a cleared one must not be read.
bool present(const Dwarf_Die& d) { return d.cu != nullptr && d.addr != nullptr; }

bool type_of(Dwarf_Die* die, Dwarf_Die* out) {
  Dwarf_Attribute a;
  return dwarf_attr_integrate(die, DW_AT_type, &a) != nullptr &&
         dwarf_formref_die(&a, out) != nullptr;
}

Result<uint64_t> udata_attr(Dwarf_Die* die, unsigned name) {
  Dwarf_Attribute a;
  Dwarf_Word w;
  if (dwarf_attr(die, name, &a) == nullptr || dwarf_formudata(&a, &w) != 0) return Err{-ENODATA};
  return static_cast<uint64_t>(w);
}

Result<uint64_t> size_of(Dwarf_Die* type) {
  Dwarf_Word w;
  if (dwarf_aggregate_size(type, &w) != 0) return Err{-ENODATA};
  return static_cast<uint64_t>(w);
}

// Where a member's bytes start and how many there are, within its parent.
struct Span {
  uint64_t start = 0, size = 0;
  bool bitfield = false;
};

Result<Span> member_span(Dwarf_Die* m, bool in_union, Dwarf_Die* mtype, uint64_t parent_size) {
  Span s;
  Dwarf_Attribute a;
  auto bit_off = udata_attr(m, DW_AT_data_bit_offset);
  s.bitfield = dwarf_hasattr(m, DW_AT_bit_size);
  if (dwarf_attr(m, DW_AT_data_member_location, &a) != nullptr) {
    Dwarf_Word w;
    Dwarf_Op* ops = nullptr;
    size_t n = 0;
    if (dwarf_formudata(&a, &w) == 0) {
      s.start = w;
    } else if (dwarf_getlocation(&a, &ops, &n) == 0 && n == 1 &&
               ops[0].atom == DW_OP_plus_uconst) {  // DWARF 2 style
      s.start = ops[0].number;
    } else {
      return Err{-ENOTSUP};  // a virtual base or a computed location
    }
  } else if (bit_off.ok()) {
    s.start = *bit_off / 8;
  } else if (!in_union) {
    return Err{-ENODATA};
  }
  if (s.bitfield && bit_off.ok()) {
    auto bits = udata_attr(m, DW_AT_bit_size);
    if (!bits.ok()) return Err{-ENODATA};
    s.size = (*bit_off + *bits + 7) / 8 - s.start;
    return s;
  }
  auto size = udata_attr(m, DW_AT_byte_size);  // old-style bit-field storage unit
  if (!s.bitfield || !size.ok()) size = size_of(mtype);
  if (size.ok()) {
    s.size = *size;
  } else if (parent_size > s.start) {
    s.size = parent_size - s.start;  // a flexible array member runs to the end
  }
  return s;
}

class TypeWalker {
 public:
  // Appends to `path` the access from an object of `type` to byte `off`.
  static void walk(Dwarf_Die type, uint64_t off, std::string* path) {
    for (int step = 0; step < kMaxTypeSteps; ++step) {
      Dwarf_Die t;
      if (dwarf_peel_type(&type, &t) != 0) break;
      int tag = dwarf_tag(&t);
      bool went_in = false;
      if (tag == DW_TAG_array_type) {
        went_in = into_array(&t, &off, &type, path);
      } else if (tag == DW_TAG_structure_type || tag == DW_TAG_class_type ||
                 tag == DW_TAG_union_type) {
        bool bitfield = false;
        went_in = into_member(&t, tag == DW_TAG_union_type, &off, &type, path, &bitfield);
        if (went_in && bitfield) return;  // bytes of bit-fields have no finer name
      }
      if (!went_in) break;
    }
    if (off != 0) *path += "+" + std::to_string(off);
  }

 private:
  struct Dim {
    uint64_t count = 0;
    bool known = false;
    int64_t lower = 0;
  };

  // Indices of byte `*off` in an array; on success moves to the element.
  static bool into_array(Dwarf_Die* arr, uint64_t* off, Dwarf_Die* type, std::string* path) {
    Dwarf_Die elem;
    if (dwarf_hasattr(arr, DW_AT_byte_stride) || dwarf_hasattr(arr, DW_AT_bit_stride)) return false;
    if (!type_of(arr, &elem)) return false;
    auto esize = size_of(&elem);
    if (!esize.ok() || *esize == 0) return false;
    std::vector<Dim> dims;
    if (!dimensions(arr, &dims)) return false;
    bool col_major = false;
    if (auto ord = udata_attr(arr, DW_AT_ordering); ord.ok()) col_major = *ord == DW_ORD_col_major;

    // The flat element number, split into one index per dimension.  The
    // slowest-varying dimension takes what is left, so its bound may be
    // unknown (`extern int a[];`, a flexible array member).
    uint64_t n = *off / *esize;
    std::vector<uint64_t> idx(dims.size());
    size_t last = dims.size() - 1;
    for (size_t k = 0; k < last; ++k) {
      size_t d = col_major ? k : last - k;
      if (!dims[d].known || dims[d].count == 0) return false;
      idx[d] = n % dims[d].count;
      n /= dims[d].count;
    }
    size_t slow = col_major ? last : 0;
    if (dims[slow].known && n >= dims[slow].count) return false;
    idx[slow] = n;
    for (size_t d = 0; d < dims.size(); ++d)
      *path += "[" + std::to_string(static_cast<int64_t>(idx[d]) + dims[d].lower) + "]";
    *off %= *esize;
    *type = elem;
    return true;
  }

  static bool dimensions(Dwarf_Die* arr, std::vector<Dim>* dims) {
    Dwarf_Sword default_lower = 0;
    Dwarf_Die cu;
    if (dwarf_diecu(arr, &cu, nullptr, nullptr) == nullptr ||
        dwarf_default_lower_bound(dwarf_srclang(&cu), &default_lower) != 0)
      default_lower = 0;
    Dwarf_Die c;
    if (dwarf_child(arr, &c) == 0) {
      do {
        if (dwarf_tag(&c) != DW_TAG_subrange_type) continue;
        if (dwarf_hasattr(&c, DW_AT_byte_stride) || dwarf_hasattr(&c, DW_AT_bit_stride)) return false;
        Dim d;
        d.lower = default_lower;
        Dwarf_Attribute a;
        Dwarf_Sword sv;
        if (dwarf_attr(&c, DW_AT_lower_bound, &a) != nullptr) {
          if (dwarf_formsdata(&a, &sv) != 0) return false;  // a dynamic bound
          d.lower = sv;
        }
        if (auto count = udata_attr(&c, DW_AT_count); count.ok()) {
          d.count = *count;
          d.known = true;
        } else if (dwarf_attr(&c, DW_AT_upper_bound, &a) != nullptr &&
                   dwarf_formsdata(&a, &sv) == 0) {
          d.count = sv >= d.lower ? static_cast<uint64_t>(sv - d.lower) + 1 : 0;
          d.known = true;
        }
        dims->push_back(d);
        if (dims->size() > 64) return false;
      } while (dwarf_siblingof(&c, &c) == 0);
    }
    if (dims->empty()) dims->push_back(Dim{});  // no bounds given: one open dimension
    return true;
  }

  // The member of a struct, class or union that holds byte `*off`.
  static bool into_member(Dwarf_Die* agg, bool is_union, uint64_t* off, Dwarf_Die* type,
                          std::string* path, bool* bitfield) {
    auto agg_size = size_of(agg);
    uint64_t parent_size = agg_size.ok() ? *agg_size : 0;
    Dwarf_Die m;
    if (dwarf_child(agg, &m) != 0) return false;
    do {
      int tag = dwarf_tag(&m);
      if (tag != DW_TAG_member && tag != DW_TAG_inheritance) continue;
      if (dwarf_hasattr(&m, DW_AT_declaration)) continue;  // a static member
      Dwarf_Die mtype;
      if (!type_of(&m, &mtype)) continue;
      auto span = member_span(&m, is_union, &mtype, parent_size);
      if (!span.ok() || *off < span->start || *off - span->start >= span->size) continue;
      const char* name = tag == DW_TAG_member ? dwarf_diename(&m) : nullptr;
      if (name != nullptr) *path += std::string(".") + name;  // bases, anonymous members add nothing
      *off -= span->start;
      *type = mtype;
      *bitfield = span->bitfield;
      if (span->bitfield) *off = 0;
      return true;
    } while (dwarf_siblingof(&m, &m) == 0);
    return false;  // padding
  }
};

// ---- The variables of one object, by address --------------------------------

// The namespaces and functions around a DIE, named only when a variable
// inside needs them.
struct ScopeFrame {
  const ScopeFrame* up;
  Dwarf_Die die;
  mutable int32_t interned;
};

class VariableIndex {
 public:
  // One pass over every unit of `dw`; `bias` maps its addresses to runtime.
  void build(Dwarf* dw, uint64_t bias) {
    bias_ = bias;
    scopes_.push_back("");
    Dwarf_CU* cu = nullptr;
    Dwarf_Half version;
    uint8_t unit_type;
    Dwarf_Die cudie, subdie;
    while (dwarf_get_units(dw, cu, &cu, &version, &unit_type, &cudie, &subdie) == 0) {
      if (unit_type == DW_UT_type || unit_type == DW_UT_split_type) continue;
      Dwarf_Die* top = &cudie;
      if (unit_type == DW_UT_skeleton && present(subdie)) top = &subdie;  // split DWARF
      if (present(*top)) index_children(top, nullptr, 0);
    }
    std::sort(vars_.begin(), vars_.end(), [](const Var& a, const Var& b) {
      return std::tie(a.start, b.end) < std::tie(b.start, a.end);  // outer range first
    });
    vars_.erase(std::unique(vars_.begin(), vars_.end(),
                            [](const Var& a, const Var& b) {
                              return a.start == b.start && a.end == b.end;
                            }),
                vars_.end());
    max_end_.resize(vars_.size());
    uint64_t m = 0;
    for (size_t i = 0; i < vars_.size(); ++i) max_end_[i] = m = std::max(m, vars_[i].end);
  }

  // The innermost variable covering `addr`, named down to the byte.
  Result<std::string> describe(uint64_t addr) {
    auto it = std::upper_bound(vars_.begin(), vars_.end(), addr,
                               [](uint64_t a, const Var& v) { return a < v.start; });
    for (size_t i = static_cast<size_t>(it - vars_.begin()); i-- > 0 && max_end_[i] > addr;) {
      Var& v = vars_[i];
      if (addr >= v.end) continue;
      std::string path = name_of(v);
      Dwarf_Die type;
      if (type_of(&v.die, &type)) {
        TypeWalker::walk(type, addr - v.start, &path);
      } else if (addr != v.start) {
        path += "+" + std::to_string(addr - v.start);
      }
      return path;
    }
    return Err{-ENOENT};
  }

 private:
  struct Var {
    uint64_t start, end;
    Dwarf_Die die;
    int32_t scope;
  };

  void index_children(Dwarf_Die* parent, const ScopeFrame* scope, int depth) {
    Dwarf_Die c;
    if (depth > kMaxScopeNesting || dwarf_child(parent, &c) != 0) return;
    do {
      switch (dwarf_tag(&c)) {
        case DW_TAG_variable:
          add_variable(&c, scope);
          break;
        case DW_TAG_namespace:
        case DW_TAG_subprogram:
        case DW_TAG_module: {
          ScopeFrame f{scope, c, -1};
          index_children(&c, &f, depth + 1);
          break;
        }
        case DW_TAG_lexical_block:
          index_children(&c, scope, depth + 1);
          break;
        default:
          break;  // types, parameters, inlined copies (their statics live in the origin)
      }
    } while (dwarf_siblingof(&c, &c) == 0);
  }

  // A static address from a location like `DW_OP_addr X` or
  // `DW_OP_addrx i; DW_OP_plus_uconst n`; nothing else (registers, TLS).
  static Result<uint64_t> static_address(Dwarf_Die* var) {
    Dwarf_Attribute a;
    Dwarf_Op* ops = nullptr;
    size_t n = 0;
    if (dwarf_attr(var, DW_AT_location, &a) == nullptr || dwarf_getlocation(&a, &ops, &n) != 0)
      return Err{-ENODATA};
    if (n == 0 || n > 2) return Err{-ENOTSUP};
    uint64_t addr = 0;
    if (ops[0].atom == DW_OP_addr) {
      addr = ops[0].number;
    } else if (ops[0].atom == DW_OP_addrx || ops[0].atom == DW_OP_GNU_addr_index) {
      Dwarf_Attribute res;
      Dwarf_Addr v;
      if (dwarf_getlocation_attr(&a, &ops[0], &res) != 0 || dwarf_formaddr(&res, &v) != 0)
        return Err{-ENODATA};
      addr = v;
    } else {
      return Err{-ENOTSUP};
    }
    if (n == 2) {
      if (ops[1].atom != DW_OP_plus_uconst) return Err{-ENOTSUP};
      addr += ops[1].number;
    }
    return addr;
  }

  void add_variable(Dwarf_Die* die, const ScopeFrame* scope) {
    auto addr = static_address(die);
    if (!addr.ok()) return;
    uint64_t size = 1;  // an unknown size still names the first byte
    Dwarf_Die type;
    if (type_of(die, &type)) {
      auto s = size_of(&type);
      if (s.ok() && *s > 0) size = *s;
    }
    uint64_t start = *addr + bias_;
    if (start + size < start) return;  // wraps: nonsense
    vars_.push_back(Var{start, start + size, *die, intern(scope)});
  }

  int32_t intern(const ScopeFrame* f) {
    if (f == nullptr) return 0;
    if (f->interned >= 0) return f->interned;
    std::string prefix = scopes_[static_cast<size_t>(intern(f->up))];
    Dwarf_Die d = f->die;
    Dwarf_Attribute a;
    const char* name = dwarf_attr_integrate(&d, DW_AT_name, &a) ? dwarf_formstring(&a) : nullptr;
    if (name != nullptr) {
      prefix += std::string(name) + "::";
    } else if (dwarf_tag(&d) == DW_TAG_namespace) {
      prefix += "(anonymous namespace)::";
    }
    scopes_.push_back(std::move(prefix));
    f->interned = static_cast<int32_t>(scopes_.size() - 1);
    return f->interned;
  }

  std::string name_of(Var& v) {
    Dwarf_Attribute a;
    const char* linkage = nullptr;
    if (dwarf_attr_integrate(&v.die, DW_AT_linkage_name, &a) != nullptr ||
        dwarf_attr_integrate(&v.die, DW_AT_MIPS_linkage_name, &a) != nullptr)
      linkage = dwarf_formstring(&a);
    if (linkage != nullptr && linkage[0] == '_' && linkage[1] == 'Z') {
      std::string s = demangle(linkage);
      if (s != linkage) return s;
    }
    const char* name =
        dwarf_attr_integrate(&v.die, DW_AT_name, &a) != nullptr ? dwarf_formstring(&a) : nullptr;
    if (name == nullptr) return "<unnamed variable>";
    return scopes_[static_cast<size_t>(v.scope)] + name;
  }

  uint64_t bias_ = 0;
  std::vector<Var> vars_;
  std::vector<uint64_t> max_end_;  // max_end_[i]: the largest end among vars_[0..i]
  std::vector<std::string> scopes_;
};

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
    std::string s = demangle(name);
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
  VariableIndex vars_;
};

// ---- The cache -------------------------------------------------------------

struct Cache {
  std::mutex mu;
  // Key: file, bias and in-memory build ID, so an object unloaded and
  // another loaded in its place is not mistaken for it.  Value: null when
  // the object could not be opened; `open_error` says why.
  struct Entry {
    std::unique_ptr<ElfObject> obj;
    long open_error = 0;
  };
  std::map<std::tuple<std::string, uint64_t, std::string>, Entry> objects;
  size_t loaded = 0;
};

// Never destroyed: a space is a fork of the master, and a destructor run at
// its exit would make system calls the space is not allowed.
Cache& cache() {
  static Cache* c = new Cache;
  return *c;
}

// Called with the cache lock held.
Cache::Entry& object_entry(Cache& c, const LoadedObject& lo) {
  auto key = std::make_tuple(lo.display_path, lo.bias, lo.build_id);
  auto [it, fresh] = c.objects.try_emplace(key);
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
  auto lo = find_loaded_object(addr);
  if (!lo.ok()) {
    describe_mapping(addr, &d);
    return d;
  }
  d.mapped = d.in_object = true;
  d.object = lo->display_path;
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  Cache::Entry& e = object_entry(c, *lo);
  if (e.obj == nullptr) {
    d.stale_file = e.open_error == -ESTALE;
    return d;
  }
  if (auto sec = e.obj->section_at(addr); sec.ok()) d.section = *sec;
  if (auto var = e.obj->variable_at(addr); var.ok()) {
    d.source = NameSource::kDebugInfo;
    d.name = std::move(*var);
  } else if (auto sym = e.obj->symbol_at(addr); sym.ok()) {
    d.source = NameSource::kSymbolTable;
    d.name = std::move(*sym);
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

size_t symbolize_objects_loaded() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  return c.loaded;
}

}  // namespace detux
