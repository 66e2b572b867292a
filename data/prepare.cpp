#include "data/prepare.h"

#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <exception>
#include <memory>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>
#include <string_view>

#include "core/error.h"
#include "data/jsonl.h"
#include "data/permutation.h"
#include "data/shards.h"

namespace lathe::data {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Philox key tag of the validation selection, so it differs from other streams of a seed.
constexpr uint64_t kValSplitTag = 0x76616c2d73706c74ull;
// A chunk of documents tokenized in parallel before they are written in order.
constexpr size_t kChunkDocs = 2048;
constexpr size_t kChunkBytes = size_t{8} << 20;
// Plain-text documents longer than this are encoded in pieces of about this size, cut at
// the tokenizer's cut points, so that one large file still uses every thread.
constexpr size_t kPieceBytes = size_t{64} << 10;
// HDF5 attributes above 64 KiB need the newer file format; keep the sources list short.
constexpr size_t kMaxSourcesAttr = 32 * 1024;

bool is_jsonl_name(const fs::path& p) {
  const std::string e = p.extension().string();
  return e == ".jsonl" || e == ".ndjson";
}

bool dir_takes(const fs::path& p) {
  const std::string name = p.filename().string();
  if (name.empty() || name[0] == '.') return false;
  const std::string e = p.extension().string();
  return e == ".txt" || e == ".text" || e == ".md" || is_jsonl_name(p);
}

std::string read_whole_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  LATHE_REQUIRE(f) << "prepare: cannot read " << path << ": " << std::strerror(errno);
  std::ostringstream ss;
  ss << f.rdbuf();
  LATHE_REQUIRE(!f.bad()) << "prepare: read error in " << path;
  return ss.str();
}

bool blank(std::string_view line) {
  for (char c : line)
    if (c != ' ' && c != '\t' && c != '\r') return false;
  return true;
}

std::vector<std::string_view> split_views(std::string_view text, TextSplit split) {
  std::vector<std::string_view> docs;
  if (split == TextSplit::kFile) {
    if (!text.empty()) docs.push_back(text);
    return docs;
  }
  // Blank-line split: walk lines; a document spans from its first non-blank line to the end
  // of its last non-blank line (the newline after it excluded).
  size_t pos = 0, doc_begin = std::string_view::npos, doc_end = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    const size_t line_end = nl == std::string_view::npos ? text.size() : nl;
    if (blank(text.substr(pos, line_end - pos))) {
      if (doc_begin != std::string_view::npos) docs.push_back(text.substr(doc_begin, doc_end - doc_begin));
      doc_begin = std::string_view::npos;
    } else {
      if (doc_begin == std::string_view::npos) doc_begin = pos;
      doc_end = line_end;
    }
    pos = nl == std::string_view::npos ? text.size() : nl + 1;
  }
  if (doc_begin != std::string_view::npos) docs.push_back(text.substr(doc_begin, doc_end - doc_begin));
  return docs;
}

struct InputFile {
  std::string path;
  bool jsonl = false;
  int64_t bytes = 0;
  int64_t documents = 0;  // counted in the first pass
};

// One document waiting to be tokenized: text (plain) or a JSONL line.
struct Pending {
  std::string text;
  bool jsonl = false;
  int32_t file = 0;  // index into the input files
  int64_t line = 0;  // JSONL line number
};

struct Encoded {
  std::vector<int32_t> tokens;
  std::vector<uint8_t> mask;
  RecordKind kind = RecordKind::kText;
  bool empty = false;   // an empty text document, left out
  std::exception_ptr error;  // this document's error, if any
};

// Writes a split's shards into the staging directory; prepare() moves them to `final_dir`
// once every document is written, so a failed run leaves no shard under a final name.
class SplitWriter {
 public:
  SplitWriter(std::string staging, std::string final_dir, std::string split, ShardMeta meta, int64_t shard_tokens,
              SplitStats* stats)
      : dir_(std::move(staging)), final_(std::move(final_dir)), split_(std::move(split)), meta_(std::move(meta)),
        shard_tokens_(shard_tokens), stats_(stats) {
    meta_.split = split_;
  }

  void add(const Encoded& e) {
    buf_.tokens.insert(buf_.tokens.end(), e.tokens.begin(), e.tokens.end());
    if (meta_.format == "instruction") buf_.loss_mask.insert(buf_.loss_mask.end(), e.mask.begin(), e.mask.end());
    buf_.doc_offsets.push_back(static_cast<int64_t>(buf_.tokens.size()));
    stats_->documents += 1;
    stats_->tokens += static_cast<int64_t>(e.tokens.size());
    for (uint8_t m : e.mask) stats_->trained_tokens += m;
    if (buf_.num_tokens() >= shard_tokens_) flush();
  }

