// The federation under mpirun (-np 2 or 3; rank 0 the server): exactness of each strategy's
// aggregate after one round with two clients, FedAvg's cross-term, one client equal to plain
// local fine-tuning (Trainer), stragglers and failed clients left out of a round, and a
// resumed federation equal to an uninterrupted one.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <set>

#include "autograd/grad_mode.h"
#include "autograd/ops.h"
#include "configs/config.h"
#include "federated/federation.h"
#include "federated/privacy.h"
#include "parallel/communicator.h"
#include "parallel/single_process_communicator.h"
#include "train/trainer.h"

namespace lathe::federated {
namespace {

namespace fs = std::filesystem;

std::shared_ptr<parallel::Communicator> comm() { return parallel::world(); }

// The tests' run with overrides; run_dir fresh under the temp directory (rank 0 clears it).
RunConfig config(const std::string& name, std::vector<std::string> sets) {
  const std::string dir = (fs::temp_directory_path() / "lathe_fed_tests" / name).string();
  if (comm()->rank() == 0) fs::remove_all(dir);
  comm()->barrier();
  sets.push_back("run_dir=" + dir);
  return configs::load_config("tests/federated/data/tiny_fed.pbtxt", sets);
}

FederateOptions quiet() {
  FederateOptions o;
  o.comm = comm();
  o.out = nullptr;
  o.keep_updates = true;
  return o;
}

// f64 [m, n] = a [m, k] b [k, n] of f32 tensors.
std::vector<double> matmul64(const Tensor& a, const Tensor& b) {
  const int64_t m = a.shape()[0], k = a.shape()[1], n = b.shape()[1];
  EXPECT_EQ(b.shape()[0], k);
  const auto av = a.to_vector<float>(), bv = b.to_vector<float>();
  std::vector<double> out(static_cast<size_t>(m * n));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t p = 0; p < k; ++p)
      for (int64_t j = 0; j < n; ++j) out[i * n + j] += static_cast<double>(av[i * k + p]) * bv[p * n + j];
  return out;
}

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::fabs(x));
  return m;
}

std::vector<double> weights_of(const FederationResult& r) {
  double total = 0;
  for (const auto& u : r.last_updates) total += static_cast<double>(u.num_examples);
  std::vector<double> p;
  for (const auto& u : r.last_updates) p.push_back(static_cast<double>(u.num_examples) / total);
  return p;
}

// W_after - sum_k p_k W_k, where client k's effective weight is W_before's base plus s B_k A_k
// (the product the strategy's clients trained: `client_product(k, module)`), per module; also
// returns the size of the update for scale.
void check_exact(const FederationResult& r,
                 const std::function<std::vector<double>(size_t, const std::string&)>& client_product, double tol,
                 double* worst, double* update) {
  const auto p = weights_of(r);
  *worst = 0;
  *update = 0;
  for (const auto& [module, after] : r.weights_after) {
    const auto before = r.weights_before.at(module).to_vector<float>();
    const auto af = after.to_vector<float>();
    std::vector<double> expected(before.size(), 0.0);
    for (size_t k = 0; k < r.last_updates.size(); ++k) {
      const std::vector<double> prod = client_product(k, module);
      for (size_t i = 0; i < prod.size(); ++i) expected[i] += p[k] * r.scale * prod[i];
    }
    std::vector<double> diff(before.size()), upd(before.size());
    for (size_t i = 0; i < before.size(); ++i) {
      upd[i] = static_cast<double>(af[i]) - before[i];
      diff[i] = upd[i] - expected[i];
    }
    *worst = std::max(*worst, max_abs(diff));
    *update = std::max(*update, max_abs(upd));
  }
  (void)tol;
}

