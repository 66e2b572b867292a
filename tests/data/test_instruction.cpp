// Instruction records: parsing (every kind, every error), the templates' exact text, and the
// loss mask, which must cover exactly the response (assistant) tokens and their EOS.
#include <gtest/gtest.h>

#include <fstream>
#include <functional>

#include "core/error.h"
#include "tests/common/test_helpers.h"
#include "data/instruction.h"
#include "data/jsonl.h"
#include "data/tokenizer.h"

using namespace lathe;
using namespace lathe::data;

namespace {

const std::string kFixtures = "tests/fixtures/data/";
const std::string kGpt2 = "../shared/data/gpt2";

using lathe::test::expect_error;

std::vector<Record> read_fixture(const std::string& name) {
  LineReader r(kFixtures + name);
  std::vector<Record> out;
  std::string line;
  while (r.next(line))
    if (!is_blank_line(line)) out.push_back(parse_record(line, name + ":" + std::to_string(r.line_number())));
  return out;
}

// The text of each maximal run of mask-1 tokens.
std::vector<std::string> masked_spans(const Tokenizer& tok, const std::vector<int32_t>& ids,
                                      const std::vector<uint8_t>& mask) {
  std::vector<std::string> spans;
  size_t i = 0;
  while (i < ids.size()) {
    if (!mask[i]) {
      ++i;
      continue;
    }
    std::vector<int32_t> run;
    while (i < ids.size() && mask[i]) run.push_back(ids[i++]);
    spans.push_back(tok.decode(run));
  }
  return spans;
}

std::string rendered_text(const Record& r, PromptTemplate t, const std::string& eos_text) {
  std::string s;
  for (const auto& p : render_record(r, t)) s += p.text + (p.eos_after ? eos_text : "");
  return s;
}

// For each record: the masked spans are exactly `responses[i] + eos`, the whole sequence
// decodes to the rendered text, and the ids equal the pieces tokenized one by one.
void check_masks(const std::vector<Record>& recs, const std::vector<std::vector<std::string>>& responses,
                 const Tokenizer& tok, PromptTemplate t) {
  ASSERT_EQ(recs.size(), responses.size());
  EncodeOptions opt;
  opt.prompt_template = t;
  opt.eos_id = tok.eos_id().value_or(-1);
  const std::string eos_text = tok.eos_id() ? tok.decode({*tok.eos_id()}) : "";
  for (size_t i = 0; i < recs.size(); ++i) {
    std::vector<int32_t> ids;
    std::vector<uint8_t> mask;
    encode_record(recs[i], tok, opt, ids, mask);
    ASSERT_EQ(ids.size(), mask.size());
    std::vector<std::string> want;
    for (const auto& r : responses[i]) want.push_back(r + eos_text);
    EXPECT_EQ(masked_spans(tok, ids, mask), want) << "record " << i << " (" << tok.id() << ")";
    EXPECT_EQ(tok.decode(ids), rendered_text(recs[i], t, eos_text)) << "record " << i;
    std::vector<int32_t> by_piece;
    for (const auto& p : render_record(recs[i], t)) {
      tok.encode_append(p.text, by_piece, false);
      if (p.eos_after && tok.eos_id()) by_piece.push_back(*tok.eos_id());
    }
    EXPECT_EQ(ids, by_piece) << "record " << i;
    // EOS appears only where the template puts it, never from the data's text.
    if (tok.eos_id()) {
      size_t n_eos = 0;
      for (int32_t id : ids) n_eos += id == *tok.eos_id();
      EXPECT_EQ(n_eos, responses[i].size()) << "record " << i;
    }
  }
}

}  // namespace

