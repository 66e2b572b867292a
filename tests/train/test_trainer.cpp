// The trainer in-process: exact resume, determinism, gradient accumulation, schedule,
// evaluation, signals, checkpoint contents and the errors a user sees.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "autograd/autograd.h"
#include "configs/config.h"
#include "data/lm_dataset.h"
#include "data/synthetic.h"
#include "optim/schedule.h"
#include "parallel/single_process_communicator.h"
#include "tests/common/test_helpers.h"
#include "tests/train/trainer_test_util.h"
#include "train/checkpoint.h"
#include "train/checkpoint_dir.h"
#include "train/hdf5_io.h"
#include "train/run_setup.h"
#include "train/tensorboard.h"
#include "train/trainer.h"

namespace lathe::train {
namespace {

namespace fs = std::filesystem;
using test::TmpDir;
using test_util::tiny_config;

TrainOptions quiet() {
  TrainOptions o;
  o.out = nullptr;
  return o;
}

std::vector<double> losses_of(const std::vector<TrainResult>& parts) {
  std::vector<double> out;
  for (const auto& r : parts)
    for (const auto& s : r.steps) out.push_back(s.loss);
  return out;
}

TEST(Trainer, ResumeContinuesTheExactLossCurve) {
  TmpDir tmp;
  const std::string a_dir = tmp / "straight", b_dir = tmp / "stopped";
  TrainResult a = train(tiny_config(a_dir), quiet());
  ASSERT_TRUE(a.finished);
  ASSERT_EQ(a.steps.size(), 12u);

  TrainOptions stop = quiet();
  stop.stop_after = 5;  // not a multiple of checkpoint.interval: the stop writes its own checkpoint
  TrainResult b1 = train(tiny_config(b_dir), stop);
  EXPECT_FALSE(b1.finished);
  EXPECT_EQ(b1.end_step, 5);
  EXPECT_EQ(b1.last_checkpoint, step_dir(b_dir + "/checkpoints", 5));
  TrainOptions resume = quiet();
  resume.resume = "latest";
  TrainResult b2 = train(tiny_config(b_dir), resume);
  EXPECT_EQ(b2.start_step, 5);
  EXPECT_EQ(b2.resumed_from, step_dir(b_dir + "/checkpoints", 5));
  EXPECT_TRUE(b2.finished);

  // Bitwise: every loss, every eval, and the final weights, optimizer moments and state.
  EXPECT_EQ(losses_of({a}), losses_of({b1, b2}));
  ASSERT_EQ(a.evals.size(), 3u);  // steps 4, 8, 12
  ASSERT_EQ(b1.evals.size() + b2.evals.size(), 3u);
  EXPECT_EQ(a.evals.back().result.loss, b2.evals.back().result.loss);
  test_util::expect_same_tensors(rank_file(step_dir(a_dir + "/checkpoints", 12), 0),
                                 rank_file(step_dir(b_dir + "/checkpoints", 12), 0));
}

TEST(Trainer, SameSeedSameLossesOtherSeedOtherLosses) {
  TmpDir tmp;
  RunConfig c = tiny_config(tmp / "a", 4);
  TrainResult a = train(c, quiet());
  c.set_run_dir(tmp / "b");
  TrainResult b = train(c, quiet());
  EXPECT_EQ(losses_of({a}), losses_of({b}));
  c.set_run_dir(tmp / "c");
  c.mutable_train()->set_seed(7);
  TrainResult d = train(c, quiet());
  EXPECT_NE(losses_of({a}), losses_of({d}));
}

TEST(Trainer, GradAccumEqualsOneBigBatch) {
  // Micro-batches of 4 accumulated twice see the same 8 windows as one micro-batch of 8
  // (LMLoader hands out consecutive entries of the epoch order), so with the loss scaled by
  // 1/grad_accum the first loss and the updated weights agree up to float rounding.
  TmpDir tmp;
  RunConfig acc = tiny_config(tmp / "acc", 3);
  acc.mutable_model()->set_dropout(0);
  RunConfig big = acc;
  big.set_run_dir(tmp / "big");
  big.mutable_train()->set_micro_batch(8);
  big.mutable_train()->set_grad_accum(1);
  TrainResult ra = train(acc, quiet()), rb = train(big, quiet());
  ASSERT_EQ(ra.steps.size(), 3u);
  EXPECT_NEAR(ra.steps[0].loss, rb.steps[0].loss, 1e-5);
  EXPECT_NEAR(ra.steps[0].grad_norm, rb.steps[0].grad_norm, 1e-4 * rb.steps[0].grad_norm);
  EXPECT_NEAR(ra.steps[1].loss, rb.steps[1].loss, 1e-4);
}

TEST(Trainer, LearningRateFollowsTheSchedule) {
  TmpDir tmp;
  RunConfig c = tiny_config(tmp.path(), 10);
  c.mutable_model()->set_dropout(0);
  c.mutable_schedule()->set_kind(ScheduleConfig::LINEAR);
  c.mutable_schedule()->set_warmup_steps(2);
  c.mutable_schedule()->set_decay_steps(4);  // decay over steps 3..6, then the floor
  c.mutable_schedule()->set_min_lr_ratio(0.25);
  c.mutable_checkpoint()->set_interval(0);
  TrainResult r = train(c, quiet());
  ASSERT_EQ(r.steps.size(), 10u);
  const double base = 3e-3;
  // Warmup from 0: step s of 2 -> base * s / 2; then linear from base to base/4 over 4 steps.
  const double expect[] = {base * 0.5, base,          base + (0.25 * base - base) * 0.25,
                           base + (0.25 * base - base) * 0.5, base + (0.25 * base - base) * 0.75,
                           0.25 * base, 0.25 * base,  0.25 * base, 0.25 * base, 0.25 * base};
  for (int i = 0; i < 10; ++i) EXPECT_NEAR(r.steps[i].lr, expect[i], 1e-15) << "step " << i + 1;
}

TEST(Trainer, EpochsSetTheNumberOfSteps) {
  TmpDir tmp;
  RunConfig c = tiny_config(tmp.path());
  c.mutable_train()->clear_steps();
  c.mutable_train()->set_epochs(1);
  c.mutable_train()->set_micro_batch(16);
  c.mutable_train()->set_eval_interval(0);
  c.mutable_data()->mutable_synthetic()->set_bytes(8192);
  c.mutable_checkpoint()->set_interval(0);
  // Expected: the train split's windows, whole global batches of 16, two per step.
  auto tokens = std::make_shared<data::TokenIds>();
  for (char ch : data::synthetic_corpus(1, 8192)) tokens->push_back(static_cast<uint8_t>(ch));
  const int64_t windows = data::PackedLMDataset(tokens, 32).split(0.1).first.size();
  TrainResult r = train(c, quiet());
  EXPECT_EQ(r.total_steps, windows / 16 / 2);
  EXPECT_EQ(static_cast<int64_t>(r.steps.size()), windows / 16 / 2);
  EXPECT_GT(r.total_steps, 2);
}

TEST(Trainer, EvaluateIsTheTokenMeanOverTheSplit) {
  // 10 windows scored in batches of 3: the last batch is short, so a mean of batch means
  // would be wrong; the reference is the mean of per-window losses.
  models::ModelSpec spec;
  spec.n_layer = 1;
  spec.n_head = 2;
  spec.d_model = 16;
  spec.max_seq_len = 8;
  auto model = models::build_model(spec, 3);
  auto tokens = std::make_shared<data::TokenIds>();
  for (char ch : data::synthetic_corpus(2, 81)) tokens->push_back(static_cast<uint8_t>(ch));
  data::PackedLMDataset ds(tokens, 8);
  ASSERT_EQ(ds.size(), 10);
  parallel::SingleProcessCommunicator comm;
  EvalResult ev = evaluate(*model, ds, 3, 0, comm);
  double ref = 0;
  {
    autograd::NoGradGuard ng;
    for (int64_t i = 0; i < ds.size(); ++i) {
      const std::vector<int32_t> in32 = ds.input(i), tg32 = ds.target(i);
      std::vector<int64_t> in(in32.begin(), in32.end()), tg(tg32.begin(), tg32.end());
      ref += model->loss(Tensor::from_vector(in, {1, 8}), Tensor::from_vector(tg, {1, 8})).item();
    }
  }
  ref /= 10;
  EXPECT_NEAR(ev.loss, ref, 1e-6);
  EXPECT_NEAR(ev.perplexity, std::exp(ref), 1e-5 * std::exp(ref));
  EXPECT_EQ(ev.tokens, 80);
  EXPECT_EQ(ev.batches, 4);
  EXPECT_TRUE(model->is_training());  // restored
  // max_batches = 1: only windows 0..2.
  EvalResult first = evaluate(*model, ds, 3, 1, comm);
  EXPECT_EQ(first.tokens, 24);
}

TEST(Trainer, StopFlagFinishesTheStepAndSaves) {
  TmpDir tmp;
  std::atomic<int> flag{SIGTERM};  // as if the signal came during step 1
  TrainOptions o = quiet();
  o.stop_flag = &flag;
  TrainResult r = train(tiny_config(tmp.path()), o);
  EXPECT_EQ(r.stop_signal, SIGTERM);
  EXPECT_EQ(r.end_step, 1);
  EXPECT_EQ(r.last_checkpoint, step_dir(tmp / "checkpoints", 1));
  EXPECT_TRUE(is_complete(r.last_checkpoint));
  EXPECT_EQ(latest_complete_step(tmp / "checkpoints"), std::optional<int64_t>(1));
}

TEST(Trainer, CheckpointHoldsEveryPieceOfState) {
  TmpDir tmp;
  RunConfig c = tiny_config(tmp.path(), 4);
  TrainResult r = train(c, quiet());
  const std::string file = rank_file(step_dir(tmp / "checkpoints", 4), 0);
  H5Reader h(file);
  RunConfig resolved = c;
  configs::resolve(resolved);
  auto model = models::build_model(model_spec(resolved.model()), 1);
  for (const auto& [name, p] : model->named_parameters()) {
    ASSERT_TRUE(h.is_dataset("model/" + name)) << name;
    EXPECT_EQ(h.shape("model/" + name), p.shape()) << name;
    EXPECT_TRUE(h.is_dataset("optim/" + name + "/exp_avg")) << name;
    EXPECT_TRUE(h.is_dataset("optim/" + name + "/exp_avg_sq")) << name;
  }
  EXPECT_EQ(h.read_tensor("optim/__step__").item(), 4);
  EXPECT_EQ(h.read_tensor("state/step").item(), 4);
  EXPECT_EQ(h.read_tensor("state/tokens_seen").item(), 4 * 4 * 2 * 32);
  EXPECT_EQ(h.read_tensor("state/loader_index").item(), 4 * 2 * 4);  // 4 steps x 2 micro x 4 rows
  EXPECT_GT(h.read_tensor("state/rng_dropout_offset").item(), 0);   // dropout drew numbers
  EXPECT_EQ(h.attr_int("/", "world_size"), 1);
  EXPECT_DOUBLE_EQ(h.read_tensor("state/lr").item(), r.steps.back().lr);
  // The stored config is the resolved one and parses back.
  RunConfig stored = configs::parse_text(h.read_string("config"), "stored");
  EXPECT_EQ(stored.model().vocab_size(), 256);
  EXPECT_EQ(stored.checkpoint().dir(), tmp / "checkpoints");
  EXPECT_EQ(h.read_string("config"), h.attr_string("/", "config"));

  CheckpointInfo info = inspect_checkpoint(tmp.path());  // a run directory
  EXPECT_EQ(info.file, file);
  EXPECT_TRUE(info.complete);
  EXPECT_EQ(info.state.step, 4);
  int64_t model_elems = 0;
  for (const auto& t : info.tensors)
    if (t.name.rfind("model/", 0) == 0) model_elems += shape_numel(t.shape);
  EXPECT_EQ(model_elems, r.num_parameters);
  EXPECT_EQ(r.num_parameters, model->num_parameters());
}

TEST(Trainer, HalfWrittenCheckpointIsNeverResumedAndStaleTempsAreCleaned) {
  TmpDir tmp;
  const std::string root = tmp / "checkpoints";
  TrainOptions stop = quiet();
  stop.stop_after = 4;
  train(tiny_config(tmp.path()), stop);
  ASSERT_TRUE(is_complete(step_dir(root, 4)));
  // A crash while saving step 8: the directory exists with a temp file and a rank file, no
  // COMPLETE; and an old temp file inside the complete step.
  fs::create_directories(step_dir(root, 8));
  test::write_file(tmp_path(rank_file(step_dir(root, 8), 0)), "partial");
  test::write_file(rank_file(step_dir(root, 8), 1), "not a checkpoint");
  test::write_file(step_dir(root, 4) + "/leftover.h5.tmp", "partial");
  EXPECT_EQ(latest_complete_step(root), std::optional<int64_t>(4));

  TrainOptions resume = quiet();  // checkpoint.resume "auto": newest complete
  resume.stop_after = 6;
  TrainResult r = train(tiny_config(tmp.path()), resume);
  EXPECT_EQ(r.resumed_from, step_dir(root, 4));
  EXPECT_EQ(r.start_step, 4);
  // The step-8 directory was a crashed save (this run is the only writer): removed whole.
  EXPECT_FALSE(fs::exists(step_dir(root, 8)));
  EXPECT_FALSE(fs::exists(step_dir(root, 4) + "/leftover.h5.tmp"));
  EXPECT_EQ(latest_complete_step(root), std::optional<int64_t>(6));
}

TEST(Trainer, ResumeRefusesAnotherWorldSize) {
  TmpDir tmp;
  RunConfig c = tiny_config(tmp.path(), 4);
  train(c, quiet());
  // A communicator that claims two ranks: load_checkpoint must refuse before any collective.
  class TwoRanks : public parallel::SingleProcessCommunicator {
   public:
    int size() const override { return 2; }
  } two;
  configs::resolve(c);
  c.mutable_model()->set_vocab_size(256);
  auto model = models::build_model(model_spec(c.model()), 1);
  std::string msg = test::error_of([&] { load_checkpoint(step_dir(tmp / "checkpoints", 4), *model, nullptr, two); });
  EXPECT_NE(msg.find("written by 1 rank(s), this run has 2"), std::string::npos) << msg;
  EXPECT_NE(msg.find("mpirun -np 1"), std::string::npos) << msg;
}

TEST(Trainer, ResumeIntoAnotherModelShapeNamesTheParameter) {
  TmpDir tmp;
  train(tiny_config(tmp.path(), 4), quiet());
  RunConfig wider = tiny_config(tmp.path(), 8);
  wider.mutable_model()->set_d_model(48);
  TrainOptions o = quiet();
  o.resume = "latest";
  try {
    train(wider, o);
    FAIL() << "expected a CheckpointError";
  } catch (const CheckpointError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("parameter embed.weight"), std::string::npos) << m;
    EXPECT_NE(m.find("[256, 32]"), std::string::npos) << m;
    EXPECT_NE(m.find("[256, 48]"), std::string::npos) << m;
  }
  RunConfig deeper = tiny_config(tmp.path(), 8);
  deeper.mutable_model()->set_n_layer(3);
  try {
    train(deeper, o);
    FAIL() << "expected a CheckpointError";
  } catch (const CheckpointError& e) {
    EXPECT_NE(std::string(e.what()).find("no tensor model/layers.2."), std::string::npos) << e.what();
  }
}

TEST(Trainer, ResumeLatestWithoutCheckpointIsAnError) {
  TmpDir tmp;
  TrainOptions o = quiet();
  o.resume = "latest";
  try {
    train(tiny_config(tmp.path()), o);
    FAIL() << "expected a CheckpointError";
  } catch (const CheckpointError& e) {
    EXPECT_NE(std::string(e.what()).find("no complete checkpoint"), std::string::npos) << e.what();
  }
}

TEST(Trainer, UnsupportedSettingsAreConfigErrors) {
  TmpDir tmp;
  RunConfig c = tiny_config(tmp.path());
  c.mutable_train()->set_precision(TrainConfig::BF16);
  c.mutable_model()->set_dtype(ModelConfig::BF16);
  try {
    train(c, quiet());
    FAIL() << "expected a ConfigError";
  } catch (const configs::ConfigError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("model.dtype: BF16"), std::string::npos) << m;
    EXPECT_NE(m.find("supported: F32"), std::string::npos) << m;
    EXPECT_NE(m.find("train.precision: BF16"), std::string::npos) << m;
  }
  RunConfig bad = tiny_config(tmp.path());
  bad.mutable_train()->set_micro_batch(0);
  EXPECT_THROW(train(bad, quiet()), configs::ConfigError);
}