TEST(Federation, FfaLoraAggregateIsExact) {
  if (comm()->size() != 3) GTEST_SKIP() << "runs with -np 3 (two client ranks)";
  RunConfig cfg = config("ffa", {"federated.strategy=FFA_LORA", "federated.clients=2", "federated.rounds=1"});
  FederationResult r = federate(cfg, quiet());
  if (comm()->rank() != 0) return;
  ASSERT_EQ(r.last_updates.size(), 2u);
  EXPECT_NE(r.last_updates[0].num_examples, r.last_updates[1].num_examples);  // unequal weights
  double worst, update;
  check_exact(
      r,
      [&](size_t k, const std::string& m) {
        // A is the shared frozen init (the global one; never sent).
        return matmul64(r.last_updates[k].tensors.at(m + ".lora_B.weight"), r.global.at(m + ".lora_A.weight"));
      },
      0, &worst, &update);
  EXPECT_GT(update, 1e-3);
  EXPECT_LT(worst, 2e-6) << "update " << update;
  // Upload: B only (out x r per module).
  for (const auto& u : r.last_updates)
    for (const auto& [name, t] : u.tensors) EXPECT_NE(name.find("lora_B"), std::string::npos) << name;
}

TEST(Federation, FloraStackingWithDifferentRanksIsExact) {
  if (comm()->size() != 3) GTEST_SKIP() << "runs with -np 3";
  RunConfig cfg = config("flora", {"federated.strategy=FLORA", "federated.clients=2", "federated.rounds=1"});
  cfg.mutable_federated()->add_client_ranks(2);
  cfg.mutable_federated()->add_client_ranks(4);
  FederationResult r = federate(cfg, quiet());
  if (comm()->rank() != 0) return;
  ASSERT_EQ(r.last_updates.size(), 2u);
  EXPECT_DOUBLE_EQ(r.scale, 2.0);  // FLoRA: alpha_k = 2 r_k
  std::set<int> ranks;
  for (const auto& u : r.last_updates) {
    ranks.insert(u.rank);
    for (const auto& [name, t] : u.tensors)
      EXPECT_EQ(name.find("lora_A") != std::string::npos ? t.shape()[0] : t.shape()[1], u.rank) << name;
  }
  EXPECT_EQ(ranks, (std::set<int>{2, 4}));
  double worst, update;
  check_exact(
      r,
      [&](size_t k, const std::string& m) {
        const auto& t = r.last_updates[k].tensors;
        return matmul64(t.at(m + ".lora_B.weight"), t.at(m + ".lora_A.weight"));
      },
      0, &worst, &update);
  EXPECT_GT(update, 1e-3);
  EXPECT_LT(worst, 2e-6) << "update " << update;
  // Re-initialised: the global adapter after the merge is B = 0.
  for (const auto& [name, t] : r.global) {
    if (name.find("lora_B") == std::string::npos) continue;
    for (float x : t.to_vector<float>()) ASSERT_EQ(x, 0.0f) << name;
  }
}

TEST(Federation, FedSbAggregateIsExactAndUploadsRSquared) {
  if (comm()->size() != 3) GTEST_SKIP() << "runs with -np 3";
  RunConfig cfg = config("fedsb", {"federated.strategy=FED_SB", "peft.method=LORA_SB", "peft.sb_init_batches=2",
                                   "federated.clients=2", "federated.rounds=1"});
  FederationResult r = federate(cfg, quiet());
  if (comm()->rank() != 0) return;
  ASSERT_EQ(r.last_updates.size(), 2u);
  // Client k's effective weight is base + s B R_k A with B, A frozen (the global ones), and the
  // weight before the round base + s B R_0 A: the expected change is sum_k p_k s B (R_k - R_0) A.
  auto BRA = [&](const std::string& m, const Tensor& R) {
    const Tensor B = r.global.at(m + ".lora_B.weight"), A = r.global.at(m + ".lora_A.weight");
    const auto br = matmul64(B, R);
    return matmul64(Tensor::from_vector<float>(std::vector<float>(br.begin(), br.end()), {B.shape()[0], R.shape()[1]}),
                    A);
  };
  double worst, update;
  check_exact(
      r,
      [&](size_t k, const std::string& m) {
        auto now = BRA(m, r.last_updates[k].tensors.at(m + ".lora_R.weight"));
        const auto before = BRA(m, r.global_before.at(m + ".lora_R.weight"));
        for (size_t i = 0; i < now.size(); ++i) now[i] -= before[i];
        return now;
      },
      0, &worst, &update);
  EXPECT_GT(update, 1e-4);
  EXPECT_LT(worst, 2e-6) << "update " << update;
  // Upload: R only, r x r per adapted matrix, whatever the client count.
  for (const auto& u : r.last_updates)
    for (const auto& [name, t] : u.tensors) {
      EXPECT_NE(name.find("lora_R"), std::string::npos) << name;
      EXPECT_EQ(t.shape(), (Shape{4, 4}));
    }
}

