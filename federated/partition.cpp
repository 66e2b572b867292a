#include "federated/partition.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace lathe::federated {

namespace fs = std::filesystem;

GammaStream::GammaStream(uint64_t seed) : seed_(seed) {}

// splitmix64 of (seed, counter): a counter-based stream, so a draw depends only on its position.
uint64_t GammaStream::next() {
  uint64_t z = seed_ + 0x9E3779B97F4A7C15ull * (++counter_);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

double GammaStream::uniform() { return (static_cast<double>(next() >> 11) + 0.5) * (1.0 / 9007199254740992.0); }

double GammaStream::normal() {
  const double u1 = uniform(), u2 = uniform();
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
}

uint64_t GammaStream::below(uint64_t n) { return n == 0 ? 0 : next() % n; }

double sample_gamma(double shape, GammaStream& s) {
  if (shape < 1.0) {
    // Gamma(a) = Gamma(a + 1) * U^(1/a); in log space the power cannot underflow to a 0 share.
    const double g = sample_gamma(shape + 1.0, s);
    return g * std::exp(std::log(s.uniform()) / shape);
  }
  const double d = shape - 1.0 / 3.0, c = 1.0 / std::sqrt(9.0 * d);
  for (;;) {
    double x, v;
    do {
      x = s.normal();
      v = 1.0 + c * x;
    } while (v <= 0);
    v = v * v * v;
    const double u = s.uniform();
    if (std::log(u) < 0.5 * x * x + d - d * v + d * std::log(v)) return d * v;
  }
}

namespace {

void shuffle(std::vector<int64_t>& v, GammaStream& s) {
  for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[s.below(i)]);
}

void sort_all(Partition& p) {
  for (auto& c : p) std::sort(c.begin(), c.end());
}

int64_t smallest(const Partition& p) {
  int64_t m = INT64_MAX;
  for (const auto& c : p) m = std::min<int64_t>(m, static_cast<int64_t>(c.size()));
  return m;
}

}  // namespace

Partition partition_iid(int64_t n, int clients, int64_t min_size, uint64_t seed) {
  LATHE_CHECK(clients > 0) << "federated.clients must be > 0";
  if (n / clients < min_size)
    LATHE_FAIL() << "federated.partition IID: " << n << " training samples cannot give " << clients
                 << " clients at least " << min_size << " each (federated.min_client_size, or train.micro_batch)";
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  GammaStream s(seed);
  shuffle(order, s);
  Partition p(static_cast<size_t>(clients));
  int64_t at = 0;
  for (int k = 0; k < clients; ++k) {
    const int64_t len = n / clients + (k < n % clients ? 1 : 0);
    p[k].assign(order.begin() + at, order.begin() + at + len);
    at += len;
  }
  sort_all(p);
  return p;
}

Partition partition_dirichlet(const std::vector<int64_t>& labels, int clients, double alpha, int64_t min_size,
                              uint64_t seed) {
  LATHE_CHECK(clients > 0 && alpha > 0) << "federated: clients and dirichlet_alpha must be > 0";
  std::map<int64_t, std::vector<int64_t>> by_label;
  for (size_t i = 0; i < labels.size(); ++i) by_label[labels[i]].push_back(static_cast<int64_t>(i));
  GammaStream s(seed);
  for (int attempt = 0; attempt < 100; ++attempt) {
    Partition p(static_cast<size_t>(clients));
    for (auto& [label, idx] : by_label) {
      std::vector<int64_t> members = idx;
      shuffle(members, s);
      std::vector<double> share(static_cast<size_t>(clients));
      double total = 0;
      for (auto& x : share) total += (x = sample_gamma(alpha, s));
      // Cut points at the cumulative shares (numpy's split at cumsum(p) * n).
      const int64_t n = static_cast<int64_t>(members.size());
      double cum = 0;
      int64_t from = 0;
      for (int k = 0; k < clients; ++k) {
        cum += share[static_cast<size_t>(k)] / total;
        const int64_t to = k + 1 == clients ? n : std::min<int64_t>(n, static_cast<int64_t>(cum * static_cast<double>(n)));
        for (int64_t j = from; j < to; ++j) p[k].push_back(members[static_cast<size_t>(j)]);
        from = std::max(from, to);
      }
    }
    if (smallest(p) >= min_size) {
      sort_all(p);
      return p;
    }
  }
  LATHE_FAIL() << "federated.partition DIRICHLET: 100 draws with dirichlet_alpha " << alpha << " over "
               << labels.size() << " samples all left a client with fewer than " << min_size
               << " samples (federated.min_client_size, or train.micro_batch); try fewer clients or a larger alpha";
}