TEST(Trainer, TextSourceWithVocabFromTheTokenizer) {
  TmpDir tmp;
  std::string text;
  for (int i = 0; i < 200; ++i) text += "to be or not to be, that is the question. ";
  test::write_file(tmp / "corpus.txt", text);
  RunConfig c = tiny_config(tmp / "run", 3);
  c.mutable_data()->set_source(DataConfig::TEXT);
  c.mutable_data()->set_path(tmp / "corpus.txt");
  c.mutable_data()->clear_synthetic();
  TrainResult r = train(c, quiet());
  EXPECT_TRUE(r.finished);
  // Byte tokenizer, vocab 256: the first loss is near ln 256 for a fresh model.
  EXPECT_NEAR(r.steps[0].loss, std::log(256.0), 0.3);
  c.mutable_data()->set_path(tmp / "missing.txt");
  try {
    train(c, quiet());
    FAIL() << "expected a ConfigError";
  } catch (const configs::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("data.path"), std::string::npos) << e.what();
  }
}

TEST(Trainer, VocabSizeZeroTakesTheTokenizersVocabulary) {
  TmpDir tmp;
  std::string text;
  for (int i = 0; i < 300; ++i) text += i % 3 ? "hello the world's cat.\n" : "the cat! 12 hello world.\n";
  test::write_file(tmp / "corpus.txt", text);
  RunConfig c = tiny_config(tmp / "run", 2);
  c.mutable_schedule()->set_warmup_steps(0);
  c.mutable_data()->set_source(DataConfig::TEXT);
  c.mutable_data()->set_path(tmp / "corpus.txt");
  c.mutable_data()->clear_synthetic();
  c.mutable_data()->set_tokenizer("tests/fixtures/tokenizers/gpt2_style_tiny.json");  // 53 ids
  c.mutable_model()->set_vocab_size(0);
  TrainResult r = train(c, quiet());
  EXPECT_NEAR(r.steps[0].loss, std::log(53.0), 0.3);
  TrainState st = read_train_state(rank_file(step_dir(tmp / "run/checkpoints", 2), 0));
  EXPECT_EQ(configs::parse_text(st.config_text, "stored").model().vocab_size(), 53);
  c.mutable_model()->set_vocab_size(40);
  c.set_run_dir(tmp / "run2");
  try {
    train(c, quiet());
    FAIL() << "expected a ConfigError";
  } catch (const configs::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("model.vocab_size: 40 is smaller than the vocabulary"), std::string::npos)
        << e.what();
  }
}