TEST(InstructionRecord, ParsesEveryKind) {
  auto pr = read_fixture("prompt_response.jsonl");
  ASSERT_EQ(pr.size(), 4u);
  EXPECT_EQ(pr[0].kind, RecordKind::kPromptResponse);
  EXPECT_EQ(pr[0].prompt, "What is the capital of France?");
  EXPECT_EQ(pr[1].response, " The sum is 5 ");
  EXPECT_EQ(pr[2].response, "hi there");  // "completion" stands for "response"
  auto al = read_fixture("alpaca.jsonl");
  ASSERT_EQ(al.size(), 4u);
  EXPECT_EQ(al[0].kind, RecordKind::kAlpaca);
  EXPECT_EQ(al[0].output, "1. Eat well.\n2. Sleep.\n3. Move.");
  EXPECT_EQ(al[1].input, "Good morning");
  EXPECT_EQ(al[2].input, "");  // missing input
  auto ch = read_fixture("chat.jsonl");
  ASSERT_EQ(ch.size(), 3u);
  EXPECT_EQ(ch[0].kind, RecordKind::kChat);
  ASSERT_EQ(ch[0].messages.size(), 5u);
  EXPECT_EQ(ch[0].messages[0].role, "system");
  EXPECT_EQ(ch[0].messages[4].content, "4");
  auto tx = read_fixture("text_records.jsonl");
  EXPECT_EQ(tx[0].kind, RecordKind::kText);
  EXPECT_EQ(tx[2].text, "A second one,\nwith two lines.");
}

TEST(InstructionRecord, ErrorsNameWhereAndWhichField) {
  expect_error([] { parse_record(R"({"prompt": "x"})", "f.jsonl:3"); }, {"f.jsonl:3", "'response'"});
  expect_error([] { parse_record(R"({"instruction": "x", "input": "y"})", "f.jsonl:4"); }, {"f.jsonl:4", "'output'"});
  expect_error([] { parse_record(R"({"text": 5})", "f.jsonl:5"); }, {"f.jsonl:5", "'text'", "string", "number"});
  expect_error([] { parse_record(R"({"title": "x", "body": "y"})", "f.jsonl:6"); },
               {"f.jsonl:6", "none of the fields", "body, title"});
  expect_error([] { parse_record(R"({"text": "x",})", "f.jsonl:7"); }, {"f.jsonl:7", "invalid JSON"});
  expect_error([] { parse_record(R"(["text"])", "f.jsonl:8"); }, {"f.jsonl:8", "JSON object", "array"});
  expect_error([] { parse_record(R"({"messages": [{"role": "user"}]})", "f.jsonl:9"); },
               {"f.jsonl:9", "messages[0]", "'content'"});
  expect_error([] { parse_record(R"({"messages": [{"role": "bot", "content": "x"}]})", "f.jsonl:10"); },
               {"f.jsonl:10", "unknown role 'bot'"});
  expect_error([] { parse_record(R"({"messages": [{"role": "user", "content": "x"}]})", "f.jsonl:11"); },
               {"f.jsonl:11", "no assistant message"});
  expect_error([] { parse_record(R"({"messages": "hi"})", "f.jsonl:12"); }, {"f.jsonl:12", "'messages'", "array"});
  expect_error([] { parse_record(R"({"input": 1, "instruction": "a", "output": "b"})", "f.jsonl:13"); },
               {"f.jsonl:13", "'input'"});
  // An expected kind overrides detection: a text record read as prompt_response names the field.
  expect_error([] { parse_record(R"({"text": "x"})", "f.jsonl:14", RecordExpect::kPromptResponse); },
               {"f.jsonl:14", "prompt_response", "'prompt'"});
  expect_error([] { parse_template("alpaca2"); }, {"alpaca2", "default", "raw"});
}

TEST(InstructionTemplate, ExactText) {
  Record pr;
  pr.kind = RecordKind::kPromptResponse;
  pr.prompt = "P";
  pr.response = "R";
  auto p = render_record(pr, PromptTemplate::kDefault);
  ASSERT_EQ(p.size(), 2u);
  EXPECT_EQ(p[0].text, "### Instruction:\nP\n\n### Response:\n");
  EXPECT_FALSE(p[0].train);
  EXPECT_EQ(p[1].text, "R");
  EXPECT_TRUE(p[1].train && p[1].eos_after);
  EXPECT_EQ(rendered_text(pr, PromptTemplate::kRaw, "<E>"), "PR<E>");

  Record al;
  al.kind = RecordKind::kAlpaca;
  al.instruction = "I";
  al.output = "O";
  EXPECT_EQ(rendered_text(al, PromptTemplate::kDefault, "<E>"), "### Instruction:\nI\n\n### Response:\nO<E>");
  al.input = "N";
  EXPECT_EQ(rendered_text(al, PromptTemplate::kDefault, "<E>"),
            "### Instruction:\nI\n\n### Input:\nN\n\n### Response:\nO<E>");
  EXPECT_EQ(rendered_text(al, PromptTemplate::kRaw, "<E>"), "I\nN\nO<E>");

  Record ch;
  ch.kind = RecordKind::kChat;
  ch.messages = {{"system", "S"}, {"user", "U1"}, {"assistant", "A1"}, {"user", "U2"}, {"assistant", "A2"}};
  EXPECT_EQ(rendered_text(ch, PromptTemplate::kDefault, "<E>"),
            "<|system|>\nS\n<|user|>\nU1\n<|assistant|>\nA1<E>\n<|user|>\nU2\n<|assistant|>\nA2<E>");
  EXPECT_EQ(rendered_text(ch, PromptTemplate::kRaw, "<E>"), "S\nU1\nA1<E>\nU2\nA2<E>");
  // Pieces alternate prompt / response, one response piece per assistant turn.
  auto c = render_record(ch, PromptTemplate::kDefault);
  ASSERT_EQ(c.size(), 4u);
  EXPECT_EQ(c[0].text, "<|system|>\nS\n<|user|>\nU1\n<|assistant|>\n");
  EXPECT_TRUE(c[1].train);
  EXPECT_EQ(c[2].text, "\n<|user|>\nU2\n<|assistant|>\n");
  EXPECT_TRUE(c[3].train);
}

