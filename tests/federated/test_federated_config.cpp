// Validation of the federated section: each rule's error names the field.
#include <gtest/gtest.h>

#include "configs/config.h"

namespace lathe {
namespace {

// The ConfigError text of loading the tests' run with these overrides ("" when it loads).
std::string error_of(const std::vector<std::string>& sets) {
  try {
    configs::load_config("tests/federated/data/tiny_fed.pbtxt", sets);
  } catch (const configs::ConfigError& e) {
    return e.what();
  }
  return "";
}

TEST(FederatedConfig, TheTestsRunIsValid) { EXPECT_EQ(error_of({}), ""); }

TEST(FederatedConfig, ErrorsNameTheField) {
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"federated.strategy=FED_SB"}, "peft.method: federated.strategy FED_SB trains LoRA-SB adapters"},
      {{"federated.strategy=FFA_LORA", "peft.method=LORA_SB"}, "peft.method: federated.strategy FFA_LORA needs peft.method LORA"},
      {{"federated.min_clients=5"}, "federated.min_clients: must be <= federated.clients"},
      {{"federated.client_fraction=0"}, "federated.client_fraction: must be in (0, 1]"},
      {{"federated.label_field="}, "federated.label_field: must name a JSONL field for partition DIRICHLET"},
      {{"data.val_path="}, "federated.partition: DIRICHLET reads label_field"},
      {{"federated.dirichlet_alpha=0"}, "federated.dirichlet_alpha: must be > 0"},
      {{"federated.privacy.noise_multiplier=1"}, "federated.privacy.noise_multiplier: needs federated.privacy.clip_norm > 0"},
      {{"federated.privacy.clip_norm=1", "federated.privacy.delta=1"}, "federated.privacy.delta: must be in (0, 1)"},
      {{"federated.rounds=0"}, "federated.rounds: must be > 0"},
      {{"train.epochs=1"}, "train.epochs: is not used by federated training"},
      {{"peft.bias=ALL"}, "peft.bias: federated training averages adapter factors only"},
      {{"peft.method=OFF"}, "peft.method: federated.strategy FEDAVG needs peft.method LORA"},
      {{"federated.strategy=OFF"}, "federated.strategy: is OFF (the default), but federated."},
  };
  for (const auto& [sets, expected] : cases) {
    const std::string err = error_of(sets);
    EXPECT_NE(err.find(expected), std::string::npos) << sets[0] << " gave: " << err;
  }
}

TEST(FederatedConfig, FloraClientRanksMustFitPeftR) {
  RunConfig cfg = configs::load_config("tests/federated/data/tiny_fed.pbtxt", {"federated.strategy=FLORA"});
  cfg.mutable_federated()->add_client_ranks(2);
  cfg.mutable_federated()->add_client_ranks(5);  // peft.r is 4
  auto errs = configs::validate(cfg);
  ASSERT_EQ(errs.size(), 1u);
  EXPECT_NE(errs[0].find("federated.client_ranks: entry 1 must be in [1, peft.r = 4] (got 5)"), std::string::npos) << errs[0];
  cfg.mutable_federated()->set_strategy(FederatedConfig::FEDAVG);
  cfg.mutable_federated()->set_client_ranks(1, 4);
  errs = configs::validate(cfg);
  ASSERT_EQ(errs.size(), 1u);
  EXPECT_NE(errs[0].find("federated.client_ranks: per-client ranks are for strategy FLORA"), std::string::npos);
}

}  // namespace
}  // namespace lathe
