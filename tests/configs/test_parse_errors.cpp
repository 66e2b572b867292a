// Parse errors name file:line:col (1-based, byte columns) exactly, all of them at once, with a
// spelling suggestion for unknown names.
#include <gmock/gmock.h>

#include "config_test_util.h"
#include "configs/suggest.h"

namespace lathe::configs {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::load_errors;
using testing::write_temp;

TEST(ConfigParseErrors, SyntaxErrorAtExactPosition) {
  // Line 3: "  steps 100": the value starts at byte 9 and a ':' was expected before it.
  const std::string path = write_temp("syntax.pbtxt", "name: \"bad\"\ntrain {\n  steps 100\n}\n");
  EXPECT_THAT(load_errors(path), ElementsAre(path + ":3:9: Expected \":\", found \"100\"."));
}

TEST(ConfigParseErrors, TabCountsAsOneColumn) {
  // protobuf's column expands the tab to 8; we print byte columns: "\tsteps " is 7 bytes.
  const std::string path = write_temp("tab.pbtxt", "name: \"bad\"\ntrain {\n\tsteps 100\n}\n");
  EXPECT_THAT(load_errors(path), ElementsAre(path + ":3:8: Expected \":\", found \"100\"."));
}

TEST(ConfigParseErrors, UnclosedSectionPointsAtEndOfFile) {
  const std::string path = write_temp("unclosed.pbtxt", "train {\n  steps: 5\n");
  const auto errors = load_errors(path);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_THAT(errors[0], HasSubstr(path + ":3:1: "));
}

TEST(ConfigParseErrors, EveryUnknownFieldWithSuggestion) {
  const std::string text =
      "name: \"typo\"\n"                               // 1
      "train {\n"                                      // 2
      "  steps: 100\n"                                 // 3
      "  micro_bach: 4\n"                              // 4
      "}\n"                                            // 5
      "optimizer { lr: 1e-3 wieght_decay: 0.1 }\n"     // 6: wieght_decay at byte 22
      "modle { n_layer: 2 }\n";                        // 7
  const std::string path = write_temp("unknown.pbtxt", text);
  EXPECT_THAT(load_errors(path),
              ElementsAre(path + ":4:3: Message type \"lathe.TrainConfig\" has no field named \"micro_bach\" "
                                 "(did you mean \"micro_batch\"?)",
                          path + ":6:22: Message type \"lathe.OptimizerConfig\" has no field named \"wieght_decay\" "
                                 "(did you mean \"weight_decay\"?)",
                          path + ":7:1: Message type \"lathe.RunConfig\" has no field named \"modle\" "
                                 "(did you mean \"model\"?)"));
}

TEST(ConfigParseErrors, TranspositionIsOneEdit) {
  const std::string path = write_temp("stpes.pbtxt", "train { stpes: 10 }\n");
  EXPECT_THAT(load_errors(path), ElementsAre(path + ":1:9: Message type \"lathe.TrainConfig\" has no field named "
                                                    "\"stpes\" (did you mean \"steps\"?)"));
}

TEST(ConfigParseErrors, FieldInTheWrongSectionPointsToItsHome) {
  const std::string path = write_temp("section.pbtxt", "train {\n  steps: 10\n  lr: 0.1\n}\n");
  const auto errors = load_errors(path);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_THAT(errors[0], HasSubstr(path + ":3:3: Message type \"lathe.TrainConfig\" has no field named \"lr\""));
  EXPECT_THAT(errors[0], HasSubstr("did you mean \"optimizer.lr\"?"));
}

TEST(ConfigParseErrors, UnrelatedNameGetsNoSuggestion) {
  const std::string path = write_temp("unrelated.pbtxt", "train { xyzzy: 1 }\n");
  const auto errors = load_errors(path);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0], path + ":1:9: Message type \"lathe.TrainConfig\" has no field named \"xyzzy\"");
}

