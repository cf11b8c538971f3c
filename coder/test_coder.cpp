// Tests of the coder core without Python: `make coder-test` builds and runs
// this file, plain and under -fsanitize=address,undefined.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "lane_coder.hpp"
#include "latent.hpp"
#include "rans_stack.hpp"

using namespace arib;

static int failures = 0;
#define CHECK(cond)                                                   \
  do {                                                                \
    if (!(cond)) {                                                    \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                     \
    }                                                                 \
  } while (0)

static void test_division_exact() {
  std::mt19937_64 rng(1);
  for (int bits : {8, 16}) {
    const uint64_t top = uint64_t{1} << bits;
    std::vector<uint64_t> divisors = {1, 2, 3, top / 2 - 1, top / 2, top / 2 + 1, top - 2, top - 1};
    for (int i = 0; i < (bits == 8 ? 255 : 2000); ++i) divisors.push_back(1 + rng() % (top - 1));
    for (uint64_t f : divisors) {
      const detail::Reciprocal r = detail::reciprocal(f, bits);
      const uint64_t limit = f << (64 - bits);
      for (uint64_t x : {uint64_t{0}, uint64_t{1}, f - 1, f, limit - 1, limit - f, limit / 2}) {
        CHECK(detail::divide(x, r, bits) == x / f);
      }
      for (int i = 0; i < 200; ++i) {
        const uint64_t x = rng() % limit;
        CHECK(detail::divide(x, r, bits) == x / f);
      }
    }
  }
}

static void test_binary_codes() {
  const BinaryCode& linear = binary_code(0);
  const BinaryCode& logit = binary_code(1);
  CHECK(linear.bits == 8 && logit.bits == 16);
  for (uint32_t q = 1; q < 256; ++q) {
    CHECK(linear.one[q] == q);
    CHECK(logit.one[q] >= 1 && logit.one[q] < 65536);
    CHECK(logit.one[q] + logit.one[256 - q] == 65536);  // symmetric about q = 128
    if (q > 1) CHECK(logit.one[q] > logit.one[q - 1]);
  }
  CHECK(logit.one[128] == 32768);
  bool threw = false;
  try {
    binary_code(2);
  } catch (const InvalidArgument&) {
    threw = true;
  }
  CHECK(threw);
}

static void test_bulk_equals_single_symbol() {
  std::mt19937_64 rng(9);
  for (int code : {0, 1}) {
    for (size_t n : {0, 1, 2, 3, 7, 1000, 4001}) {
      const BinaryCode& c = binary_code(code);
      std::vector<uint8_t> bits(3 * n), probs(7 * n);
      for (auto& b : bits) b = static_cast<uint8_t>(rng() % 2);
      for (auto& q : probs) q = static_cast<uint8_t>(1 + rng() % 255);
      RansStack bulk, single;
      bulk.push_uniform(5, 3);  // start on an odd parity
      single.push_uniform(5, 3);
      bulk.push_bits(bits.data(), probs.data(), n, c);
      for (size_t i = n; i-- > 0;) single.push_bit(bits[i], probs[i], c);
      bulk.push_rgb(bits.data(), probs.data(), n, c);
      for (size_t i = n; i-- > 0;) {
        single.push_bit(bits[3 * i + 2], probs[7 * i + 3 + 2 * bits[3 * i] + bits[3 * i + 1]], c);
        single.push_bit(bits[3 * i + 1], probs[7 * i + 1 + bits[3 * i]], c);
        single.push_bit(bits[3 * i], probs[7 * i], c);
      }
      std::vector<uint8_t> a(bulk.serialized_size()), b(single.serialized_size());
      bulk.serialize(a.data());
      single.serialize(b.data());
      CHECK(a == b);
      std::vector<uint8_t> rgb(3 * n), flat(n);
      bulk.pop_rgb(probs.data(), n, rgb.data(), c);
      CHECK(rgb == bits);
      bulk.pop_bits(probs.data(), n, flat.data(), c);
      CHECK(std::equal(flat.begin(), flat.end(), bits.begin()));
      CHECK(bulk.pop_uniform(3) == 5);
      CHECK(bulk.is_empty());
    }
  }
}