TEST(Trainer, MetricsGoToJsonlAndTensorBoard) {
  TmpDir tmp;
  RunConfig c = tiny_config(tmp.path(), 4);
  c.mutable_logging()->set_tensorboard(true);
  TrainResult r = train(c, quiet());
  // JSONL: the start record with the resolved config, one record per step, eval events.
  std::ifstream f(tmp / "metrics.jsonl");
  std::vector<nlohmann::json> recs;
  for (std::string line; std::getline(f, line);) recs.push_back(nlohmann::json::parse(line));
  ASSERT_FALSE(recs.empty());
  EXPECT_EQ(recs[0]["event"], "start");
  EXPECT_NE(recs[0]["config"].get<std::string>().find("vocab_size: 256"), std::string::npos);
  std::vector<double> losses;
  int evals = 0;
  for (const auto& j : recs) {
    if (j.contains("loss")) {
      losses.push_back(j["loss"].get<double>());
      for (const char* k : {"lr", "grad_norm", "tokens_per_s", "gflops", "mem_mib", "mem_peak_mib", "tokens_seen"})
        EXPECT_TRUE(j.contains(k)) << k;
      EXPECT_GT(j["mem_peak_mib"].get<double>(), 0);
    }
    if (j.value("event", "") == "eval") ++evals;
  }
  EXPECT_EQ(losses, losses_of({r}));
  EXPECT_EQ(evals, 1);  // step 4 (eval_interval 4, also the last step)
  // TensorBoard: one event file; every step's loss is there as a scalar.
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(tmp / "tb")) files.push_back(e.path().string());
  ASSERT_EQ(files.size(), 1u);
  std::vector<double> tb_losses;
  bool val = false;
  for (const auto& ev : read_tb_events(files[0]))
    for (const auto& [tag, v] : ev.scalars) {
      if (tag == "loss") tb_losses.push_back(v);
      if (tag == "val_loss") val = true;
    }
  ASSERT_EQ(tb_losses.size(), 4u);
  for (size_t i = 0; i < 4; ++i) EXPECT_FLOAT_EQ(tb_losses[i], static_cast<float>(r.steps[i].loss));
  EXPECT_TRUE(val);
}

