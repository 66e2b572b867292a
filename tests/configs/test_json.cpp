// JSON configs: the same schema, the same error contract (file:line:col), and the same
// result as the equivalent text file.
#include <gmock/gmock.h>
#include <google/protobuf/util/message_differencer.h>

#include "config_test_util.h"

namespace lathe::configs {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::load_errors;
using testing::write_temp;

// configs/quickstart.pbtxt written as JSON (proto names and camelCase both appear).
const char* kQuickstartJson = R"({
  "name": "quickstart",
  "model": {"arch": "GPT2", "n_layer": 4, "n_head": 4, "d_model": 96, "maxSeqLen": 128, "dropout": 0.0},
  "data": {"source": "SYNTHETIC", "tokenizer": "byte", "val_fraction": 0.1,
           "synthetic": {"seed": "0", "bytes": 1048576}},
  "optimizer": {"type": "ADAMW", "lr": 3e-3, "beta1": 0.9, "beta2": 0.95, "weight_decay": 0.1},
  "schedule": {"kind": "COSINE", "warmup_steps": 30, "min_lr_ratio": 0.1},
  "train": {"steps": 300, "micro_batch": 16, "grad_accum": 1, "seq_len": 128, "seed": 1337,
            "grad_clip": 1.0, "eval_interval": 100, "eval_batches": 10, "log_interval": 10},
  "checkpoint": {"interval": 100, "keep_last": 2},
  "logging": {"jsonl": true, "progress": "AUTO"},
  "sample": {"prompt": "the ", "max_new_tokens": 64, "temperature": 0.8, "top_k": 40, "at_eval": true}
}
)";

TEST(ConfigJson, LoadsAndEqualsTheTextConfig) {
  const std::string path = write_temp("quickstart.json", kQuickstartJson);
  const RunConfig from_json = load_config(path);
  const RunConfig from_text = load_config("configs/quickstart.pbtxt");
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(from_json, from_text))
      << to_text(from_json) << "\nvs\n" << to_text(from_text);
  // The extension decides; without one, a leading '{' means JSON.
  const std::string bare = write_temp("quickstart_config", kQuickstartJson);
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(load_config(bare), from_text));
}

TEST(ConfigJson, EveryUnknownKeyWithPositionAndSuggestion) {
  const std::string text =
      "{\n"                                          // 1
      "  \"train\": {\"stpes\": 10},\n"              // 2: "stpes" at byte 14
      "  \"optimizer\": {\n"                         // 3
      "    \"learning_rate\": 0.1\n"                 // 4
      "  },\n"                                       // 5
      "  \"modle\": {\"n_layer\": 2}\n"              // 6
      "}\n";
  const std::string path = write_temp("unknown.json", text);
  EXPECT_THAT(load_errors(path),
              ElementsAre(path + ":2:13: Message type \"lathe.TrainConfig\" has no field named \"stpes\" "
                                 "(did you mean \"steps\"?)",
                          path + ":4:5: Message type \"lathe.OptimizerConfig\" has no field named \"learning_rate\"",
                          path + ":6:3: Message type \"lathe.RunConfig\" has no field named \"modle\" "
                                 "(did you mean \"model\"?)"));
}

TEST(ConfigJson, SyntaxErrorPosition) {
  // Line 3 col 24: the second ',' where a key was expected.
  const std::string path = write_temp("syntax.json", "{\n  \"name\": \"x\",\n  \"train\": {\"steps\": 5,,}\n}\n");
  EXPECT_THAT(load_errors(path), ElementsAre(path + ":3:24: expected a quoted key, found ','"));
  const std::string open = write_temp("open.json", "{\"name\": \"x\"\n");
  EXPECT_THAT(load_errors(open), ElementsAre(open + ":2:1: expected ',' or '}' in an object, found end of file"));
}

TEST(ConfigJson, WrongTypeNamesTheKey) {
  const std::string path = write_temp("type.json", "{\n  \"train\": {\n    \"steps\": \"many\"\n  }\n}\n");
  const auto errors = load_errors(path);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_THAT(errors[0], HasSubstr(path + ":3:5: train.steps: "));
  EXPECT_THAT(errors[0], HasSubstr("many"));
}

TEST(ConfigJson, BadEnumSuggests) {
  const std::string path = write_temp("enum.json", "{\"train\": {\"precision\": \"BF61\"}}");
  const auto errors = load_errors(path);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_THAT(errors[0], HasSubstr(path + ":1:12: train.precision: invalid value \"BF61\""));
  EXPECT_THAT(errors[0], HasSubstr("(did you mean \"BF16\"?)"));
}

TEST(ConfigJson, EveryTruncationIsACleanError) {
  // A cut anywhere before the closing brace is a syntax error with a position, never a crash.
  const std::string full = kQuickstartJson;
  const size_t end = full.rfind('}');
  for (size_t n = 0; n <= end; ++n) {
    try {
      parse_json(full.substr(0, n), "cut.json");
      ADD_FAILURE() << "prefix of " << n << " bytes parsed";
    } catch (const ConfigError& e) {
      ASSERT_EQ(e.errors().size(), 1u);
      EXPECT_EQ(e.errors()[0].rfind("cut.json:", 0), 0u) << e.errors()[0];
    }
  }
  EXPECT_NO_THROW(parse_json(full.substr(0, end + 1), "whole.json"));
}

TEST(ConfigJson, SemanticErrorsPointAtTheKey) {
  const std::string path = write_temp("sem.json", "{\n  \"train\": {\"steps\": 10, \"micro_batch\": 0}\n}\n");
  EXPECT_THAT(load_errors(path), ElementsAre(path + ":2:26: train.micro_batch: must be > 0 (got 0)"));
}

}  // namespace
}  // namespace lathe::configs

namespace lathe::configs {
namespace {

// Errors protobuf's JSON tokenizer finds (a number beyond double, a broken literal) used to
// come through without a position; they are located at the offending byte.
TEST(ConfigJson, TokenizerErrorsHaveLineAndColumn) {
  const std::string big = testing::write_temp("huge.json", "{\n  \"optimizer\": {\n    \"lr\": 1e999\n  }\n}\n");
  EXPECT_THAT(testing::load_errors(big), ::testing::ElementsAre(big + ":3:11: Number exceeds the range of double"));
  const std::string bad = testing::write_temp("badnum.json", "{\"train\": {\n\"steps\": 9nan}}");
  const auto errors = testing::load_errors(bad);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].rfind(bad + ":2:", 0), 0u) << errors[0];
}

}  // namespace
}  // namespace lathe::configs
