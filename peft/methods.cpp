#include "peft/methods.h"

#include "core/error.h"

namespace lathe::peft {

const char* method_name(Method m) {
  switch (m) {
    case Method::lora: return "LoRA";
    case Method::lora_sb: return "LoRA-SB";
    case Method::sora: return "SoRA";
    case Method::nola: return "NOLA";
    case Method::spiel: return "SpIEL";
  }
  return "?";
}

std::shared_ptr<LoraLinear> make_adapter(std::shared_ptr<models::LinearLayer> base, const std::string& name,
                                         const LoraOptions& lo, const PeftOptions& o, Generator& gen,
                                         Generator* dropout_gen) {
  switch (o.method) {
    case Method::lora: return std::make_shared<LoraLinear>(std::move(base), lo, gen, dropout_gen);
    case Method::lora_sb: {
      auto l = std::make_shared<LoraSbLinear>(std::move(base), lo, dropout_gen);
      // LoRA-XS initialises here; LoRA-SB needs gradients, computed before training starts
      // (train/peft_setup.h init_adapters_from_gradients).
      if (!o.sb.gradient_init) l->init_from_weight(o.sb, gen);
      return l;
    }
    case Method::sora: return std::make_shared<SoraLinear>(std::move(base), lo, o.sora, gen, dropout_gen);
    case Method::nola: return std::make_shared<NolaLinear>(std::move(base), lo, o.nola, o.seed, name, dropout_gen);
    case Method::spiel: break;  // not of the LoRA family: inject_lora builds SparseDeltaLinear
  }
  LATHE_FAIL() << "peft: unknown method";
  return nullptr;
}

int64_t adapter_parameter_count(const PeftOptions& o, const PlannedAdapter& a) {
  switch (o.method) {
    case Method::lora: return a.r * (a.in + a.out);             // LoRA, section 4
    case Method::lora_sb: return a.r * a.r;                      // only R [r, r]
    case Method::sora: return a.r * (a.in + a.out) + a.r;        // A, B and the gate
    case Method::nola: return o.nola.num_basis_A + o.nola.num_basis_B;  // the coefficients
    case Method::spiel: return a.k;                                     // the values (plus k indices)
  }
  return 0;
}

}  // namespace lathe::peft
