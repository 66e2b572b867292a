#include "data/instruction.h"

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace lathe::data {

using nlohmann::json;

const char* record_kind_name(RecordKind k) {
  switch (k) {
    case RecordKind::kText: return "text";
    case RecordKind::kPromptResponse: return "prompt_response";
    case RecordKind::kAlpaca: return "alpaca";
    case RecordKind::kChat: return "chat";
  }
  return "?";
}

const char* template_name(PromptTemplate t) { return t == PromptTemplate::kRaw ? "raw" : "default"; }

PromptTemplate parse_template(const std::string& name) {
  if (name == "default") return PromptTemplate::kDefault;
  if (name == "raw") return PromptTemplate::kRaw;
  LATHE_FAIL() << "prompt template: unknown name '" << name << "' (expected \"default\" or \"raw\")";
  return PromptTemplate::kDefault;
}

namespace {

std::string type_of(const json& v) { return v.type_name(); }

// The string field `key` of `obj`; missing or not a string is an error naming both.
std::string need_string(const json& obj, const char* key, const std::string& where, const char* kind) {
  auto it = obj.find(key);
  LATHE_REQUIRE(it != obj.end()) << where << ": " << kind << " record is missing the field '" << key << "'";
  LATHE_REQUIRE(it->is_string()) << where << ": field '" << key << "' must be a string, found " << type_of(*it);
  return it->get<std::string>();
}

// An optional string field: "" when missing or null.
std::string opt_string(const json& obj, const char* key, const std::string& where) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return std::string();
  LATHE_REQUIRE(it->is_string()) << where << ": field '" << key << "' must be a string, found " << type_of(*it);
  return it->get<std::string>();
}

RecordKind detect(const json& obj, const std::string& where) {
  if (obj.contains("messages")) return RecordKind::kChat;
  if (obj.contains("instruction")) return RecordKind::kAlpaca;
  if (obj.contains("prompt")) return RecordKind::kPromptResponse;
  if (obj.contains("text")) return RecordKind::kText;
  std::string keys;
  for (auto it = obj.begin(); it != obj.end(); ++it) keys += (keys.empty() ? "" : ", ") + it.key();
  LATHE_FAIL() << where << ": record has none of the fields 'text', 'prompt'/'response', "
               << "'instruction'/'output' or 'messages' (its fields: " << (keys.empty() ? "none" : keys) << ")";
  return RecordKind::kText;
}

RecordKind expected_kind(RecordExpect e) {
  switch (e) {
    case RecordExpect::kText: return RecordKind::kText;
    case RecordExpect::kPromptResponse: return RecordKind::kPromptResponse;
    case RecordExpect::kAlpaca: return RecordKind::kAlpaca;
    case RecordExpect::kChat: return RecordKind::kChat;
    case RecordExpect::kAny: break;
  }
  return RecordKind::kText;
}

}  // namespace

