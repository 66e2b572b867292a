// The peft section of lathe.proto: defaults as in peft's LoraConfig, the example loads,
// methods that are not implemented yet and bad values are errors naming the field.
#include "config_test_util.h"

namespace lathe::configs {
namespace {

using testing::load_errors;
using testing::write_temp;

std::vector<std::string> load_errors_or_empty(const std::string& path) {
  try {
    load_config(path);
  } catch (const ConfigError& e) {
    return e.errors();
  }
  return {};
}

bool any_has(const std::vector<std::string>& errs, const std::string& what) {
  for (const auto& e : errs)
    if (e.find(what) != std::string::npos) return true;
  return false;
}

TEST(PeftConfig, DefaultsFollowPeft) {
  const RunConfig cfg = parse_text("peft { }", "t");
  EXPECT_EQ(cfg.peft().method(), PeftConfig::OFF);  // adapters are opt-in: method: LORA
  EXPECT_EQ(cfg.peft().r(), 8);
  EXPECT_EQ(cfg.peft().lora_alpha(), 8);
  EXPECT_EQ(cfg.peft().lora_dropout(), 0);
  EXPECT_EQ(cfg.peft().bias(), PeftConfig::NONE);
  EXPECT_EQ(cfg.peft().init(), PeftConfig::KAIMING);
  EXPECT_FALSE(cfg.peft().use_rslora());
  // A config without a peft section, resolved (every section written out), is still valid.
  EXPECT_TRUE(load_errors_or_empty(write_temp("peft_none.pbtxt", "name: \"x\" train { steps: 10 }")).empty());
}

TEST(PeftConfig, FieldsWithoutAMethodAreAnError) {
  const auto errs = load_errors(write_temp("peft_nomethod.pbtxt", "peft { r: 4 }"));
  EXPECT_TRUE(any_has(errs, "peft.method: is OFF (the default), but peft.r is set; add method: LORA")) << errs[0];
}

TEST(PeftConfig, ExampleLoadsAndValidates) {
  RunConfig cfg;
  ASSERT_NO_THROW(cfg = load_config("examples/lora/run.pbtxt"));
  EXPECT_EQ(cfg.peft().target_modules_size(), 1);
  EXPECT_EQ(cfg.peft().target_modules(0), "all-linear");
  EXPECT_EQ(cfg.peft().r(), 8);
}

TEST(PeftConfig, ErrorsNameTheField) {
  for (const char* m : {"LORA_SB", "SORA", "NOLA", "SPIEL"}) {
    const auto errs = load_errors(write_temp("peft_m.pbtxt", std::string("peft { method: ") + m + " }"));
    EXPECT_TRUE(any_has(errs, std::string("peft.method: ") + m + " is not implemented yet")) << m;
  }
  auto errs = load_errors(write_temp("peft_v.pbtxt",
                                     "peft { method: LORA r: 0 lora_alpha: -1 lora_dropout: 1 target_modules: \"q_proj\" "
                                     "target_regex: \".*\" rank_pattern { key: \"v_proj\" value: 0 } }"));
  EXPECT_TRUE(any_has(errs, "peft.r: must be > 0"));
  EXPECT_TRUE(any_has(errs, "peft.lora_alpha"));
  EXPECT_TRUE(any_has(errs, "peft.lora_dropout: must be in [0, 1)"));
  EXPECT_TRUE(any_has(errs, "peft.target_regex: give target_modules or target_regex, not both"));
  EXPECT_TRUE(any_has(errs, "peft.rank_pattern: rank for 'v_proj' must be > 0"));
}

}  // namespace
}  // namespace lathe::configs
