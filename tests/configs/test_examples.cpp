// The example configs in configs/ load, validate, resolve to explicit values and have the
// published shapes they claim.
#include <google/protobuf/util/message_differencer.h>

#include "config_test_util.h"

namespace lathe::configs {
namespace {

const char* kExamples[] = {"quickstart", "tiny_llama", "shakespeare", "gpt2_124m", "llama_1b"};

TEST(ConfigExamples, LoadValidateAndRoundTrip) {
  for (const char* name : kExamples) {
    SCOPED_TRACE(name);
    const std::string path = std::string("configs/") + name + ".pbtxt";
    RunConfig cfg;
    ASSERT_NO_THROW(cfg = load_config(path)) << path;
    EXPECT_TRUE(validate(cfg).empty());
    EXPECT_EQ(cfg.name(), name);
    EXPECT_EQ(cfg.run_dir(), std::string("runs/") + name);
    EXPECT_EQ(cfg.checkpoint().dir(), std::string("runs/") + name + "/checkpoints");
    // Derived values are explicit after load.
    EXPECT_GT(cfg.model().n_kv_head(), 0);
    EXPECT_GT(cfg.model().d_ff(), 0);
    EXPECT_GT(cfg.train().seq_len(), 0);
    // The stored text reads back to the same message.
    const RunConfig back = parse_text(to_text(cfg), "stored");
    EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(cfg, back)) << to_text(cfg);
  }
}

TEST(ConfigExamples, QuickstartIsTinyGpt2OnSyntheticData) {
  const RunConfig cfg = load_config("configs/quickstart.pbtxt");
  EXPECT_EQ(cfg.model().arch(), ModelConfig::GPT2);
  EXPECT_EQ(cfg.data().source(), DataConfig::SYNTHETIC);
  EXPECT_EQ(cfg.data().tokenizer(), "byte");
  EXPECT_EQ(cfg.model().vocab_size(), 256);  // resolved from the byte tokenizer
  EXPECT_EQ(cfg.model().d_ff(), 4 * 96);
  EXPECT_TRUE(cfg.model().bias());  // GPT2 default
  EXPECT_EQ(cfg.schedule().kind(), ScheduleConfig::COSINE);
  EXPECT_GT(cfg.schedule().warmup_steps(), 0);
  EXPECT_GE(cfg.train().steps(), 100);
  EXPECT_LE(cfg.train().steps(), 1000);
  EXPECT_TRUE(cfg.sample().at_eval());
  EXPECT_EQ(cfg.model().d_model(), 96);
  EXPECT_EQ(cfg.model().n_layer(), 4);
  // (Its parameter count, V*C + T*C + 4 layers of (12 C^2 + 13 C) + 2C, is checked against
  // models::count_parameters in tests/train, where the ModelSpec of a config is built.)
}

TEST(ConfigExamples, TinyLlamaUsesGqaAndTheSwigluWidth) {
  const RunConfig cfg = load_config("configs/tiny_llama.pbtxt");
  EXPECT_EQ(cfg.model().arch(), ModelConfig::LLAMA);
  EXPECT_LT(cfg.model().n_kv_head(), cfg.model().n_head());
  EXPECT_EQ(cfg.model().n_head() % cfg.model().n_kv_head(), 0);
  EXPECT_FALSE(cfg.model().bias());  // LLAMA default when unset
  // 2/3 * 4 * 96 = 256, already a multiple of 32.
  EXPECT_EQ(cfg.model().d_ff(), 256);
}

TEST(ConfigExamples, ShakespeareReadsTheSharedCorpus) {
  const RunConfig cfg = load_config("configs/shakespeare.pbtxt");
  EXPECT_EQ(cfg.data().source(), DataConfig::TEXT);
  EXPECT_EQ(cfg.data().path(), "../shared/data/tinyshakespeare.txt");
  EXPECT_TRUE(std::filesystem::exists(cfg.data().path())) << "run from the repo root";
}

TEST(ConfigExamples, PublishedShapes) {
  // The published sizes (124,439,808 and 1,235,814,400 parameters) are checked on the
  // ModelSpec these configs give (tests/train: RunSetup.PublishedConfigsHaveThePublishedSizes).
  const RunConfig gpt2 = load_config("configs/gpt2_124m.pbtxt");
  EXPECT_EQ(gpt2.model().n_layer(), 12);
  EXPECT_EQ(gpt2.model().d_model(), 768);
  EXPECT_EQ(gpt2.model().vocab_size(), 50257);
  const RunConfig llama = load_config("configs/llama_1b.pbtxt");
  EXPECT_EQ(llama.model().n_layer(), 16);
  EXPECT_EQ(llama.model().d_model(), 2048);
  EXPECT_EQ(llama.model().n_kv_head(), 8);
  EXPECT_EQ(llama.model().rope_scaling().type(), RopeScalingConfig::LLAMA3);
  // The published d_ff values match the default rules where they apply: GPT-2 uses 4*d.
  ModelConfig m = gpt2.model();
  m.clear_d_ff();
  EXPECT_EQ(default_d_ff(m), 3072);
}

TEST(ConfigExamples, SwigluRuleRoundsUp) {
  ModelConfig m;
  m.set_arch(ModelConfig::LLAMA);
  m.set_d_model(4096);  // Llama-2 7B: 2/3*16384 = 10922 -> multiple of 256 = 11008
  m.set_ffn_multiple_of(256);
  EXPECT_EQ(default_d_ff(m), 11008);
  m.set_d_model(100);  // 2/3*400 = 266 -> 288 with 32
  m.set_ffn_multiple_of(32);
  EXPECT_EQ(default_d_ff(m), 288);
}

}  // namespace
}  // namespace lathe::configs