TEST(InstructionMask, PromptResponseByteAndGpt2) {
  auto recs = read_fixture("prompt_response.jsonl");
  std::vector<std::vector<std::string>> want;
  for (const auto& r : recs) want.push_back({r.response});
  for (const std::string spec : {"byte", kGpt2.c_str()}) {
    auto tok = load_tokenizer(spec);
    check_masks(recs, want, *tok, PromptTemplate::kDefault);
    check_masks(recs, want, *tok, PromptTemplate::kRaw);
  }
}

TEST(InstructionMask, AlpacaWithAndWithoutInput) {
  auto recs = read_fixture("alpaca.jsonl");
  std::vector<std::vector<std::string>> want;
  for (const auto& r : recs) want.push_back({r.output});
  for (const std::string spec : {"byte", kGpt2.c_str()}) {
    auto tok = load_tokenizer(spec);
    check_masks(recs, want, *tok, PromptTemplate::kDefault);
    check_masks(recs, want, *tok, PromptTemplate::kRaw);
  }
}

TEST(InstructionMask, ChatOnlyAssistantTurns) {
  auto recs = read_fixture("chat.jsonl");
  std::vector<std::vector<std::string>> want;
  for (const auto& r : recs) {
    want.emplace_back();
    for (const auto& m : r.messages)
      if (m.role == "assistant") want.back().push_back(m.content);
  }
  ASSERT_EQ(want[0].size(), 2u);  // multi-turn: both assistant turns, nothing else
  ASSERT_EQ(want[2].size(), 2u);  // starts with the assistant, ends with the user
  for (const std::string spec : {"byte", kGpt2.c_str()}) {
    auto tok = load_tokenizer(spec);
    check_masks(recs, want, *tok, PromptTemplate::kDefault);
    check_masks(recs, want, *tok, PromptTemplate::kRaw);
  }
}

TEST(InstructionMask, TextRecordsUnmaskedAndBosFirst) {
  auto tok = load_tokenizer(kGpt2);
  Record r;
  r.kind = RecordKind::kText;
  r.text = "Hello world";
  EncodeOptions opt;
  opt.eos_id = 50256;
  opt.bos_id = 50256;
  std::vector<int32_t> ids{7};  // appends after what is there
  std::vector<uint8_t> mask{1};
  encode_record(r, *tok, opt, ids, mask);
  EXPECT_EQ(ids, (std::vector<int32_t>{7, 50256, 15496, 995, 50256}));
  EXPECT_EQ(mask, (std::vector<uint8_t>{1, 0, 0, 0, 0}));
  // The data's own "<|endoftext|>" is text unless special tokens in text are allowed.
  r.text = "a<|endoftext|>";
  std::vector<int32_t> a, b;
  std::vector<uint8_t> ma, mb;
  opt.bos_id = -1;
  encode_record(r, *tok, opt, a, ma);
  ASSERT_FALSE(a.empty());
  EXPECT_EQ(a.back(), 50256);
  a.pop_back();
  EXPECT_EQ(a, tok->encode(r.text, false));
  opt.special_tokens_in_text = true;
  encode_record(r, *tok, opt, b, mb);
  EXPECT_EQ(b, (std::vector<int32_t>{64, 50256, 50256}));
}
