// The trainer on real data and pretrained weights: prepared HDF5 shards (plain and
// instruction), JSONL prepared on the fly, the response-only loss of instruction data,
// exact resume on instruction data, tokenizer identity checks, and model.init_from from a
// Hugging Face directory or a lathe checkpoint.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "autograd/autograd.h"
#include "configs/config.h"
#include "data/bpe_train.h"
#include "data/prepare.h"
#include "data/shards.h"
#include "data/synthetic.h"
#include "models/hf_export.h"
#include "models/hf_import.h"
#include "tests/common/test_helpers.h"
#include "tests/train/trainer_test_util.h"
#include "train/batches.h"
#include "train/checkpoint.h"
#include "train/checkpoint_dir.h"
#include "train/init_from.h"
#include "train/run_setup.h"
#include "train/trainer.h"

namespace lathe::train {
namespace {

namespace fs = std::filesystem;
using test::TmpDir;
using test::write_file;

TrainOptions quiet() {
  TrainOptions o;
  o.out = nullptr;
  return o;
}

// A 2-layer byte-level GPT-2 over `data_section`; T = 64 so that instruction samples with
// the default template (33 bytes of headers) keep their responses.
const char* const kModel = "arch: GPT2 n_layer: 2 n_head: 2 d_model: 32 max_seq_len: 64 dropout: 0";
RunConfig data_config(const std::string& run_dir, const std::string& data_section, int steps = 4,
                      const std::string& model = kModel) {
  return configs::parse_text("name: \"d\"\nrun_dir: \"" + run_dir +
                                 "\"\n"
                                 "model { " + model + " }\n" + data_section +
                                 "\noptimizer { lr: 3e-3 }\n"
                                 "train { steps: " + std::to_string(steps) +
                                 " micro_batch: 4 seq_len: 64 eval_batches: 2 log_interval: 1 }\n"
                                 "checkpoint { interval: 2 keep_last: 0 }\n"
                                 "logging { progress: NONE }\n"
                                 "parallel { threads_per_rank: 1 }\n",
                             "test");
}

// Records whose prompts and responses differ in length, so the mask matters.
std::string write_instructions(const std::string& path, int n = 40) {
  std::string text;
  for (int i = 0; i < n; ++i) {
    const int a = i % 7, b = (3 * i) % 11;
    text += "{\"prompt\": \"What is " + std::to_string(a) + " + " + std::to_string(b) + std::string(i % 3, '?') +
            "\", \"response\": \"" + std::to_string(a) + " + " + std::to_string(b) + " = " + std::to_string(a + b) +
            "\"}\n";
  }
  write_file(path, text);
  return path;
}

std::string write_text(const std::string& path) {
  write_file(path, data::synthetic_corpus(3, 24000));
  return path;
}

data::PrepareStats prepare_to(const std::string& input, const std::string& out, const std::string& tokenizer = "byte",
                              double val_fraction = 0.1) {
  data::PrepareOptions o;
  o.inputs = {input};
  o.output_dir = out;
  o.tokenizer = tokenizer;
  o.val_fraction = val_fraction;
  o.quiet = true;
  return data::prepare(o);
}

// The run's first training batch, as the trainer draws it.
data::LMBatch first_batch(RunConfig cfg) {
  configs::resolve(cfg);
  auto tok = load_run_tokenizer(cfg);
  apply_tokenizer_vocab(cfg, *tok);
  RunData data = load_run_data(cfg, *tok);
  data::LMLoaderOptions lo;
  lo.micro_batch = cfg.train().micro_batch();
  lo.seed = cfg.train().seed();
  lo.shuffle = cfg.data().shuffle();
  TrainBatches loader(data, lo);
  return loader.next();
}

// Mean of -log softmax(logits[b, t])[target] over the (b, t) with target != -100, in f64.
double reference_loss(const Tensor& logits, const std::vector<int64_t>& targets) {
  const int64_t V = logits.size(2), N = logits.size(0) * logits.size(1);
  std::vector<float> l = logits.contiguous().to_vector<float>();
  double sum = 0;
  int64_t n = 0;
  for (int64_t i = 0; i < N; ++i) {
    if (targets[i] == -100) continue;
    const float* row = l.data() + i * V;
    double mx = row[0];
    for (int64_t v = 1; v < V; ++v) mx = std::max<double>(mx, row[v]);
    double z = 0;
    for (int64_t v = 0; v < V; ++v) z += std::exp(row[v] - mx);
    sum += -(row[targets[i]] - mx - std::log(z));
    ++n;
  }
  EXPECT_GT(n, 0);
  return sum / static_cast<double>(n);
}

TEST(TrainerData, PlainHdf5ShardsTrainOnPackedWindowsOfTheTrainSplit) {
  TmpDir tmp;
  prepare_to(write_text(tmp / "corpus.txt"), tmp / "prepared", "byte", 0.0);
  const std::string data = "data { source: HDF5 path: \"" + tmp / "prepared" + "\" val_fraction: 0.1 }";
  RunConfig cfg = data_config(tmp / "run", data);
  TrainResult r = train(cfg, quiet());
  ASSERT_TRUE(r.finished);
  // The packed windows are those of the raw text: step 1's loss is the fresh model's loss on
  // the first batch of an LMLoader over the byte tokens of the file.
  data::LMBatch b = first_batch(cfg);
  std::vector<int64_t> ids = b.ids.to_vector<int64_t>();
  const std::string text = data::synthetic_corpus(3, 24000);
  for (int64_t row = 0; row < b.ids.size(0); ++row)
    for (int64_t t = 0; t < 64; ++t)
      ASSERT_EQ(ids[row * 64 + t], static_cast<unsigned char>(text[b.windows[row] * 64 + t])) << row << " " << t;
  RunConfig rc = cfg;
  configs::resolve(rc);
  auto model = models::build_model(model_spec(rc.model()), rc.train().seed());
  EXPECT_NEAR(r.steps[0].loss, model->loss(b.ids, b.targets).item(), 1e-6);
  // Without a prepared val split, the last val_fraction of the windows is held out.
  ASSERT_FALSE(r.evals.empty());
  EXPECT_GT(r.evals.back().result.tokens, 0);
}

TEST(TrainerData, InstructionShardsCountOnlyResponseTokens) {
  TmpDir tmp;
  prepare_to(write_instructions(tmp / "qa.jsonl"), tmp / "prepared");
  const data::ShardSet shards = data::open_shards(tmp / "prepared", "train", "byte");
  ASSERT_TRUE(shards.has_loss_mask());
  const std::string data = "data { source: HDF5 path: \"" + tmp / "prepared" + "\" }";
  RunConfig cfg = data_config(tmp / "run", data, 2);
  TrainResult r = train(cfg, quiet());
  ASSERT_TRUE(r.finished);
  ASSERT_FALSE(r.evals.empty());  // the prepared val split

  // Rebuild the first batch's targets from the raw shard: position t of document d is
  // trained on token t+1 exactly when that token is a response token (mask 1).
  data::LMBatch b = first_batch(cfg);
  RunConfig rc = cfg;
  configs::resolve(rc);
  RunData rd = load_run_data(rc, *data::load_tokenizer("byte"));
  ASSERT_TRUE(rd.instruction);
  std::vector<int64_t> expect_targets, all_targets;
  const int64_t T = 64;
  for (size_t row = 0; row < b.windows.size(); ++row) {
    const int64_t d = rd.train_instr.document(b.windows[row]);
    const auto [begin, end] = shards.document(d);
    for (int64_t t = 0; t < T; ++t) {
      const int64_t j = begin + t + 1;
      const bool in_doc = j < end;
      expect_targets.push_back(in_doc && (*shards.loss_mask)[j] ? (*shards.tokens)[j] : -100);
      all_targets.push_back(in_doc ? (*shards.tokens)[j] : -100);
    }
  }
  ASSERT_EQ(b.targets.to_vector<int64_t>(), expect_targets);
  auto model = models::build_model(model_spec(rc.model()), rc.train().seed());
  Tensor logits;
  {
    autograd::NoGradGuard ng;
    logits = model->forward(b.ids);
  }
  const double masked = reference_loss(logits, expect_targets), full = reference_loss(logits, all_targets);
  EXPECT_NEAR(r.steps[0].loss, masked, 1e-5 * masked);
  // The prompt tokens would change it: the masked loss is a different number.
  EXPECT_GT(std::abs(full - masked), 1e-3) << full << " vs " << masked;

  // mask_prompt off trains on every token of the documents.
  RunConfig all = data_config(tmp / "run_all", data + "", 1);
  all.mutable_data()->set_mask_prompt(false);
  TrainResult ra = train(all, quiet());
  EXPECT_NEAR(ra.steps[0].loss, full, 1e-5 * full);
}

TEST(TrainerData, ResumeOnInstructionDataIsBitwiseIdentical) {
  TmpDir tmp;
  prepare_to(write_instructions(tmp / "qa.jsonl"), tmp / "prepared");
  // 32 train samples / micro-batch 4: 6 steps do not cross the epoch in the same place as
  // the stop, so the loader position (epoch, index) must be restored exactly.
  const std::string data = "data { source: HDF5 path: \"" + tmp / "prepared" + "\" }";
  TrainResult a = train(data_config(tmp / "straight", data, 11), quiet());
  TrainOptions stop = quiet();
  stop.stop_after = 5;
  TrainResult b1 = train(data_config(tmp / "stopped", data, 11), stop);
  EXPECT_EQ(b1.end_step, 5);
  TrainResult b2 = train(data_config(tmp / "stopped", data, 11), quiet());
  EXPECT_EQ(b2.start_step, 5);
  ASSERT_TRUE(b2.finished);
  std::vector<double> la, lb;
  for (const auto& s : a.steps) la.push_back(s.loss);
  for (const auto& s : b1.steps) lb.push_back(s.loss);
  for (const auto& s : b2.steps) lb.push_back(s.loss);
  EXPECT_EQ(la, lb);  // bitwise
  test_util::expect_same_tensors(rank_file(step_dir(tmp / "straight/checkpoints", 11), 0),
                                 rank_file(step_dir(tmp / "stopped/checkpoints", 11), 0));
  // The stored data position is past the first epoch (8 batches of 4).
  EXPECT_EQ(read_train_state(rank_file(step_dir(tmp / "stopped/checkpoints", 11), 0)).loader.epoch, 1);
}

TEST(TrainerData, JsonlSourceEqualsPreparingItFirst) {
  TmpDir tmp;
  const std::string jsonl = write_instructions(tmp / "qa.jsonl");
  RunConfig j = data_config(tmp / "jsonl_run",
                            "data { source: JSONL path: \"" + jsonl + "\" format: PROMPT_RESPONSE val_fraction: 0.1 }", 3);
  TrainResult rj = train(j, quiet());
  ASSERT_TRUE(rj.finished);
  EXPECT_TRUE(fs::exists(tmp / "jsonl_run/data/index.json"));
  // The same records prepared by hand with the run's seed and val fraction.
  data::PrepareOptions o;
  o.inputs = {jsonl};
  o.output_dir = tmp / "by_hand";
  o.val_fraction = 0.1;
  o.seed = 1337;  // train.seed's default
  o.quiet = true;
  data::prepare(o);
  TrainResult rh = train(data_config(tmp / "hdf5_run", "data { source: HDF5 path: \"" + tmp / "by_hand" + "\" }", 3),
                         quiet());
  ASSERT_EQ(rj.steps.size(), rh.steps.size());
  for (size_t i = 0; i < rj.steps.size(); ++i) EXPECT_EQ(rj.steps[i].loss, rh.steps[i].loss) << i;
  ASSERT_EQ(rj.evals.size(), 1u);
  EXPECT_EQ(rj.evals[0].result.loss, rh.evals[0].result.loss);

  // A record of the wrong kind names the file and line.
  write_file(tmp / "bad.jsonl", "{\"prompt\": \"a\", \"response\": \"b\"}\n{\"text\": \"plain\"}\n");
  RunConfig bad = data_config(tmp / "bad_run",
                              "data { source: JSONL path: \"" + tmp / "bad.jsonl" + "\" format: PROMPT_RESPONSE }", 1);
  const std::string msg = test::error_of([&] { train(bad, quiet()); });
  EXPECT_NE(msg.find("bad.jsonl:2"), std::string::npos) << msg;
}

// data.val_path: a separate prepared directory (without a val split: its train split) or a
// separate JSONL file; every scored token of it is evaluated.
TEST(TrainerData, ValPathIsASeparateSet) {
  TmpDir tmp;
  const std::string a = write_instructions(tmp / "a.jsonl", 40);
  write_file(tmp / "b.jsonl", "{\"prompt\": \"Name a colour\", \"response\": \"blue\"}\n"
                             "{\"prompt\": \"Say hi\", \"response\": \"hi there\"}\n"
                             "{\"prompt\": \"Count to 3\", \"response\": \"1 2 3\"}\n");
  prepare_to(a, tmp / "train_set", "byte", 0.0);
  prepare_to(tmp / "b.jsonl", tmp / "val_set", "byte", 0.0);
  // Scored targets of the val set: its response tokens (no EOS with the byte tokenizer).
  const int64_t expected = 4 + 8 + 5;
  RunConfig h = data_config(tmp / "hrun", "data { source: HDF5 path: \"" + tmp / "train_set" + "\" val_path: \"" +
                                               tmp / "val_set" + "\" }", 1);
  h.mutable_train()->set_eval_batches(0);  // all
  TrainResult rh = train(h, quiet());
  ASSERT_EQ(rh.evals.size(), 1u);
  EXPECT_EQ(rh.evals[0].result.tokens, expected);
  RunConfig j = data_config(tmp / "jrun", "data { source: JSONL path: \"" + a + "\" val_path: \"" + tmp / "b.jsonl" +
                                               "\" format: PROMPT_RESPONSE }", 1);
  j.mutable_train()->set_eval_batches(0);
  TrainResult rj = train(j, quiet());
  ASSERT_EQ(rj.evals.size(), 1u);
  EXPECT_EQ(rj.evals[0].result.tokens, expected);
  // The same training documents in the same order and the same validation set.
  EXPECT_EQ(rj.steps[0].loss, rh.steps[0].loss);
  EXPECT_EQ(rj.evals[0].result.loss, rh.evals[0].result.loss);
}

TEST(TrainerData, ShardsOfAnotherTokenizerAreAConfigError) {
  TmpDir tmp;
  prepare_to(write_text(tmp / "corpus.txt"), tmp / "prepared", "byte", 0.0);
  data::train_bpe({tmp / "corpus.txt"}, 300, {"<|endoftext|>"}, tmp / "tok.json");
  RunConfig cfg = data_config(tmp / "run", "data { source: HDF5 path: \"" + tmp / "prepared" + "\" tokenizer: \"" +
                                               tmp / "tok.json" + "\" }");
  try {
    train(cfg, quiet());
    FAIL() << "expected a ConfigError";
  } catch (const configs::ConfigError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("data.path"), std::string::npos) << m;
    EXPECT_NE(m.find("tokenized with tokenizer 'byte'"), std::string::npos) << m;
    EXPECT_NE(m.find(data::load_tokenizer(tmp / "tok.json")->id()), std::string::npos) << m;
  }
  // data.format asks for instruction data but the shards are plain.
  RunConfig plain = data_config(tmp / "run2", "data { source: HDF5 path: \"" + tmp / "prepared" + "\" format: ALPACA }");
  const std::string m = test::error_of([&] { train(plain, quiet()); });
  EXPECT_NE(m.find("data.format: ALPACA"), std::string::npos) << m;
}

// Fine-tuning: an HF export of a lathe checkpoint and the checkpoint itself start from the
// same weights, so the first logged loss (computed before any update) is the same, and it is
// the checkpoint's model evaluated on the first batch.
TEST(TrainerData, InitFromHfExportAndLatheCheckpointGiveTheSameInitialLoss) {
  TmpDir tmp;
  const std::string jsonl = write_instructions(tmp / "qa.jsonl");
  TrainResult base = train(data_config(tmp / "base", "data { source: SYNTHETIC synthetic { bytes: 20000 } }", 3), quiet());
  ASSERT_TRUE(base.finished);
  const std::string ckpt = rank_file(step_dir(tmp / "base/checkpoints", 3), 0);
  {
    RunConfig bc = data_config(tmp / "base", "data { source: SYNTHETIC synthetic { bytes: 20000 } }", 3);
    configs::resolve(bc);
    auto m = models::build_model(model_spec(bc.model()), 1);
    read_rank_checkpoint(ckpt, *m, nullptr);
    models::save_hf_model(*m, tmp / "hf");
  }
  // The fine-tuning config's own (different) model fields are ignored.
  const std::string ft_data = "data { source: JSONL path: \"" + jsonl + "\" format: PROMPT_RESPONSE tokenizer: \"byte\" }";
  RunConfig from_hf = data_config(tmp / "ft_hf", ft_data, 2,
                                  "arch: LLAMA n_layer: 5 d_model: 48 dropout: 0 init_from: \"" + tmp / "hf" + "\"");
  RunConfig from_lathe = data_config(tmp / "ft_lathe", ft_data, 2, "dropout: 0 init_from: \"" + tmp / "base" + "\"");
  TrainResult a = train(from_hf, quiet()), b = train(from_lathe, quiet());
  EXPECT_NE(a.init_from.find("Hugging Face gpt2 model"), std::string::npos) << a.init_from;
  EXPECT_NE(b.init_from.find("lathe checkpoint " + ckpt), std::string::npos) << b.init_from;
  EXPECT_EQ(a.num_parameters, base.num_parameters);
  EXPECT_EQ(a.steps[0].loss, b.steps[0].loss);  // f32 export is exact
  EXPECT_EQ(a.steps[1].loss, b.steps[1].loss);

  // The checkpoint's model on the same first batch.
  RunConfig fc = from_lathe;
  apply_init_from(fc);
  data::LMBatch batch = first_batch(fc);
  RunConfig bc = data_config(tmp / "base", "data { source: SYNTHETIC }");
  configs::resolve(bc);
  auto m = models::build_model(model_spec(bc.model()), 99);
  read_rank_checkpoint(ckpt, *m, nullptr);
  EXPECT_NEAR(a.steps[0].loss, m->loss(batch.ids, batch.targets).item(), 1e-6);
  // A fresh model (no init_from) starts elsewhere.
  RunConfig fresh = data_config(tmp / "fresh", ft_data, 1);
  EXPECT_GT(std::abs(train(fresh, quiet()).steps[0].loss - a.steps[0].loss), 1e-3);

  // The stored config carries the source's architecture, so eval-style loading works without
  // re-reading the source; resuming does not load the source weights again.
  RunConfig stored = configs::parse_text(read_train_state(rank_file(step_dir(tmp / "ft_hf/checkpoints", 2), 0)).config_text, "s");
  EXPECT_EQ(stored.model().n_layer(), 2);
  EXPECT_EQ(stored.model().d_model(), 32);
  RunConfig more = from_hf;
  more.mutable_train()->set_steps(3);
  TrainResult c = train(more, quiet());
  EXPECT_EQ(c.start_step, 2);
  EXPECT_EQ(c.init_from, "");
}

TEST(TrainerData, InitFromResolvesTheTokenizerAndRejectsBadSources) {
  TmpDir tmp;
  models::ModelSpec s;
  s.vocab_size = 300;
  s.n_layer = 1;
  s.d_model = 16;
  s.n_head = 2;
  s.max_seq_len = 48;
  auto m = models::build_model(s, 5);
  models::save_hf_model(*m, tmp / "hf");
  RunConfig cfg = data_config(tmp / "run", "data { source: SYNTHETIC }", 1,
                              std::string(kModel) + " init_from: \"" + tmp / "hf" + "\"");
  cfg.mutable_train()->clear_seq_len();
  // No tokenizer in the directory: "auto" cannot be resolved.
  {
    RunConfig c = cfg;
    const std::string msg = test::error_of([&] { apply_init_from(c); });
    EXPECT_NE(msg.find("data.tokenizer: \"auto\""), std::string::npos) << msg;
  }
  write_text(tmp / "corpus.txt");
  data::train_bpe({tmp / "corpus.txt"}, 300, {"<|endoftext|>"}, tmp / "hf/tokenizer.json");
  RunConfig c = cfg;
  InitSource src = apply_init_from(c);
  EXPECT_EQ(src.kind, InitSource::Kind::hugging_face);
  EXPECT_EQ(c.data().tokenizer(), tmp / "hf");
  EXPECT_EQ(c.train().seq_len(), 48);  // the source's context
  EXPECT_EQ(c.model().n_layer(), 1);
  EXPECT_EQ(c.model().vocab_size(), 300);
  ASSERT_FALSE(src.notes.empty());
  EXPECT_NE(src.notes[0].find("n_layer 2 -> 1"), std::string::npos) << src.notes[0];
  // train.seq_len longer than the source's context.
  RunConfig longer = cfg;
  longer.mutable_train()->set_seq_len(64);
  EXPECT_NE(test::error_of([&] { apply_init_from(longer); }).find("train.seq_len: 64"), std::string::npos);
  // A path that is neither kind.
  RunConfig none = cfg;
  none.mutable_model()->set_init_from(tmp / "nothing");
  EXPECT_NE(test::error_of([&] { apply_init_from(none); }).find("model.init_from"), std::string::npos);
  fs::create_directories(tmp / "empty");
  none.mutable_model()->set_init_from(tmp / "empty");
  EXPECT_NE(test::error_of([&] { apply_init_from(none); }).find("neither a Hugging Face"), std::string::npos);
}

}  // namespace
}  // namespace lathe::train
