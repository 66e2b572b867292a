// Durable file writes shared by every writer in lathe (checkpoints, shards, safetensors,
// config.json): write to a temporary name, fsync, rename over the final name, fsync the
// folder. A crash leaves either the old file or the new one, never half of either.
#pragma once

#include <functional>
#include <string>

#include "core/error.h"

namespace lathe {

// A file that cannot be created, written, synced or renamed (a full disk, a missing or
// read-only folder). Every function below throws it; the CLI maps it to exit code 3.
// train::IoError and train::CheckpointError are this type and a subclass of it.
class IoError : public Error {
 public:
  IoError(const std::string& where, const std::string& msg) : Error(where, msg) {}
};

// "<path>.tmp.<pid>": a temporary name beside `path` that no other process writes.
std::string temp_path_for(const std::string& path);
void fsync_file(const std::string& path);
// Tolerates filesystems that refuse fsync on directories (EINVAL).
void fsync_dir(const std::string& dir);
// fsync(tmp), rename(tmp, final_path), fsync(parent of final_path). On failure removes tmp
// and throws naming both paths.
void commit_file(const std::string& tmp, const std::string& final_path);
// Writes text to `tmp` (default temp_path_for(path)) and commits it to `path`.
void write_file_atomic(const std::string& path, const std::string& text, const std::string& tmp = "");
// Calls write(fd, tmp) on a fresh temporary file, then commits it to `path`; on any failure
// the temporary file is removed and the error propagates.
void write_file_atomic_with(const std::string& path, const std::function<void(int fd, const std::string& tmp)>& write);

}  // namespace lathe
