// hello.cc: "hello, spaces" -- the runtime in a few lines.
//
// Four threads, each a space on a snapshot of the master, print a greeting
// with printf and allocate a string with new; joining them prints their
// output (in join order, whatever order they ran in) and merges their
// writes, so the master can read and delete the strings they made.  The
// output, pointers included, is the same on every run.
#include <detux/detux.hpp>

#include <cstdio>
#include <string>
#include <vector>

std::string* g_greeting[4];  // shared memory: the executable's bss

int main() {
  std::printf("hello from the master\n");
  std::vector<detux::thread> threads;
  for (det_child_t id = 0; id < 4; ++id) {
    threads.emplace_back(id, [id] {
      g_greeting[id] = new std::string("greetings from space " + std::to_string(id));
      std::printf("hello, spaces: this is space %lu\n", id);
    });
  }
  for (detux::thread& t : threads) t.join();
  for (std::string* g : g_greeting) {
    std::printf("the master reads \"%s\" at %p\n", g->c_str(), static_cast<void*>(g));
    delete g;
  }
  return 0;
}