  void flush() {
    if (buf_.num_documents() == 0) return;
    char name[64];
    std::snprintf(name, sizeof name, "%s_%05lld.h5", split_.c_str(), static_cast<long long>(index_.size()));
    ShardMeta m = meta_;
    m.shard_index = static_cast<int64_t>(index_.size());
    const std::string path = (fs::path(dir_) / name).string();
    write_shard(path, m, buf_);
    index_.push_back({{"file", name}, {"documents", buf_.num_documents()}, {"tokens", buf_.num_tokens()}});
    stats_->shards.push_back((fs::path(final_) / name).string());
    staged_.push_back(path);
    buf_ = ShardData();
  }

  // Renames the staged shards to their final names.
  void commit() {
    for (size_t i = 0; i < staged_.size(); ++i) {
      std::error_code ec;
      fs::rename(staged_[i], stats_->shards[i], ec);
      LATHE_REQUIRE(!ec) << "prepare: cannot move " << staged_[i] << " to " << stats_->shards[i] << ": " << ec.message();
    }
  }

  json index_entry() const {
    return {{"documents", stats_->documents}, {"tokens", stats_->tokens}, {"trained_tokens", stats_->trained_tokens},
            {"shards", index_}};
  }

 private:
  std::string dir_, final_, split_;
  std::vector<std::string> staged_;
  ShardMeta meta_;
  int64_t shard_tokens_;
  SplitStats* stats_;
  ShardData buf_;
  json index_ = json::array();
};

std::string human_bytes(double b) {
  char s[32];
  if (b >= 1e9) std::snprintf(s, sizeof s, "%.2f GB", b / 1e9);
  else if (b >= 1e6) std::snprintf(s, sizeof s, "%.2f MB", b / 1e6);
  else if (b >= 1e3) std::snprintf(s, sizeof s, "%.1f kB", b / 1e3);
  else std::snprintf(s, sizeof s, "%.0f B", b);
  return s;
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// The live line on a terminal; nothing elsewhere (the summary is printed at the end).
class ProgressLine {
 public:
  ProgressLine(const PrepareOptions& o, int64_t total_bytes, double start)
      : total_(total_bytes), start_(start) {
    out_ = o.progress_out ? o.progress_out : stderr;
    live_ = !o.quiet && (o.tty >= 0 ? o.tty == 1 : ::isatty(::fileno(out_)) == 1);
  }
  void update(int64_t bytes, int64_t tokens) {
    if (!live_) return;
    const double t = now_s();
    if (t - last_ < 0.1 && bytes < total_) return;
    last_ = t;
    const double el = std::max(1e-9, t - start_);
    std::fprintf(out_, "\rprepare: %5.1f%% | %s / %s | %.2f MB/s | %lld tokens\x1b[K",
                 total_ > 0 ? 100.0 * static_cast<double>(bytes) / static_cast<double>(total_) : 100.0,
                 human_bytes(static_cast<double>(bytes)).c_str(), human_bytes(static_cast<double>(total_)).c_str(),
                 static_cast<double>(bytes) / 1e6 / el, static_cast<long long>(tokens));
    std::fflush(out_);
    shown_ = true;
  }
  void finish() {
    if (shown_) std::fputc('\n', out_);
    shown_ = false;
  }

 private:
  std::FILE* out_;
  bool live_ = false, shown_ = false;
  int64_t total_;
  double start_, last_ = 0;
};

void sources_attr_list(const std::vector<std::string>& sources, std::vector<std::string>& out) {
  size_t used = 0;
  for (size_t i = 0; i < sources.size(); ++i) {
    if (used + sources[i].size() + 4 > kMaxSourcesAttr) {
      out.push_back("... and " + std::to_string(sources.size() - i) + " more files (see index.json)");
      break;
    }
    used += sources[i].size() + 4;
    out.push_back(sources[i]);
  }
}

}  // namespace

std::vector<std::string> split_text_documents(const std::string& text, TextSplit split) {
  std::vector<std::string> out;
  for (std::string_view v : split_views(text, split)) out.emplace_back(v);
  return out;
}

