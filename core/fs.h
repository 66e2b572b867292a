// Durable file writes shared by every writer in lathe (checkpoints, shards, safetensors,
// config.json): write to a temporary name, fsync, rename over the final name, fsync the
// folder. A crash leaves either the old file or the new one, never half of either.
#pragma once

#include <functional>
#include <string>

namespace lathe {

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
