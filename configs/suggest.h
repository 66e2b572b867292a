// Spelling suggestions for config errors: the closest field or enum value name to what the
// user typed, so `stpes` gets `(did you mean "steps"?)`. Internal to lathe_configs.
#pragma once

#include <string>
#include <vector>

#include <google/protobuf/descriptor.h>

namespace lathe::configs::detail {

// Optimal-string-alignment distance: Levenshtein plus adjacent transpositions (so the
// common typo "stpes" is one edit from "steps"). Case-insensitive.
int edit_distance(const std::string& a, const std::string& b);

// The candidate closest to `typed`, or "" when none is close enough to be a plausible typo.
std::string closest(const std::string& typed, const std::vector<std::string>& candidates);

// " (did you mean \"steps\"?)" for an unknown field `typed` of message `msg`; when no field
// of `msg` is close, a field of that exact name elsewhere in RunConfig is offered by its
// full path (`train { lr: 1 }` -> "optimizer.lr"). "" when nothing fits.
std::string field_hint(const google::protobuf::Descriptor* msg, const std::string& typed);

// " (did you mean \"BF16\"?)" for an unknown enum value, or the list of valid names.
std::string enum_hint(const google::protobuf::EnumDescriptor* e, const std::string& typed);

// The field of `msg` named `name` (proto name, or the JSON camelCase name), or nullptr.
const google::protobuf::FieldDescriptor* find_field(const google::protobuf::Descriptor* msg,
                                                    const std::string& name);

}  // namespace lathe::configs::detail
