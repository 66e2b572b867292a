#include "data/text_source.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "core/error.h"

namespace lathe::data {

namespace fs = std::filesystem;

namespace {
bool matches(const fs::path& p, const std::string& ext) { return ext.empty() || p.extension().string() == ext; }
}  // namespace

std::vector<std::string> list_text_files(const std::string& dir, const TextSourceOptions& options) {
  std::error_code ec;
  LATHE_CHECK(fs::exists(dir, ec)) << "text source: " << dir << " does not exist";
  LATHE_CHECK(fs::is_directory(dir, ec)) << "text source: " << dir << " is not a directory";
  std::vector<std::pair<std::string, std::string>> found;  // (relative path, full path)
  auto take = [&](const fs::directory_entry& e) {
    std::error_code ec2;
    if (e.is_regular_file(ec2) && matches(e.path(), options.extension))
      found.emplace_back(fs::relative(e.path(), dir, ec2).generic_string(), e.path().string());
  };
  if (options.recursive) {
    fs::recursive_directory_iterator it(dir, ec), end;
    LATHE_CHECK(!ec) << "text source: cannot list " << dir << ": " << ec.message();
    for (; it != end; it.increment(ec)) {
      LATHE_CHECK(!ec) << "text source: cannot list " << dir << ": " << ec.message();
      take(*it);
    }
  } else {
    fs::directory_iterator it(dir, ec), end;
    LATHE_CHECK(!ec) << "text source: cannot list " << dir << ": " << ec.message();
    for (; it != end; it.increment(ec)) {
      LATHE_CHECK(!ec) << "text source: cannot list " << dir << ": " << ec.message();
      take(*it);
    }
  }
  std::sort(found.begin(), found.end());
  std::vector<std::string> out;
  for (auto& f : found) out.push_back(std::move(f.second));
  return out;
}

namespace {
// Reads a regular file (possibly empty); throws naming it on any failure.
std::string read_file_bytes(const std::string& path) {
  std::error_code ec;
  LATHE_CHECK(fs::exists(path, ec)) << "text source: " << path << " does not exist";
  LATHE_CHECK(fs::is_regular_file(path, ec)) << "text source: " << path << " is not a regular file";
  FILE* f = std::fopen(path.c_str(), "rb");
  LATHE_CHECK(f) << "text source: cannot read " << path << ": " << std::strerror(errno);
  std::string out;
  char buf[1 << 16];
  size_t got;
  while ((got = std::fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, got);
  const bool bad = std::ferror(f) != 0;
  std::fclose(f);
  LATHE_CHECK(!bad) << "text source: read error in " << path;
  return out;
}
}  // namespace

std::string read_text_file(const std::string& path) {
  std::string text = read_file_bytes(path);
  LATHE_CHECK(!text.empty()) << "text source: " << path << " is empty";
  return text;
}

std::string read_text(const std::string& path, const TextSourceOptions& options) {
  std::error_code ec;
  LATHE_CHECK(fs::exists(path, ec)) << "text source: " << path << " does not exist";
  if (!fs::is_directory(path, ec)) return read_text_file(path);
  const std::vector<std::string> files = list_text_files(path, options);
  LATHE_CHECK(!files.empty()) << "text source: directory " << path << " has no "
                              << (options.extension.empty() ? "regular" : "*" + options.extension) << " files"
                              << (options.recursive ? "" : " (subdirectories are not searched; set recursive)");
  std::string out;
  bool any = false;
  for (const auto& f : files) {
    std::string text = read_file_bytes(f);
    if (text.empty()) continue;
    if (any) out += options.separator;
    out += text;
    any = true;
  }
  LATHE_CHECK(any) << "text source: every file in " << path << " is empty (" << files.size() << " files)";
  return out;
}

}  // namespace lathe::data
