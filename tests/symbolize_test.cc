// symbolize_test.cc: naming addresses of this process (src/rt/symbolize.h).
//
// The globals below stand in for a program's shared state, the kind a join
// reports a conflict in: arrays of structs, nested aggregates, a plain int,
// a function static, a 2-D array, a union, bit-fields, a base class, a
// namespace.  Each test takes the address of one byte and checks the name
// symbolize gives it, then the same for the heap, anonymous and unmapped
// memory, for libc, and for three test libraries with decreasing amounts
// of symbol information (symbolize_test_globals.h).
#include "rt/symbolize.h"

#include <dlfcn.h>
#include <elf.h>
#include <gtest/gtest.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "symbolize_test_globals.h"

struct Actor {
  int x;
  double y;
};
Actor actor[8];

struct Cell {
  short h[4];
  struct {
    int a, b;
  } pair;
};
struct World {
  Cell cells[3][5];
  int count;
};
World world;

int plain_int = 7;
double grid2d[4][6];

typedef struct {
  int id;
  char tag[6];
} Record;
const volatile Record records[2] = {{1, "one"}, {2, "two"}};
extern const int primes[4] = {2, 3, 5, 7};

union WordUnion {
  uint32_t word;
  uint8_t bytes[4];
};
WordUnion word_union;

struct BitFlags {
  unsigned a : 3;
  unsigned b : 5;
  unsigned short c;
};
BitFlags bit_flags;

struct Base {
  int b;
};
struct Derived : Base {
  int d;
};
Derived derived;

namespace sim {
int ticks;
}

struct Pool {
  static int count;
};
int Pool::count;

std::string greeting = "hello";  // mangled with an ABI tag: greeting[abi:cxx11]

int& counter_in_function() {
  static int counter;
  return counter;
}

