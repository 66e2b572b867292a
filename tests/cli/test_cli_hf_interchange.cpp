// Interchange with the Hugging Face stack through the CLI: what `lathe export` writes beside
// the weights (token ids, generation_config.json, a tokenizer file set AutoTokenizer loads),
// and `lathe eval` / `lathe generate` on a Hugging Face model directory.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "data/bpe_train.h"
#include "data/tokenizer.h"
#include "tests/cli/cli_test_util.h"
#include "tests/common/test_helpers.h"

namespace lathe::cli_test {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using test::read_file;
using test::TmpDir;
using test::write_file;

using test::contains;

// GPT-2-format files (vocab.json with <|endoftext|> in it, merges.txt) in `dir`, made from a
// tokenizer.json that lathe trained: the form of OpenAI's GPT-2 download.
void write_gpt2_files(const std::string& tokenizer_json, const std::string& dir) {
  const json j = json::parse(read_file(tokenizer_json));
  json vocab = j["model"]["vocab"];
  for (const json& a : j["added_tokens"]) vocab[a["content"].get<std::string>()] = a["id"];
  fs::create_directories(dir);
  write_file(dir + "/vocab.json", vocab.dump());
  std::string merges = "#version: 0.2\n";
  for (const json& m : j["model"]["merges"]) merges += m[0].get<std::string>() + " " + m[1].get<std::string>() + "\n";
  write_file(dir + "/merges.txt", merges);
}

json read_json(const std::string& path) { return json::parse(read_file(path)); }

// A Llama export whose tokenizer is GPT-2's vocab.json + merges.txt gets a tokenizer.json that
// encodes exactly as the GPT-2 files do, a tokenizer_config.json naming PreTrainedTokenizerFast,
// and <|endoftext|>'s id as bos/eos in config.json and generation_config.json.
TEST(CliHfInterchange, ExportWritesTokenIdsAndATokenizerJson) {
  TmpDir tmp;
  const std::string corpus = write_corpus(tmp);
  data::train_bpe({corpus}, 320, {"<|endoftext|>"}, tmp / "trained.json");
  write_gpt2_files(tmp / "trained.json", tmp / "gpt2tok");
  const std::string cfg =
      write_config(tmp, "run",
                   "data { source: TEXT path: \"" + corpus + "\" tokenizer: \"" + tmp / "gpt2tok/vocab.json" + "\" }", 2,
                   "arch: LLAMA n_layer: 1 n_head: 2 d_model: 32 max_seq_len: 64");
  Result t = run_lathe("train " + sh_quote(cfg));
  ASSERT_EQ(t.rc, 0) << t.out;
  Result e = run_lathe("export " + sh_quote(tmp / "run") + " --out " + sh_quote(tmp / "hf"));
  ASSERT_EQ(e.rc, 0) << e.out;

  auto gpt2 = data::load_tokenizer(tmp / "gpt2tok/vocab.json");
  const int32_t eot = gpt2->token_to_id("<|endoftext|>").value();
  EXPECT_EQ(eot, 319);  // trained specials come last
  const json config = read_json(tmp / "hf/config.json");
  EXPECT_EQ(config.value("model_type", ""), "llama");
  EXPECT_EQ(config.value("bos_token_id", -1), eot);
  EXPECT_EQ(config.value("eos_token_id", -1), eot);
  EXPECT_FALSE(config.contains("pad_token_id"));  // GPT-2 has no pad token
  const json gen = read_json(tmp / "hf/generation_config.json");
  EXPECT_EQ(gen.value("bos_token_id", -1), eot);
  EXPECT_EQ(gen.value("eos_token_id", -1), eot);
  EXPECT_FALSE(gen.contains("pad_token_id"));

  ASSERT_TRUE(fs::is_regular_file(tmp / "hf/tokenizer.json")) << e.out;
  const json tc = read_json(tmp / "hf/tokenizer_config.json");
  EXPECT_EQ(tc.value("tokenizer_class", ""), "PreTrainedTokenizerFast");
  EXPECT_EQ(tc.value("eos_token", ""), "<|endoftext|>");
  EXPECT_EQ(tc.value("bos_token", ""), "<|endoftext|>");
  EXPECT_TRUE(tc["pad_token"].is_null());
  EXPECT_EQ(tc.value("model_max_length", 0), 64);

  // The written tokenizer.json (loaded on its own, and as the export directory) encodes like
  // the GPT-2 files, special tokens included.
  auto from_json = data::load_tokenizer(tmp / "hf/tokenizer.json");
  auto from_dir = data::load_tokenizer(tmp / "hf");
  const std::string text = "ROMEO: But soft!<|endoftext|>  What light\n\n through yonder, 1234 windows' café?";
  const std::vector<int32_t> want = gpt2->encode(text);
  EXPECT_EQ(from_json->encode(text), want);
  EXPECT_EQ(from_dir->encode(text), want);
  EXPECT_EQ(from_dir->vocab_size(), gpt2->vocab_size());
  EXPECT_EQ(from_dir->eos_id(), std::optional<int32_t>(eot));
  EXPECT_EQ(from_dir->decode(want), text);
}

// The byte tokenizer has no role tokens: no ids in config.json, a generation_config.json
// without them, and no tokenizer files.
TEST(CliHfInterchange, ByteTokenizerExportHasNoTokenIds) {
  TmpDir tmp;
  const std::string corpus = write_corpus(tmp);
  const std::string cfg = write_config(tmp, "run", "data { source: TEXT path: \"" + corpus + "\" tokenizer: \"byte\" }",
                                       1, "arch: GPT2 n_layer: 1 n_head: 2 d_model: 32 max_seq_len: 64");
  Result t = run_lathe("train " + sh_quote(cfg));
  ASSERT_EQ(t.rc, 0) << t.out;
  Result e = run_lathe("export " + sh_quote(tmp / "run") + " --out " + sh_quote(tmp / "hf"));
  ASSERT_EQ(e.rc, 0) << e.out;
  const json config = read_json(tmp / "hf/config.json");
  EXPECT_EQ(config.value("model_type", ""), "gpt2");
  for (const char* k : {"bos_token_id", "eos_token_id", "pad_token_id"}) {
    EXPECT_FALSE(config.contains(k)) << k;
    EXPECT_FALSE(read_json(tmp / "hf/generation_config.json").contains(k)) << k;
  }
  EXPECT_FALSE(fs::exists(tmp / "hf/tokenizer.json"));
  EXPECT_FALSE(fs::exists(tmp / "hf/tokenizer_config.json"));
  EXPECT_TRUE(contains(e.out, "bos none, eos none, pad none")) << e.out;
}

double json_loss(const Result& r) {
  const size_t at = r.out.rfind("{\"checkpoint\"");
  if (at == std::string::npos) {
    ADD_FAILURE() << "no JSON line in: " << r.out;
    return 0;
  }
  return json::parse(r.out.substr(at)).at("loss").get<double>();
}

// lathe eval and generate take the exported directory itself: the loss is the lathe
// checkpoint's to the last bit (f32 export, same data), and greedy text is the same.
TEST(CliHfInterchange, EvalAndGenerateOnAHuggingFaceDirectory) {
  TmpDir tmp;
  const std::string corpus = write_corpus(tmp);
  data::train_bpe({corpus}, 320, {"<|endoftext|>"}, tmp / "trained.json");
  write_gpt2_files(tmp / "trained.json", tmp / "gpt2tok");
  const std::string cfg =
      write_config(tmp, "run",
                   "data { source: TEXT path: \"" + corpus + "\" tokenizer: \"" + tmp / "gpt2tok" + "\" }", 3,
                   "arch: LLAMA n_layer: 2 n_head: 2 d_model: 32 max_seq_len: 64 tie_embeddings: false");
  Result t = run_lathe("train " + sh_quote(cfg));
  ASSERT_EQ(t.rc, 0) << t.out;
  Result e = run_lathe("export " + sh_quote(tmp / "run") + " --out " + sh_quote(tmp / "hf"));
  ASSERT_EQ(e.rc, 0) << e.out;

  Result lathe_ev = run_lathe("eval " + sh_quote(tmp / "run") + " --batches 2 --json");
  ASSERT_EQ(lathe_ev.rc, 0) << lathe_ev.out;
  const double want = json_loss(lathe_ev);
  EXPECT_GT(want, 1.0);
  // The run's config supplies the data; the HF directory the model.
  Result with_cfg = run_lathe("eval " + sh_quote(cfg) + " --checkpoint " + sh_quote(tmp / "hf") + " --batches 2 --json");
  ASSERT_EQ(with_cfg.rc, 0) << with_cfg.out;
  EXPECT_EQ(json_loss(with_cfg), want) << with_cfg.out;
  EXPECT_TRUE(contains(with_cfg.out, "\"step\":0")) << with_cfg.out;
  // The directory alone, the data given by --set (same split: same defaults); text output at
  // full precision reads back as the same double.
  const std::string sets = " --set data.source=TEXT --set data.path=" + sh_quote(corpus) +
                           " --set train.seq_len=64 --set train.micro_batch=4 --batches 2";
  Result alone = run_lathe("eval " + sh_quote(tmp / "hf") + sets);
  ASSERT_EQ(alone.rc, 0) << alone.out;
  const size_t at = alone.out.find("val loss:");
  ASSERT_NE(at, std::string::npos) << alone.out;
  EXPECT_EQ(std::stod(alone.out.substr(at + 9)), want) << alone.out;
  EXPECT_EQ(run_lathe("eval " + sh_quote(tmp / "hf") + " --checkpoint 3" + sets).rc, 2);  // no steps to pick

  const std::string args = " --prompt 'ROMEO:' --max-new-tokens 12 --temperature 0";
  Result g_run = run_lathe("generate " + sh_quote(tmp / "run") + args);
  Result g_hf = run_lathe("generate " + sh_quote(tmp / "hf") + args);
  ASSERT_EQ(g_run.rc, 0) << g_run.out;
  ASSERT_EQ(g_hf.rc, 0) << g_hf.out;
  EXPECT_EQ(g_hf.out, g_run.out);
  EXPECT_GT(g_hf.out.size(), std::string("ROMEO:\n").size());
  EXPECT_EQ(g_hf.out.rfind("ROMEO:", 0), 0u) << g_hf.out;
}

}  // namespace
}  // namespace lathe::cli_test
