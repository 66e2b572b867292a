// Instruction-tuning records (JSONL), the templates that render them as text, and their
// tokenization with a loss mask that marks exactly the tokens the model is trained to write.
//
// Record kinds, recognised by their fields (first match in this order wins):
//   chat             {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}
//   alpaca           {"instruction": "...", "input": "..." (optional, may be ""), "output": "..."}
//   prompt_response  {"prompt": "...", "response": "..."}   ("completion" is accepted for "response")
//   text             {"text": "..."}                          (plain language-model data)
// Other fields are ignored. A required field that is missing or not a string is an error
// naming the field and the record's file:line.
//
// Templates (the text around the fields). `eos` below is the tokenizer's EOS token as an id
// (never as text), left out when the tokenizer has none or EOS is switched off; [..] marks
// the response part, whose tokens get loss mask 1 (everything else 0):
//
//   default, prompt_response:
//     "### Instruction:\n" prompt "\n\n### Response:\n" [response eos]
//   default, alpaca (the Input section only when input is non-empty; this is the Alpaca
//   format of Taori et al. 2023 without its one-line preamble):
//     "### Instruction:\n" instruction "\n\n### Input:\n" input "\n\n### Response:\n" [output eos]
//   default, chat: each message in order; a system or user message is
//     "<|role|>\n" content "\n"
//   and an assistant message is
//     "<|assistant|>\n" [content eos] "\n"      (the final "\n" only when a message follows)
//   so that in multi-turn chats every assistant turn, and only those, is trained on.
//
//   raw: no added text, for records that are already formatted:
//     prompt_response: prompt [response eos]
//     alpaca:          instruction ("\n" input, when non-empty) "\n" [output eos]
//     chat:            each message's content followed by "\n", assistant contents as
//                      [content eos] "\n" (the "\n" only when a message follows).
//
// The role markers are plain text (for GPT-2 "<|user|>" is several ordinary tokens). Prompt
// and response parts are tokenized separately and concatenated, so the mask boundary falls
// exactly between them even where a joint tokenization would merge across it.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "data/tokenizer.h"

namespace lathe::data {

enum class RecordKind { kText, kPromptResponse, kAlpaca, kChat };
const char* record_kind_name(RecordKind k);  // "text", "prompt_response", "alpaca", "chat"

// What a JSONL record must be: kAny detects it from the fields (order above).
enum class RecordExpect { kAny, kText, kPromptResponse, kAlpaca, kChat };

struct ChatMessage {
  std::string role;  // system, user or assistant
  std::string content;
};

struct Record {
  RecordKind kind = RecordKind::kText;
  std::string text;                    // kText
  std::string prompt, response;        // kPromptResponse
  std::string instruction, input, output;  // kAlpaca (input may be empty)
  std::vector<ChatMessage> messages;   // kChat (at least one assistant message)
};

// Parses one JSONL line; `where` ("file:line") starts every error message. Throws on
// invalid JSON, a non-object, missing/non-string fields, an unknown chat role, a chat
// without an assistant message, or a record that is not of the `expect`ed kind.
Record parse_record(std::string_view line, const std::string& where, RecordExpect expect = RecordExpect::kAny);

enum class PromptTemplate { kDefault, kRaw };
const char* template_name(PromptTemplate t);       // "default", "raw"
PromptTemplate parse_template(const std::string& name);  // throws on an unknown name

// One piece of a rendered record: text, and whether it is trained on (response side).
struct TemplatePiece {
  std::string text;
  bool train = false;
  bool eos_after = false;  // the EOS id follows this piece (part of the same side)
};

// The record as pieces in order (for kText: a single untrained piece with the text).
std::vector<TemplatePiece> render_record(const Record& r, PromptTemplate t);

struct EncodeOptions {
  PromptTemplate prompt_template = PromptTemplate::kDefault;
  // The EOS id to append after each response (and after a text document); -1: none.
  int32_t eos_id = -1;
  // The BOS id to put first; -1: none.
  int32_t bos_id = -1;
  // Whether special-token strings written in the data (e.g. "<|endoftext|>") become their
  // ids. Off by default, so a document cannot forge an EOS or a role token.
  bool special_tokens_in_text = false;
};

// Token ids of a rendered record and their loss mask (1 = response token, trained on).
// Appends to `tokens` and `mask` (same length after the call). For kText every mask
// entry is 0: plain documents carry no mask in the shards.
void encode_record(const Record& r, const Tokenizer& tok, const EncodeOptions& opt, std::vector<int32_t>& tokens,
                   std::vector<uint8_t>& mask);

}  // namespace lathe::data
