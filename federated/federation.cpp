#include "federated/federation.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <sstream>
#include <thread>

#include "autograd/grad_mode.h"
#include "autograd/ops.h"
#include "core/error.h"
#include "core/fs.h"
#include "data/batch_cursor.h"
#include "federated/federated.pb.h"
#include "federated/partition.h"
#include "federated/privacy.h"
#include "federated/wire.h"
#include "models/autocast.h"
#include "optim/optimizer.h"
#include "optim/registry.h"
#include "parallel/mpi_communicator.h"
#include "parallel/single_process_communicator.h"
#include "peft/adapter_io.h"
#include "peft/inject.h"
#include "train/batches.h"
#include "train/checkpoint.h"
#include "train/grad_sync.h"
#include "train/hdf5_io.h"
#include "train/metrics.h"
#include "train/peft_setup.h"
#include "train/run_plan.h"
#include "train/tensorboard.h"

namespace lathe::federated {

namespace fs = std::filesystem;
using configs::ConfigError;
using nlohmann::json;

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

uint64_t mix(uint64_t a, uint64_t b) {
  uint64_t z = a * 0x9E3779B97F4A7C15ull + b + 0x632BE59BD9B4E019ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Test hooks: LATHE_FED_TEST_SLOW="client:round:seconds" sleeps before that client trains in
// that round (a straggler past the deadline); LATHE_FED_TEST_FAIL="client:round" makes its
// training throw (a client that fails); LATHE_FED_TEST_SERVER_HANG="round" makes the server
// stop answering before that round (a dead server). Real process death (a SIGKILL, no cleanup):
// LATHE_FED_TEST_KILL="client:round" kills the rank hosting that client when it starts training
// it; LATHE_FED_TEST_SERVER_KILL="round" kills the server once that round's tasks are sent;
// LATHE_FED_TEST_KILL_IN_CHECKPOINT="round" kills it half-way through writing that round's
// checkpoint.
void kill_if(bool cond, const char* what) {
  if (!cond) return;
  std::fprintf(stderr, "lathe: %s: SIGKILL (test hook)\n", what);
  std::fflush(stderr);
  std::raise(SIGKILL);
}

int env_round(const char* var) {
  const char* v = std::getenv(var);
  return v && *v ? std::atoi(v) : 0;
}

bool hook_matches(const char* var, int client, int round, double* extra = nullptr) {
  const char* v = std::getenv(var);
  if (!v || !*v) return false;
  int c = -1, r = -1;
  double s = 0;
  const int n = std::sscanf(v, "%d:%d:%lf", &c, &r, &s);
  if (n < 2 || c != client || r != round) return false;
  if (extra) *extra = s;
  return true;
}

struct Adapter {
  std::string name;
  peft::LoraLinear* layer = nullptr;
};

// What every rank holds: the plan, its model with adapters, the partition.
struct Node {
  train::RunPlan plan;
  FederatedConfig fc;
  std::unique_ptr<models::CausalLM> model;
  peft::PeftOptions peft;
  peft::InjectResult injected;
  std::vector<Adapter> adapters;
  std::map<std::string, Tensor> params;  // every adapter tensor by name
  Partition partition;
  std::vector<int64_t> labels;           // per training sample, when the partition uses labels
  std::vector<std::string> label_names;
  std::shared_ptr<parallel::Communicator> self = std::make_shared<parallel::SingleProcessCommunicator>();
  double scale = 1;

  std::vector<std::string> moving_names() const {  // what the strategy sends each way
    std::vector<std::string> out;
    for (const auto& a : adapters) {
      switch (fc.strategy()) {
        case FederatedConfig::FEDAVG:
          out.push_back(a.name + ".lora_A.weight");
          out.push_back(a.name + ".lora_B.weight");
          break;
        case FederatedConfig::FFA_LORA: out.push_back(a.name + ".lora_B.weight"); break;
        case FederatedConfig::FED_SB: out.push_back(a.name + ".lora_R.weight"); break;
        default: break;
      }
    }
    return out;
  }
  int client_rank_of(int client) const {  // FLORA's r_k
    if (fc.client_ranks_size() == 0) return static_cast<int>(peft.lora.r);
    return fc.client_ranks(client % fc.client_ranks_size());
  }
  int64_t batch_rows() const {
    return static_cast<int64_t>(plan.cfg.train().micro_batch()) * plan.cfg.train().grad_accum();
  }
  int local_steps(int client) const {
    if (fc.local_epochs() <= 0) return fc.local_steps();
    const double n = static_cast<double>(partition[static_cast<size_t>(client)].size());
    return std::max(1, static_cast<int>(std::ceil(fc.local_epochs() * n / static_cast<double>(batch_rows()))));
  }
};

int host_rank(int client, int world) { return 1 + client % (world - 1); }

// The labels of the training samples from label_field of data.path.
std::vector<int64_t> sample_labels(Node& n) {
  const auto& cfg = n.plan.cfg;
  std::vector<int64_t> records = read_jsonl_labels(cfg.data().path(), n.fc.label_field(), &n.label_names);
  const auto& d = n.plan.data;
  std::vector<int64_t> out;
  if (d.instruction) {
    if (d.train_instr.num_documents() != static_cast<int64_t>(records.size()))
      throw ConfigError("config", {"federated.label_field: " + cfg.data().path() + " has " +
                                   std::to_string(records.size()) + " records but the prepared training split " +
                                   std::to_string(d.train_instr.num_documents()) + " documents"});
    for (int64_t i = 0; i < d.train_instr.size(); ++i)
      out.push_back(records[static_cast<size_t>(d.train_instr.document(i))]);
  } else {
    throw ConfigError("config", {"federated.partition: label partitions need instruction records (data.format "
                                 "PROMPT_RESPONSE, ALPACA or CHAT); plain text windows have no record labels"});
  }
  return out;
}

Partition make_partition(Node& n) {
  const FederatedConfig& f = n.fc;
  const int64_t min_size = std::max<int64_t>(f.min_client_size(), n.batch_rows());
  try {
    switch (f.partition()) {
      case FederatedConfig::DIRICHLET:
        n.labels = sample_labels(n);
        return partition_dirichlet(n.labels, f.clients(), f.dirichlet_alpha(), min_size, f.seed());
      case FederatedConfig::BY_FIELD:
        n.labels = sample_labels(n);
        return partition_by_field(n.labels, f.clients(), min_size);
      default: return partition_iid(n.plan.data.train_size(), f.clients(), min_size, f.seed());
    }
  } catch (const ConfigError&) {
    throw;
  } catch (const lathe::Error& e) {
    throw ConfigError("config", {e.message()});
  }
}

void setup_node(Node& n, const RunConfig& input, std::shared_ptr<parallel::Communicator> world) {
  RunConfig cfg = input;
  n.fc = cfg.federated();
  if (n.fc.strategy() == FederatedConfig::OFF)
    throw ConfigError("config", {"federated.strategy: lathe federate needs a strategy (FEDAVG, FFA_LORA, FLORA, FED_SB)"});
  // The lr schedule spans one local round (each round's optimizer state is fresh too).
  cfg.mutable_train()->set_steps(n.fc.local_steps());
  // FLoRA: alpha_k = 2 r_k, so every client's scale is 2 whatever its rank.
  if (n.fc.strategy() == FederatedConfig::FLORA) cfg.mutable_peft()->set_lora_alpha(2.0 * cfg.peft().r());
  // The trainer's plan of one client's run (federated off: train/run_setup refuses a federated
  // config for lathe train); the section goes back into the stored config.
  cfg.clear_federated();
  n.plan = train::plan_run(cfg, world, true, "never");
  *n.plan.cfg.mutable_federated() = n.fc;
  n.plan.config_text = configs::to_text(n.plan.cfg);
  const train::RunPlan& p = n.plan;
  n.model = models::build_model(p.spec, p.cfg.train().seed());
  n.model->train(true);
  if (p.init.enabled()) train::load_init_weights(p.init, *n.model);
  n.peft = train::peft_options(p.cfg);
  try {
    n.injected = peft::inject_lora(*n.model, n.peft);
  } catch (const lathe::Error& e) {
    throw ConfigError("config", {e.message()});
  }
  for (auto& [name, layer] : peft::lora_layers(*n.model)) n.adapters.push_back({name, layer});
  for (const auto& a : n.adapters) {
    n.params[a.name + ".lora_A.weight"] = a.layer->lora_A();
    n.params[a.name + ".lora_B.weight"] = a.layer->lora_B();
    if (a.layer->lora_R().defined()) n.params[a.name + ".lora_R.weight"] = a.layer->lora_R();
    n.scale = a.layer->scaling();
  }
  // FFA-LoRA: A stays at its shared init.
  if (n.fc.strategy() == FederatedConfig::FFA_LORA)
    for (const auto& a : n.adapters) a.layer->lora_A().set_requires_grad(false);
  if (!p.device.is_cpu()) n.model->to(p.device);
  n.partition = make_partition(n);
}

data::LMLoaderOptions loader_options(const Node& n, int client) {
  data::LMLoaderOptions o;
  o.micro_batch = n.plan.cfg.train().micro_batch();
  o.seed = n.plan.cfg.train().seed() + static_cast<uint64_t>(client);
  o.shuffle = n.plan.cfg.data().shuffle();
  return o;
}

// The rows of global sample indices as a batch (packed windows or instruction samples).
data::LMBatch make_batch(const Node& n, const std::vector<int64_t>& samples) {
  const auto& d = n.plan.data;
  const int64_t B = static_cast<int64_t>(samples.size());
  const int64_t T = d.instruction ? d.train_instr.seq_len() : d.train.seq_len();
  data::LMBatch out;
  out.ids = Tensor::empty({B, T}, DType::i64);
  out.targets = Tensor::empty({B, T}, DType::i64);
  int64_t* ids = out.ids.data<int64_t>();
  int64_t* tgt = out.targets.data<int64_t>();
  for (int64_t r = 0; r < B; ++r) {
    if (d.instruction) {
      d.train_instr.fill(samples[static_cast<size_t>(r)], ids + r * T, tgt + r * T);
    } else {
      const int32_t* w = d.train.window(samples[static_cast<size_t>(r)]);
      for (int64_t t = 0; t < T; ++t) {
        ids[r * T + t] = w[t];
        tgt[r * T + t] = w[t + 1];
      }
    }
  }
  out.windows = samples;
  return out;
}

Tensor batch_loss(Node& n, const data::LMBatch& b) {
  std::optional<models::Autocast> autocast;
  if (n.plan.bf16()) autocast.emplace(DType::bf16);
  return n.model->loss(b.ids.to(n.plan.device), b.targets.to(n.plan.device));
}

void set_tensors(Node& n, const google::protobuf::RepeatedPtrField<TensorBlob>& blobs) {
  for (const auto& b : blobs) {
    auto it = n.params.find(b.name());
    LATHE_CHECK(it != n.params.end()) << "federated: the server sent " << b.name() << ", which this model does not have";
    Tensor t = from_blob(b);
    LATHE_CHECK(t.shape() == it->second.shape())
        << "federated: " << b.name() << " arrives as " << t.shape_str() << ", the model has " << it->second.shape_str();
    it->second.copy_(t);
  }
}

// FLoRA: W += B_stk A_stk for every module, in the order the rounds were merged.
void apply_merge(Node& n, const FloraRound& m) {
  autograd::NoGradGuard ng;
  std::map<std::string, Tensor> f;
  for (const auto& b : m.factors()) f[b.name()] = from_blob(b);
  for (const auto& a : n.adapters) {
    auto ia = f.find(a.name + ".stk_A"), ib = f.find(a.name + ".stk_B");
    LATHE_CHECK(ia != f.end() && ib != f.end()) << "federated: FLoRA round " << m.round() << " has no factors for " << a.name;
    Tensor w = a.layer->base_weight();
    Tensor delta = autograd::matmul(ib->second, ia->second);
    Tensor updated = autograd::add(w.to(Device::cpu()).to(DType::f32), delta);
    w.copy_(updated);
  }
}

// FLoRA: a fresh adapter of rank r_k inside the model's r (rows/columns beyond r_k zero stay
// zero: their gradients are zero), A ~ U(-1/sqrt(in), 1/sqrt(in)) as peft's default.
void reinit_flora(Node& n, int rank, uint64_t seed) {
  Generator gen(seed);
  for (const auto& a : n.adapters) {
    const Tensor A = a.layer->lora_A();
    const int64_t r = A.shape()[0], in = A.shape()[1];
    Tensor h = Tensor::zeros({r, in}, DType::f32);
    float* p = h.data<float>();
    const double bound = 1.0 / std::sqrt(static_cast<double>(in));
    for (int64_t i = 0; i < std::min<int64_t>(rank, r) * in; ++i) p[i] = static_cast<float>((2.0 * gen.uniform() - 1.0) * bound);
    A.copy_(h);
    a.layer->lora_B().zero_();
  }
}

// One client's local round; fills `up` (tensors, loss, counts).
void train_client(Node& n, const ClientTask& task, int round, ClientUpdate* up) {
  const int client = task.client();
  const auto& idx = n.partition[static_cast<size_t>(client)];
  const auto& tc = n.plan.cfg.train();
  if (hook_matches("LATHE_FED_TEST_FAIL", client, round))
    LATHE_FAIL() << "client " << client << " failed in round " << round << " (LATHE_FED_TEST_FAIL)";
  const uint64_t seed = mix(mix(tc.seed(), static_cast<uint64_t>(round)), static_cast<uint64_t>(client));
  if (n.fc.strategy() == FederatedConfig::FLORA) reinit_flora(n, task.rank(), seed);
  n.model->dropout_generator().set_state(seed, 0);
  auto opt = optim::make_optimizer(n.plan.cfg.optimizer(), n.model->named_parameters());
  std::vector<Tensor> params;
  for (const auto& g : opt->groups())
    for (const auto& np : g.params) params.push_back(np.second);
  data::TrainCursor cursor(static_cast<int64_t>(idx.size()), loader_options(n, client), "client " + std::to_string(client),
                           "samples");
  const int64_t done_batches = task.steps_done() * tc.grad_accum();
  const int64_t bpe = cursor.batches_per_epoch();
  cursor.set_state({done_batches / bpe, (done_batches % bpe) * cursor.global_batch()});
  const auto& pv = n.fc.privacy();
  const bool dp = pv.clip_norm() > 0;
  Generator noise_gen(mix(seed, 0xD9u));
  double loss_sum = 0;
  for (int j = 1; j <= task.steps(); ++j) {
    std::vector<data::LMBatch> batches;
    std::vector<int64_t> counts;
    for (int m = 0; m < tc.grad_accum(); ++m) {
      std::vector<int64_t> rows = cursor.next();
      for (auto& r : rows) r = idx[static_cast<size_t>(r)];
      batches.push_back(make_batch(n, rows));
      counts.push_back(train::count_targets(batches.back().targets));
    }
    const train::TokenWeights w = train::token_weights(counts, *n.self);
    const int64_t sched_step = std::min<int64_t>(j, n.plan.total_steps);
    opt->set_lr(n.plan.schedule.lr_at(sched_step));
    std::vector<double> losses;
    if (!dp) {
      // As Trainer::train_step: token-weighted micro-batches, clip_grad_norm, one update.
      for (int m = 0; m < tc.grad_accum(); ++m) {
        Tensor loss = batch_loss(n, batches[static_cast<size_t>(m)]);
        losses.push_back(loss.item());
        const double s = w.loss_scale[static_cast<size_t>(m)];
        (s == 1.0 ? loss : autograd::mul(loss, s)).backward();
      }
      optim::clip_grad_norm(params, tc.grad_clip());
    } else {
      // DP-SGD: every example's gradient on its own, clipped, summed, noised, averaged.
      std::vector<Tensor> sums;
      for (const Tensor& p : params) sums.push_back(Tensor::zeros(p.shape(), DType::f32));
      int64_t rows = 0;
      for (int m = 0; m < tc.grad_accum(); ++m) {
        const data::LMBatch& b = batches[static_cast<size_t>(m)];
        double mloss = 0;
        for (int64_t r = 0; r < b.ids.shape()[0]; ++r) {
          data::LMBatch one;
          one.ids = b.ids.narrow(0, r, 1).contiguous();
          one.targets = b.targets.narrow(0, r, 1).contiguous();
          Tensor loss = batch_loss(n, one);
          mloss += loss.item();
          loss.backward();
          std::vector<Tensor> grads;
          for (const Tensor& p : params) grads.push_back(p.grad().defined() ? p.grad() : Tensor::zeros(p.shape()));
          clip_and_accumulate(grads, sums, pv.clip_norm());
          for (const Tensor& p : params) p.set_grad(Tensor());
          ++rows;
        }
        losses.push_back(mloss / static_cast<double>(b.ids.shape()[0]));
      }
      noise_and_average(sums, pv.noise_multiplier() * pv.clip_norm(), rows, noise_gen);
      for (size_t i = 0; i < params.size(); ++i) params[i].set_grad(sums[i].to(params[i].device()));
    }
    opt->step();
    opt->zero_grad();
    if (dp) {
      double sum = 0;
      for (double l : losses) sum += l;
      loss_sum += sum / static_cast<double>(losses.size());
    } else {
      loss_sum += w.global_mean_loss(losses, *n.self);
    }
  }
  up->set_client(client);
  up->set_round(round);
  up->set_num_examples(static_cast<int64_t>(idx.size()));
  up->set_steps(task.steps());
  up->set_train_loss(task.steps() > 0 ? loss_sum / task.steps() : 0);
  if (dp) {
    RdpAccountant acc;
    acc.compose(static_cast<double>(n.batch_rows()) / static_cast<double>(idx.size()), pv.noise_multiplier(),
                task.steps_done() + task.steps());
    up->set_epsilon(acc.epsilon(pv.delta()).first);
  }
  if (n.fc.strategy() == FederatedConfig::FLORA) {
    up->set_rank(task.rank());
    for (const auto& a : n.adapters) {
      to_blob(a.name + ".lora_A.weight", a.layer->lora_A().narrow(0, 0, task.rank()), up->add_tensors());
      to_blob(a.name + ".lora_B.weight", a.layer->lora_B().narrow(1, 0, task.rank()), up->add_tensors());
    }
  } else {
    for (const auto& name : n.moving_names()) to_blob(name, n.params.at(name), up->add_tensors());
  }
}

// ---- client ranks ------------------------------------------------------------------------

void run_client_rank(Node& n, parallel::Communicator& comm) {
  // A dead or hung server ends this rank through the communicator's timeout (its message names
  // the receive from rank 0), never a hang.
  comm.set_timeout(n.fc.server_timeout_s());
  comm.set_timeout_action(parallel::TimeoutAction::abort);
  for (;;) {
    ServerMessage msg;
    recv_message(comm, 0, kTagDown, &msg);
    if (msg.kind() == ServerMessage::STOP) {
      if (msg.rank_lost()) parallel::bound_finalize(n.fc.server_timeout_s());
      // Goodbye (client -1): the server waits for it, so uploads still in flight are drained first.
      ClientUpdate bye;
      bye.set_client(-1);
      bye.set_round(msg.round());
      send_message(comm, 0, kTagUp, bye);
      if (!msg.error().empty()) LATHE_FAIL() << "the server stopped the federation: " << msg.error();
      return;
    }
    for (const auto& m : msg.merges()) apply_merge(n, m);
    if (msg.tasks_size() == 0) continue;
    std::vector<std::pair<std::string, Tensor>> global;
    for (const auto& t : msg.tasks()) {
      double sleep_s = 0;
      if (hook_matches("LATHE_FED_TEST_SLOW", t.client(), msg.round(), &sleep_s))
        std::this_thread::sleep_for(std::chrono::duration<double>(sleep_s));
      kill_if(hook_matches("LATHE_FED_TEST_KILL", t.client(), msg.round()), "LATHE_FED_TEST_KILL");
      const double t0 = now_s();
      set_tensors(n, msg.global());  // every client starts from the global adapter
      ClientUpdate up;
      try {
        train_client(n, t, msg.round(), &up);
      } catch (const std::exception& e) {
        up.Clear();
        up.set_round(msg.round());
        up.set_client(t.client());
        up.set_failed(true);
        up.set_error(e.what());
      }
      up.set_seconds(now_s() - t0);
      send_message(comm, 0, kTagUp, up);
    }
  }
}

// ---- server --------------------------------------------------------------------------------

struct ServerState {
  int round = 0;                          // rounds done
  std::vector<int64_t> steps_done;        // per client
  std::vector<FloraRound> merges;         // FLORA history
  int64_t bytes_up = 0, bytes_down = 0;   // totals
};

std::string round_file(const std::string& dir, int round) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "round_%06d.h5", round);
  return dir + "/" + buf;
}