TEST(Federation, FedAvgMissesTheCrossTermTheSpecDerives) {
  if (comm()->size() != 3) GTEST_SKIP() << "runs with -np 3";
  RunConfig cfg = config("fedavg", {"federated.strategy=FEDAVG", "federated.clients=2", "federated.rounds=1"});
  FederationResult r = federate(cfg, quiet());
  if (comm()->rank() != 0) return;
  ASSERT_EQ(r.last_updates.size(), 2u);
  const auto p = weights_of(r);
  // W_after - sum_k p_k W_k = s (Bbar Abar - sum p_k B_k A_k) = -s sum_k p_k (B_k - Bbar)(A_k - Abar)
  // (spec section 7); its size is asserted, and that it is not negligible.
  double worst = 0, cross_max = 0;
  for (const auto& [module, after] : r.weights_after) {
    const auto af = after.to_vector<float>();
    const auto W0 = r.weights_before.at(module).to_vector<float>();  // B = 0 before round 1: the base
    const Tensor& A1 = r.last_updates[0].tensors.at(module + ".lora_A.weight");
    const Tensor& A2 = r.last_updates[1].tensors.at(module + ".lora_A.weight");
    const Tensor& B1 = r.last_updates[0].tensors.at(module + ".lora_B.weight");
    const Tensor& B2 = r.last_updates[1].tensors.at(module + ".lora_B.weight");
    const auto BA1 = matmul64(B1, A1), BA2 = matmul64(B2, A2);
    // Two clients: B_k - Bbar = p_other (B_k - B_other), so the cross-term is p1 p2 (B1 - B2)(A1 - A2).
    Tensor dB = autograd::sub(B1, B2), dA = autograd::sub(A1, A2);
    const auto cross = matmul64(dB, dA);
    for (size_t i = 0; i < af.size(); ++i) {
      const double ideal = W0[i] + r.scale * (p[0] * BA1[i] + p[1] * BA2[i]);
      const double predicted = ideal - r.scale * p[0] * p[1] * cross[i];
      worst = std::max(worst, std::fabs(af[i] - predicted));
      cross_max = std::max(cross_max, std::fabs(r.scale * p[0] * p[1] * cross[i]));
    }
  }
  EXPECT_GT(cross_max, 1e-5);  // the naive average really is off
  EXPECT_LT(worst, 2e-6) << "cross-term " << cross_max;
}

// One client, one round: the same numbers as Trainer fine-tuning for the same steps.
TEST(Federation, OneClientEqualsLocalFineTuning) {
  if (comm()->size() != 2) GTEST_SKIP() << "runs with -np 2 (one client rank)";
  for (const std::string strategy : {"FFA_LORA", "FED_SB"}) {
    SCOPED_TRACE(strategy);
    std::vector<std::string> sets = {"federated.strategy=" + strategy, "federated.clients=1", "federated.rounds=1",
                                     "federated.partition=IID", "federated.local_steps=4", "train.grad_clip=0"};
    if (strategy == "FED_SB") {
      sets.push_back("peft.method=LORA_SB");
      sets.push_back("peft.sb_init_batches=2");
    }
    RunConfig cfg = config("one_" + strategy, sets);
    FederationResult r = federate(cfg, quiet());
    if (comm()->rank() != 0) continue;
    // The plain run: federated off, train.steps = local_steps; FFA-LoRA's frozen A is an
    // optimizer group with lr_scale 0 (AdamW then leaves it exactly as it is).
    RunConfig plain = cfg;
    plain.clear_federated();
    plain.mutable_train()->set_steps(4);
    plain.set_run_dir(cfg.run_dir() + "_plain");
    plain.mutable_checkpoint()->set_dir(plain.run_dir() + "/checkpoints");
    if (strategy == "FFA_LORA") {
      auto* g = plain.mutable_optimizer()->add_groups();
      g->set_pattern(".*lora_A\\.weight");
      g->set_lr_scale(0.0);
    }
    train::TrainOptions to;
    to.comm = std::make_shared<parallel::SingleProcessCommunicator>();
    to.out = nullptr;
    to.resume = "never";
    train::Trainer t(plain, to);
    t.run();
    int compared = 0;
    for (const auto& [name, param] : t.model().named_parameters()) {
      auto it = r.global.find(name);
      if (it == r.global.end()) continue;
      ++compared;
      EXPECT_EQ(it->second.to_vector<float>(), param.to_vector<float>()) << name;
    }
    EXPECT_GT(compared, 0);
    double loss = 0;
    for (const auto& s : t.result().steps) loss += s.loss;
    EXPECT_NEAR(r.rounds.at(0).train_loss, loss / 4, 1e-12);
  }
}