TEST(RunSetup, ModelSpecAndFlopsFormula) {
  RunConfig c = configs::parse_text("model { arch: LLAMA n_layer: 3 n_head: 4 n_kv_head: 2 d_model: 64 "
                                    "ffn_multiple_of: 32 max_seq_len: 16 }",
                                    "t");
  configs::resolve(c);
  models::ModelSpec s = model_spec(c.model());
  EXPECT_EQ(s.arch, models::Arch::llama);
  EXPECT_EQ(s.vocab_size, 256);
  EXPECT_EQ(s.kv_heads(), 2);
  EXPECT_EQ(s.ff_dim(), configs::default_d_ff(c.model()));
  EXPECT_FALSE(s.bias);
  // V*C + L * (2 RMSNorm gains C + q, o [C, C] + k, v [kv_heads*hd, C] + SwiGLU 3*C*F) + final C,
  // tied head: 256*64 + 3 * (128 + 2*64*64 + 2*32*64 + 3*64*F) + 64 with F = 192 (2/3*256 -> 32).
  ASSERT_EQ(s.ff_dim(), 192);
  EXPECT_EQ(models::count_parameters(s), 256 * 64 + 3 * (128 + 2 * 64 * 64 + 2 * 32 * 64 + 3 * 64 * 192) + 64);
  // 6N + 6LCT
  EXPECT_DOUBLE_EQ(flops_per_token(s, 16), 6.0 * models::count_parameters(s) + 6.0 * 3 * 64 * 16);
  RunConfig z = c;
  z.mutable_model()->set_vocab_size(0);
  EXPECT_THROW(model_spec(z.model()), configs::ConfigError);
}