static void test_latent_contract() {
  for (int qp = kLatentMinQp; qp <= kLatentMaxQp; ++qp) {
    const uint64_t k = uint64_t{1} << qp;
    for (int32_t d : {-kLatentDMax - 500, -kLatentDMax, -1000, -1, 0, 1, 77, 1000, kLatentDMax, kLatentDMax + 9}) {
      const LatentWeights w = latent_weights(d);
      CHECK(latent_cdf(w, k, 0) == 0);
      CHECK(latent_cdf(w, k, k) == kLatentTotal);
      const uint64_t step = qp > 10 ? 97 : 1;
      for (uint64_t i = 0; i < k; i += step) CHECK(latent_cdf(w, k, i + 1) > latent_cdf(w, k, i));
      std::mt19937_64 rng(static_cast<uint64_t>(qp * 1000 + d));
      for (int j = 0; j < 300; ++j) {
        const uint64_t t = rng() % kLatentTotal;
        const uint64_t bin = latent_find_bin(w, k, t);
        CHECK(bin < k && latent_cdf(w, k, bin) <= t && t < latent_cdf(w, k, bin + 1));
      }
      CHECK(latent_find_bin(w, k, 0) == 0);
      CHECK(latent_find_bin(w, k, kLatentTotal - 1) == k - 1);
    }
  }
  // d = 0 gives (near) uniform bins: equal prior mass.
  const LatentWeights w0 = latent_weights(0);
  CHECK(latent_cdf(w0, 1024, 512) == 512 + (kLatentTotal - 1024) / 2);
}

static void test_mixed_round_trip() {
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 40; ++trial) {
    const size_t lanes = 1 + rng() % 5;
    const int code = trial % 2;
    LaneCoder coder(lanes, 1 + rng() % 3, code);
    struct Op {
      int kind;
      std::vector<int64_t> offsets;
      std::vector<uint8_t> bits, probs, qp;
      std::vector<uint32_t> values;
      std::vector<int32_t> d;
      int k;
    };
    std::vector<Op> ops;
    for (int n_ops = 0; n_ops < 12; ++n_ops) {
      Op op;
      op.kind = static_cast<int>(rng() % 4);
      op.offsets.push_back(0);
      for (size_t l = 0; l < lanes; ++l) op.offsets.push_back(op.offsets.back() + static_cast<int64_t>(rng() % 50));
      const size_t n = static_cast<size_t>(op.offsets.back());
      op.k = 1 + static_cast<int>(rng() % 16);
      for (size_t l = 0; l < lanes; ++l) op.qp.push_back(static_cast<uint8_t>(3 + rng() % 14));
      if (op.kind == 0) {
        for (size_t i = 0; i < n; ++i) {
          op.probs.push_back(static_cast<uint8_t>(1 + rng() % 255));
          op.bits.push_back(static_cast<uint8_t>(rng() % 2));
        }
        coder.push_binary(op.bits.data(), op.probs.data(), op.offsets.data());
      } else if (op.kind == 1) {
        for (size_t i = 0; i < 7 * n; ++i) op.probs.push_back(static_cast<uint8_t>(1 + rng() % 255));
        for (size_t i = 0; i < 3 * n; ++i) op.bits.push_back(static_cast<uint8_t>(rng() % 2));
        coder.push_rgb(op.bits.data(), op.probs.data(), op.offsets.data());
      } else if (op.kind == 2) {
        for (size_t i = 0; i < n; ++i) op.values.push_back(static_cast<uint32_t>(rng() % (uint64_t{1} << op.k)));
        coder.push_uniform(op.values.data(), op.k, op.offsets.data());
      } else {
        for (size_t l = 0; l < lanes; ++l) {
          for (int64_t i = op.offsets[l]; i < op.offsets[l + 1]; ++i) {
            op.values.push_back(static_cast<uint32_t>(rng() % (uint64_t{1} << op.qp[l])));
            op.d.push_back(static_cast<int32_t>(rng() % 6001) - 3000);
          }
        }
        coder.push_latent(op.values.data(), op.d.data(), op.qp.data(), op.offsets.data());
      }
      ops.push_back(op);
    }
    // Through bytes and back.
    const auto bytes = coder.serialize();
    std::vector<std::pair<const uint8_t*, size_t>> streams;
    for (const auto& b : bytes) streams.emplace_back(b.data(), b.size());
    LaneCoder decoder(streams, 2, code);
    for (size_t j = ops.size(); j-- > 0;) {
      const Op& op = ops[j];
      const size_t n = static_cast<size_t>(op.offsets.back());
      if (op.kind == 0) {
        std::vector<uint8_t> out(n);
        decoder.pop_binary(op.probs.data(), op.offsets.data(), out.data());
        CHECK(out == op.bits);
      } else if (op.kind == 1) {
        std::vector<uint8_t> out(3 * n);
        decoder.pop_rgb(op.probs.data(), op.offsets.data(), out.data());
        CHECK(out == op.bits);
      } else if (op.kind == 2) {
        std::vector<uint32_t> out(n);
        decoder.pop_uniform(op.k, op.offsets.data(), out.data());
        CHECK(out == op.values);
      } else {
        std::vector<uint32_t> out(n);
        decoder.pop_latent(op.d.data(), op.qp.data(), op.offsets.data(), out.data());
        CHECK(out == op.values);
      }
    }
    for (uint8_t e : decoder.is_empty()) CHECK(e == 1);
  }
}