TEST(Federation, StragglerIsLeftOutAndRejoinsNextRound) {
  if (comm()->size() != 3) GTEST_SKIP() << "runs with -np 3";
  RunConfig cfg = config("straggler", {"federated.clients=2", "federated.rounds=2", "federated.round_deadline_s=3"});
  setenv("LATHE_FED_TEST_SLOW", "1:1:4.5", 1);  // client 1 (rank 2) sleeps 4.5 s in round 1
  FederationResult r = federate(cfg, quiet());
  unsetenv("LATHE_FED_TEST_SLOW");
  if (comm()->rank() != 0) return;
  ASSERT_EQ(r.rounds.size(), 2u);
  EXPECT_EQ(r.rounds[0].aggregated, std::vector<int>{0});
  EXPECT_EQ(r.rounds[0].dropped, std::vector<int>{1});
  EXPECT_EQ(r.rounds[1].aggregated, (std::vector<int>{0, 1}));
  EXPECT_TRUE(r.rounds[1].dropped.empty());
}

// A straggler in the last round: the server leaves it out, then waits for its rank to
// acknowledge the end (its late upload drained) instead of leaving it blocked in a send.
TEST(Federation, LastRoundStragglerEndsCleanly) {
  if (comm()->size() != 3) GTEST_SKIP() << "runs with -np 3";
  RunConfig cfg = config("last_straggler", {"federated.clients=2", "federated.rounds=2", "federated.round_deadline_s=2"});
  setenv("LATHE_FED_TEST_SLOW", "1:2:3", 1);
  FederationResult r = federate(cfg, quiet());
  unsetenv("LATHE_FED_TEST_SLOW");
  comm()->barrier();  // every rank got out of federate
  if (comm()->rank() != 0) return;
  ASSERT_EQ(r.rounds.size(), 2u);
  EXPECT_EQ(r.rounds[0].aggregated, (std::vector<int>{0, 1}));
  EXPECT_EQ(r.rounds[1].aggregated, std::vector<int>{0});
  EXPECT_EQ(r.rounds[1].dropped, std::vector<int>{1});
}

TEST(Federation, FailedClientIsLeftOutOfItsRound) {
  if (comm()->size() != 3) GTEST_SKIP() << "runs with -np 3";
  RunConfig cfg = config("failed", {"federated.clients=3", "federated.rounds=2"});
  setenv("LATHE_FED_TEST_FAIL", "0:1", 1);
  FederationResult r = federate(cfg, quiet());
  unsetenv("LATHE_FED_TEST_FAIL");
  if (comm()->rank() != 0) return;
  ASSERT_EQ(r.rounds.size(), 2u);
  EXPECT_EQ(r.rounds[0].aggregated, (std::vector<int>{1, 2}));
  EXPECT_EQ(r.rounds[0].dropped, std::vector<int>{0});
  EXPECT_EQ(r.rounds[1].aggregated, (std::vector<int>{0, 1, 2}));
}

