// Semantic checks: each problem is reported with the field path and the offending values,
// and load_config points each at the line:col that set the field.
#include <gmock/gmock.h>

#include <cmath>
#include <functional>
#include <limits>

#include "config_test_util.h"

namespace lathe::configs {
namespace {

using ::testing::AllOf;
using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::load_errors;
using testing::write_temp;

// A small valid config (not resolved: validate must accept 0 = auto values).
RunConfig base() {
  RunConfig c;
  c.set_name("t");
  c.mutable_model()->set_n_layer(2);
  c.mutable_model()->set_n_head(4);
  c.mutable_model()->set_d_model(64);
  c.mutable_train()->set_steps(100);
  return c;
}

TEST(ConfigValidate, BaseIsValidBeforeAndAfterResolve) {
  RunConfig c = base();
  EXPECT_TRUE(validate(c).empty()) << ::testing::PrintToString(validate(c));
  resolve(c);
  EXPECT_TRUE(validate(c).empty()) << ::testing::PrintToString(validate(c));
}

TEST(ConfigValidate, MessagesNameTheFieldAndValue) {
  struct Case {
    std::function<void(RunConfig&)> edit;
    std::string message;
  };
  const std::vector<Case> cases = {
      {[](RunConfig& c) { c.mutable_train()->set_micro_batch(0); }, "train.micro_batch: must be > 0 (got 0)"},
      {[](RunConfig& c) { c.mutable_model()->set_sliding_window(-4); }, "model.sliding_window: must be >= 0 (got -4)"},
      {[](RunConfig& c) {
         c.mutable_model()->set_sliding_window(64);
         c.mutable_model()->set_full_attention_layers(3);
       },
       "model.full_attention_layers: must be at most n_layer (2) (got 3)"},
      {[](RunConfig& c) { c.mutable_model()->set_full_attention_layers(1); },
       "model.full_attention_layers: says which layers use the sliding window, but model.sliding_window is 0 (none); "
       "set sliding_window or remove full_attention_layers"},
      {[](RunConfig& c) { c.mutable_model()->set_d_model(100); c.mutable_model()->set_n_head(3); },
       "model.n_head: d_model (100) must be divisible by n_head (3)"},
      {[](RunConfig& c) {
         c.mutable_model()->set_arch(ModelConfig::LLAMA);
         c.mutable_model()->set_n_head(8);
         c.mutable_model()->set_d_model(128);
         c.mutable_model()->set_n_kv_head(3);
       },
       "model.n_kv_head: n_head (8) must be divisible by n_kv_head (3)"},
      {[](RunConfig& c) { c.mutable_train()->set_epochs(2); },
       "train: set exactly one of steps and epochs (got steps 100, epochs 2)"},
      {[](RunConfig& c) { c.mutable_train()->set_steps(0); },
       "train: set exactly one of steps and epochs (got steps 0, epochs 0)"},
      {[](RunConfig& c) { c.mutable_schedule()->set_warmup_steps(500); },
       "schedule.warmup_steps (500) exceeds train.steps (100)"},
      {[](RunConfig& c) { c.mutable_data()->set_source(DataConfig::TEXT); },
       "data.path: required when data.source is TEXT"},
      {[](RunConfig& c) { c.mutable_model()->set_dropout(1.5); }, "model.dropout: must be in [0, 1) (got 1.5)"},
      {[](RunConfig& c) { c.mutable_sample()->set_top_p(0); }, "sample.top_p: must be in (0, 1] (got 0)"},
      {[](RunConfig& c) { c.mutable_optimizer()->set_lr(0); }, "optimizer.lr: must be > 0 (got 0)"},
      {[](RunConfig& c) { c.mutable_optimizer()->set_lr(-3e-4); }, "optimizer.lr: must be > 0 (got -0.0003)"},
      {[](RunConfig& c) { c.mutable_optimizer()->set_lr(std::nan("")); }, "optimizer.lr: must be > 0 (got nan)"},
      {[](RunConfig& c) { c.mutable_optimizer()->set_beta2(1.0); }, "optimizer.beta2: must be in [0, 1) (got 1)"},
      {[](RunConfig& c) { c.mutable_model()->set_n_kv_head(2); },
       "model.n_kv_head: GPT2 uses multi-head attention, so n_kv_head must be 0 or n_head (4) (got 2); "
       "grouped-query attention needs arch: LLAMA"},
      {[](RunConfig& c) {
         c.mutable_model()->set_arch(ModelConfig::LLAMA);
         c.mutable_model()->set_d_model(60);  // head dim 15
       },
       "model.d_model: rotary embeddings need an even head dim, d_model / n_head = 60 / 4 = 15"},
      {[](RunConfig& c) { c.mutable_model()->set_vocab_size(100); },
       "model.vocab_size: the byte tokenizer needs at least 256 (got 100)"},
      {[](RunConfig& c) {
         c.mutable_model()->set_max_seq_len(64);
         c.mutable_train()->set_seq_len(128);
       },
       "train.seq_len: must be <= model.max_seq_len (64) (got 128)"},
      {[](RunConfig& c) { c.mutable_train()->set_device("gpu"); },
       "train.device: must be auto, cpu, cuda or cuda:N (got \"gpu\")"},
      {[](RunConfig& c) { c.mutable_data()->set_format(DataConfig::ALPACA); },
       "data.format: ALPACA is instruction data: it needs data.source JSONL (or HDF5 prepared from it), got SYNTHETIC"},
      {[](RunConfig& c) { c.set_name("my run"); },
       "name: must be non-empty and use only letters, digits, '_', '-' and '.' (got \"my run\")"},
      {[](RunConfig& c) {
         c.mutable_data()->set_val_fraction(0);
         c.mutable_train()->set_eval_interval(10);
       },
       "train.eval_interval: evaluation every 10 steps needs validation data: set data.val_fraction > 0 or "
       "data.val_path"},
  };
  for (const auto& k : cases) {
    RunConfig c = base();
    k.edit(c);
    EXPECT_THAT(validate(c), ElementsAre(k.message));
  }
  // Valid neighbours of those cases pass.
  RunConfig ok = base();
  ok.mutable_train()->set_device("cuda:1");
  ok.mutable_sample()->set_top_p(1.0);
  ok.mutable_model()->set_dropout(0.0);
  ok.mutable_schedule()->set_warmup_steps(100);
  EXPECT_TRUE(validate(ok).empty()) << ::testing::PrintToString(validate(ok));
}

TEST(ConfigValidate, LoadPointsEachProblemAtItsLine) {
  const std::string text =
      "name: \"combo\"\n"           // 1
      "model {\n"                   // 2
      "  d_model: 100\n"            // 3
      "  n_head: 3\n"               // 4
      "}\n"                         // 5
      "data { source: TEXT }\n"     // 6: data.path is missing: reported at the section
      "schedule {\n"                // 7
      "  warmup_steps: 500\n"       // 8
      "}\n"                         // 9
      "train { steps: 100 }\n";     // 10
  const std::string path = write_temp("combo.pbtxt", text);
  EXPECT_THAT(load_errors(path),
              ElementsAre(path + ":4:3: model.n_head: d_model (100) must be divisible by n_head (3)",
                          path + ":6:1: data.path: required when data.source is TEXT",
                          path + ":8:3: schedule.warmup_steps (500) exceeds train.steps (100)"));
}

TEST(ConfigValidate, ProblemsFromDefaultsNameTheFileOnly) {
  // No train section: neither steps nor epochs is set.
  const std::string path = write_temp("nosteps.pbtxt", "name: \"x\"\n");
  EXPECT_THAT(load_errors(path),
              ElementsAre(path + ": train: set exactly one of steps and epochs (got steps 0, epochs 0)"));
}

TEST(ConfigResolve, FillsDerivedValuesAndIsIdempotent) {
  RunConfig c = base();
  c.mutable_model()->set_arch(ModelConfig::LLAMA);
  c.mutable_model()->set_ffn_multiple_of(64);
  c.mutable_model()->set_max_seq_len(512);
  c.mutable_train()->set_seed(42);
  resolve(c);
  EXPECT_EQ(c.run_dir(), "runs/t");
  EXPECT_EQ(c.checkpoint().dir(), "runs/t/checkpoints");
  EXPECT_EQ(c.model().n_kv_head(), 4);
  EXPECT_EQ(c.model().d_ff(), 192);  // 2/3 * 256 = 170 -> 192
  EXPECT_FALSE(c.model().bias());
  EXPECT_EQ(c.model().vocab_size(), 256);
  EXPECT_EQ(c.train().seq_len(), 512);
  EXPECT_EQ(c.sample().seed(), 42u);
  // Every singular field is now present, so the printout is explicit.
  EXPECT_TRUE(c.optimizer().has_lr());
  EXPECT_TRUE(c.parallel().has_bucket_mb());
  EXPECT_THAT(to_text(c), HasSubstr("ffn_multiple_of: 64"));
  EXPECT_THAT(to_text(c), HasSubstr("collective_timeout_s: 600"));
  RunConfig again = c;
  resolve(again);
  EXPECT_EQ(to_text(again), to_text(c));

  // Values a user set are kept.
  RunConfig u = base();
  u.set_run_dir("/scratch/x");
  u.mutable_model()->set_bias(true);
  u.mutable_model()->set_arch(ModelConfig::LLAMA);
  u.mutable_checkpoint()->set_dir("/ckpt");
  resolve(u);
  EXPECT_EQ(u.run_dir(), "/scratch/x");
  EXPECT_TRUE(u.model().bias());
  EXPECT_EQ(u.checkpoint().dir(), "/ckpt");

  // A file tokenizer leaves vocab_size for the trainer to take from the tokenizer.
  RunConfig f = base();
  f.mutable_data()->set_tokenizer("tok/tokenizer.json");
  resolve(f);
  EXPECT_EQ(f.model().vocab_size(), 0);
}

}  // namespace
}  // namespace lathe::configs

