#include "data/tokenizer.h"

#include <sys/stat.h>

#include "core/error.h"
#include "data/bpe.h"
#include "data/byte_tokenizer.h"

namespace lathe {
namespace data {

namespace {

bool is_dir(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool is_file(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string base_name(const std::string& p) {
  const size_t slash = p.find_last_of('/');
  return slash == std::string::npos ? p : p.substr(slash + 1);
}

std::string dir_name(const std::string& p) {
  const size_t slash = p.find_last_of('/');
  return slash == std::string::npos ? std::string(".") : p.substr(0, slash);
}

}  // namespace

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& spec) {
  if (spec == "byte") return std::make_unique<ByteTokenizer>();
  if (is_dir(spec)) {
    std::string dir = spec;
    while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
    if (is_file(dir + "/tokenizer.json")) return BpeTokenizer::from_tokenizer_json(dir + "/tokenizer.json");
    if (is_file(dir + "/vocab.json") && is_file(dir + "/merges.txt"))
      return BpeTokenizer::from_vocab_merges(dir + "/vocab.json", dir + "/merges.txt");
    LATHE_FAIL() << "tokenizer: directory '" << spec
                 << "' has neither tokenizer.json nor vocab.json + merges.txt";
  }
  LATHE_CHECK(is_file(spec)) << "tokenizer: spec '" << spec
                             << "' is not \"byte\" and no such file or directory exists";
  if (base_name(spec) == "vocab.json") {
    const std::string merges = dir_name(spec) + "/merges.txt";
    LATHE_CHECK(is_file(merges)) << "tokenizer: '" << spec << "' is a GPT-2 vocab.json but '" << merges
                                 << "' does not exist";
    return BpeTokenizer::from_vocab_merges(spec, merges);
  }
  return BpeTokenizer::from_tokenizer_json(spec);
}

}  // namespace data
}  // namespace lathe
