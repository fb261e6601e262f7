// fixed.h: the values detux gives every run where Linux would give random ones.
#pragma once

namespace detux {

// The 16 AT_RANDOM bytes (stack canary, pointer guard) of every program that
// `detux run` starts and of every program a space execs.
inline constexpr unsigned char kFixedRandom[16] = {0x00, 0x12, 0x23, 0x34, 0x45, 0x56,
                                                   0x67, 0x78, 0x89, 0x9a, 0xab, 0xbc,
                                                   0xcd, 0xde, 0xef, 0xf0};

}  // namespace detux
