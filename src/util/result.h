// result.h: errors as values.
//
// Every operation a space can make fail returns Result<T>: a value or a
// negative error code (-errno or -DET_E*), the same numbers the public calls
// return.  [[nodiscard]] makes a caller handle it.  Broken invariants of the
// supervisor itself are not errors but DETUX_ASSERT, which stays on in
// release builds.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <utility>

#define DETUX_ASSERT(cond, ...)                                           \
  do {                                                                    \
    if (!(cond)) {                                                        \
      std::fprintf(stderr, "detux: assertion failed at %s:%d: %s\n",      \
                   __FILE__, __LINE__, #cond);                            \
      std::abort();                                                       \
    }                                                                     \
  } while (0)

namespace detux {

// An error code on its way out; converts to any Result<T>.
struct Err {
  long code;
};

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)), err_(0) {}  // NOLINT
  Result(Err e) : err_(e.code) { DETUX_ASSERT(e.code < 0); }  // NOLINT
  static Result error(long err) {
    DETUX_ASSERT(err < 0);
    Result r;
    r.err_ = err;
    return r;
  }
  bool ok() const { return err_ == 0; }
  long err() const { return err_; }
  T& value() {
    DETUX_ASSERT(ok());
    return value_;
  }
  const T& value() const {
    DETUX_ASSERT(ok());
    return value_;
  }
  T* operator->() { return &value(); }
  T& operator*() { return value(); }

 private:
  Result() = default;
  T value_{};
  long err_ = 0;
};

// Status for operations with no value: 0 or a negative error.
using Status = Result<int>;
inline Status ok_status() { return Status(0); }
inline Status err_status(long e) { return Status::error(e); }

}  // namespace detux

// Propagate an error: TRY(expr) returns the error of a failed Result.
#define DETUX_TRY(expr)                                           \
  do {                                                            \
    auto detux_try_r_ = (expr);                                   \
    if (!detux_try_r_.ok()) return ::detux::Err{detux_try_r_.err()}; \
  } while (0)