std::vector<std::string> expand_inputs(const std::vector<std::string>& inputs) {
  LATHE_REQUIRE(!inputs.empty()) << "prepare: no inputs given";
  std::vector<std::string> files;
  for (const std::string& in : inputs) {
    std::error_code ec;
    LATHE_REQUIRE(fs::exists(in, ec)) << "prepare: input " << in << " does not exist";
    if (!fs::is_directory(in, ec)) {
      LATHE_REQUIRE(fs::is_regular_file(in, ec)) << "prepare: input " << in << " is not a regular file or directory";
      files.push_back(in);
      continue;
    }
    std::vector<std::pair<std::string, std::string>> found;  // (relative path, path)
    fs::recursive_directory_iterator it(in, ec), end;
    LATHE_REQUIRE(!ec) << "prepare: cannot list " << in << ": " << ec.message();
    for (; it != end; it.increment(ec)) {
      LATHE_REQUIRE(!ec) << "prepare: cannot list " << in << ": " << ec.message();
      std::error_code ec2;
      if (it->is_regular_file(ec2) && dir_takes(it->path()))
        found.emplace_back(fs::relative(it->path(), in, ec2).generic_string(), it->path().string());
    }
    LATHE_REQUIRE(!found.empty()) << "prepare: directory " << in
                            << " has no .txt, .text, .md, .jsonl or .ndjson files (searched recursively)";
    std::sort(found.begin(), found.end());
    for (auto& f : found) files.push_back(std::move(f.second));
  }
  return files;
}

std::string PrepareStats::summary() const {
  std::ostringstream os;
  char rate[64];
  std::snprintf(rate, sizeof rate, "%.2f s (%.2f MB/s)", seconds - load_seconds, mb_per_s);
  os << "prepare: " << sources.size() << (sources.size() == 1 ? " file, " : " files, ")
     << human_bytes(static_cast<double>(input_bytes)) << " in " << rate << " | " << format << ", tokenizer "
     << tokenizer_id << " | train " << train.documents << " docs / " << train.tokens << " tokens in "
     << train.shards.size() << " shard" << (train.shards.size() == 1 ? "" : "s") << " | val " << val.documents
     << " docs / " << val.tokens << " tokens in " << val.shards.size() << " shard"
     << (val.shards.size() == 1 ? "" : "s");
  if (skipped_empty > 0) os << " | " << skipped_empty << " empty skipped";
  return os.str();
}

