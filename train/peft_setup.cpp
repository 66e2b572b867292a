#include "train/peft_setup.h"

#include <algorithm>
#include <filesystem>

namespace lathe::train {

namespace {

template <typename Map, typename V>
std::vector<std::pair<std::string, V>> ordered(const Map& m) {
  std::vector<std::pair<std::string, V>> out;
  for (const auto& [k, v] : m) out.emplace_back(k, static_cast<V>(v));
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
    return a.first.size() != b.first.size() ? a.first.size() > b.first.size() : a.first < b.first;
  });
  return out;
}

}  // namespace

bool peft_enabled(const RunConfig& cfg) { return cfg.peft().method() != PeftConfig::OFF; }

peft::PeftOptions peft_options(const RunConfig& cfg) {
  const PeftConfig& c = cfg.peft();
  peft::PeftOptions o;
  o.target.names.assign(c.target_modules().begin(), c.target_modules().end());
  o.target.regex = c.target_regex();
  o.exclude.names.assign(c.exclude_modules().begin(), c.exclude_modules().end());
  o.exclude.regex = c.exclude_regex();
  o.rank_pattern = ordered<decltype(c.rank_pattern()), int64_t>(c.rank_pattern());
  o.alpha_pattern = ordered<decltype(c.alpha_pattern()), double>(c.alpha_pattern());
  o.modules_to_save.assign(c.modules_to_save().begin(), c.modules_to_save().end());
  switch (c.bias()) {
    case PeftConfig::NONE: o.bias = peft::BiasMode::none; break;
    case PeftConfig::ALL: o.bias = peft::BiasMode::all; break;
    case PeftConfig::LORA_ONLY: o.bias = peft::BiasMode::lora_only; break;
  }
  o.lora.r = c.r();
  o.lora.alpha = c.lora_alpha();
  o.lora.dropout = c.lora_dropout();
  o.lora.use_rslora = c.use_rslora();
  o.lora.init = c.init() == PeftConfig::GAUSSIAN ? peft::LoraInit::gaussian : peft::LoraInit::kaiming;
  o.seed = c.seed() != 0 ? c.seed() : cfg.train().seed();
  return o;
}

std::string adapter_dir(const RunConfig& cfg) {
  if (!cfg.peft().adapter_dir().empty()) return cfg.peft().adapter_dir();
  return (std::filesystem::path(cfg.run_dir()) / "adapter").string();
}

}  // namespace lathe::train
