// sonicmoe/status.h — how every entry point reports failure.
//
// Entry points return a Status instead of throwing so that the C++ core can sit under any
// binding (PyTorch, plain C++, a C shim). A failed Status names the argument that broke a rule
// and states the rule, e.g.
//   invalid argument 'top_k': must be <= num_experts (got top_k=9, num_experts=8)
// Callers that prefer exceptions use throw_if_error().
#pragma once

#include <stdexcept>
#include <string>
#include <utility>

namespace sonicmoe {

enum class StatusCode {
  ok = 0,
  invalid_argument,  // a shape, pointer, index or option breaks a documented rule
  unsupported,       // valid in principle, not implemented for this dtype/target
  cuda_error,        // a CUDA runtime or driver call failed
  internal,          // a bug in sonicmoe: please report
};

const char* to_string(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;  // ok

  static Status invalid_argument(std::string argument, std::string rule) {
    return Status(StatusCode::invalid_argument, std::move(argument), std::move(rule));
  }
  static Status unsupported(std::string argument, std::string rule) {
    return Status(StatusCode::unsupported, std::move(argument), std::move(rule));
  }
  static Status error(StatusCode code, std::string what) {
    return Status(code, std::string(), std::move(what));
  }

  bool ok() const { return code_ == StatusCode::ok; }
  explicit operator bool() const { return ok(); }
  StatusCode code() const { return code_; }
  // The offending argument ("top_k", "routing.token_idx", ...); empty when none applies.
  const std::string& argument() const { return argument_; }
  // The rule that was broken, with the values seen.
  const std::string& rule() const { return rule_; }
  // One line for a human: "invalid argument 'top_k': must be <= num_experts (got ...)".
  std::string message() const;

 private:
  Status(StatusCode code, std::string argument, std::string rule)
      : code_(code), argument_(std::move(argument)), rule_(std::move(rule)) {}

  StatusCode code_ = StatusCode::ok;
  std::string argument_;
  std::string rule_;
};

class Error : public std::runtime_error {
 public:
  explicit Error(Status status) : std::runtime_error(status.message()), status_(std::move(status)) {}
  const Status& status() const { return status_; }

 private:
  Status status_;
};

inline void throw_if_error(const Status& status) {
  if (!status.ok()) throw Error(status);
}

}  // namespace sonicmoe

// Propagate a failed Status to the caller.
#define SONICMOE_RETURN_IF_ERROR(expr)                  \
  do {                                                  \
    ::sonicmoe::Status sonicmoe_status_ = (expr);       \
    if (!sonicmoe_status_.ok()) return sonicmoe_status_; \
  } while (0)
