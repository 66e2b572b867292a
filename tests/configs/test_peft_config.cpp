// The peft section of lathe.proto: defaults as in peft's LoraConfig, the example loads,
// bad values (SPIEL's too) are errors naming the field.
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
  // LoRA-SB: an unset lora_alpha resolves to r (scale 1, as the references); a set one stays.
  RunConfig sb = parse_text("peft { method: LORA_SB r: 24 }", "t");
  resolve(sb);
  EXPECT_EQ(sb.peft().lora_alpha(), 24);
  RunConfig sb2 = parse_text("peft { method: LORA_SB r: 24 lora_alpha: 5 }", "t");
  resolve(sb2);
  EXPECT_EQ(sb2.peft().lora_alpha(), 5);
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
  for (const char* m : {"LORA_SB", "SORA", "NOLA", "SPIEL"})
    EXPECT_FALSE(any_has(load_errors(write_temp("peft_m.pbtxt", std::string("peft { method: ") + m + " }")),
                         "peft.method")) << m;
  {
    const auto e = load_errors(write_temp("peft_sb.pbtxt", "peft { method: LORA_SB sb_init_batches: 0 svd_niter: -1 }"));
    EXPECT_TRUE(any_has(e, "peft.sb_init_batches: must be > 0"));
    EXPECT_TRUE(any_has(e, "peft.svd_niter: must be >= 0"));
    const auto n = load_errors(write_temp("peft_n.pbtxt", "peft { method: NOLA nola_num_basis_b: 0 nola_chunk: -2 }"));
    EXPECT_TRUE(any_has(n, "peft.nola_num_basis_b: must be > 0"));
    EXPECT_TRUE(any_has(n, "peft.nola_chunk: must be > 0"));
    const auto s = load_errors(write_temp("peft_s.pbtxt", "peft { method: SORA sora_lambda_max: 1 sora_schedule_interval: 0 }"));
    EXPECT_TRUE(any_has(s, "peft.sora_schedule_interval: must be > 0"));
    const auto sp = load_errors(write_temp("peft_sp.pbtxt",
                                           "peft { method: SPIEL spiel_density: 0 spiel_reselection_steps: 4 "
                                           "spiel_accumulation_steps: 4 spiel_reselection_rate: 1.5 lora_dropout: 0.1 }"));
    EXPECT_TRUE(any_has(sp, "peft.spiel_density: must be in (0, 1]"));
    EXPECT_TRUE(any_has(sp, "peft.spiel_accumulation_steps: must be in [0, peft.spiel_reselection_steps)"));
    EXPECT_TRUE(any_has(sp, "peft.spiel_reselection_rate: must be in [0, 1]"));
    EXPECT_TRUE(any_has(sp, "peft.lora_dropout: does not apply to SPIEL"));
    const auto sb = load_errors(write_temp("peft_sb2.pbtxt", "peft { method: SPIEL spiel_budget: -5 }"));
    EXPECT_TRUE(any_has(sb, "peft.spiel_budget: must be >= 0"));
    // A budget set, the density is not checked; the SPIEL fields without a method are an error.
    EXPECT_TRUE(load_errors_or_empty(write_temp("peft_sb3.pbtxt", "name: \"x\" train { steps: 10 } peft { method: SPIEL spiel_budget: 100 spiel_density: 0 }")).empty());
    EXPECT_TRUE(any_has(load_errors(write_temp("peft_sb4.pbtxt", "peft { spiel_budget: 100 }")),
                        "peft.spiel_budget is set"));
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