void save_server(const Node& n, const ServerState& st, const std::string& dir) {
  fs::create_directories(dir);
  const std::string path = round_file(dir, st.round);
  const std::string tmp = temp_path_for(path);
  {
    train::H5Writer w(tmp);
    w.write_string("config", n.plan.config_text);
    train::write_i64(w, "state/round", st.round);
    train::write_i64(w, "state/bytes_up", st.bytes_up);
    train::write_i64(w, "state/bytes_down", st.bytes_down);
    w.write_tensor("state/steps_done", Tensor::from_vector<int64_t>(st.steps_done, {static_cast<int64_t>(st.steps_done.size())}));
    for (const auto& [name, t] : n.params) w.write_tensor("adapter/" + name, t);
    for (size_t i = 0; i < st.merges.size(); ++i)
      for (const auto& b : st.merges[i].factors())
        w.write_tensor("flora/" + std::to_string(st.merges[i].round()) + "/" + b.name(), from_blob(b));
    w.close();
  }
  if (env_round("LATHE_FED_TEST_KILL_IN_CHECKPOINT") == st.round) {
    // Half a file where the checkpoint goes: the previous round's must stay the one resumed.
    fs::resize_file(tmp, fs::file_size(tmp) / 2);
    kill_if(true, "LATHE_FED_TEST_KILL_IN_CHECKPOINT");
  }
  commit_file(tmp, path);
}

