// Strict command-line parsing for lathe's subcommands: every flag is declared, an unknown
// flag or a missing value is a UsageError with a hint (specs/core.md section 4, pain point 10:
// stray flags must not be ignored silently).
#pragma once

#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace lathe::cli {

// Bad command line: exit code 2, the message is printed with a pointer to --help.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class ArgKind {
  flag,      // --name
  value,     // --name V or --name=V
  optional,  // --name, --name=V, or --name V when V does not start with '-' (see accept)
  repeated,  // --name V, may be given many times
};

struct FlagSpec {
  std::string name;  // "--set"
  ArgKind kind = ArgKind::value;
  // For ArgKind::optional: whether the next token is this flag's value (e.g. not a config file).
  bool (*accept)(const std::string& next) = nullptr;
};

struct ParsedArgs {
  std::vector<std::string> positional;
  std::map<std::string, std::vector<std::string>> values;  // flag -> values ("" for a bare flag)
  bool help = false;                                      // -h / --help

  bool has(const std::string& flag) const { return values.count(flag) > 0; }
  // The last value given for a flag, if any.
  std::optional<std::string> get(const std::string& flag) const;
  std::vector<std::string> all(const std::string& flag) const;
  // Typed access; a malformed number is a UsageError naming the flag.
  int64_t get_int(const std::string& flag, int64_t fallback) const;
  double get_double(const std::string& flag, double fallback) const;
};

// Parses args (without the program and subcommand names). `--` ends flag parsing.
ParsedArgs parse_args(const std::string& command, const std::vector<std::string>& args,
                      const std::vector<FlagSpec>& flags);

// The closest candidate to `typed` when it is a plausible typo, else "".
std::string closest_name(const std::string& typed, const std::vector<std::string>& candidates);

}  // namespace lathe::cli
