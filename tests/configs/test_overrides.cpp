// `--set a.b.c=value` overrides: numbers, strings, enums, bools, nested paths and blocks, and
// errors that name the override and suggest the field meant.
#include <gmock/gmock.h>

#include "config_test_util.h"

namespace lathe::configs {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::load_errors;

std::vector<std::string> override_errors(const std::vector<std::string>& specs) {
  RunConfig c;
  try {
    apply_overrides(c, specs);
  } catch (const ConfigError& e) {
    return e.errors();
  }
  ADD_FAILURE() << "no throw";
  return {};
}

TEST(ConfigOverrides, NumbersStringsEnumsBoolsNested) {
  const RunConfig c = load_config("configs/quickstart.pbtxt",
                                  {"optimizer.lr=1e-3", "train.steps=50", "name=exp2", "train.precision=bf16",
                                   "model.arch=LLAMA", "model.n_kv_head=2", "sample.prompt=Once \"upon\" a\ttime",
                                   "logging.tensorboard=yes", "data.synthetic.seed=7", "train.seed=18446744073709551615",
                                   "schedule.kind=Linear", "schedule.warmup_steps=10"});
  EXPECT_DOUBLE_EQ(c.optimizer().lr(), 1e-3);
  EXPECT_EQ(c.train().steps(), 50);
  EXPECT_EQ(c.name(), "exp2");
  EXPECT_EQ(c.run_dir(), "runs/exp2");  // resolved after the overrides
  EXPECT_EQ(c.train().precision(), TrainConfig::BF16);
  EXPECT_EQ(c.model().arch(), ModelConfig::LLAMA);
  EXPECT_EQ(c.model().n_kv_head(), 2);
  EXPECT_EQ(c.sample().prompt(), "Once \"upon\" a\ttime");  // taken literally
  EXPECT_TRUE(c.logging().tensorboard());
  EXPECT_EQ(c.data().synthetic().seed(), 7u);
  EXPECT_EQ(c.train().seed(), 18446744073709551615ull);
  EXPECT_EQ(c.schedule().kind(), ScheduleConfig::LINEAR);
  // Untouched values stay as in the file.
  EXPECT_EQ(c.model().d_model(), 96);
  EXPECT_EQ(c.train().micro_batch(), 16);
}

TEST(ConfigOverrides, LaterOverrideWinsAndBlocksMerge) {
  RunConfig c;
  apply_overrides(c, {"optimizer.lr=0.1", "optimizer={lr: 0.01 beta2: 0.95}", "optimizer.beta1=0.8",
                      "logging.jsonl=off", "model.init_from="});
  EXPECT_DOUBLE_EQ(c.optimizer().lr(), 0.01);
  EXPECT_DOUBLE_EQ(c.optimizer().beta2(), 0.95);
  EXPECT_DOUBLE_EQ(c.optimizer().beta1(), 0.8);
  EXPECT_FALSE(c.logging().jsonl());
  EXPECT_TRUE(c.model().has_init_from());
  EXPECT_EQ(c.model().init_from(), "");
  // camelCase (JSON) names are accepted too.
  apply_override(c, "train.microBatch=3");
  EXPECT_EQ(c.train().micro_batch(), 3);
}

TEST(ConfigOverrides, UnknownPathNamesOverrideAndSuggests) {
  EXPECT_THAT(override_errors({"train.stpes=5"}),
              ElementsAre("override \"train.stpes=5\": train (lathe.TrainConfig) has no field \"stpes\" "
                          "(did you mean \"steps\"?)"));
  EXPECT_THAT(override_errors({"trian.steps=5"}),
              ElementsAre("override \"trian.steps=5\": RunConfig has no field \"trian\" (did you mean \"train\"?)"));
  EXPECT_THAT(override_errors({"train.lr=5"})[0], HasSubstr("did you mean \"optimizer.lr\"?"));
  EXPECT_THAT(override_errors({"train.steps.x=5"}),
              ElementsAre("override \"train.steps.x=5\": train.steps is a int64, not a section; it has no field \"x\""));
}

TEST(ConfigOverrides, BadValuesNameTheOverride) {
  EXPECT_THAT(override_errors({"train.steps=abc"}),
              ElementsAre("override \"train.steps=abc\": invalid value for train.steps (int64): "
                          "Expected integer, got: abc"));
  EXPECT_THAT(override_errors({"train.precision=fp8"}),
              ElementsAre("override \"train.precision=fp8\": \"fp8\" is not a value of train.precision "
                          "(lathe.TrainConfig.Precision) (valid values: F32, BF16)"));
  EXPECT_THAT(override_errors({"train.precision=bf61"})[0], HasSubstr("(did you mean \"BF16\"?)"));
  EXPECT_THAT(override_errors({"logging.jsonl=maybe"}),
              ElementsAre("override \"logging.jsonl=maybe\": logging.jsonl is a bool: use true or false (got \"maybe\")"));
  EXPECT_THAT(override_errors({"steps"}),
              ElementsAre("override \"steps\": expected path=value, e.g. optimizer.lr=3e-4"));
  EXPECT_THAT(override_errors({"train=5"})[0], HasSubstr("train is a section (lathe.TrainConfig)"));
  // A value cannot smuggle in other fields.
  EXPECT_THAT(override_errors({"train.steps=1 } name: \"x\""})[0], HasSubstr("train.steps is a int64"));
  EXPECT_THAT(override_errors({"train.micro_batch=99999999999"})[0], HasSubstr("invalid value for train.micro_batch"));
}

TEST(ConfigOverrides, AllBadOverridesReportedTogether) {
  const auto errors = override_errors({"train.stpes=5", "optimizer.lr=0.1", "model.n_layr=2"});
  ASSERT_EQ(errors.size(), 2u);
  EXPECT_THAT(errors[0], HasSubstr("train.stpes=5"));
  EXPECT_THAT(errors[1], HasSubstr("model.n_layr=2"));
  EXPECT_THAT(errors[1], HasSubstr("did you mean \"n_layer\"?"));
}

TEST(ConfigOverrides, SemanticErrorNamesTheOverride) {
  const std::string path = "configs/quickstart.pbtxt";
  EXPECT_THAT(load_errors(path, {"train.micro_batch=0"}),
              ElementsAre(path + ": override \"train.micro_batch=0\": train.micro_batch: must be > 0 (got 0)"));
  EXPECT_THAT(load_errors(path, {"train.epochs=2"}),
              ElementsAre(path + ": override \"train.epochs=2\": train: set exactly one of steps and epochs "
                                 "(got steps 300, epochs 2)"));
  // Fixing the file's value from the command line makes it valid.
  EXPECT_NO_THROW(load_config(path, {"train.epochs=2", "train.steps=0", "schedule.warmup_steps=0"}));
}

}  // namespace
}  // namespace lathe::configs