namespace lathe::configs {
namespace {

// inf is a number to protobuf (text "inf", JSON "Infinity") and passed every "> 0" check.
TEST(ConfigValidate, NonFiniteNumbersAreRefusedInEveryFloatField) {
  const double inf = std::numeric_limits<double>::infinity();
  struct Case {
    std::function<void(RunConfig&)> edit;
    std::string message;
  };
  const std::vector<Case> cases = {
      {[&](RunConfig& c) { c.mutable_optimizer()->set_lr(inf); }, "optimizer.lr: must be a finite number > 0 (got inf)"},
      {[&](RunConfig& c) { c.mutable_optimizer()->set_weight_decay(inf); },
       "optimizer.weight_decay: must be a finite number >= 0 (got inf)"},
      {[&](RunConfig& c) { c.mutable_model()->set_norm_eps(inf); },
       "model.norm_eps: must be a finite number > 0 (got inf)"},
      {[&](RunConfig& c) { c.mutable_train()->set_grad_clip(inf); },
       "train.grad_clip: must be a finite number >= 0 (got inf)"},
      // Fields no other rule covers: the generic pass over every float field.
      {[&](RunConfig& c) { c.mutable_optimizer()->set_sgd_momentum(-inf); },
       "optimizer.sgd_momentum: must be a finite number (got -inf)"},
      {[&](RunConfig& c) { c.mutable_model()->set_rope_theta(std::nan("")); },  // GPT2: rope_theta unchecked
       "model.rope_theta: must be a finite number (got nan)"},
      {[&](RunConfig& c) { c.mutable_parallel()->set_collective_timeout_s(inf); },
       "parallel.collective_timeout_s: must be a finite number > 0 (got inf)"},
  };
  for (const auto& k : cases) {
    RunConfig c = base();
    k.edit(c);
    EXPECT_THAT(validate(c), ElementsAre(k.message));
  }
  // From a file: text format's "inf" and JSON's "Infinity", located at the key.
  const std::string txt = write_temp("inf.pbtxt", "name: \"t\"\ntrain { steps: 10 }\noptimizer {\n  lr: inf\n}\n");
  EXPECT_THAT(load_errors(txt), ElementsAre(txt + ":4:3: optimizer.lr: must be a finite number > 0 (got inf)"));
  const std::string js = write_temp("inf.json", "{\"train\": {\"steps\": 10},\n \"model\": {\"norm_eps\": \"Infinity\"}}");
  EXPECT_THAT(load_errors(js), ElementsAre(js + ":2:12: model.norm_eps: must be a finite number > 0 (got inf)"));
}

TEST(ConfigValidate, SizesThatCannotWorkAreConfigErrors) {
  RunConfig c = base();
  c.mutable_train()->set_micro_batch(2147483647);
  auto errors = validate(c);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_THAT(errors[0], HasSubstr("train.micro_batch: micro_batch * seq_len = 2147483647 * 256"));
  resolve(c);
  EXPECT_THAT(validate(c), ElementsAre(HasSubstr("train.micro_batch: micro_batch * seq_len")));
  // A model whose f32 parameters alone exceed any memory: a million layers of width 8192.
  c = base();
  c.mutable_model()->set_n_layer(1000000);
  c.mutable_model()->set_d_model(8192);
  c.mutable_model()->set_n_head(8);
  errors = validate(c);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_THAT(errors[0], HasSubstr("model.n_layer: the model has about"));
  EXPECT_THAT(errors[0], HasSubstr("n_layer 1000000, d_model 8192"));
  EXPECT_THAT(errors[0], HasSubstr("memory on this machine"));
  // On a CPU run, the logits of a micro-batch too (10^7 sequences of 256 tokens of 256 floats).
  c = base();
  c.mutable_train()->set_device("cpu");
  c.mutable_train()->set_micro_batch(8000000);
  EXPECT_THAT(validate(c), ElementsAre(HasSubstr("train.micro_batch: the logits of one micro-batch")));
  c.mutable_train()->set_device("cuda");  // device memory is not checked here
  EXPECT_TRUE(validate(c).empty());
  // Through load_config: exit 2 material, located at the key.
  const std::string p = write_temp("mb.pbtxt", "name: \"t\"\ntrain {\n  steps: 10\n  micro_batch: 2147483647\n}\n");
  EXPECT_THAT(load_errors(p), ElementsAre(HasSubstr(p + ":4:3: train.micro_batch: micro_batch * seq_len")));
}

// Errors raised after loading (by the trainer, with origin "config") name the loaded file.
// Tensor parallelism composes with ZeRO-1, SGD-SaI, GaLore/Fira (also with ZeRO) and layer-wise
// updates (AdamW, SGD, 8-bit); what it does not compose with yet is refused naming the field
// and the method.
TEST(ConfigValidate, TensorParallelCombinations) {
  auto with_tp = [](const std::function<void(RunConfig&)>& edit) {
    RunConfig c = base();
    c.mutable_parallel()->set_tensor_parallel(2);
    edit(c);
    return validate(c);
  };
  EXPECT_TRUE(with_tp([](RunConfig&) {}).empty());
  EXPECT_TRUE(with_tp([](RunConfig& c) { c.mutable_parallel()->set_zero_stage(1); }).empty())
      << ::testing::PrintToString(with_tp([](RunConfig& c) { c.mutable_parallel()->set_zero_stage(1); }));
  EXPECT_TRUE(with_tp([](RunConfig& c) {
                c.mutable_parallel()->set_zero_stage(1);
                c.mutable_optimizer()->set_type(OptimizerConfig::SGD_SAI);
              }).empty());
  EXPECT_TRUE(with_tp([](RunConfig& c) {
                c.mutable_parallel()->set_zero_stage(1);
                c.mutable_optimizer()->set_state_bits(8);
              }).empty());
  for (auto type : {OptimizerConfig::GALORE, OptimizerConfig::FIRA}) {
    EXPECT_TRUE(with_tp([type](RunConfig& c) { c.mutable_optimizer()->set_type(type); }).empty());
    // ZeRO-1 owns the whole-matrix stand-ins over the data-parallel group.
    EXPECT_TRUE(with_tp([type](RunConfig& c) {
                  c.mutable_optimizer()->set_type(type);
                  c.mutable_parallel()->set_zero_stage(1);
                }).empty());
  }
  // Layer-wise updates under TP: AdamW and SGD step each shard from its hook; GaLore, Fira and
  // SGD-SaI need the other TP ranks inside an update.
  EXPECT_TRUE(with_tp([](RunConfig& c) {
                c.mutable_optimizer()->set_layerwise(true);
                c.mutable_train()->set_grad_clip(0);
              }).empty());
  for (auto type : {OptimizerConfig::GALORE, OptimizerConfig::FIRA, OptimizerConfig::SGD_SAI})
    EXPECT_THAT(with_tp([type](RunConfig& c) {
                  c.mutable_optimizer()->set_type(type);
                  c.mutable_optimizer()->set_layerwise(true);
                  c.mutable_train()->set_grad_clip(0);
                }),
                Contains(AllOf(HasSubstr("optimizer.layerwise"), HasSubstr(OptimizerConfig::Type_Name(type)),
                               HasSubstr("tensor_parallel 2"))));
  // LoRA shards with its layers (parallel/tp_lora.h); SpIEL does not (more in tests/parallel/test_tp_lora.cpp).
  EXPECT_TRUE(with_tp([](RunConfig& c) { c.mutable_peft()->set_method(PeftConfig::LORA); }).empty());
  EXPECT_THAT(with_tp([](RunConfig& c) { c.mutable_peft()->set_method(PeftConfig::SPIEL); }),
              Contains(AllOf(HasSubstr("peft.method"), HasSubstr("SPIEL"), HasSubstr("tensor_parallel 2"))));
}

// Ulysses splits each tensor-parallel rank's heads over the sequence-parallel group: the query
// heads n_head / tp must divide by sequence_parallel, the KV heads n_kv_head / tp must divide
// by it or divide it (replicated). The error names the fields and the numbers.
TEST(ConfigValidate, UlyssesHeadsPerTensorParallelRank) {
  auto ulysses = [](int tp, int sp, int n_head, int n_kv_head) {
    RunConfig c = base();
    c.mutable_model()->set_arch(ModelConfig::LLAMA);
    c.mutable_model()->set_d_model(96);  // every head count below divides it
    c.mutable_model()->set_d_ff(256);
    c.mutable_model()->set_n_head(n_head);
    c.mutable_model()->set_n_kv_head(n_kv_head);
    c.mutable_parallel()->set_tensor_parallel(tp);
    c.mutable_parallel()->set_sequence_parallel(sp);
    c.mutable_parallel()->set_sequence_parallel_mode(ParallelConfig::ULYSSES);
    return validate(c);
  };
  EXPECT_TRUE(ulysses(2, 2, 4, 4).empty()) << ::testing::PrintToString(ulysses(2, 2, 4, 4));
  EXPECT_TRUE(ulysses(2, 2, 8, 2).empty());   // 1 local KV head, replicated over 2
  EXPECT_TRUE(ulysses(2, 4, 16, 4).empty());  // 2 local KV heads, replicated over 4
  EXPECT_TRUE(ulysses(1, 4, 4, 4).empty());
  EXPECT_THAT(ulysses(2, 4, 4, 4),
              ElementsAre(AllOf(HasSubstr("parallel.sequence_parallel: "), HasSubstr("sequence_parallel (4)"),
                                HasSubstr("model.n_head = 4 gives 2 per tensor-parallel rank (/ tensor_parallel 2)"))));
  EXPECT_THAT(ulysses(1, 4, 6, 6), ElementsAre(AllOf(HasSubstr("parallel.sequence_parallel: "),
                                                     HasSubstr("model.n_head = 6 gives 6, not divisible by 4"))))
      << "one TP rank: no per-rank wording";
  EXPECT_THAT(ulysses(1, 3, 4, 4), ElementsAre(HasSubstr("model.n_head = 4 gives 4, not divisible by 3")));
  EXPECT_TRUE(ulysses(1, 3, 6, 6).empty());
  EXPECT_THAT(ulysses(1, 2, 4, 4), ::testing::IsEmpty());
  // KV heads: 6 / tp 2 = 3 neither splits over 2 nor divides it.
  EXPECT_THAT(ulysses(2, 2, 12, 6),
              ElementsAre(AllOf(HasSubstr("parallel.sequence_parallel: "),
                                HasSubstr("model.n_kv_head = 6 gives 3 per tensor-parallel rank"),
                                HasSubstr("neither is divisible by 2 nor divides it"))));
  EXPECT_THAT(ulysses(1, 4, 12, 6), ElementsAre(HasSubstr("model.n_kv_head = 6 gives 6, which neither")));
  // Heads that TP does not split are TP's error alone.
  EXPECT_THAT(ulysses(4, 2, 2, 2), ElementsAre(HasSubstr("parallel.tensor_parallel: model.n_head (2)"),
                                               HasSubstr("parallel.tensor_parallel: the key/value heads")));
}

TEST(ConfigValidate, LaterErrorsNameTheLoadedFile) {
  const std::string p = write_temp("later.pbtxt", "name: \"t\"\ntrain { steps: 10 }\n");
  load_config(p);
  EXPECT_EQ(loaded_config_file(), p);
  const ConfigError e("config", {"data.path: /nowhere does not exist"});
  EXPECT_EQ(e.origin(), p);
  EXPECT_EQ(std::string(e.what()), p + ": invalid config:\n  data.path: /nowhere does not exist");
  EXPECT_EQ(ConfigError("overrides", {"x"}).origin(), "overrides");  // other origins stay
}

}  // namespace
}  // namespace lathe::configs