TEST(Federation, DpRoundReportsTheAccountantsEpsilon) {
  if (comm()->size() != 3) GTEST_SKIP() << "runs with -np 3";
  RunConfig cfg = config("dp", {"federated.strategy=FFA_LORA", "federated.clients=2", "federated.rounds=2",
                                "federated.privacy.clip_norm=0.5", "federated.privacy.noise_multiplier=1.1",
                                "federated.privacy.delta=1e-5"});
  FederationResult r = federate(cfg, quiet());
  if (comm()->rank() != 0) return;
  ASSERT_EQ(r.rounds.size(), 2u);
  // Each client ran local_steps = 3 steps of micro_batch 4 per round: q = 4 / n_k; the round
  // reports the largest epsilon (the smallest client's), composed over every step so far.
  for (int round = 1; round <= 2; ++round) {
    double worst = 0;
    for (int64_t n : r.client_sizes) {
      RdpAccountant acc;
      acc.compose(4.0 / static_cast<double>(n), 1.1, 3 * round);
      worst = std::max(worst, acc.epsilon(1e-5).first);
    }
    EXPECT_NEAR(r.rounds[static_cast<size_t>(round) - 1].epsilon, worst, 1e-12) << round;
  }
  EXPECT_GT(r.rounds[1].epsilon, r.rounds[0].epsilon);
}

// 100 virtual clients on 3 client ranks: sampled ones train one after another on their rank.
TEST(Federation, HundredClientsOnFourProcesses) {
  if (comm()->size() != 4) GTEST_SKIP() << "runs with -np 4";
  RunConfig cfg = config("hundred", {"federated.clients=100", "federated.partition=IID", "federated.rounds=2",
                                     "federated.client_fraction=0.1", "federated.local_steps=1"});
  FederationResult r = federate(cfg, quiet());
  if (comm()->rank() != 0) return;
  ASSERT_EQ(r.client_sizes.size(), 100u);
  int64_t total = 0;
  for (int64_t n : r.client_sizes) total += n;
  EXPECT_EQ(total, 800 - 0);  // every training sample (no prompt is cut at seq_len 96)
  ASSERT_EQ(r.rounds.size(), 2u);
  for (const auto& rd : r.rounds) {
    EXPECT_EQ(rd.sampled.size(), 10u);
    EXPECT_EQ(rd.aggregated, rd.sampled);
  }
  EXPECT_NE(r.rounds[0].sampled, r.rounds[1].sampled);  // a fresh sample each round
}

TEST(Federation, ResumedEqualsUninterrupted) {
  for (const std::string strategy : {"FEDAVG", "FLORA"}) {
    SCOPED_TRACE(strategy);
    std::vector<std::string> sets = {"federated.strategy=" + strategy, "federated.clients=4", "federated.rounds=3",
                                     "federated.client_fraction=0.5"};
    RunConfig whole = config("whole_" + strategy, sets);
    FederationResult a = federate(whole, quiet());
    RunConfig part = config("part_" + strategy, sets);
    FederateOptions stop = quiet();
    stop.stop_after_round = 1;
    FederationResult b1 = federate(part, stop);
    FederateOptions resume = quiet();
    resume.resume = "latest";
    FederationResult b = federate(part, resume);
    if (comm()->rank() != 0) continue;
    EXPECT_EQ(b1.rounds.size(), 1u);
    EXPECT_EQ(b.start_round, 1);
    ASSERT_EQ(b.rounds.size(), 2u);
    for (size_t i = 0; i < 2; ++i) {
      EXPECT_EQ(b.rounds[i].sampled, a.rounds[i + 1].sampled);
      EXPECT_EQ(b.rounds[i].train_loss, a.rounds[i + 1].train_loss);
      EXPECT_EQ(b.rounds[i].val_loss, a.rounds[i + 1].val_loss);
    }
    // Bit-exact: the final global adapter and (FLoRA) the merged weights.
    for (const auto& [name, t] : a.global) EXPECT_EQ(t.to_vector<float>(), b.global.at(name).to_vector<float>()) << name;
    for (const auto& [name, t] : a.weights_after)
      EXPECT_EQ(t.to_vector<float>(), b.weights_after.at(name).to_vector<float>()) << name;
  }
}

}  // namespace
}  // namespace lathe::federated
