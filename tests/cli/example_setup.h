// What the example configs that depend on earlier commands need before they can run in a
// test: the README of each example produces these files with `lathe tokenizer train`,
// `lathe prepare`, `lathe train` and `lathe export` under runs/; the tests produce the same
// kinds of files in a temporary directory (with the same commands) and point the config
// there with --set.
#pragma once

#include <filesystem>
#include <string>

#include "configs/config.h"
#include "tests/cli/cli_test_util.h"

namespace lathe::cli_test {

// A directory of prerequisites made on first use: a BPE tokenizer, prepared shards and a
// tiny Hugging Face model directory (with that tokenizer) exported from a lathe run.
class ExampleInputs {
 public:
  explicit ExampleInputs(std::string dir) : dir_(std::move(dir)) {}

  // tokenizer.json trained on the first 200 kB of tinyshakespeare (vocab 512, <|endoftext|>).
  std::string tokenizer() {
    const std::string path = dir_ + "/tok/tokenizer.json";
    if (!std::filesystem::exists(path)) {
      const std::string excerpt = dir_ + "/excerpt.txt";
      std::filesystem::create_directories(dir_);
      Result cut = run_shell("head -c 200000 ../shared/data/tinyshakespeare.txt > " + sh_quote(excerpt));
      EXPECT_EQ(cut.rc, 0) << cut.out;
      Result r = run_lathe("tokenizer train --input " + sh_quote(excerpt) + " --vocab-size 512 --special '<|endoftext|>' --out " +
                           sh_quote(path));
      EXPECT_EQ(r.rc, 0) << r.out;
    }
    return path;
  }

  // `lathe prepare` of the excerpt with tokenizer() (blank-line documents, 5% val).
  std::string prepared() {
    const std::string out = dir_ + "/prepared";
    if (!std::filesystem::exists(out + "/index.json")) {
      const std::string tok = tokenizer();
      Result r = run_lathe("prepare " + sh_quote(dir_ + "/excerpt.txt") + " --out " + sh_quote(out) + " --tokenizer " +
                           sh_quote(tok) + " --split blank_lines --val-fraction 0.05");
      EXPECT_EQ(r.rc, 0) << r.out;
    }
    return out;
  }

  // A 2-layer GPT-2 trained 2 steps with tokenizer() and exported: config.json,
  // model.safetensors and tokenizer.json, like a small Hugging Face download.
  std::string hf_model() {
    const std::string out = dir_ + "/hf";
    if (!std::filesystem::exists(out + "/config.json")) {
      const std::string cfg = dir_ + "/base.pbtxt";
      std::filesystem::create_directories(dir_);  // tokenizer() may not have run (runs/ had its files)
      std::FILE* f = std::fopen(cfg.c_str(), "w");
      std::fputs(("name: \"base\"\nrun_dir: \"" + dir_ + "/base\"\n"
                  "model { arch: GPT2 n_layer: 2 n_head: 2 d_model: 32 max_seq_len: 128 }\n"
                  "data { source: HDF5 path: \"" + prepared() + "\" tokenizer: \"" + tokenizer() + "\" }\n"
                  "train { steps: 2 micro_batch: 2 seq_len: 64 }\n"
                  "logging { progress: NONE }\nparallel { threads_per_rank: 1 }\n").c_str(),
                 f);
      std::fclose(f);
      Result t = run_lathe("train " + sh_quote(cfg));
      EXPECT_EQ(t.rc, 0) << t.out;
      Result e = run_lathe("export --checkpoint " + sh_quote(dir_ + "/base") + " --out " + sh_quote(out));
      EXPECT_EQ(e.rc, 0) << e.out;
    }
    return out;
  }

  // The --set overrides an example config needs here: a tokenizer file that the README makes
  // first, prepared data (data.source HDF5 under runs/), or model.init_from.
  std::string overrides_for(const RunConfig& cfg) {
    std::string args;
    const std::string& tok = cfg.data().tokenizer();
    const bool tok_file = tok != "byte" && tok != "auto" && !tok.empty();
    if (tok_file && !std::filesystem::exists(tok)) args += " --set data.tokenizer=" + sh_quote(tokenizer());
    if (cfg.data().source() == DataConfig::HDF5 && !std::filesystem::exists(cfg.data().path()))
      args += " --set data.path=" + sh_quote(prepared());
    if (!cfg.model().init_from().empty()) args += " --set model.init_from=" + sh_quote(hf_model());
    return args;
  }

  static Result run_shell(const std::string& cmd) {
    Result r;
    std::FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
    if (!p) return r;
    char buf[4096];
    for (size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) r.out.append(buf, n);
    r.rc = decode_status(::pclose(p));
    return r;
  }

 private:
  std::string dir_;
};

}  // namespace lathe::cli_test