PrepareStats prepare(const PrepareOptions& o) {
  const double start = now_s();
  LATHE_REQUIRE(!o.output_dir.empty()) << "prepare: output_dir is empty";
  LATHE_REQUIRE(o.val_fraction >= 0.0 && o.val_fraction < 1.0)
      << "prepare: val_fraction must be in [0, 1), got " << o.val_fraction;
  LATHE_REQUIRE(o.shard_tokens >= 1) << "prepare: shard_tokens must be >= 1, got " << o.shard_tokens;

  std::unique_ptr<Tokenizer> owned;
  if (o.loaded_tokenizer == nullptr) owned = load_tokenizer(o.tokenizer);
  const Tokenizer* tok = o.loaded_tokenizer ? o.loaded_tokenizer : owned.get();
  PrepareStats st;
  st.tokenizer_id = tok->id();
  st.vocab_size = tok->vocab_size();
  EncodeOptions enc;
  enc.prompt_template = o.prompt_template;
  enc.special_tokens_in_text = o.special_tokens_in_text;
  if (o.append_eos != EosMode::kOff) {
    LATHE_REQUIRE(tok->eos_id() || o.append_eos == EosMode::kAuto)
        << "prepare: append_eos is on but tokenizer '" << o.tokenizer << "' (" << tok->id()
        << ") has no EOS token; use append_eos auto or off";
    enc.eos_id = tok->eos_id().value_or(-1);
  }
  if (o.prepend_bos) {
    LATHE_REQUIRE(tok->bos_id()) << "prepare: prepend_bos is set but tokenizer '" << o.tokenizer << "' (" << tok->id()
                           << ") has no BOS token";
    enc.bos_id = *tok->bos_id();
  }
  st.eos_id = enc.eos_id;
  st.bos_id = enc.bos_id;
  // Throughput counts from here: loading a large tokenizer is a fixed cost, not per byte.
  const double work_start = now_s();
  st.load_seconds = work_start - start;

  // ---- pass 1: the files and their document counts (fixes the validation selection) ----
  std::vector<InputFile> files;
  for (const std::string& p : expand_inputs(o.inputs)) {
    InputFile f;
    f.path = p;
    f.jsonl = o.format == InputFormat::kJsonl || (o.format == InputFormat::kAuto && is_jsonl_name(p));
    std::error_code ec;
    f.bytes = static_cast<int64_t>(fs::file_size(p, ec));
    LATHE_REQUIRE(!ec) << "prepare: cannot stat " << p << ": " << ec.message();
    if (f.jsonl) {
      LineReader r(p);
      std::string line;
      while (r.next(line))
        if (!is_blank_line(line)) ++f.documents;
    } else if (o.text_split == TextSplit::kFile) {
      f.documents = f.bytes > 0 ? 1 : 0;
    } else {
      f.documents = static_cast<int64_t>(split_views(read_whole_file(p), o.text_split).size());
    }
    st.input_bytes += f.bytes;
    st.sources.push_back(p);
    files.push_back(std::move(f));
  }
  int64_t total_docs = 0;
  for (const InputFile& f : files) total_docs += f.documents;
  LATHE_REQUIRE(total_docs > 0) << "prepare: the inputs hold no documents (" << files.size() << " files, all empty)";
  int64_t n_val = 0;
  if (o.val_fraction > 0) {
    LATHE_REQUIRE(total_docs >= 2) << "prepare: val_fraction " << o.val_fraction << " needs at least 2 documents, but the "
                             << "inputs hold " << total_docs << " (one text file is one document; cut text files "
                             << "at blank lines with text_split blank_lines, or use val_fraction 0)";
    n_val = std::llround(static_cast<double>(total_docs) * o.val_fraction);
    n_val = std::min<int64_t>(std::max<int64_t>(n_val, 1), total_docs - 1);
  }
  SelectionSampler val_pick(total_docs, n_val, o.seed ^ kValSplitTag);

  std::error_code ec;
  fs::create_directories(o.output_dir, ec);
  LATHE_REQUIRE(!ec && fs::is_directory(o.output_dir, ec))
      << "prepare: cannot create output directory " << o.output_dir << ": " << ec.message();
  const std::string staging =
      (fs::path(o.output_dir) / (".prepare-staging-" + std::to_string(::getpid()))).string();
  fs::remove_all(staging, ec);
  fs::create_directories(staging, ec);
  LATHE_REQUIRE(!ec) << "prepare: cannot create the staging directory " << staging << ": " << ec.message();
  // Removes the staging directory on every exit, error or not.
  struct StagingGuard {
    std::string dir;
    ~StagingGuard() {
      std::error_code e;
      fs::remove_all(dir, e);
    }
  } staging_guard{staging};

  ShardMeta meta;
  meta.tokenizer_id = st.tokenizer_id;
  meta.vocab_size = st.vocab_size;
  sources_attr_list(st.sources, meta.sources);
  meta.eos_id = st.eos_id;
  meta.bos_id = st.bos_id;
  std::unique_ptr<SplitWriter> train, val;
  std::string first_where;  // where the first document came from (for mixing errors)

  ProgressLine progress(o, st.input_bytes, work_start);
  int64_t bytes_done = 0;
  const int threads = o.num_threads > 0 ? o.num_threads : omp_get_max_threads();

  // ---- pass 2: tokenize chunks of documents in parallel, write them in order ----
  std::vector<Pending> chunk;
  std::vector<Encoded> results;
  size_t chunk_bytes = 0;
  auto where_of = [&](const Pending& p) {
    return p.jsonl ? files[p.file].path + ":" + std::to_string(p.line) : files[p.file].path;
  };
  // A unit of parallel work: a whole document (end == npos) or a piece [begin, end) of a
  // long plain-text one.
  struct Task {
    size_t doc, begin, end;
  };
  std::vector<Task> tasks;
  std::vector<std::vector<int32_t>> piece_ids;  // per task; used by pieces only
  auto run_chunk = [&]() {
    results.assign(chunk.size(), Encoded());
    // Cut points depend on the text only, never on the thread count, and encoding the
    // pieces gives the document's exact ids (next_cut's contract), so the output is the same
    // for any number of threads.
    tasks.clear();
    for (size_t i = 0; i < chunk.size(); ++i) {
      const std::string& text = chunk[i].text;
      size_t begin = 0;
      if (!chunk[i].jsonl && text.size() > 2 * kPieceBytes) {
        while (begin + kPieceBytes < text.size()) {
          const size_t cut = tok->next_cut(text, begin + kPieceBytes, enc.special_tokens_in_text);
          if (cut == std::string_view::npos) break;
          tasks.push_back({i, begin, cut});
          begin = cut;
        }
      }
      tasks.push_back({i, begin, begin == 0 ? std::string_view::npos : text.size()});
    }
    piece_ids.assign(tasks.size(), {});
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int64_t t = 0; t < static_cast<int64_t>(tasks.size()); ++t) {
      const Task& task = tasks[t];
      Pending& p = chunk[task.doc];  // a whole document's entry belongs to one thread
      Encoded& e = results[task.doc];
      if (task.end != std::string_view::npos) {  // a piece: no errors possible but bad_alloc
        try {
          tok->encode_append(std::string_view(p.text).substr(task.begin, task.end - task.begin), piece_ids[t],
                             enc.special_tokens_in_text);
        } catch (...) {
#pragma omp critical(prepare_piece_error)
          if (!e.error) e.error = std::current_exception();
        }
        continue;
      }
      try {
        Record r;
        if (p.jsonl) {
          r = parse_record(p.text, where_of(p), o.record_kind);
        } else {
          r.kind = RecordKind::kText;
          r.text = std::move(p.text);
        }
        e.kind = r.kind;
        if (r.kind == RecordKind::kText && r.text.empty()) {
          e.empty = true;
          continue;
        }
        encode_record(r, *tok, enc, e.tokens, e.mask);
      } catch (...) {
        e.error = std::current_exception();
      }
    }
    // Assemble the documents encoded in pieces as encode_record lays out a text document:
    // [BOS] ids [EOS], mask all 0.
    for (size_t t = 0; t < tasks.size();) {
      const size_t doc = tasks[t].doc;
      size_t u = t;
      while (u < tasks.size() && tasks[u].doc == doc) ++u;
      if (u - t > 1) {
        Encoded& e = results[doc];
        if (!e.error) {
          size_t n = (enc.bos_id >= 0) + (enc.eos_id >= 0);
          for (size_t k = t; k < u; ++k) n += piece_ids[k].size();
          e.kind = RecordKind::kText;
          e.tokens.reserve(n);
          if (enc.bos_id >= 0) e.tokens.push_back(enc.bos_id);
          for (size_t k = t; k < u; ++k) {
            e.tokens.insert(e.tokens.end(), piece_ids[k].begin(), piece_ids[k].end());
            std::vector<int32_t>().swap(piece_ids[k]);
          }
          if (enc.eos_id >= 0) e.tokens.push_back(enc.eos_id);
          e.mask.assign(e.tokens.size(), 0);
        }
      }
      t = u;
    }
    for (size_t i = 0; i < chunk.size(); ++i) {
      Encoded& e = results[i];
      if (e.error) std::rethrow_exception(e.error);
      const bool to_val = val_pick.next();
      if (e.empty) {
        ++st.skipped_empty;
        continue;
      }
      switch (e.kind) {
        case RecordKind::kText: ++st.records_text; break;
        case RecordKind::kPromptResponse: ++st.records_prompt_response; break;
        case RecordKind::kAlpaca: ++st.records_alpaca; break;
        case RecordKind::kChat: ++st.records_chat; break;
      }
      const std::string fmt = e.kind == RecordKind::kText ? "lm" : "instruction";
      if (st.format.empty()) {
        st.format = fmt;
        first_where = where_of(chunk[i]);
        meta.format = fmt;
        meta.prompt_template = fmt == "instruction" ? template_name(o.prompt_template) : "";
        train = std::make_unique<SplitWriter>(staging, o.output_dir, "train", meta, o.shard_tokens, &st.train);
        val = std::make_unique<SplitWriter>(staging, o.output_dir, "val", meta, o.shard_tokens, &st.val);
      } else {
        LATHE_REQUIRE(fmt == st.format) << where_of(chunk[i]) << ": a " << record_kind_name(e.kind)
                                  << " document, but the data so far is " << st.format << " data (first document at "
                                  << first_where << "); one prepare run makes either plain-text (lm) or "
                                  << "instruction data, so prepare them separately";
      }
      (to_val ? *val : *train).add(e);
    }
    bytes_done += static_cast<int64_t>(chunk_bytes);
    progress.update(std::min(bytes_done, st.input_bytes), st.train.tokens + st.val.tokens);
    chunk.clear();
    chunk_bytes = 0;
  };
  auto push = [&](Pending p, size_t bytes) {
    chunk_bytes += bytes;
    chunk.push_back(std::move(p));
    if (chunk.size() >= kChunkDocs || chunk_bytes >= kChunkBytes) run_chunk();
  };

  for (size_t fi = 0; fi < files.size(); ++fi) {
    const InputFile& f = files[fi];
    int64_t docs_seen = 0;
    if (f.jsonl) {
      LineReader r(f.path);
      std::string line;
      int64_t consumed = 0;
      while (r.next(line)) {
        const size_t bytes = static_cast<size_t>(r.bytes_read() - consumed);
        consumed = r.bytes_read();
        if (is_blank_line(line)) {
          chunk_bytes += bytes;
          continue;
        }
        ++docs_seen;
        push(Pending{std::move(line), true, static_cast<int32_t>(fi), r.line_number()}, bytes);
        line = std::string();
      }
    } else {
      const std::string text = read_whole_file(f.path);
      const std::vector<std::string_view> docs = split_views(text, o.text_split);
      size_t used = 0;
      for (size_t d = 0; d < docs.size(); ++d) {
        ++docs_seen;
        // Progress counts the bytes up to the end of this document (the last one: the file).
        const size_t upto = d + 1 == docs.size() ? text.size() : static_cast<size_t>(docs[d].end() - text.data());
        push(Pending{std::string(docs[d]), false, static_cast<int32_t>(fi), 0}, upto - used);
        used = upto;
      }
      if (docs.empty()) chunk_bytes += text.size();
    }
    LATHE_REQUIRE(docs_seen == f.documents) << "prepare: " << f.path << " changed while it was read (" << f.documents
                                      << " documents, then " << docs_seen << ")";
  }
  if (!chunk.empty() || chunk_bytes > 0) run_chunk();
  progress.finish();
  LATHE_REQUIRE(train != nullptr) << "prepare: every document in the inputs is empty (" << st.skipped_empty
                            << " skipped), nothing to write";
  train->flush();
  val->flush();
  // Commit. An index of an earlier run goes first: from here until this run's index is
  // written the directory is not readable prepared data, rather than a mix of two runs.
  // (A run that failed before this point left the earlier data untouched.)
  const std::string index_path = (fs::path(o.output_dir) / "index.json").string();
  fs::remove(index_path, ec);
  LATHE_REQUIRE(!ec) << "prepare: cannot remove the old " << index_path << ": " << ec.message();
  train->commit();
  val->commit();

  // ---- index.json (last: the directory is complete once it is there) ----
  json index;
  index["lathe_version"] = kLatheVersion;
  index["shard_format"] = kShardFormat;
  index["format"] = st.format;
  index["tokenizer"] = {{"spec", o.tokenizer}, {"id", st.tokenizer_id}, {"vocab_size", st.vocab_size},
                        {"eos_id", st.eos_id}, {"bos_id", st.bos_id}};
  index["template"] = st.format == "instruction" ? template_name(o.prompt_template) : "";
  index["sources"] = st.sources;
  index["seed"] = o.seed;
  index["val_fraction"] = o.val_fraction;
  index["shard_tokens"] = o.shard_tokens;
  index["text_split"] = o.text_split == TextSplit::kFile ? "file" : "blank_lines";
  index["records"] = {{"text", st.records_text},
                      {"prompt_response", st.records_prompt_response},
                      {"alpaca", st.records_alpaca},
                      {"chat", st.records_chat},
                      {"skipped_empty", st.skipped_empty}};
  index["splits"] = {{"train", train->index_entry()}, {"val", val->index_entry()}};
  write_file_atomic(index_path, index.dump(2) + "\n");

  // Shards of an earlier run that this index does not list would only confuse readers.
  std::set<std::string> keep;
  for (const auto& s : st.train.shards) keep.insert(fs::path(s).filename().string());
  for (const auto& s : st.val.shards) keep.insert(fs::path(s).filename().string());
  static const std::regex shard_name("(train|val)_[0-9]{5}\\.h5");
  for (fs::directory_iterator it(o.output_dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (std::regex_match(name, shard_name) && !keep.count(name)) {
      std::error_code ec2;
      fs::remove(it->path(), ec2);
    }
  }

  const double end = now_s();
  st.seconds = end - start;
  st.mb_per_s = end > work_start ? static_cast<double>(st.input_bytes) / 1e6 / (end - work_start) : 0.0;
  if (!o.quiet) {
    std::FILE* out = o.progress_out ? o.progress_out : stderr;
    std::fprintf(out, "%s\n", st.summary().c_str());
    std::fflush(out);
  }
  return st;
}

}  // namespace lathe::data
