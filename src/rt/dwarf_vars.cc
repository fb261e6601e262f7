// dwarf_vars.cc: the variable index and the type walk (see dwarf_vars.h).
//
// The walk goes from a variable's type and a byte offset down to the
// innermost member or element, one level per step:
//
//   typedef, const, volatile...  looked through (dwarf_peel_type)
//   array                        the flat element number split into one
//                                index per dimension, row-major (or
//                                column-major when DW_AT_ordering says so),
//                                each shown from its lower bound: `[2][5]`
//   struct, class, union         the member whose bytes hold the offset:
//                                `.y`; base classes and anonymous members
//                                add no name; in a union the first member
//                                covering the byte wins; bytes in no member
//                                are padding and end the walk
//   bit-field                    ends the walk at the first bit-field in
//                                the byte: bytes have no finer name
//   anything else (a scalar)     ends the walk
//
// whatever offset is left is shown as `+n`, in decimal: `actor[3].y+2`.
//
// Nothing in the DWARF is trusted: an attribute may be missing or
// malformed, a size zero, a reference circular.  Each step either makes
// progress or stops and reports what it has; type walks and scope nesting
// have fixed depth limits.  Strided arrays, virtual bases and members at
// computed locations end the walk where they are met.
//
// Names: a variable with a C++ linkage name (globals in namespaces, class
// statics, template statics) is named by demangling it: `sim::ticks`,
// `Pool::count`.  Otherwise the name is the DWARF name behind the enclosing
// namespaces and functions, so a static inside step() is `step::calls`, in
// C and in C++ alike, as gdb would accept it.
#include "rt/dwarf_vars.h"

#include <cxxabi.h>
#include <dwarf.h>
#include <errno.h>

#include <algorithm>
#include <cstdlib>
#include <tuple>

namespace detux::dwarf_vars {

namespace {

constexpr int kMaxTypeSteps = 64;     // array/struct levels walked for one address
constexpr int kMaxScopeNesting = 128;  // namespaces/functions/blocks in one unit

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
    uint64_t end = (*bit_off + *bits + 7) / 8;
    if (end < *bit_off / 8 || end <= s.start) return Err{-EINVAL};  // overflow or nonsense
    s.size = end - s.start;
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
        if (dwarf_hasattr(&c, DW_AT_byte_stride) || dwarf_hasattr(&c, DW_AT_bit_stride))
          return false;
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
      // Base classes and anonymous members add nothing to the path.
      if (name != nullptr) *path += std::string(".") + name;
      *off -= span->start;
      *type = mtype;
      *bitfield = span->bitfield;
      if (span->bitfield) *off = 0;
      return true;
    } while (dwarf_siblingof(&m, &m) == 0);
    return false;  // padding
  }
};

// A static address from a location like `DW_OP_addr X` or
// `DW_OP_addrx i; DW_OP_plus_uconst n`; nothing else (registers, TLS).
Result<uint64_t> static_address(Dwarf_Die* var) {
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

}  // namespace

std::string demangle(const char* name) {
  if (name == nullptr) return "";
  if (name[0] != '_' || name[1] != 'Z') return name;
  int status = 0;
  char* out = abi::__cxa_demangle(name, nullptr, nullptr, &status);
  if (status != 0 || out == nullptr) return name;
  std::string s(out);
  std::free(out);
  // ABI tags ("gstr[abi:cxx11]") say how a name was mangled, not what the
  // programmer wrote.
  for (size_t at; (at = s.find("[abi:")) != std::string::npos;) {
    size_t close = s.find(']', at);
    if (close == std::string::npos) break;
    s.erase(at, close - at + 1);
  }
  return s;
}

void VariableIndex::build(Dwarf* dw, uint64_t bias) {
  bias_ = bias;
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

Result<std::string> VariableIndex::describe(uint64_t addr) {
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

void VariableIndex::index_children(Dwarf_Die* parent, const ScopeFrame* scope, int depth) {
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

void VariableIndex::add_variable(Dwarf_Die* die, const ScopeFrame* scope) {
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

int32_t VariableIndex::intern(const ScopeFrame* f) {
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

std::string VariableIndex::name_of(Var& v) {
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

}  // namespace detux::dwarf_vars