Partition partition_by_field(const std::vector<int64_t>& labels, int clients, int64_t min_size) {
  int64_t distinct = 0;
  for (int64_t l : labels) distinct = std::max(distinct, l + 1);
  if (distinct != clients)
    LATHE_FAIL() << "federated.partition BY_FIELD: label_field has " << distinct
                 << " distinct values but federated.clients is " << clients << " (one client per value)";
  Partition p(static_cast<size_t>(clients));
  for (size_t i = 0; i < labels.size(); ++i) p[static_cast<size_t>(labels[i])].push_back(static_cast<int64_t>(i));
  for (int k = 0; k < clients; ++k)
    if (static_cast<int64_t>(p[k].size()) < min_size)
      LATHE_FAIL() << "federated.partition BY_FIELD: client " << k << " has " << p[k].size()
                   << " samples, fewer than " << min_size << " (federated.min_client_size, or train.micro_batch)";
  return p;
}

std::vector<int64_t> read_jsonl_labels(const std::string& path, const std::string& field,
                                       std::vector<std::string>* names) {
  std::vector<std::string> files;
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    for (const auto& e : fs::recursive_directory_iterator(path)) {
      const std::string name = e.path().filename().string();
      const std::string ext = e.path().extension().string();
      if (e.is_regular_file() && name[0] != '.' && (ext == ".jsonl" || ext == ".ndjson")) files.push_back(e.path().string());
    }
    std::sort(files.begin(), files.end());
  } else {
    files.push_back(path);
  }
  std::map<std::string, int64_t> ids;
  std::vector<std::string> order;
  std::vector<int64_t> out;
  for (const auto& f : files) {
    std::ifstream in(f);
    if (!in) LATHE_FAIL() << "federated.label_field: cannot read " << f;
    std::string line;
    int64_t lineno = 0;
    while (std::getline(in, line)) {
      ++lineno;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      nlohmann::json rec;
      try {
        rec = nlohmann::json::parse(line);
      } catch (const std::exception& e) {
        LATHE_FAIL() << f << ":" << lineno << ": not JSON (" << e.what() << ")";
      }
      if (!rec.is_object() || !rec.contains(field))
        LATHE_FAIL() << f << ":" << lineno << ": the record has no field \"" << field << "\" (federated.label_field)";
      const auto& v = rec[field];
      const std::string key = v.is_string() ? v.get<std::string>() : v.dump();
      auto it = ids.find(key);
      if (it == ids.end()) {
        it = ids.emplace(key, static_cast<int64_t>(order.size())).first;
        order.push_back(key);
      }
      out.push_back(it->second);
    }
  }
  if (names) *names = order;
  return out;
}

double label_skew(const Partition& p, const std::vector<int64_t>& labels) {
  int64_t L = 0;
  for (int64_t l : labels) L = std::max(L, l + 1);
  std::vector<double> global(static_cast<size_t>(L));
  int64_t total = 0;
  for (const auto& c : p)
    for (int64_t i : c) {
      global[static_cast<size_t>(labels[static_cast<size_t>(i)])] += 1;
      ++total;
    }
  for (auto& g : global) g /= static_cast<double>(total);
  double sum = 0;
  int counted = 0;
  for (const auto& c : p) {
    if (c.empty()) continue;
    std::vector<double> h(static_cast<size_t>(L));
    for (int64_t i : c) h[static_cast<size_t>(labels[static_cast<size_t>(i)])] += 1;
    double tv = 0;
    for (int64_t l = 0; l < L; ++l) tv += std::fabs(h[l] / static_cast<double>(c.size()) - global[l]);
    sum += 0.5 * tv;
    ++counted;
  }
  return counted ? sum / counted : 0;
}

}  // namespace lathe::federated