// The published configs build ModelSpecs of the published sizes (the formula itself is
// models::count_parameters, tested in tests/models; this checks config -> spec).
TEST(RunSetup, PublishedConfigsHaveThePublishedSizes) {
  // GPT-2 small: 124,439,808 (Hugging Face "gpt2", tied LM head).
  EXPECT_EQ(models::count_parameters(model_spec(configs::load_config("configs/gpt2_124m.pbtxt").model())), 124439808);
  // Llama 3.2 1B: 1,235,814,400 (Hugging Face "meta-llama/Llama-3.2-1B", tied embeddings).
  const models::ModelSpec llama = model_spec(configs::load_config("configs/llama_1b.pbtxt").model());
  EXPECT_EQ(models::count_parameters(llama), 1235814400);
  EXPECT_EQ(llama.rope_scaling.type, models::RopeScaling::Type::llama3);
  EXPECT_DOUBLE_EQ(llama.rope_scaling.factor, 32);
  // quickstart: V*C + T*C + 4 layers of (12 C^2 + 13 C) + final LayerNorm 2C, V=256, C=96, T=128.
  const int64_t C = 96;
  EXPECT_EQ(models::count_parameters(model_spec(configs::load_config("configs/quickstart.pbtxt").model())),
            256 * C + 128 * C + 4 * (12 * C * C + 13 * C) + 2 * C);
}

