// fsemu.h: the detux file system inside spaces (see fsemu.cc).
#pragma once

#include <detux/detux.h>

#include <cstdint>
#include <string>
#include <vector>

namespace detux::rt {

// The master: map the file-system region and make (or load) the file system.
void fs_master_init();
// A program exec'd in a space: map the region, before it is confined; and,
// once the kernel has carried the old program's pages over, use them.
void fs_exec_init();
void fs_exec_attach();
// The file system's region (what an exec keeps).
void fs_region(uint64_t* base, uint64_t* size);
// In a space: the whole of a regular file, if there is one at path.
bool fs_read_file(const char* path, std::vector<uint8_t>* out);
// A new child: start recording its changes.
void fs_child_start();
// The parent at a join or wait: reconcile the child's file system.  Returns
// the number of files marked conflicted (their paths appended to *report),
// or a negative error.
long fs_join(det_child_t child, std::string* report);
// The master: save the file system to an image (atomically) / replace it
// with a loaded image.  On a refused image the file system is unchanged and
// *why says what was wrong.
long fs_save(const char* path, std::string* why);
long fs_load(const char* path, std::string* why);
// In a space: the file call nr with arguments a.  False if it is not a file
// call this layer takes (the caller refuses it); else *result is the answer.
bool fs_emulate(long nr, const long a[6], long* result);

}  // namespace detux::rt
