// Splitting a training set among federated clients (federated.partition):
//   IID        a seeded shuffle cut into `clients` runs whose sizes differ by at most one;
//   DIRICHLET  per label, the label's samples (shuffled) are cut among the clients by shares
//              drawn from Dir(alpha, ..., alpha) (flwr-datasets' DirichletPartitioner, without
//              self-balancing): small alpha gives each client few labels, large alpha near
//              the global label mix; the draw is repeated until every client has min_size;
//   BY_FIELD   one client per distinct label value, in order of first appearance.
// Every client's indices are sorted, so one IID client holds the identity order (and trains
// on exactly the batches a plain run draws). The same inputs and seed give the same split.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace lathe::federated {

using Partition = std::vector<std::vector<int64_t>>;  // per client, sample indices (sorted)

// Throws lathe::Error when n / clients < min_size.
Partition partition_iid(int64_t n, int clients, int64_t min_size, uint64_t seed);
// labels[i] in [0, L); throws naming min_size when 100 draws all leave a client short.
Partition partition_dirichlet(const std::vector<int64_t>& labels, int clients, double alpha, int64_t min_size,
                              uint64_t seed);
// Throws when the number of distinct labels is not `clients`, or a client has < min_size.
Partition partition_by_field(const std::vector<int64_t>& labels, int clients, int64_t min_size);

// The value of `field` in every record (non-blank line) of a JSONL file or directory of
// .jsonl files (data/prepare.h order), as label ids in order of first appearance; `names`
// receives the distinct values. Errors name the file, line and field.
std::vector<int64_t> read_jsonl_labels(const std::string& path, const std::string& field,
                                       std::vector<std::string>* names = nullptr);

// A deterministic stream of uniforms and normals for the partition and sampling draws.
class GammaStream {
 public:
  explicit GammaStream(uint64_t seed);
  double uniform();  // (0, 1)
  double normal();
  uint64_t below(uint64_t n);  // uniform integer in [0, n)

 private:
  uint64_t seed_, counter_ = 0;
  uint64_t next();
};

// Gamma(shape, 1) draw (Marsaglia-Tsang; shape < 1 via the U^(1/shape) boost): the building
// block of the Dirichlet draw.
double sample_gamma(double shape, GammaStream& s);

// Skew statistic used by tests and the partition log: the mean over clients of the total
// variation distance between the client's label histogram and the global one (0 = every
// client has the global mix; near 1 = every client holds one label nobody else holds).
double label_skew(const Partition& p, const std::vector<int64_t>& labels);

}  // namespace lathe::federated
