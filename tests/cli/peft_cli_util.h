// Shared pieces of the `lathe finetune` / `lathe export` PEFT tests: a tiny base in the Hugging
// Face layout with a text corpus and a fine-tuning config beside it, and the logit gaps between
// the base with the exported adapter loaded, the merged export and the bare base.
#pragma once

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "autograd/grad_mode.h"
#include "models/hf_export.h"
#include "models/hf_import.h"
#include "tests/common/test_helpers.h"

namespace lathe::cli_test {

// Writes <dir>/base (the model of `spec`, seed 5), <dir>/corpus.txt (40 kB of Tiny Shakespeare)
// and <dir>/ft.pbtxt, fine-tuning that base for `steps` steps into <dir>/run with `peft` (a whole
// peft { ... } section); returns the config's path.
inline std::string write_finetune_setup(const std::string& dir, const models::ModelSpec& spec, int steps,
                                        const std::string& peft) {
  models::save_hf_model(*models::build_model(spec, 5), dir + "/base");
  test::write_file(dir + "/corpus.txt", test::read_file("../shared/data/tinyshakespeare.txt").substr(0, 40000));
  const std::string cfg = dir + "/ft.pbtxt";
  test::write_file(cfg, "name: \"ft\"\nrun_dir: \"" + dir + "/run\"\nmodel { init_from: \"" + dir + "/base\" }\n" +
                            "data { source: TEXT path: \"" + dir + "/corpus.txt\" tokenizer: \"byte\" }\n" +
                            "optimizer { lr: 1e-2 }\ntrain { steps: " + std::to_string(steps) +
                            " micro_batch: 4 seq_len: 64 eval_batches: 1 log_interval: 1 }\n"
                            "logging { progress: NONE }\nparallel { threads_per_rank: 1 }\n" + peft);
  return cfg;
}

inline models::ModelSpec tiny_gpt2_spec() {
  models::ModelSpec s;
  s.arch = models::Arch::gpt2;
  s.vocab_size = 256;
  s.n_layer = 2;
  s.n_head = 2;
  s.d_model = 32;
  s.max_seq_len = 64;
  return s;
}

struct ExportGaps {
  double adapter_vs_merged = 0;  // max |logit| difference: base + adapter vs merged export
  double adapter_vs_base = 0;    // base + adapter vs the bare base (the adapter did something)
};

// `load(model, adapter_dir)` attaches the adapter (LoRA layout or SpIEL's SFT layout).
template <class LoadAdapter>
ExportGaps export_gaps(const std::string& base_dir, const std::string& adapter_dir, const std::string& merged_dir,
                       LoadAdapter load) {
  auto with_adapter = models::load_hf_model(base_dir);
  load(*with_adapter, adapter_dir);
  auto merged = models::load_hf_model(merged_dir);
  auto base = models::load_hf_model(base_dir);
  const Tensor ids = Tensor::from_vector<int64_t>({72, 101, 108, 108, 111, 44, 32, 119, 111, 114}, {1, 10});
  autograd::NoGradGuard ng;
  with_adapter->eval();
  merged->eval();
  base->eval();
  auto diff = [](const Tensor& a, const Tensor& b) {
    std::vector<float> x = a.contiguous().to_vector<float>(), y = b.contiguous().to_vector<float>();
    double m = 0;
    for (size_t i = 0; i < x.size(); ++i) m = std::max(m, static_cast<double>(std::abs(x[i] - y[i])));
    return m;
  };
  const Tensor la = with_adapter->forward(ids);
  return {diff(la, merged->forward(ids)), diff(la, base->forward(ids))};
}

}  // namespace lathe::cli_test