// model_spec and set_model_config are inverses on the architecture fields.
TEST(RunSetup, ModelConfigRoundTripsThroughModelSpec) {
  models::ModelSpec s = models::ModelSpec::llama_1b();
  s.qkv_bias = true;
  s.n_layer = 3;
  ModelConfig m;
  m.set_dropout(0.25);
  set_model_config(&m, s);
  EXPECT_DOUBLE_EQ(m.dropout(), 0.25);  // kept
  models::ModelSpec back = model_spec(m);
  back.dropout = s.dropout;
  EXPECT_EQ(back.arch, s.arch);
  EXPECT_EQ(back.vocab_size, s.vocab_size);
  EXPECT_EQ(back.n_layer, 3);
  EXPECT_EQ(back.kv_heads(), s.kv_heads());
  EXPECT_EQ(back.ff_dim(), s.ff_dim());
  EXPECT_EQ(back.max_seq_len, s.max_seq_len);
  EXPECT_DOUBLE_EQ(back.rope_theta, s.rope_theta);
  EXPECT_TRUE(back.qkv_bias);
  EXPECT_FALSE(back.bias);
  EXPECT_EQ(back.tie_embeddings, s.tie_embeddings);
  EXPECT_EQ(back.rope_scaling.type, models::RopeScaling::Type::llama3);
  EXPECT_DOUBLE_EQ(back.rope_scaling.factor, s.rope_scaling.factor);
  EXPECT_DOUBLE_EQ(back.rope_scaling.high_freq_factor, s.rope_scaling.high_freq_factor);
  EXPECT_EQ(back.rope_scaling.original_max_position_embeddings, s.rope_scaling.original_max_position_embeddings);
  EXPECT_EQ(models::rope_inv_freq(back), models::rope_inv_freq(s));
  EXPECT_EQ(models::count_parameters(back), models::count_parameters(s));
}

}  // namespace
}  // namespace lathe::train
