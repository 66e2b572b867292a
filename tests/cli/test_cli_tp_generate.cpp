// `lathe generate` and `lathe eval` under mpirun with tensor parallelism: each rank holds its
// shard (read from its own rank file of a TP checkpoint, or sliced from a whole checkpoint),
// decodes with the KV cache (Ladder residual's asynchronous all-reduce included), and the
// greedy text equals what one process generates from the same checkpoint; the TP eval loss
// equals the one-process eval loss.
#include <gtest/gtest.h>

#include <fstream>
#include <regex>
#include <sstream>
#include <string>

#include "tests/cli/cli_test_util.h"
#include "tests/common/test_helpers.h"
#include "tests/train/trainer_test_util.h"

namespace lathe::cli_test {
namespace {

using test::TmpDir;
using test::write_file;

bool contains(const std::string& s, const std::string& what) { return s.find(what) != std::string::npos; }

std::string read_all(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// The tiny trainer config with 4 heads (TP up to 4) as GPT-2, or as Llama with 2 KV heads
// (GQA: each TP=2 rank owns 2 query heads and their 1 KV head), no dropout.
std::string write_config(const TmpDir& tmp, bool llama, int steps) {
  std::string text = train::test_util::tiny_config_text(tmp / "unused", steps);
  const std::string from = "arch: GPT2 n_layer: 2 n_head: 2 d_model: 32 max_seq_len: 32 dropout: 0.1";
  const size_t at = text.find(from);
  EXPECT_NE(at, std::string::npos);
  text.replace(at, from.size(),
               llama ? "arch: LLAMA n_layer: 2 n_head: 4 n_kv_head: 2 d_model: 32 max_seq_len: 32 dropout: 0"
                     : "arch: GPT2 n_layer: 2 n_head: 4 d_model: 32 max_seq_len: 32 dropout: 0");
  const std::string path = tmp / (llama ? "llama.pbtxt" : "gpt2.pbtxt");
  write_file(path, text);
  return path;
}

const char* const kGreedy = " --prompt 'the quick' --max-new-tokens 20 --temperature 0";
// A tiny model's greedy text is often one repeated byte, so a sampled continuation (fixed seed)
// is compared too: its draws follow every logit, and one process and TP=2 agree to f32
// rounding, far from any draw's boundary in these deterministic runs.
const char* const kSampled = " --prompt 'the quick' --max-new-tokens 24 --temperature 1 --top-k 0 --seed 5";

// Text of one process vs mpirun -np 2 (whose stderr must show the TP layout).
void expect_tp2_generation_equals_one_process(const TmpDir& tmp, const std::string& run, const std::string& extra) {
  for (const char* gen : {kGreedy, kSampled}) {
    SCOPED_TRACE(gen);
    Result one = run_lathe("generate " + sh_quote(run) + gen + " 2>/dev/null");
    ASSERT_EQ(one.rc, 0) << one.out;
    ASSERT_GT(one.out.size(), std::string("the quick\n").size()) << one.out;
    const std::string err = tmp / "gen_err.txt";
    Result two = run_lathe_mpi(2, "generate " + sh_quote(run) + gen + extra, err);
    ASSERT_EQ(two.rc, 0) << two.out << read_all(err);
    EXPECT_TRUE(contains(read_all(err), "lathe generate: tensor parallel (dp1 x tp2 x sp1)")) << read_all(err);
    // Rank 0 alone prints: the same text, once.
    EXPECT_EQ(two.out, one.out);
  }
}

double val_loss(const std::string& out) {
  std::smatch m;
  EXPECT_TRUE(std::regex_search(out, m, std::regex("val loss: +([0-9.]+)"))) << out;
  return m.size() > 1 ? std::stod(m[1]) : -1.0;
}

// GPT-2, ladder off and on: a checkpoint trained with TP=2; under mpirun -np 2 each rank reads
// its own rank file. One process gathers the shards.
TEST(CliTensorParallelGenerate, Gpt2TpCheckpointGreedyEqualsOneProcessLadderOffAndOn) {
  for (const bool ladder : {false, true}) {
    SCOPED_TRACE(ladder ? "ladder" : "standard");
    TmpDir tmp;
    const std::string cfg = write_config(tmp, /*llama=*/false, 4);
    const std::string run = tmp / "run";
    Result t = run_lathe_mpi(2, "train " + sh_quote(cfg) + " --set run_dir=" + sh_quote(run) +
                                    " --set parallel.tensor_parallel=2 --set model.ladder_residual=" +
                                    (ladder ? "true" : "false"));
    ASSERT_EQ(t.rc, 0) << t.out;
    expect_tp2_generation_equals_one_process(tmp, run, "");
    // Eval of the same checkpoint: TP=2 scores what one process scores.
    Result e1 = run_lathe("eval " + sh_quote(run));
    ASSERT_EQ(e1.rc, 0) << e1.out;
    Result e2 = run_lathe_mpi(2, "eval " + sh_quote(run));
    ASSERT_EQ(e2.rc, 0) << e2.out;
    EXPECT_TRUE(contains(e2.out, "layout:     dp1 x tp2 x sp1")) << e2.out;
    EXPECT_NEAR(val_loss(e2.out), val_loss(e1.out), 2e-5);
  }
}

// Llama with GQA, ladder off and on: a one-process checkpoint sliced into TP=2 shards by
// --set parallel.tensor_parallel=2 (the path a gathered or Hugging Face checkpoint takes).
TEST(CliTensorParallelGenerate, LlamaGqaWholeCheckpointShardedByTheConfigLadderOffAndOn) {
  for (const bool ladder : {false, true}) {
    SCOPED_TRACE(ladder ? "ladder" : "standard");
    TmpDir tmp;
    const std::string cfg = write_config(tmp, /*llama=*/true, 4);
    const std::string run = tmp / "run";
    Result t = run_lathe("train " + sh_quote(cfg) + " --set run_dir=" + sh_quote(run) +
                         " --set model.ladder_residual=" + (ladder ? "true" : "false"));
    ASSERT_EQ(t.rc, 0) << t.out;
    expect_tp2_generation_equals_one_process(tmp, run, " --set parallel.tensor_parallel=2");
  }
}

// A layout that does not fit is a config error (exit 2) naming the field, before any work.
TEST(CliTensorParallelGenerate, TensorParallelThatDoesNotFitTheWorldIsAConfigError) {
  TmpDir tmp;
  const std::string cfg = write_config(tmp, /*llama=*/false, 4);
  const std::string run = tmp / "run";
  Result t = run_lathe("train " + sh_quote(cfg) + " --set run_dir=" + sh_quote(run));
  ASSERT_EQ(t.rc, 0) << t.out;
  Result g = run_lathe_mpi(2, "generate " + sh_quote(run) + kGreedy + " --set parallel.tensor_parallel=4");
  EXPECT_EQ(g.rc, 2) << g.out;
  EXPECT_TRUE(contains(g.out, "tensor_parallel")) << g.out;
}

}  // namespace
}  // namespace lathe::cli_test