Record parse_record(std::string_view line, const std::string& where, RecordExpect expect) {
  json obj;
  try {
    obj = json::parse(line.begin(), line.end());
  } catch (const json::exception& e) {
    LATHE_FAIL() << where << ": invalid JSON: " << e.what();
  }
  LATHE_REQUIRE(obj.is_object()) << where << ": a JSONL record must be a JSON object, found " << type_of(obj);
  Record r;
  r.kind = expect == RecordExpect::kAny ? detect(obj, where) : expected_kind(expect);
  const char* kind = record_kind_name(r.kind);
  switch (r.kind) {
    case RecordKind::kText:
      r.text = need_string(obj, "text", where, kind);
      break;
    case RecordKind::kPromptResponse:
      r.prompt = need_string(obj, "prompt", where, kind);
      if (!obj.contains("response") && obj.contains("completion"))
        r.response = need_string(obj, "completion", where, kind);
      else
        r.response = need_string(obj, "response", where, kind);
      break;
    case RecordKind::kAlpaca:
      r.instruction = need_string(obj, "instruction", where, kind);
      r.input = opt_string(obj, "input", where);
      r.output = need_string(obj, "output", where, kind);
      break;
    case RecordKind::kChat: {
      auto it = obj.find("messages");
      LATHE_REQUIRE(it != obj.end()) << where << ": chat record is missing the field 'messages'";
      LATHE_REQUIRE(it->is_array()) << where << ": field 'messages' must be an array, found " << type_of(*it);
      LATHE_REQUIRE(!it->empty()) << where << ": field 'messages' is empty";
      bool any_assistant = false;
      for (size_t i = 0; i < it->size(); ++i) {
        const json& m = (*it)[i];
        const std::string w = where + ": messages[" + std::to_string(i) + "]";
        LATHE_REQUIRE(m.is_object()) << w << " must be an object with 'role' and 'content', found " << type_of(m);
        ChatMessage msg;
        msg.role = need_string(m, "role", w, "chat message");
        msg.content = need_string(m, "content", w, "chat message");
        LATHE_REQUIRE(msg.role == "system" || msg.role == "user" || msg.role == "assistant")
            << w << ": unknown role '" << msg.role << "' (expected system, user or assistant)";
        any_assistant = any_assistant || msg.role == "assistant";
        r.messages.push_back(std::move(msg));
      }
      LATHE_REQUIRE(any_assistant) << where << ": chat record has no assistant message, so nothing to train on";
      break;
    }
  }
  return r;
}

std::vector<TemplatePiece> render_record(const Record& r, PromptTemplate t) {
  std::vector<TemplatePiece> out;
  auto prompt = [&](std::string s) { out.push_back({std::move(s), false, false}); };
  auto response = [&](std::string s) { out.push_back({std::move(s), true, true}); };
  const bool raw = t == PromptTemplate::kRaw;
  switch (r.kind) {
    case RecordKind::kText:
      out.push_back({r.text, false, true});
      break;
    case RecordKind::kPromptResponse:
      prompt(raw ? r.prompt : "### Instruction:\n" + r.prompt + "\n\n### Response:\n");
      response(r.response);
      break;
    case RecordKind::kAlpaca:
      if (raw) {
        prompt(r.instruction + (r.input.empty() ? "" : "\n" + r.input) + "\n");
      } else {
        std::string p = "### Instruction:\n" + r.instruction + "\n\n";
        if (!r.input.empty()) p += "### Input:\n" + r.input + "\n\n";
        prompt(p + "### Response:\n");
      }
      response(r.output);
      break;
    case RecordKind::kChat:
      // Adjacent untrained text is merged into one piece, so the prompt side of a turn is
      // tokenized as a whole.
      for (size_t i = 0; i < r.messages.size(); ++i) {
        const ChatMessage& m = r.messages[i];
        const bool last = i + 1 == r.messages.size();
        std::string head = raw ? "" : "<|" + m.role + "|>\n";
        if (m.role == "assistant") {
          if (!head.empty()) {
            if (!out.empty() && !out.back().train) out.back().text += head;
            else prompt(head);
          }
          response(m.content);
          if (!last) prompt("\n");
        } else {
          std::string text = head + m.content + "\n";
          if (!out.empty() && !out.back().train) out.back().text += text;
          else prompt(text);
        }
      }
      break;
  }
  return out;
}

void encode_record(const Record& r, const Tokenizer& tok, const EncodeOptions& opt, std::vector<int32_t>& tokens,
                   std::vector<uint8_t>& mask) {
  LATHE_REQUIRE(tokens.size() == mask.size()) << "encode_record: token and mask buffers differ in length ("
                                        << tokens.size() << " vs " << mask.size() << ")";
  if (opt.bos_id >= 0) {
    tokens.push_back(opt.bos_id);
    mask.push_back(0);
  }
  const bool is_text = r.kind == RecordKind::kText;
  for (const TemplatePiece& p : render_record(r, opt.prompt_template)) {
    tok.encode_append(p.text, tokens, opt.special_tokens_in_text);
    if (p.eos_after && opt.eos_id >= 0) tokens.push_back(opt.eos_id);
    mask.resize(tokens.size(), (p.train && !is_text) ? 1 : 0);
  }
}

}  // namespace lathe::data