// The newest round checkpoint in dir, or "".
std::string latest_round(const std::string& dir) {
  std::error_code ec;
  std::string best;
  if (!fs::is_directory(dir, ec)) return best;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string f = e.path().filename().string();
    if (f.rfind("round_", 0) == 0 && f.size() == 15 && f.substr(12) == ".h5" && (best.empty() || f > fs::path(best).filename().string()))
      best = e.path().string();
  }
  return best;
}

void load_server(Node& n, ServerState& st, const std::string& path) {
  try {
    train::H5Reader r(path);
    st.round = static_cast<int>(train::read_i64(r, "state/round"));
    st.bytes_up = train::read_i64(r, "state/bytes_up");
    st.bytes_down = train::read_i64(r, "state/bytes_down");
    st.steps_done = r.read_tensor("state/steps_done", DType::i64, Shape{n.fc.clients()}).to_vector<int64_t>();
    for (auto& [name, t] : n.params) r.read_into("adapter/" + name, t);
    if (r.is_group("flora"))
      for (const auto& rd : r.list("flora")) {
        FloraRound m;
        m.set_round(std::stoi(rd));
        for (const auto& name : r.list("flora/" + rd)) to_blob(name, r.read_tensor("flora/" + rd + "/" + name), m.add_factors());
        st.merges.push_back(m);
      }
    std::sort(st.merges.begin(), st.merges.end(), [](const FloraRound& a, const FloraRound& b) { return a.round() < b.round(); });
  } catch (const train::CheckpointError&) {
    throw;
  } catch (const std::exception& e) {
    throw train::CheckpointError(path + ": not a federation checkpoint of this run (" + e.what() + ")");
  }
}