TEST(ConfigParseErrors, WrongTypeNamesThePosition) {
  // Line 2: '  steps: "many"': the string starts at byte 10.
  const std::string path = write_temp("type.pbtxt", "train {\n  steps: \"many\"\n}\n");
  EXPECT_THAT(load_errors(path), ElementsAre(path + ":2:10: Expected integer, got: \"many\""));
  const std::string frac = write_temp("frac.pbtxt", "train { micro_batch: 1.5 }\n");
  EXPECT_THAT(load_errors(frac), ElementsAre(frac + ":1:22: Expected integer, got: 1.5"));
}

TEST(ConfigParseErrors, BadEnumPointsAtTheValueAndSuggests) {
  // protobuf reports the token after the value (line 3); the error is moved onto "BF61".
  const std::string path = write_temp("enum.pbtxt", "train {\n  precision: BF61\n}\n");
  EXPECT_THAT(load_errors(path), ElementsAre(path + ":2:14: Unknown enumeration value of \"BF61\" for field "
                                                    "\"precision\" (did you mean \"BF16\"?)"));
  const std::string far = write_temp("enum2.pbtxt", "model { arch: TRANSFORMER }\n");
  EXPECT_THAT(load_errors(far), ElementsAre(far + ":1:15: Unknown enumeration value of \"TRANSFORMER\" for field "
                                                  "\"arch\" (valid values: GPT2, LLAMA)"));
}

TEST(ConfigParseErrors, RepeatedSingularFieldIsAnError) {
  const std::string path = write_temp("twice.pbtxt", "train {\n  steps: 1\n  steps: 2\n}\n");
  EXPECT_THAT(load_errors(path),
              ElementsAre(path + ":3:3: Non-repeated field \"steps\" is specified multiple times."));
}

TEST(ConfigParseErrors, MissingFileIsClear) {
  try {
    load_config("configs/does_not_exist.pbtxt");
    FAIL() << "no throw";
  } catch (const ConfigError& e) {
    EXPECT_THAT(e.what(), HasSubstr("configs/does_not_exist.pbtxt: config file not found"));
  }
  EXPECT_THROW(load_config("configs"), ConfigError);  // a directory
}

TEST(ConfigParseErrors, ParseTextNamesItsOrigin) {
  try {
    parse_text("name: \"x\"\ntrain { setps: 1 }\n", "ckpt/step_00000100/config");
    FAIL() << "no throw";
  } catch (const ConfigError& e) {
    ASSERT_EQ(e.errors().size(), 1u);
    EXPECT_THAT(e.errors()[0], HasSubstr("ckpt/step_00000100/config:2:9: "));
    EXPECT_THAT(e.errors()[0], HasSubstr("(did you mean \"steps\"?)"));
    // A ConfigError is a lathe::Error for callers that catch those.
    const lathe::Error& base = e;
    EXPECT_THAT(base.what(), HasSubstr("ckpt/step_00000100/config"));
  }
}

TEST(ConfigParseErrors, EveryTruncationParsesOrFailsCleanly) {
  // Cutting the quickstart file anywhere must give a config or a located ConfigError.
  std::ifstream in("configs/quickstart.pbtxt");
  const std::string full((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_FALSE(full.empty());
  int failed = 0;
  for (size_t n = 0; n <= full.size(); ++n) {
    try {
      parse_text(full.substr(0, n), "cut.pbtxt");
    } catch (const ConfigError& e) {
      ++failed;
      ASSERT_FALSE(e.errors().empty());
      EXPECT_EQ(e.errors()[0].rfind("cut.pbtxt:", 0), 0u) << e.errors()[0];
    }
  }
  EXPECT_GT(failed, 0);
}

TEST(ConfigEditDistance, Values) {
  EXPECT_EQ(detail::edit_distance("steps", "steps"), 0);
  EXPECT_EQ(detail::edit_distance("stpes", "steps"), 1);   // transposition
  EXPECT_EQ(detail::edit_distance("step", "steps"), 1);    // insertion
  EXPECT_EQ(detail::edit_distance("kitten", "sitting"), 3);
  EXPECT_EQ(detail::edit_distance("LR", "lr"), 0);         // case-insensitive
  EXPECT_EQ(detail::edit_distance("", "abc"), 3);
}

}  // namespace
}  // namespace lathe::configs