namespace {

using detux::describe_address;
using detux::NameSource;
using detux::symbolize;

template <typename T>
uint64_t at(T* p, size_t byte = 0) {
  return reinterpret_cast<uint64_t>(p) + byte;
}
template <typename T>
uint64_t at(const volatile T* p, size_t byte = 0) {
  return reinterpret_cast<uint64_t>(const_cast<T*>(p)) + byte;
}

std::string name_of(uint64_t addr) { return symbolize(addr).name; }

bool has(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}
bool starts(const std::string& s, const std::string& head) { return s.rfind(head, 0) == 0; }

std::string hex(uint64_t v) {
  char buf[24];
  snprintf(buf, sizeof buf, "0x%lx", static_cast<unsigned long>(v));
  return buf;
}

std::string self_exe() { return std::filesystem::read_symlink("/proc/self/exe").string(); }

// ---- The executable, from DWARF ----------------------------------------

TEST(SymbolizeDwarf, StructArrayMemberIsNamedByIndexAndField) {
  EXPECT_EQ(name_of(at(&actor[3].x)), "actor[3].x");
  EXPECT_EQ(name_of(at(&actor[3].y)), "actor[3].y");
  EXPECT_EQ(name_of(at(&actor[0])), "actor[0].x");
  EXPECT_EQ(name_of(at(&actor[7].y)), "actor[7].y");
  EXPECT_EQ(symbolize(at(&actor[3].x)).source, NameSource::kDebugInfo);
}

TEST(SymbolizeDwarf, ByteInsideAMemberGetsItsDecimalOffset) {
  EXPECT_EQ(name_of(at(&actor[3].y, 2)), "actor[3].y+2");
  EXPECT_EQ(name_of(at(&actor[3].x, 3)), "actor[3].x+3");
}

TEST(SymbolizeDwarf, PaddingIsAnOffsetIntoTheEnclosingElement) {
  EXPECT_EQ(name_of(at(&actor[3], 4)), "actor[3]+4");
}

TEST(SymbolizeDwarf, DescriptionCarriesTheAddressTheFileAndTheSection) {
  uint64_t a = at(&actor[3].x);
  EXPECT_EQ(describe_address(a), "actor[3].x (" + hex(a) + ", in " + self_exe() + " .bss)");
  auto d = symbolize(a);
  EXPECT_TRUE(d.mapped);
  EXPECT_TRUE(d.in_object);
  EXPECT_EQ(d.object, self_exe());
  EXPECT_EQ(d.section, ".bss");
}

TEST(SymbolizeDwarf, NestedStructsAndArraysGiveTheFullPath) {
  EXPECT_EQ(name_of(at(&world.cells[2][4].h[3])), "world.cells[2][4].h[3]");
  EXPECT_EQ(name_of(at(&world.cells[1][0].pair.b)), "world.cells[1][0].pair.b");
  EXPECT_EQ(name_of(at(&world.cells[1][0].pair.b, 1)), "world.cells[1][0].pair.b+1");
  EXPECT_EQ(name_of(at(&world.cells[0][0].h[0])), "world.cells[0][0].h[0]");
  EXPECT_EQ(name_of(at(&world.count)), "world.count");
}

TEST(SymbolizeDwarf, PlainIntInData) {
  EXPECT_EQ(name_of(at(&plain_int)), "plain_int");
  EXPECT_EQ(name_of(at(&plain_int, 3)), "plain_int+3");
  EXPECT_EQ(symbolize(at(&plain_int)).section, ".data");
}

TEST(SymbolizeDwarf, TwoDimensionalArrayGivesBothIndices) {
  EXPECT_EQ(name_of(at(&grid2d[2][5])), "grid2d[2][5]");
  EXPECT_EQ(name_of(at(&grid2d[3][0], 7)), "grid2d[3][0]+7");
  EXPECT_EQ(name_of(at(&grid2d[0][0])), "grid2d[0][0]");
}

TEST(SymbolizeDwarf, StaticInACxxFunctionIsNamedAfterTheFunction) {
  EXPECT_EQ(name_of(at(&counter_in_function())), "counter_in_function::counter");
}

TEST(SymbolizeDwarf, StaticInACFunctionIsNamedAfterTheFunction) {
  EXPECT_EQ(name_of(at(c_step_counter())), "c_step_counter::calls");
}

TEST(SymbolizeDwarf, CStructArrayIsNamedLikeCxx) {
  EXPECT_EQ(name_of(at(&c_pairs[4].b)), "c_pairs[4].b");
}

TEST(SymbolizeDwarf, TypedefsAndQualifiersAreLookedThrough) {
  EXPECT_EQ(name_of(at(&records[1].tag[5])), "records[1].tag[5]");
  EXPECT_EQ(name_of(at(&records[0].id, 1)), "records[0].id+1");
}

TEST(SymbolizeDwarf, ConstantTableIsNamedInRodata) {
  auto d = symbolize(at(&primes[2]));
  EXPECT_EQ(d.name, "primes[2]");
  EXPECT_EQ(d.section, ".rodata");
}

TEST(SymbolizeDwarf, UnionByteIsNamedByTheFirstMemberCoveringIt) {
  EXPECT_EQ(name_of(at(&word_union.bytes[2])), "word_union.word+2");
}

TEST(SymbolizeDwarf, BitFieldByteIsNamedByTheFirstBitFieldInIt) {
  EXPECT_EQ(name_of(at(&bit_flags)), "bit_flags.a");
  EXPECT_EQ(name_of(at(&bit_flags.c)), "bit_flags.c");
}

TEST(SymbolizeDwarf, BaseClassMembersAreReachedThroughTheDerivedObject) {
  EXPECT_EQ(name_of(at(&derived.b)), "derived.b");
  EXPECT_EQ(name_of(at(&derived.d)), "derived.d");
}

TEST(SymbolizeDwarf, NamespacedVariableHasItsQualifiedName) {
  EXPECT_EQ(name_of(at(&sim::ticks)), "sim::ticks");
}

TEST(SymbolizeDwarf, ClassStaticMemberIsNamedThroughItsClass) {
  EXPECT_EQ(name_of(at(&Pool::count)), "Pool::count");
}

TEST(SymbolizeDwarf, AbiTagsAreLeftOutOfNames) {
  std::string n = name_of(at(&greeting));
  EXPECT_TRUE(starts(n, "greeting.")) << n;
  EXPECT_FALSE(has(n, "[abi:")) << n;
}

// ---- Shared libraries ----------------------------------------------------

TEST(SymbolizeLibrary, GlobalOfASharedLibraryWithDebugInfoIsNamedFromDwarf) {
  auto d = symbolize(at(sensor_reading_addr(2, 1)));
  EXPECT_EQ(d.name, "sensors[2].readings[1]");
  EXPECT_EQ(d.source, NameSource::kDebugInfo);
  EXPECT_TRUE(has(d.object, "libsymbolize_dwarf_lib.so")) << d.object;
  EXPECT_EQ(d.section, ".bss");
}

TEST(SymbolizeLibrary, LibcEnvironIsNamed) {
  // Through libc's own handle: the executable's `environ` is a copy
  // relocated into its own .bss, and this test wants libc's.
  void* libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
  ASSERT_NE(libc, nullptr);
  void* env = dlsym(libc, "environ");
  ASSERT_NE(env, nullptr);
  auto d = symbolize(at(env));
  EXPECT_TRUE(has(d.name, "environ")) << d.name;
  EXPECT_NE(d.source, NameSource::kNone);
  EXPECT_TRUE(has(d.object, "libc.so")) << d.object;
  EXPECT_TRUE(has(describe_address(at(env)), "environ")) << describe_address(at(env));
  dlclose(libc);
}

TEST(SymbolizeLibrary, LibcStdoutObjectIsNamed) {
  // stdout points at a FILE inside libc's .data, named with or without
  // libc's debug info (_IO_2_1_stdout_, or _IO_2_1_stdout_.file._flags).
  auto d = symbolize(at(stdout));
  EXPECT_TRUE(starts(d.name, "_IO_2_1_stdout_")) << d.name;
  EXPECT_TRUE(has(d.object, "libc.so")) << d.object;
}

TEST(SymbolizeLibrary, WithoutDebugInfoTheSymbolTableNamesAddressesInHex) {
  auto d = symbolize(at(plain_table_addr(2)));
  EXPECT_EQ(d.name, "plain_table+0x8");
  EXPECT_EQ(d.source, NameSource::kSymbolTable);
  EXPECT_EQ(name_of(at(plain_table_addr(0))), "plain_table");
  EXPECT_EQ(name_of(at(plain_hidden_addr(1))), "plain_hidden+0x8");  // .symtab only
}

TEST(SymbolizeLibrary, StrippedLibraryKeepsOnlyExportedNames) {
  EXPECT_EQ(name_of(at(stripped_table_addr(3))), "stripped_table+0xc");
  uint64_t hidden = at(stripped_hidden_addr(1));
  auto d = symbolize(hidden);
  EXPECT_EQ(d.source, NameSource::kNone);
  EXPECT_TRUE(d.in_object);
  EXPECT_EQ(describe_address(hidden), hex(hidden) + " (no symbol, in " + d.object + " .bss)");
}

TEST(SymbolizeLibrary, LibraryReplacedOnDiskSinceLoadingIsNotTrusted) {
  std::filesystem::path dir = std::filesystem::temp_directory_path() /
                              ("detux_symbolize_" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  std::filesystem::path copy = dir / "libcopy.so";
  std::filesystem::copy_file(SYMBOLIZE_MODULE, copy);
  void* h = dlopen(copy.c_str(), RTLD_NOW | RTLD_LOCAL);
  ASSERT_NE(h, nullptr) << dlerror();
  void* gauges = dlsym(h, "gauges");
  ASSERT_NE(gauges, nullptr);

  // Another build takes the file's name; the loaded module keeps its inode.
  Dl_info other;
  ASSERT_NE(dladdr(reinterpret_cast<void*>(&plain_table_addr), &other), 0);
  std::filesystem::path tmp = dir / "libother.so";
  std::filesystem::copy_file(other.dli_fname, tmp);
  std::filesystem::rename(tmp, copy);

  uint64_t a = at(static_cast<char*>(gauges), 8);
  auto d = symbolize(a);
  EXPECT_EQ(d.source, NameSource::kNone);
  EXPECT_TRUE(d.stale_file);
  EXPECT_EQ(describe_address(a), hex(a) + " (no symbol, in " + copy.string() +
                                     ", a file changed on disk since it was loaded)");
  dlclose(h);
  std::filesystem::remove_all(dir);
}

TEST(SymbolizeLibrary, DlopenedModuleIsNamedFromItsDwarf) {
  void* h = dlopen(SYMBOLIZE_MODULE, RTLD_NOW | RTLD_LOCAL);
  ASSERT_NE(h, nullptr) << dlerror();
  void* gauges = dlsym(h, "gauges");
  ASSERT_NE(gauges, nullptr);
  EXPECT_EQ(name_of(at(static_cast<char*>(gauges), 3 * 16 + 8)), "gauges[3].level");
  dlclose(h);
}

TEST(SymbolizeLibrary, UnloadedModuleLeavesTheCache) {
  (void)symbolize(at(&actor[0]));
  size_t before = detux::symbolize_objects_cached();
  void* h = dlopen(SYMBOLIZE_MODULE, RTLD_NOW | RTLD_LOCAL);
  ASSERT_NE(h, nullptr) << dlerror();
  void* gauges = dlsym(h, "gauges");
  ASSERT_NE(gauges, nullptr);
  EXPECT_EQ(name_of(at(gauges)), "gauges[0].id");
  EXPECT_EQ(detux::symbolize_objects_cached(), before + 1);
  dlclose(h);
  EXPECT_EQ(name_of(at(&actor[0])), "actor[0].x");
  EXPECT_EQ(detux::symbolize_objects_cached(), before);
}

// The bytes of section `name` in an ELF64 image, or an empty span.
std::pair<size_t, size_t> section_bytes(const std::string& elf, const char* name) {
  Elf64_Ehdr eh;
  memcpy(&eh, elf.data(), sizeof eh);
  auto shdr = [&](size_t i) {
    Elf64_Shdr sh;
    memcpy(&sh, elf.data() + eh.e_shoff + i * eh.e_shentsize, sizeof sh);
    return sh;
  };
  Elf64_Shdr strtab = shdr(eh.e_shstrndx);
  for (size_t i = 0; i < eh.e_shnum; ++i) {
    Elf64_Shdr sh = shdr(i);
    if (strcmp(elf.data() + strtab.sh_offset + sh.sh_name, name) == 0)
      return {sh.sh_offset, sh.sh_size};
  }
  return {0, 0};
}

TEST(SymbolizeLibrary, CorruptDebugInfoNeverCrashesAndStillGivesTheAddress) {
  std::ifstream in(SYMBOLIZE_MODULE, std::ios::binary);
  std::string image((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto info = section_bytes(image, ".debug_info");
  auto abbrev = section_bytes(image, ".debug_abbrev");
  ASSERT_GT(info.second, 0u);
  ASSERT_GT(abbrev.second, 0u);
  std::filesystem::path dir = std::filesystem::temp_directory_path() /
                              ("detux_symbolize_weird_" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  // One or two bytes at a time, past the unit header, so that libdw still
  // hands over DIEs, some of them wrong, for the type walk to meet.
  std::mt19937 rng(7);
  int named_from_dwarf = 0;
  for (int round = 0; round < 150; ++round) {
    std::string bad = image;
    for (int k = 0; k < 1 + round % 2; ++k) {
      auto [off, len] = round % 5 == 4 ? abbrev : info;
      size_t skip = round % 5 == 4 ? 0 : 12;
      bad[off + skip + rng() % (len - skip)] = static_cast<char>(rng());
    }
    std::filesystem::path file = dir / ("libweird" + std::to_string(round) + ".so");
    std::ofstream(file, std::ios::binary) << bad;
    void* h = dlopen(file.c_str(), RTLD_NOW | RTLD_LOCAL);
    ASSERT_NE(h, nullptr) << dlerror();
    void* gauges = dlsym(h, "gauges");
    ASSERT_NE(gauges, nullptr);
    for (size_t byte : {0, 5, 8, 17, 40, 63}) {
      uint64_t a = at(static_cast<char*>(gauges), byte);
      auto d = symbolize(a);
      EXPECT_TRUE(d.in_object);
      EXPECT_TRUE(has(to_string(d), hex(a))) << to_string(d);
      named_from_dwarf += d.source == NameSource::kDebugInfo;
      for (char ch : d.name) EXPECT_GE(static_cast<unsigned char>(ch), 0x20u);
    }
    dlclose(h);
  }
  EXPECT_GT(named_from_dwarf, 0);
  std::filesystem::remove_all(dir);
}

// ---- Outside every object ------------------------------------------------

TEST(SymbolizeMemory, HeapBlockGivesTheAddressAndNoSymbol) {
  void* p = malloc(64);
  uint64_t a = at(static_cast<char*>(p), 8);
  auto d = symbolize(a);
  EXPECT_EQ(d.source, NameSource::kNone);
  EXPECT_TRUE(d.mapped);
  EXPECT_FALSE(d.in_object);
  EXPECT_TRUE(starts(describe_address(a), hex(a) + " (no symbol, in ")) << describe_address(a);
  free(p);
}

TEST(SymbolizeMemory, BrkHeapIsNamedHeap) {
  void* p = sbrk(4096);
  ASSERT_NE(p, reinterpret_cast<void*>(-1));
  uint64_t a = at(static_cast<char*>(p), 16);
  EXPECT_EQ(describe_address(a), hex(a) + " (no symbol, in [heap])");
  sbrk(-4096);
}

TEST(SymbolizeMemory, AnonymousMappingIsGivenWithItsRangeAndPermissions) {
  // Three writable pages between two inaccessible ones, so that the kernel
  // cannot merge them with a neighbouring mapping.
  void* p = mmap(nullptr, 5 * 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(p, MAP_FAILED);
  char* rw = static_cast<char*>(p) + 4096;
  ASSERT_EQ(mprotect(rw, 3 * 4096, PROT_READ | PROT_WRITE), 0);
  uint64_t start = at(rw), a = start + 5000;
  EXPECT_EQ(describe_address(a), hex(a) + " (no symbol, in an anonymous rw-p mapping " +
                                     hex(start) + "-" + hex(start + 3 * 4096) + ")");
  munmap(p, 5 * 4096);
}

TEST(SymbolizeMemory, UnmappedAddressesSayNotMapped) {
  void* p = mmap(nullptr, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(p, MAP_FAILED);
  munmap(p, 4096);
  uint64_t a = at(static_cast<char*>(p));
  EXPECT_EQ(describe_address(a), hex(a) + " (not mapped)");
  EXPECT_EQ(describe_address(0), "0x0 (not mapped)");
  EXPECT_EQ(describe_address(UINT64_MAX), "0xffffffffffffffff (not mapped)");
}

// ---- Cost ------------------------------------------------------------------

TEST(SymbolizeCache, RepeatedQuestionsReadEachObjectOnce) {
  (void)symbolize(at(&actor[0].x));
  size_t loaded = detux::symbolize_objects_loaded();
  for (int round = 0; round < 200; ++round)
    for (int i = 0; i < 8; ++i) {
      ASSERT_EQ(name_of(at(&actor[i].y)), "actor[" + std::to_string(i) + "].y");
    }
  EXPECT_EQ(detux::symbolize_objects_loaded(), loaded);
}

}  // namespace