std::vector<int> sample_clients(const FederatedConfig& f, int round) {
  const int K = f.clients();
  const int m = std::min(K, std::max(f.min_clients(), static_cast<int>(std::lround(f.client_fraction() * K))));
  std::vector<int64_t> all(static_cast<size_t>(K));
  for (int k = 0; k < K; ++k) all[static_cast<size_t>(k)] = k;
  GammaStream s(mix(f.seed() ^ 0x5A3Cull, static_cast<uint64_t>(round)));
  for (int i = 0; i < m; ++i) std::swap(all[static_cast<size_t>(i)], all[static_cast<size_t>(i) + s.below(static_cast<uint64_t>(K - i))]);
  std::vector<int> out(all.begin(), all.begin() + m);
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

std::map<std::string, Tensor> effective_weights(models::CausalLM& model) {
  autograd::NoGradGuard ng;
  std::map<std::string, Tensor> out;
  for (auto& [name, layer] : peft::lora_layers(model))
    out[name] = autograd::add(layer->base_weight().to(Device::cpu()).to(DType::f32), layer->delta_weight().to(Device::cpu()));
  return out;
}

namespace {

class Server {
 public:
  Server(Node& n, parallel::Communicator& comm, const FederateOptions& o, FederationResult& res)
      : n_(n), comm_(comm), o_(o), res_(res), out_(o.out) {
    const size_t world = static_cast<size_t>(comm.size());
    dead_.assign(world, false);
    owed_.assign(world, 0);
    quiet_since_.assign(world, now_s());
  }

  void message(const std::string& s) {
    if (out_) {
      std::fprintf(out_, "%s\n", s.c_str());
      std::fflush(out_);
    }
  }

  void run() {
    const auto& cfg = n_.plan.cfg;
    const int world = comm_.size();
    const std::string ckpt = cfg.checkpoint().dir();
    st_.steps_done.assign(static_cast<size_t>(n_.fc.clients()), 0);
    std::string from;
    if (o_.resume == "latest" || o_.resume == "auto") {
      from = latest_round(ckpt);
      if (from.empty() && o_.resume == "latest")
        throw train::CheckpointError("--resume: no round checkpoint (round_*.h5) in " + ckpt);
    } else if (!o_.resume.empty() && o_.resume != "never") {
      from = o_.resume;
    }
    if (!from.empty()) {
      load_server(n_, st_, from);
      for (const auto& m : st_.merges) apply_merge(n_, m);
      message("federate: resumed from " + from + " (round " + std::to_string(st_.round) + ")");
    }
    res_.start_round = st_.round;
    open_metrics(!from.empty());
    std::vector<int64_t> sizes;
    for (const auto& c : n_.partition) sizes.push_back(static_cast<int64_t>(c.size()));
    res_.client_sizes = sizes;
    json part = {{"event", "partition"}, {"partition", FederatedConfig::Partition_Name(n_.fc.partition())},
                 {"client_sizes", sizes}};
    if (!n_.labels.empty()) {
      // Per client, its samples of each label (label_names order), and the skew statistic.
      std::vector<std::vector<int64_t>> counts;
      for (const auto& c : n_.partition) {
        std::vector<int64_t> h(n_.label_names.size(), 0);
        for (int64_t i : c) ++h[static_cast<size_t>(n_.labels[static_cast<size_t>(i)])];
        counts.push_back(h);
      }
      part["label_field"] = n_.fc.label_field();
      part["labels"] = n_.label_names;
      part["client_label_counts"] = counts;
      part["label_skew"] = label_skew(n_.partition, n_.labels);
    }
    log(part);
    {
      std::ostringstream s;
      s << "federate: " << FederatedConfig::Strategy_Name(n_.fc.strategy()) << ", " << n_.fc.clients() << " clients on "
        << world - 1 << " client rank(s), " << n_.fc.rounds() << " rounds; partition "
        << FederatedConfig::Partition_Name(n_.fc.partition()) << " sizes [";
      for (size_t i = 0; i < sizes.size(); ++i) s << (i ? " " : "") << sizes[i];
      s << "]";
      message(s.str());
    }
    if (from.empty() && n_.plan.data.val_size() > 0) {
      const auto& tc = cfg.train();
      res_.initial_val_loss = train::evaluate_val(*n_.model, n_.plan.data, tc.micro_batch(), tc.eval_batches(), *n_.self,
                                                  n_.plan.compute_dtype)
                                  .loss;
      message("federate: round 0: val loss " + std::to_string(res_.initial_val_loss));
      log({{"event", "round"}, {"round", 0}, {"val_loss", res_.initial_val_loss}});
    }
    sent_merges_.assign(static_cast<size_t>(world), 0);
    const char* ompi = std::getenv("OMPI_COMM_WORLD_SIZE");
    const char* recovery = std::getenv("OMPI_MCA_orte_enable_recovery");
    if (ompi && !(recovery && (std::string(recovery) == "1" || std::string(recovery) == "true")))
      message("federate: note: launched without mpirun --enable-recovery, so a client process that dies ends the "
              "whole job; with it the federation continues without that rank");
    for (int r = 1; r < world; ++r) inbox_.push_back(std::make_unique<PendingRecv>(comm_, r, kTagUp));
    for (int round = st_.round + 1; round <= n_.fc.rounds(); ++round) {
      if (live_ranks() == 0)
        LATHE_FAIL() << "federate: every client rank is dead (see the rank_dead lines); the federation cannot go on";
      const char* hang = std::getenv("LATHE_FED_TEST_SERVER_HANG");
      if (hang && std::atoi(hang) == round) {
        message("federate: LATHE_FED_TEST_SERVER_HANG: the server stops answering");
        std::this_thread::sleep_for(std::chrono::hours(1));
      }
      run_round(round);
      if (o_.stop_after_round > 0 && round == o_.stop_after_round) break;
    }
    shutdown("");
    for (const auto& [name, t] : n_.params) res_.global[name] = t.to(Device::cpu()).clone();
    // The global adapter in the Hugging Face peft layout (FLoRA's updates are in the base
    // weights instead: its round checkpoints hold them).
    if (st_.round == n_.fc.rounds() && n_.fc.strategy() != FederatedConfig::FLORA) {
      const std::string dir = train::adapter_dir(cfg);
      peft::save_adapter(*n_.model, dir, peft::save_options(n_.peft, n_.injected, cfg.model().init_from()));
      message("federate: global adapter written to " + dir);
    }
    if (metrics_) metrics_->finish();
  }

  void shutdown(const std::string& error) {
    ServerMessage stop;
    stop.set_kind(ServerMessage::STOP);
    stop.set_error(error);
    if (std::find(dead_.begin(), dead_.end(), true) != dead_.end()) {
      stop.set_rank_lost(true);
      parallel::bound_finalize(n_.fc.server_timeout_s());
    }
    std::vector<bool> bye(inbox_.size(), false);
    size_t byes = 0;
    for (int r = 1; r < comm_.size(); ++r) {
      if (dead_[static_cast<size_t>(r)]) {  // never sent to again
        bye[static_cast<size_t>(r) - 1] = true;
        ++byes;
        continue;
      }
      sends_.push_back(send_message_async(comm_, r, kTagDown, stop));
      owe(r, 1);  // its goodbye
    }
    // Every client rank answers STOP with a goodbye after any upload it still had in flight
    // (a straggler of the last round): those are received and dropped, so no rank is left
    // blocked in a send. Bounded by the communicator timeout.
    const double until = now_s() + comm_.timeout();
    while (byes < inbox_.size() && now_s() < until) {
      bool any = false;
      for (size_t i = 0; i < inbox_.size(); ++i) {
        if (bye[i] || !inbox_[i]->ready()) continue;
        any = true;
        ClientUpdate up;
        inbox_[i]->take(&up);
        heard(static_cast<int>(i) + 1);
        if (up.client() == -1) {
          bye[i] = true;
          ++byes;
          inbox_[i].reset();
        } else {
          inbox_[i] = std::make_unique<PendingRecv>(comm_, static_cast<int>(i) + 1, kTagUp);
        }
      }
      for (size_t i = 0; i < inbox_.size(); ++i)
        if (!bye[i] && check_alive(static_cast<int>(i) + 1, st_.round)) {
          bye[i] = true;
          ++byes;
        }
      if (!any) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    for (auto& s : sends_) s.done();
    for (size_t i = 0; i < inbox_.size(); ++i)
      if (!bye[i] && !dead_[i + 1])
        message("federate: client rank " + std::to_string(i + 1) + " did not acknowledge the end of the federation");
    // Sends to a rank that never answered cannot be waited for: their Works are released once
    // the rank is known dead (at MPI_Finalize/abort); the ones that completed are dropped here.
    std::vector<PendingSend> left;
    for (auto& s : sends_)
      if (!s.done()) left.push_back(std::move(s));
    sends_.clear();
    for (auto& in : inbox_)
      if (in) in->abandon();
    inbox_.clear();
    // A send to a dead rank never completes, and a dropped Work waits for its transfer (its
    // buffers must outlive it): such sends are kept for the life of the process (MPI_Finalize
    // under --enable-recovery does not wait for them).
    static auto* orphans = new std::vector<PendingSend>;
    for (auto& s : left) orphans->push_back(std::move(s));
  }

 private:
  void open_metrics(bool append) {
    train::MetricsOptions mo;
    mo.jsonl_path = n_.plan.cfg.run_dir() + "/federated.jsonl";
    if (n_.plan.cfg.logging().tensorboard()) mo.tensorboard_dir = n_.plan.cfg.run_dir() + "/tb";
    mo.console = false;
    mo.append = append;
    metrics_ = std::make_unique<train::MetricsLogger>(mo, json(n_.plan.config_text));
  }
  void log(json rec) {
    if (metrics_) metrics_->log_event(std::move(rec));
  }

  int live_ranks() const {
    int k = 0;
    for (size_t r = 1; r < dead_.size(); ++r) k += dead_[r] ? 0 : 1;
    return k;
  }
  void owe(int r, int k) {
    if (owed_[static_cast<size_t>(r)] == 0) quiet_since_[static_cast<size_t>(r)] = now_s();
    owed_[static_cast<size_t>(r)] += k;
  }
  void heard(int r) {
    quiet_since_[static_cast<size_t>(r)] = now_s();
    if (owed_[static_cast<size_t>(r)] > 0) --owed_[static_cast<size_t>(r)];
  }
  // True when rank r is dead (declared now or before).
  bool check_alive(int r, int round) {
    const size_t i = static_cast<size_t>(r);
    if (dead_[i]) return true;
    const double silent = now_s() - quiet_since_[i];
    if (owed_[i] == 0 || silent <= n_.fc.server_timeout_s()) return false;
    dead_[i] = true;
    std::vector<int> lost;
    for (int c = 0; c < n_.fc.clients(); ++c)
      if (host_rank(c, comm_.size()) == r) lost.push_back(c);
    std::ostringstream s;
    s << "federate: round " << round << ": client rank " << r << " sent nothing for " << silent << " s while owing "
      << owed_[i] << " message(s) (federated.server_timeout_s " << n_.fc.server_timeout_s()
      << "): presumed dead; its " << lost.size() << " client(s) are left out from now on and it gets no more messages";
    message(s.str());
    log({{"event", "rank_dead"}, {"round", round}, {"rank", r}, {"clients", lost}, {"silent_s", silent}});
    return true;
  }

  void run_round(int round) {
    const double t0 = now_s();
    const int world = comm_.size();
    RoundRecord rec;
    rec.round = round;
    rec.sampled = sample_clients(n_.fc, round);
    const bool flora = n_.fc.strategy() == FederatedConfig::FLORA;
    std::vector<int> expected(static_cast<size_t>(world), 0);
    std::vector<int> lost;  // sampled, hosted on a dead rank
    for (int r = 1; r < world; ++r) {
      if (check_alive(r, round)) {
        for (int c : rec.sampled)
          if (host_rank(c, world) == r) lost.push_back(c);
        continue;
      }
      ServerMessage msg;
      msg.set_kind(ServerMessage::ROUND);
      msg.set_round(round);
      for (int c : rec.sampled) {
        if (host_rank(c, world) != r) continue;
        ClientTask* t = msg.add_tasks();
        t->set_client(c);
        t->set_steps_done(st_.steps_done[static_cast<size_t>(c)]);
        t->set_steps(n_.local_steps(c));
        if (flora) t->set_rank(n_.client_rank_of(c));
        ++expected[static_cast<size_t>(r)];
      }
      if (!flora && msg.tasks_size() > 0)
        for (const auto& name : n_.moving_names()) to_blob(name, n_.params.at(name), msg.add_global());
      for (size_t m = sent_merges_[static_cast<size_t>(r)]; m < st_.merges.size(); ++m) *msg.add_merges() = st_.merges[m];
      sent_merges_[static_cast<size_t>(r)] = st_.merges.size();
      if (msg.tasks_size() == 0 && msg.merges_size() == 0) continue;  // nothing for this rank
      PendingSend s = send_message_async(comm_, r, kTagDown, msg);
      rec.bytes_down += s.bytes;
      sends_.push_back(std::move(s));
      owe(r, msg.tasks_size());
    }
    kill_if(env_round("LATHE_FED_TEST_SERVER_KILL") == round, "LATHE_FED_TEST_SERVER_KILL");
    for (int c : lost) {
      message("federate: round " + std::to_string(round) + ": client " + std::to_string(c) + " is hosted on dead rank " +
              std::to_string(host_rank(c, world)) + "; left out");
      log({{"event", "client_lost"}, {"round", round}, {"client", c}, {"rank", host_rank(c, world)}});
    }
    // Uploads until every sampled client answered or the deadline passed.
    const double limit = n_.fc.round_deadline_s() > 0 ? n_.fc.round_deadline_s() : comm_.timeout();
    std::map<int, ClientUpdate> got;
    std::vector<int> failed;
    int pending = static_cast<int>(rec.sampled.size() - lost.size());
    while (pending > 0 && now_s() - t0 < limit) {
      bool any = false;
      for (size_t i = 0; i < inbox_.size(); ++i) {
        const int r = static_cast<int>(i) + 1;
        if (dead_[static_cast<size_t>(r)]) continue;
        if (check_alive(r, round)) {  // just died: its clients of this round will not come
          for (int c : rec.sampled)
            if (host_rank(c, world) == r && !got.count(c) &&
                std::find(failed.begin(), failed.end(), c) == failed.end()) {
              --pending;
              lost.push_back(c);
            }
          continue;
        }
        if (!inbox_[i]->ready()) continue;
        any = true;
        ClientUpdate up;
        const int64_t bytes = inbox_[i]->take(&up);
        heard(r);
        inbox_[i] = std::make_unique<PendingRecv>(comm_, static_cast<int>(i) + 1, kTagUp);
        rec.bytes_up += bytes;
        if (up.round() != round) {
          message("federate: round " + std::to_string(round) + ": dropped a late upload of client " +
                  std::to_string(up.client()) + " for round " + std::to_string(up.round()));
          log({{"event", "late_upload"}, {"round", round}, {"client", up.client()}, {"for_round", up.round()}});
          continue;
        }
        --pending;
        if (up.failed()) {
          failed.push_back(up.client());
          message("federate: round " + std::to_string(round) + ": client " + std::to_string(up.client()) +
                  " failed: " + up.error());
          log({{"event", "client_failed"}, {"round", round}, {"client", up.client()}, {"error", up.error()}});
          continue;
        }
        got[up.client()] = up;
      }
      for (auto it = sends_.begin(); it != sends_.end();) it = it->done() ? sends_.erase(it) : it + 1;
      if (!any) std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    for (int c : rec.sampled)
      if (!got.count(c)) rec.dropped.push_back(c);
    for (int c : rec.dropped) {
      if (std::find(failed.begin(), failed.end(), c) != failed.end()) continue;
      if (std::find(lost.begin(), lost.end(), c) != lost.end()) continue;
      message("federate: round " + std::to_string(round) + ": client " + std::to_string(c) + " missed the deadline (" +
              std::to_string(limit) + " s); left out of this round");
      log({{"event", "client_dropped"}, {"round", round}, {"client", c}, {"deadline_s", limit}});
    }
    if (o_.keep_updates) {
      res_.weights_before = effective_weights(*n_.model);
      for (const auto& [name, t] : n_.params) res_.global_before[name] = t.to(Device::cpu()).clone();
    }
    aggregate(round, got, rec);
    if (o_.keep_updates) res_.weights_after = effective_weights(*n_.model);
    st_.round = round;
    st_.bytes_up += rec.bytes_up;
    st_.bytes_down += rec.bytes_down;
    // Evaluation of the global model.
    const auto& tc = n_.plan.cfg.train();
    if (n_.plan.data.val_size() > 0 && (round % n_.fc.eval_interval() == 0 || round == n_.fc.rounds())) {
      train::EvalResult ev = train::evaluate_val(*n_.model, n_.plan.data, tc.micro_batch(), tc.eval_batches(), *n_.self,
                                                 n_.plan.compute_dtype);
      rec.val_loss = ev.loss;
    }
    save_server(n_, st_, n_.plan.cfg.checkpoint().dir());
    rec.seconds = now_s() - t0;
    std::ostringstream s;
    s << "federate: round " << round << "/" << n_.fc.rounds() << ": " << rec.aggregated.size() << "/" << rec.sampled.size()
      << " clients, train loss " << rec.train_loss;
    if (rec.val_loss >= 0) s << ", val loss " << rec.val_loss;
    s << ", up " << rec.bytes_up << " B, down " << rec.bytes_down << " B, " << rec.seconds << " s";
    if (n_.fc.privacy().clip_norm() > 0) s << ", epsilon " << rec.epsilon << " (delta " << n_.fc.privacy().delta() << ")";
    message(s.str());
    json r = {{"event", "round"},          {"round", round},          {"sampled", rec.sampled},
              {"aggregated", rec.aggregated}, {"dropped", rec.dropped}, {"train_loss", rec.train_loss},
              {"bytes_up", rec.bytes_up},  {"bytes_down", rec.bytes_down}, {"seconds", rec.seconds},
              {"strategy", FederatedConfig::Strategy_Name(n_.fc.strategy())}};
    if (rec.val_loss >= 0) r["val_loss"] = rec.val_loss;
    if (n_.fc.privacy().clip_norm() > 0) {
      r["epsilon"] = rec.epsilon;
      r["delta"] = n_.fc.privacy().delta();
    }
    log(r);
    if (metrics_ && metrics_->tensorboard()) {
      std::map<std::string, double> v = {{"federated/train_loss", rec.train_loss},
                                         {"federated/bytes_up", static_cast<double>(rec.bytes_up)},
                                         {"federated/bytes_down", static_cast<double>(rec.bytes_down)},
                                         {"federated/clients", static_cast<double>(rec.aggregated.size())}};
      if (rec.val_loss >= 0) v["federated/val_loss"] = rec.val_loss;
      metrics_->tensorboard()->add_scalars(round, v);
      metrics_->tensorboard()->flush();
    }
    res_.rounds.push_back(rec);
  }

  void aggregate(int round, const std::map<int, ClientUpdate>& got, RoundRecord& rec) {
    if (got.empty()) {
      message("federate: round " + std::to_string(round) + ": no client update arrived; the global model is unchanged");
      return;
    }
    double total = 0;
    for (const auto& [c, up] : got) total += static_cast<double>(up.num_examples());
    std::vector<std::pair<double, std::map<std::string, Tensor>>> ups;
    res_.last_updates.clear();
    double eps = 0;
    for (const auto& [c, up] : got) {
      const double p = static_cast<double>(up.num_examples()) / total;
      std::map<std::string, Tensor> t;
      for (const auto& b : up.tensors()) t[b.name()] = from_blob(b);
      if (o_.keep_updates) res_.last_updates.push_back({c, up.num_examples(), up.rank(), t});
      ups.push_back({p, std::move(t)});
      rec.aggregated.push_back(c);
      rec.train_loss += p * up.train_loss();
      st_.steps_done[static_cast<size_t>(c)] += up.steps();
      eps = std::max(eps, up.epsilon());
      json cr = {{"event", "client"}, {"round", round}, {"client", c}, {"examples", up.num_examples()},
                 {"weight", p},       {"steps", up.steps()}, {"train_loss", up.train_loss()}, {"seconds", up.seconds()}};
      if (n_.fc.privacy().clip_norm() > 0) cr["epsilon"] = up.epsilon();
      log(cr);
    }
    // Privacy spent is cumulative: the round reports the largest epsilon of any client so far
    // (a client not sampled this round keeps what it spent before).
    (void)eps;
    const auto& pv = n_.fc.privacy();
    if (pv.clip_norm() > 0)
      for (size_t c = 0; c < st_.steps_done.size(); ++c) {
        if (st_.steps_done[c] == 0) continue;
        RdpAccountant acc;
        acc.compose(static_cast<double>(n_.batch_rows()) / static_cast<double>(n_.partition[c].size()),
                    pv.noise_multiplier(), st_.steps_done[c]);
        rec.epsilon = std::max(rec.epsilon, acc.epsilon(pv.delta()).first);
      }
    autograd::NoGradGuard ng;
    if (n_.fc.strategy() == FederatedConfig::FLORA) {
      FloraRound m;
      m.set_round(round);
      for (const auto& a : n_.adapters) {
        std::vector<Tensor> As, Bs;
        for (const auto& [p, t] : ups) {
          As.push_back(autograd::mul(t.at(a.name + ".lora_A.weight"), p));
          Bs.push_back(autograd::mul(t.at(a.name + ".lora_B.weight"), n_.scale));
        }
        to_blob(a.name + ".stk_A", autograd::concat(As, 0), m.add_factors());
        to_blob(a.name + ".stk_B", autograd::concat(Bs, 1), m.add_factors());
      }
      apply_merge(n_, m);
      st_.merges.push_back(m);
      return;
    }
    for (const auto& name : n_.moving_names()) {
      // Weighted sum in f64, rounded once.
      const Tensor& like = n_.params.at(name);
      std::vector<double> acc(static_cast<size_t>(like.numel()), 0.0);
      for (const auto& [p, t] : ups) {
        auto it = t.find(name);
        LATHE_CHECK(it != t.end() && it->second.numel() == like.numel()) << "federated: an update lacks " << name;
        const float* x = it->second.data<float>();
        for (size_t i = 0; i < acc.size(); ++i) acc[i] += p * x[i];
      }
      std::vector<float> f(acc.begin(), acc.end());
      like.copy_(Tensor::from_vector<float>(f, like.shape()));
    }
  }

  Node& n_;
  parallel::Communicator& comm_;
  const FederateOptions& o_;
  FederationResult& res_;
  std::FILE* out_;
  ServerState st_;
  std::vector<std::unique_ptr<PendingRecv>> inbox_;
  std::vector<PendingSend> sends_;
  // Liveness of the client ranks (index = rank): a rank that owes messages (uploads of its
  // clients, the goodbye) and has sent nothing for federated.server_timeout_s is dead (its
  // process ended; without ULFM MPI does not say so): its clients are left out from then on and
  // it is never sent to again.
  std::vector<bool> dead_;
  std::vector<int> owed_;
  std::vector<double> quiet_since_;
  std::vector<size_t> sent_merges_;
  std::unique_ptr<train::MetricsLogger> metrics_;
};

}  // namespace

FederationResult federate(const RunConfig& cfg, const FederateOptions& opts) {
  auto comm = opts.comm ? opts.comm : parallel::world();
  if (comm->size() < 2)
    throw ConfigError("config", {"federated: lathe federate needs at least 2 processes (rank 0 the server, the others "
                                 "clients): run it as mpirun -np N lathe federate (N >= 2)"});
  Node n;
  setup_node(n, cfg, comm);
  FederationResult res;
  res.scale = n.scale;
  const bool server = comm->rank() == 0;
  if (server) fs::create_directories(n.plan.cfg.run_dir());
  // Fed-SB: LoRA-SB's frozen factors come from the first batches' gradients, once, on the server.
  ServerState resumed;
  if (server && n.peft.method == peft::Method::lora_sb && n.peft.sb.gradient_init) {
    train::TrainBatches first(n.plan.data, loader_options(n, 0));
    train::init_adapters_from_gradients(*n.model, n.peft, first, n.peft.sb.init_batches, n.plan.schedule.lr_at(1),
                                        n.plan.device, n.plan.bf16(), *n.self);
  }
  // A resumed server's adapter state is loaded before the broadcast, so clients get it too.
  std::string from;
  if (server && (opts.resume == "latest" || opts.resume == "auto")) from = latest_round(n.plan.cfg.checkpoint().dir());
  if (server && !from.empty()) {
    ServerState tmp;
    tmp.steps_done.assign(static_cast<size_t>(n.fc.clients()), 0);
    load_server(n, tmp, from);
  }
  // Every rank starts from the server's adapter tensors (frozen factors included).
  for (auto& [name, t] : n.params) {
    Tensor h = t.to(Device::cpu()).to(DType::f32).contiguous().clone();
    comm->broadcast(h, 0);
    if (!server) t.copy_(h);
    res.setup_bytes += h.numel() * 4;
  }
  if (server) {
    Server s(n, *comm, opts, res);
    try {
      s.run();
    } catch (const std::exception& e) {
      s.shutdown(e.what());
      throw;
    }
  } else {
    run_client_rank(n, *comm);
  }
  return res;
}

}  // namespace lathe::federated
