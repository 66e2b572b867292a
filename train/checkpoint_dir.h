// The on-disk checkpoint protocol: step directories, atomic commits, COMPLETE markers,
// the `latest` pointer, garbage collection and resolving what to resume from.
//
// Layout (specs/core.md, "Checkpoints"):
//   <ckpt_root>/step_00001000/rank_00000.h5 ... rank_<N-1>.h5   one file per rank
//   <ckpt_root>/step_00001000/COMPLETE                          JSON index, written last
//   <ckpt_root>/latest                                          "step_00001000\n"
//
// Saving a step (ranks cooperate; a barrier is the caller's job):
//   rank 0:     prepare_step_dir(root, step);                      barrier
//   every rank: H5Writer w(tmp_path(f)); ...; w.close(); commit_file(tmp_path(f), f)
//                                                                  barrier
//   rank 0:     mark_complete(dir, {{"step", step}, {"world_size", n}}); cleanup/keep_last
// Every file goes through `<name>.tmp`, fsync, rename, directory fsync, so a crash at any
// point leaves either the previous state or a directory without COMPLETE, which is never
// chosen for resume and is removed by cleanup_stale.
#pragma once

#include "core/fs.h"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace lathe::train {

// "<root>/step_%08d"
std::string step_dir(const std::string& ckpt_root, int64_t step);
// "rank_%05d.h5"
std::string rank_file_name(int rank);
// "<step_dir>/rank_%05d.h5"
std::string rank_file(const std::string& step_dir, int rank);
// "<final>.tmp": where a file is written before commit_file renames it.
std::string tmp_path(const std::string& final_path);
// The step of a directory named step_<digits> (any parent), or nullopt.
std::optional<int64_t> parse_step_dir(const std::string& path);

// fsync a file / a directory (so a rename or create in it is durable); throw naming the path.
using lathe::fsync_dir;
using lathe::fsync_file;
// fsync(tmp), rename(tmp, final) (replacing final), fsync(dirname(final)).
using lathe::commit_file;
// Writes `text` to `path` atomically (tmp + commit_file).
void write_file_atomic(const std::string& path, const std::string& text);  // through tmp_path(path)

// Creates the step directory (and the root) for a new save. A leftover directory of the
// same step (an earlier crashed or superseded save) is emptied first; if it was complete,
// its COMPLETE marker is removed (durably) before anything else, and `latest` is updated.
// Call on rank 0 only, before the barrier that lets ranks write.
std::string prepare_step_dir(const std::string& ckpt_root, int64_t step);

// Writes <step_dir>/COMPLETE atomically, then points <root>/latest at this step.
// `index` must hold "step" and "world_size"; "files" defaults to rank_00000.h5 ..
// rank_<world_size-1>.h5 and every listed file must exist (otherwise a rank did not
// finish); "time" (unix seconds) is added when missing.
void mark_complete(const std::string& step_dir, const nlohmann::json& index);
bool is_complete(const std::string& step_dir);
// The parsed COMPLETE index of a complete step directory.
nlohmann::json read_complete(const std::string& step_dir);

// Steps of the complete step directories under root, ascending (empty if root is missing).
std::vector<int64_t> complete_steps(const std::string& ckpt_root);
std::optional<int64_t> latest_complete_step(const std::string& ckpt_root);
// Atomically replaces <root>/latest with "step_%08d\n".
void write_latest(const std::string& ckpt_root, int64_t step);

// Points <root>/latest at the newest complete step (or removes it when there is none) if it
// names anything else or is missing: a kill between writing COMPLETE and updating latest
// leaves it naming the previous step. Returns true when it changed latest.
bool repair_latest(const std::string& ckpt_root);
// The step directory that a `latest` pointer file names ("<its folder>/step_00001000"), or
// nullopt when `path` is not a regular file named "latest". Throws naming the file when its
// text is not a step directory name.
std::optional<std::string> follow_latest(const std::string& path);

// Removes *.tmp files under root (except inside `in_progress`'s directory) and step
// directories without COMPLETE whose step is below the latest complete one (never the
// `in_progress` step), then repairs `latest` (repair_latest). Returns the removed paths.
std::vector<std::string> cleanup_stale(const std::string& ckpt_root,
                                       std::optional<int64_t> in_progress = std::nullopt);
// Deletes all but the newest k complete step directories (k >= 1). The COMPLETE marker
// is removed first, so an interrupted deletion leaves an incomplete directory, never a
// damaged "complete" one. Returns the removed directories.
std::vector<std::string> keep_last(const std::string& ckpt_root, int k);

// What to resume from, as a step directory:
//   "latest"                -> newest complete step under ckpt_root
//   "1000"                  -> step_dir(ckpt_root, 1000)
//   a complete step dir     -> itself
//   <root>/latest (the pointer file) -> the step it names (which must be complete)
//   a file inside one       -> its directory
//   a checkpoint root       -> its newest complete step
// Throws "no complete checkpoint in <dir>" or "<path> is not a complete checkpoint
// (no COMPLETE marker)" or "<path> does not exist".
std::string resolve_resume(const std::string& spec, const std::string& ckpt_root = "");

}  // namespace lathe::train
