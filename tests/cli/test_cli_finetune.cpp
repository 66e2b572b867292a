// The data and fine-tuning subcommands end to end: lathe tokenizer train, prepare, export and
// finetune, with their exit codes.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>

#include "data/bpe_train.h"
#include "data/prepare.h"
#include "data/shards.h"
#include "data/tokenizer.h"
#include "models/hf_config.h"
#include "models/hf_import.h"
#include "tests/cli/cli_test_util.h"
#include "tests/common/test_helpers.h"
#include "train/checkpoint.h"
#include "train/checkpoint_dir.h"
#include "train/hdf5_io.h"

namespace lathe::cli_test {
namespace {

namespace fs = std::filesystem;
using test::read_file;
using test::TmpDir;
using test::write_file;

using test::contains;

TEST(CliData, TokenizerTrainWritesATokenizerThatLoads) {
  TmpDir tmp;
  const std::string corpus = write_corpus(tmp), out = tmp / "sub/dir/tokenizer.json";
  Result r = run_lathe("tokenizer train --input " + sh_quote(corpus) + " --vocab-size 400 --special '<|endoftext|>' --out " +
                       sh_quote(out));
  ASSERT_EQ(r.rc, 0) << r.out;
  auto tok = data::load_tokenizer(out);
  EXPECT_EQ(tok->vocab_size(), 400);
  EXPECT_EQ(tok->token_to_id("<|endoftext|>"), std::optional<int32_t>(399));  // specials come last
  EXPECT_EQ(tok->eos_id(), std::optional<int32_t>(399));
  const std::string text = "ROMEO: But soft, what light through yonder window breaks?";
  const std::vector<int32_t> ids = tok->encode(text);
  EXPECT_EQ(tok->decode(ids), text);
  EXPECT_LT(ids.size(), text.size());  // merges were learned
  EXPECT_TRUE(contains(r.out, tok->id())) << r.out;
  // The file is the library's output for the same options, byte for byte.
  data::BpeTrainOptions o;
  o.vocab_size = 400;
  o.special_tokens = {"<|endoftext|>"};
  EXPECT_EQ(read_file(out), data::train_bpe_json({corpus}, o));

  EXPECT_EQ(run_lathe("tokenizer train --input " + sh_quote(corpus) + " --out " + sh_quote(out)).rc, 2);  // no size
  EXPECT_EQ(run_lathe("tokenizer train --input " + sh_quote(corpus) + " --vocab-size 100 --out " + sh_quote(out)).rc, 2);
  EXPECT_EQ(run_lathe("tokenizer train --input " + sh_quote(tmp / "missing.txt") + " --vocab-size 300 --out " +
                      sh_quote(out)).rc,
            3);
  Result typo = run_lathe("tokenizer trian --input x");
  EXPECT_EQ(typo.rc, 2);
  EXPECT_TRUE(contains(typo.out, "did you mean 'train'")) << typo.out;
}

TEST(CliData, PrepareThenTrainAndTokenizerMismatchIsExit2) {
  TmpDir tmp;
  const std::string corpus = write_corpus(tmp), prepared = tmp / "prepared";
  Result p = run_lathe("prepare " + sh_quote(corpus) + " --out " + sh_quote(prepared) +
                       " --split blank_lines --val-fraction 0.1 --seed 3 --shard-tokens 20000");
  ASSERT_EQ(p.rc, 0) << p.out;
  EXPECT_TRUE(contains(p.out, "prepare: 1 file")) << p.out;
  const data::ShardSet train = data::open_shards(prepared, "train", "byte");
  const data::ShardSet val = data::open_shards(prepared, "val", "byte");
  EXPECT_GE(train.files.size(), 2u);  // ~54k tokens in shards of >= 20000
  // Documents are the paragraphs; with the byte tokenizer (no EOS) a document's tokens are its bytes.
  const std::vector<std::string> docs = data::split_text_documents(read_file(corpus), data::TextSplit::kBlankLines);
  int64_t bytes = 0;
  for (const auto& d : docs) bytes += static_cast<int64_t>(d.size());
  EXPECT_EQ(train.num_documents() + val.num_documents(), static_cast<int64_t>(docs.size()));
  EXPECT_EQ(train.num_tokens() + val.num_tokens(), bytes);
  EXPECT_EQ(val.num_documents(), std::llround(0.1 * static_cast<double>(docs.size())));
  const std::string data = "data { source: HDF5 path: \"" + prepared + "\" }";
  Result t = run_lathe("train " + sh_quote(write_config(tmp, "hdf5", data, 2)));
  ASSERT_EQ(t.rc, 0) << t.out;
  EXPECT_TRUE(contains(t.out, "prepared data " + prepared)) << t.out;
  EXPECT_EQ(metrics_losses(tmp / "hdf5/metrics.jsonl").size(), 2u);

  // The same shards with a BPE tokenizer: refused, exit code 2, both tokenizers named.
  data::train_bpe({corpus}, 300, {}, tmp / "bpe.json");
  Result mismatch = run_lathe("train " + sh_quote(write_config(tmp, "mismatch", data, 2)) + " --set data.tokenizer=" +
                              sh_quote(tmp / "bpe.json"));
  EXPECT_EQ(mismatch.rc, 2) << mismatch.out;
  EXPECT_TRUE(contains(mismatch.out, "tokenized with tokenizer 'byte'")) << mismatch.out;
  EXPECT_TRUE(contains(mismatch.out, data::load_tokenizer(tmp / "bpe.json")->id())) << mismatch.out;

  EXPECT_EQ(run_lathe("prepare " + sh_quote(tmp / "nope.txt") + " --out " + sh_quote(tmp / "x")).rc, 3);
  EXPECT_EQ(run_lathe("prepare " + sh_quote(corpus) + " --out " + sh_quote(tmp / "x") + " --format csv").rc, 2);
  EXPECT_EQ(run_lathe("prepare " + sh_quote(corpus)).rc, 2);  // no --out
  EXPECT_EQ(run_lathe("prepare " + sh_quote(corpus) + " --out " + sh_quote(tmp / "x") + " --tokenizer nowhere.json").rc, 2);
}

// lathe export writes exactly the checkpoint's weights in the HF layout (f32 bit for bit; bf16
// rounded to nearest even), sharded or not, with the run's tokenizer beside them.
TEST(CliData, ExportImportIsTheIdentity) {
  TmpDir tmp;
  const std::string corpus = write_corpus(tmp);
  data::train_bpe({corpus}, 320, {"<|endoftext|>"}, tmp / "tok.json");
  const std::string cfg = write_config(tmp, "run", "data { source: TEXT path: \"" + corpus + "\" tokenizer: \"" +
                                                       tmp / "tok.json" + "\" }",
                                       3, "arch: LLAMA n_layer: 2 n_head: 4 n_kv_head: 2 d_model: 32 max_seq_len: 64 "
                                          "tie_embeddings: false qkv_bias: true");
  Result t = run_lathe("train " + sh_quote(cfg));
  ASSERT_EQ(t.rc, 0) << t.out;
  Result e = run_lathe("export --checkpoint " + sh_quote(tmp / "run") + " --out " + sh_quote(tmp / "hf"));
  ASSERT_EQ(e.rc, 0) << e.out;
  EXPECT_EQ(read_file(tmp / "hf/tokenizer.json"), read_file(tmp / "tok.json"));
  EXPECT_EQ(models::read_hf_config(tmp / "hf").model_type, "qwen2");  // q/k/v biases only
  const std::string ckpt = train::rank_file(train::step_dir(tmp / "run/checkpoints", 3), 0);
  train::H5Reader r(ckpt);
  auto check = [&](const std::string& dir, bool bf16) {
    SCOPED_TRACE(dir);
    auto m = models::load_hf_model(dir);
    int n = 0;
    for (const auto& [name, p] : m->named_parameters()) {
      std::vector<float> want = r.read_tensor("model/" + name).to_vector<float>(), got = p.to_vector<float>();
      ASSERT_EQ(want.size(), got.size()) << name;
      for (size_t i = 0; i < want.size(); ++i) {
        const float w = bf16 ? to_f32(from_f32<bf16_t>(want[i])) : want[i];
        ASSERT_EQ(std::memcmp(&w, &got[i], sizeof(float)), 0) << name << "[" << i << "]: " << w << " vs " << got[i];
      }
      ++n;
    }
    EXPECT_EQ(n, static_cast<int>(r.list_datasets("model").size()));
  };
  check(tmp / "hf", false);
  Result half = run_lathe("export " + sh_quote(tmp / "run") + " --out " + sh_quote(tmp / "hf_bf16") + " --dtype bf16");
  ASSERT_EQ(half.rc, 0) << half.out;
  EXPECT_EQ(models::read_hf_config(tmp / "hf_bf16").torch_dtype, "bfloat16");
  check(tmp / "hf_bf16", true);
  EXPECT_EQ(run_lathe("export --checkpoint " + sh_quote(tmp / "run") + " --out " + sh_quote(tmp / "x") + " --dtype f64").rc, 2);
  EXPECT_EQ(run_lathe("export --checkpoint " + sh_quote(tmp / "nothing") + " --out " + sh_quote(tmp / "x")).rc, 3);
  EXPECT_EQ(run_lathe("export --checkpoint " + sh_quote(tmp / "run")).rc, 2);  // no --out
}

// Fine-tuning an exported model on instruction JSONL through the CLI.
TEST(CliData, FinetuneFromAnExportedHfDirectory) {
  TmpDir tmp;
  const std::string corpus = write_corpus(tmp);
  Result tk = run_lathe("tokenizer train --input " + sh_quote(corpus) + " --vocab-size 300 --special '<|endoftext|>' --out " +
                        sh_quote(tmp / "tok/tokenizer.json"));
  ASSERT_EQ(tk.rc, 0) << tk.out;
  Result base = run_lathe("train " + sh_quote(write_config(tmp, "base", "data { source: TEXT path: \"" + corpus +
                                                                            "\" tokenizer: \"" + tmp / "tok/tokenizer.json" + "\" }",
                                                           2)));
  ASSERT_EQ(base.rc, 0) << base.out;
  Result ex = run_lathe("export --checkpoint " + sh_quote(tmp / "base") + " --out " + sh_quote(tmp / "hf"));
  ASSERT_EQ(ex.rc, 0) << ex.out;
  std::string records;
  for (int i = 0; i < 30; ++i)
    records += "{\"prompt\": \"What is " + std::to_string(i) + " + 1?\", \"response\": \"" + std::to_string(i + 1) + "\"}\n";
  write_file(tmp / "qa.jsonl", records);
  const std::string data = "data { source: JSONL path: \"" + tmp / "qa.jsonl" + "\" format: PROMPT_RESPONSE }";
  // Another architecture in the config: ignored with a note.
  const std::string cfg = write_config(tmp, "ft", data, 2, "arch: LLAMA n_layer: 3 dropout: 0.0");

  Result no_init = run_lathe("finetune " + sh_quote(cfg));
  EXPECT_EQ(no_init.rc, 2) << no_init.out;
  EXPECT_TRUE(contains(no_init.out, "has no model.init_from")) << no_init.out;

  Result ft = run_lathe("finetune " + sh_quote(cfg) + " --init-from " + sh_quote(tmp / "hf"));
  ASSERT_EQ(ft.rc, 0) << ft.out;
  EXPECT_TRUE(contains(ft.out, "init: weights loaded from Hugging Face gpt2 model " + tmp / "hf")) << ft.out;
  EXPECT_TRUE(contains(ft.out, "arch LLAMA -> GPT2")) << ft.out;
  EXPECT_TRUE(contains(ft.out, "instruction data")) << ft.out;
  EXPECT_TRUE(contains(ft.out, "tokenizer " + tmp / "hf")) << ft.out;  // "auto" -> the HF directory
  EXPECT_EQ(metrics_losses(tmp / "ft/metrics.jsonl").size(), 2u);
  // eval and generate read the fine-tuned run without the source.
  Result ev = run_lathe("eval " + sh_quote(tmp / "ft"));
  EXPECT_EQ(ev.rc, 0) << ev.out;
  EXPECT_TRUE(contains(ev.out, "val loss:")) << ev.out;
  Result gen = run_lathe("generate " + sh_quote(tmp / "ft") + " --prompt 'What' --max-new-tokens 4");
  EXPECT_EQ(gen.rc, 0) << gen.out;
  // A path that is neither an HF directory nor a checkpoint: config error.
  Result bad = run_lathe("finetune " + sh_quote(cfg) + " --init-from " + sh_quote(tmp / "tok") + " --set run_dir=" +
                         sh_quote(tmp / "ft2"));
  EXPECT_EQ(bad.rc, 2) << bad.out;
  EXPECT_TRUE(contains(bad.out, "model.init_from")) << bad.out;
}

}  // namespace
}  // namespace lathe::cli_test
