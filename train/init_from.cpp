// Starting from pretrained weights; see init_from.h.
#include "train/init_from.h"

#include "train/parallel_layout.h"

#include <filesystem>

#include <google/protobuf/text_format.h>

#include "models/hf_config.h"
#include "models/hf_import.h"
#include "train/checkpoint.h"
#include "train/run_setup.h"

namespace fs = std::filesystem;

namespace lathe::train {

using configs::ConfigError;

namespace {

bool is_file(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

// The run config's model fields that the source replaced with other values, as
// "n_layer 4 -> 12". Fields still at their schema default and the ones resolve() derives
// (d_ff, n_kv_head, bias) are left out: the user did not choose those.
std::string replaced_fields(const ModelConfig& before, const ModelConfig& after) {
  namespace gp = google::protobuf;
  const gp::Descriptor* d = ModelConfig::descriptor();
  const gp::Reflection* r = before.GetReflection();
  std::string out;
  for (int i = 0; i < d->field_count(); ++i) {
    const gp::FieldDescriptor* f = d->field(i);
    const std::string& name = f->name();
    if (name == "dropout" || name == "dtype" || name == "init_from" || name == "d_ff" || name == "n_kv_head" ||
        name == "bias" || name == "ffn_multiple_of" || f->is_repeated())
      continue;
    std::string a, b, dflt;
    if (f->cpp_type() == gp::FieldDescriptor::CPPTYPE_MESSAGE) {
      // rope_scaling: only when the run config switched scaling on.
      if (before.rope_scaling().type() == RopeScalingConfig::NONE) continue;
      gp::TextFormat::Printer p;
      p.SetSingleLineMode(true);
      p.PrintToString(r->GetMessage(before, f), &a);
      p.PrintToString(r->GetMessage(after, f), &b);
      a = "{ " + a + "}";
      b = "{ " + b + "}";
    } else {
      gp::TextFormat::PrintFieldValueToString(before, f, -1, &a);
      gp::TextFormat::PrintFieldValueToString(after, f, -1, &b);
      const ModelConfig empty;
      gp::TextFormat::PrintFieldValueToString(empty, f, -1, &dflt);
      if (a == dflt || (f->cpp_type() == gp::FieldDescriptor::CPPTYPE_INT32 && a == "0")) continue;
    }
    if (a != b) out += (out.empty() ? "" : ", ") + name + " " + a + " -> " + b;
  }
  return out;
}

InitSource hugging_face_source(const RunConfig& cfg, const std::string& dir) {
  InitSource s;
  s.kind = InitSource::Kind::hugging_face;
  s.path = cfg.model().init_from();
  s.weights = dir;
  models::HfConfig hf;
  try {
    hf = models::read_hf_config(dir);
  } catch (const lathe::Error& e) {
    throw ConfigError("config", {"model.init_from: " + e.message()});
  }
  s.spec = hf.spec;
  s.description = "Hugging Face " + hf.model_type + " model " + dir + " (" +
                  std::to_string(models::count_parameters(hf.spec)) + " parameters" +
                  (hf.torch_dtype.empty() ? "" : ", stored as " + hf.torch_dtype) + ")";
  return s;
}

InitSource lathe_source(const RunConfig& cfg, const std::string& path, std::string* stored_tokenizer) {
  InitSource s;
  s.kind = InitSource::Kind::lathe;
  s.path = cfg.model().init_from();
  try {
    s.weights = find_checkpoint_file(path);
  } catch (const lathe::Error& e) {
    throw ConfigError("config", {"model.init_from: \"" + path +
                                 "\" is neither a Hugging Face model directory (config.json + *.safetensors) nor a "
                                 "lathe checkpoint (" + e.message() + ")"});
  }
  TrainState st;
  RunConfig stored;
  try {
    st = read_train_state(s.weights);
    stored = configs::parse_text(st.config_text, s.weights + ":config");
    configs::resolve(stored);
  } catch (const lathe::Error& e) {
    throw ConfigError("config", {"model.init_from: cannot read the config stored in " + s.weights + ": " + e.message()});
  }
  if (stored.model().vocab_size() <= 0)
    throw ConfigError("config", {"model.init_from: the config stored in " + s.weights + " has no model.vocab_size"});
  s.spec = model_spec(stored.model());
  *stored_tokenizer = stored.data().tokenizer();
  s.description = "lathe checkpoint " + s.weights + " (run \"" + stored.name() + "\", step " +
                  std::to_string(st.step) + ", " + std::to_string(models::count_parameters(s.spec)) + " parameters)";
  return s;
}

}  // namespace

InitSource apply_init_from(RunConfig& cfg) {
  const std::string path = cfg.model().init_from();
  if (path.empty()) return {};
  std::error_code ec;
  if (!fs::exists(path, ec))
    throw ConfigError("config", {"model.init_from: \"" + path + "\" does not exist (expected a Hugging Face model "
                                 "directory with config.json and *.safetensors, or a lathe checkpoint/run directory)"});
  const bool hf = fs::is_directory(path, ec) && is_file(fs::path(path) / "config.json");
  std::string stored_tokenizer;
  InitSource s = hf ? hugging_face_source(cfg, path) : lathe_source(cfg, path, &stored_tokenizer);
  s.spec.dropout = cfg.model().dropout();
  try {
    s.spec.validate();
  } catch (const lathe::Error& e) {
    throw ConfigError("config", {"model.init_from: " + path + ": " + e.message()});
  }

  const ModelConfig before = cfg.model();
  set_model_config(cfg.mutable_model(), s.spec);
  const std::string replaced = replaced_fields(before, cfg.model());
  s.notes.push_back("model: the architecture comes from model.init_from (" + path +
                    "); the config's other model fields (all but dropout) are ignored" +
                    (replaced.empty() ? "" : " (replaced: " + replaced + ")"));

  DataConfig* d = cfg.mutable_data();
  if (d->tokenizer().empty() || d->tokenizer() == "auto") {
    if (!hf) {
      d->set_tokenizer(stored_tokenizer);
    } else if (is_file(fs::path(path) / "tokenizer.json") ||
               (is_file(fs::path(path) / "vocab.json") && is_file(fs::path(path) / "merges.txt"))) {
      d->set_tokenizer(path);
    } else {
      throw ConfigError("config", {"data.tokenizer: \"auto\" takes the tokenizer of model.init_from, but " + path +
                                   " has no tokenizer.json (nor vocab.json + merges.txt); set data.tokenizer to a "
                                   "tokenizer.json path or \"byte\""});
    }
  }
  if (cfg.train().seq_len() == 0) cfg.mutable_train()->set_seq_len(static_cast<int32_t>(s.spec.max_seq_len));
  if (cfg.train().seq_len() > s.spec.max_seq_len)
    throw ConfigError("config", {"train.seq_len: " + std::to_string(cfg.train().seq_len()) +
                                 " is longer than the context of model.init_from (max_seq_len " +
                                 std::to_string(s.spec.max_seq_len) + ")"});
  return s;
}

void load_init_weights(const InitSource& source, models::CausalLM& model) {
  switch (source.kind) {
    case InitSource::Kind::none: return;
    case InitSource::Kind::hugging_face: models::load_hf_weights(model, source.weights); return;
    case InitSource::Kind::lathe: load_full_model_weights(source.weights, model); return;
  }
}

}  // namespace lathe::train