static void test_bits_back_and_underflow() {
  LaneCoder coder(2, 2, 1);
  const int64_t pad_words[2] = {40, 3};
  const uint64_t seeds[2] = {11, 12};
  coder.push_padding(pad_words, seeds);
  const auto before = coder.serialize();
  const int64_t offsets[3] = {0, 20, 40};
  std::vector<int32_t> d(40, 300);
  const uint8_t qp[2] = {10, 10};
  std::vector<uint32_t> bins(40);
  bool threw = false;
  try {
    coder.pop_latent(d.data(), qp, offsets, bins.data());  // lane 1 holds only 96 bits
  } catch (const NotEnoughBits&) {
    threw = true;
  }
  CHECK(threw);
  CHECK(coder.serialize() == before);  // a failed call changes nothing
  const int64_t small[3] = {0, 20, 20};
  coder.pop_latent(d.data(), qp, small, bins.data());
  coder.push_latent(bins.data(), d.data(), qp, small);
  CHECK(coder.serialize() == before);  // bits-back: pop then push restores
  uint8_t ok[2] = {0, 0};
  coder.pop_padding(pad_words, seeds, ok);
  CHECK(ok[0] == 1 && ok[1] == 1);
  for (uint8_t e : coder.is_empty()) CHECK(e == 1);
  for (int64_t b : coder.num_bits()) CHECK(b == 0);
}

static void test_hostile_streams() {
  std::mt19937_64 rng(3);
  int clean = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    std::vector<uint8_t> data(rng() % 64);
    for (auto& b : data) b = static_cast<uint8_t>(rng());
    if (data.size() >= 2 && rng() % 3 == 0) {
      data[0] = 1;  // layout 1
      data[1] = static_cast<uint8_t>(rng() % 2);
    } else if (!data.empty() && rng() % 2) {
      data[0] = static_cast<uint8_t>(0x80u | (data[0] & 0x1Fu));  // layout 2
    }
    try {
      LaneCoder c({{data.data(), data.size()}}, 1, static_cast<int>(trial % 2));
      std::vector<uint8_t> probs(500, 128), out(500);
      const int64_t offsets[2] = {0, 500};
      c.pop_binary(probs.data(), offsets, out.data());
      ++clean;
    } catch (const StreamError&) {
      ++clean;
    } catch (const NotEnoughBits&) {
      ++clean;
    }
  }
  CHECK(clean == 3000);
}

static void test_seal_and_layout_2() {
  std::mt19937_64 rng(21);
  for (uint64_t seal : {uint64_t{0}, uint64_t{1}, ~uint64_t{0}, uint64_t{0x0123456789ABCDEF}}) {
    RansStack s;
    s.seal(seal);
    uint64_t v = 0;
    CHECK(s.seal_value(v) && v == seal);
    std::vector<uint8_t> bits(3001), probs(3001);
    for (auto& b : bits) b = static_cast<uint8_t>(rng() % 2);
    for (auto& q : probs) q = static_cast<uint8_t>(1 + rng() % 255);
    s.push_bits(bits.data(), probs.data(), bits.size(), binary_code(1));
    CHECK(!s.seal_value(v));
    std::vector<uint8_t> bytes(s.serialized_size());
    s.serialize(bytes.data());
    CHECK((bytes[0] & 0xE0u) == 0x80u);
    RansStack d = RansStack::deserialize(bytes.data(), bytes.size());
    std::vector<uint8_t> out(bits.size());
    d.pop_bits(probs.data(), bits.size(), out.data(), binary_code(1));
    CHECK(out == bits);
    CHECK(d.seal_value(v) && v == seal);
    CHECK(d.is_empty() == (seal == 0));
    bool threw = false;  // a sealed stack cannot be sealed again
    try {
      d.seal(1);
    } catch (const InvalidArgument&) {
      threw = true;
    }
    CHECK(threw == (seal != 0));
  }
  // Layout 2 is canonical: a state stored in one byte more than it needs is refused.
  RansStack e;
  std::vector<uint8_t> b(e.serialized_size());
  e.serialize(b.data());
  CHECK(b.size() == 11 && b[0] == 0x80);
  std::vector<uint8_t> padded = {0x81, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0};
  bool refused = false;
  try {
    RansStack::deserialize(padded.data(), padded.size());
  } catch (const StreamError&) {
    refused = true;
  }
  CHECK(refused);
}

int main() {
  test_division_exact();
  test_binary_codes();
  test_bulk_equals_single_symbol();
  test_latent_contract();
  test_mixed_round_trip();
  test_bits_back_and_underflow();
  test_hostile_streams();
  test_seal_and_layout_2();
  if (failures) {
    std::printf("coder core tests: %d failed\n", failures);
    return 1;
  }
  std::printf("coder core tests: all passed\n");
  return 0;
}
