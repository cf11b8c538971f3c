// Exception types of the aribbps coder core.
//
// Every failure the core can meet is reported by throwing one of these; none
// is an assert, so release builds check untrusted input exactly as debug
// builds do. The Python binding maps them to Python exceptions:
//   InvalidArgument -> ValueError               (caller passed bad arrays/params)
//   StreamError     -> aribbps._coder.StreamError     (bytes are not a valid stack)
//   NotEnoughBits   -> aribbps._coder.NotEnoughBitsError (a pop ran below the bottom)
#pragma once
#include <stdexcept>
#include <string>

namespace arib {

struct InvalidArgument : std::invalid_argument {
  explicit InvalidArgument(const std::string& what) : std::invalid_argument(what) {}
};

struct StreamError : std::runtime_error {
  explicit StreamError(const std::string& what) : std::runtime_error(what) {}
};

struct NotEnoughBits : std::runtime_error {
  explicit NotEnoughBits(const std::string& what) : std::runtime_error(what) {}
};

}  // namespace arib
