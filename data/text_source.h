// Raw text for language-model training: one text file, or a directory of .txt files
// concatenated in sorted order with a separator between them.
#pragma once

#include <string>
#include <vector>

namespace lathe::data {

struct TextSourceOptions {
  std::string separator = "\n";  // placed between files (not after the last)
  std::string extension = ".txt";  // files a directory contributes; "" takes every regular file
  bool recursive = false;          // also descend into subdirectories
};

// The files a directory contributes, sorted by their path relative to `dir` (byte order),
// so the concatenation does not depend on the filesystem's listing order.
// Throws when `dir` is missing or not a directory.
std::vector<std::string> list_text_files(const std::string& dir, const TextSourceOptions& options = {});

// The bytes of one file. Throws naming the path when it is missing, not a regular file,
// unreadable or empty.
std::string read_text_file(const std::string& path);

// A file's text, or a directory's files joined with options.separator. Empty files in a
// directory are skipped (they add no separator); a directory with no matching file, or only
// empty ones, is an error that names it.
std::string read_text(const std::string& path, const TextSourceOptions& options = {});

}  // namespace lathe::data
