// resolve(): makes a RunConfig fully explicit, and the d_ff rule it needs.
#include "configs/config.h"

namespace lathe::configs {

namespace gp = google::protobuf;

namespace {

// Writes every unset singular field's default into the message (recursing into sections),
// so the printed and stored config shows every knob, not just the ones a file mentioned.
// Members of a oneof are left alone: setting one would clear its siblings.
void materialize(gp::Message* m) {
  const gp::Descriptor* d = m->GetDescriptor();
  const gp::Reflection* r = m->GetReflection();
  for (int i = 0; i < d->field_count(); ++i) {
    const gp::FieldDescriptor* f = d->field(i);
    if (f->is_repeated()) {
      if (f->cpp_type() == gp::FieldDescriptor::CPPTYPE_MESSAGE)
        for (int k = 0; k < r->FieldSize(*m, f); ++k) materialize(r->MutableRepeatedMessage(m, f, k));
      continue;
    }
    if (f->containing_oneof() != nullptr) {
      if (f->cpp_type() == gp::FieldDescriptor::CPPTYPE_MESSAGE && r->HasField(*m, f))
        materialize(r->MutableMessage(m, f));
      continue;
    }
    if (f->cpp_type() == gp::FieldDescriptor::CPPTYPE_MESSAGE) {
      materialize(r->MutableMessage(m, f));
      continue;
    }
    if (r->HasField(*m, f)) continue;
    switch (f->cpp_type()) {
      case gp::FieldDescriptor::CPPTYPE_INT32: r->SetInt32(m, f, f->default_value_int32()); break;
      case gp::FieldDescriptor::CPPTYPE_INT64: r->SetInt64(m, f, f->default_value_int64()); break;
      case gp::FieldDescriptor::CPPTYPE_UINT32: r->SetUInt32(m, f, f->default_value_uint32()); break;
      case gp::FieldDescriptor::CPPTYPE_UINT64: r->SetUInt64(m, f, f->default_value_uint64()); break;
      case gp::FieldDescriptor::CPPTYPE_DOUBLE: r->SetDouble(m, f, f->default_value_double()); break;
      case gp::FieldDescriptor::CPPTYPE_FLOAT: r->SetFloat(m, f, f->default_value_float()); break;
      case gp::FieldDescriptor::CPPTYPE_BOOL: r->SetBool(m, f, f->default_value_bool()); break;
      case gp::FieldDescriptor::CPPTYPE_ENUM: r->SetEnum(m, f, f->default_value_enum()); break;
      case gp::FieldDescriptor::CPPTYPE_STRING: r->SetString(m, f, f->default_value_string()); break;
      case gp::FieldDescriptor::CPPTYPE_MESSAGE: break;
    }
  }
}

}  // namespace

int64_t default_d_ff(const ModelConfig& model) {
  const int64_t d = model.d_model();
  if (model.arch() != ModelConfig::LLAMA) return 4 * d;
  // Llama: SwiGLU has three matrices instead of two, so the hidden width is 2/3 of 4*d to
  // keep the parameter count, rounded up to a multiple for efficient kernels.
  const int64_t hidden = 2 * (4 * d) / 3;
  const int64_t mult = model.ffn_multiple_of() > 0 ? model.ffn_multiple_of() : 1;
  return (hidden + mult - 1) / mult * mult;
}

void resolve(RunConfig& cfg) {
  ModelConfig* model = cfg.mutable_model();
  if (!model->has_bias()) model->set_bias(model->arch() == ModelConfig::GPT2);
  // LoRA-SB / LoRA-XS: both references force lora_alpha = r (scale 1); an unset alpha follows.
  if (cfg.has_peft() && cfg.peft().method() == PeftConfig::LORA_SB && !cfg.peft().has_lora_alpha())
    cfg.mutable_peft()->set_lora_alpha(cfg.peft().r());
  // GaLore and Fira reproduce their reference code by default: the HF-style AdamW inside,
  // with its eps of 1e-6 (../shared/specs/optimizers.md, decisions).
  OptimizerConfig* opt = cfg.mutable_optimizer();
  const bool galore_family = opt->type() == OptimizerConfig::GALORE || opt->type() == OptimizerConfig::FIRA;
  if (!opt->has_adamw_variant()) opt->set_adamw_variant(galore_family ? OptimizerConfig::HF : OptimizerConfig::TORCH);
  if (!opt->has_eps() && galore_family) opt->set_eps(1e-6);
  if (!opt->eight_bit().has_f32_params()) opt->mutable_eight_bit()->set_f32_params(kDefaultEightBitF32Params);
  materialize(&cfg);

  if (cfg.run_dir().empty()) cfg.set_run_dir("runs/" + cfg.name());
  if (model->n_kv_head() == 0) model->set_n_kv_head(model->n_head());
  if (model->d_ff() == 0) model->set_d_ff(static_cast<int32_t>(default_d_ff(*model)));
  // With init_from the architecture (and so the vocabulary and the default sequence length)
  // comes from the source model, which the trainer reads (train/init_from.h); until then these
  // stay "auto".
  const bool pretrained = !model->init_from().empty();
  DataConfig* data = cfg.mutable_data();
  if ((data->tokenizer().empty() || data->tokenizer() == "auto") && !pretrained) data->set_tokenizer("byte");
  if (data->tokenizer().empty()) data->set_tokenizer("auto");
  if (!pretrained) {
    if (model->vocab_size() == 0 && data->tokenizer() == "byte") model->set_vocab_size(256);
    if (cfg.train().seq_len() == 0) cfg.mutable_train()->set_seq_len(model->max_seq_len());
  }
  if (cfg.checkpoint().dir().empty()) cfg.mutable_checkpoint()->set_dir(cfg.run_dir() + "/checkpoints");
  if (cfg.sample().seed() == 0) cfg.mutable_sample()->set_seed(cfg.train().seed());
}

}  // namespace lathe::configs
