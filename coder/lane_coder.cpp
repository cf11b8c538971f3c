#include "lane_coder.hpp"

#include <algorithm>
#include <string>

#include "latent.hpp"

namespace arib {
namespace {

std::string at(size_t lane, int64_t index) {
  return " (lane " + std::to_string(lane) + ", item " + std::to_string(index) + ")";
}

uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

std::vector<uint32_t> padding_words(uint64_t seed, int64_t n) {
  std::vector<uint32_t> w(static_cast<size_t>(n));
  for (auto& v : w) v = static_cast<uint32_t>(splitmix64(seed) >> 32);
  return w;
}

// Validation is one branch-free pass (it vectorises); only when it finds a bad
// value does a second pass locate it for the message.
void check_probs(const uint8_t* probs, const int64_t* offsets, size_t lanes, int64_t width) {
  const int64_t n = offsets[lanes] * width;
  uint8_t all = 255;
  for (int64_t i = 0; i < n; ++i) all = static_cast<uint8_t>(all & (probs[i] != 0 ? 255 : 0));
  if (all) return;
  for (size_t l = 0; l < lanes; ++l) {
    for (int64_t i = offsets[l] * width; i < offsets[l + 1] * width; ++i) {
      if (probs[i] == 0) throw InvalidArgument("probability q=0 is outside [1, 255]" + at(l, i / width));
    }
  }
}

void check_bits(const uint8_t* bits, const int64_t* offsets, size_t lanes, int64_t width) {
  const int64_t n = offsets[lanes] * width;
  uint8_t any = 0;
  for (int64_t i = 0; i < n; ++i) any = static_cast<uint8_t>(any | bits[i]);
  if (any <= 1) return;
  for (size_t l = 0; l < lanes; ++l) {
    for (int64_t i = offsets[l] * width; i < offsets[l + 1] * width; ++i) {
      if (bits[i] > 1) {
        throw InvalidArgument("bit value " + std::to_string(bits[i]) + " is not 0 or 1" + at(l, i / width));
      }
    }
  }
}

void check_padding_counts(const int64_t* words, size_t lanes) {
  for (size_t l = 0; l < lanes; ++l) {
    if (words[l] < 0 || words[l] > (int64_t{1} << 32)) {
      throw InvalidArgument("padding word count " + std::to_string(words[l]) + " is out of range (lane " +
                            std::to_string(l) + ")");
    }
  }
}

void check_qp(uint8_t qp, size_t lane) {
  const std::string qp_error = latent_qp_error(qp);
  if (!qp_error.empty()) throw InvalidArgument(qp_error + " (lane " + std::to_string(lane) + ")");
}

void pop_latent_lane(RansStack& s, const int32_t* d_fixed, uint8_t qp, int64_t begin, int64_t end, uint32_t* out) {
  const uint64_t k_bins = uint64_t{1} << qp;
  for (int64_t i = begin; i < end; ++i) {
    const LatentWeights w = latent_weights(d_fixed[i]);
    const uint64_t bin = latent_find_bin(w, k_bins, s.pop_peek(kLatentPrecisionBits));
    const uint64_t lo = latent_cdf(w, k_bins, bin);
    const uint64_t hi = latent_cdf(w, k_bins, bin + 1);
    s.pop_commit(lo, hi - lo, kLatentPrecisionBits);
    out[i] = static_cast<uint32_t>(bin);
  }
}

}  // namespace

LaneCoder::LaneCoder(size_t lanes, size_t threads, int prob_code) : code_(&binary_code(prob_code)) {
  if (lanes == 0) throw InvalidArgument("a LaneCoder needs at least one lane");
  if (lanes > (size_t{1} << 20)) throw InvalidArgument("too many lanes: " + std::to_string(lanes));
  stacks_.resize(lanes);
  if (threads == 0) threads = std::max<size_t>(1, std::thread::hardware_concurrency());
  pool_ = std::make_unique<ThreadPool>(std::min(threads, lanes));
}

LaneCoder::LaneCoder(const std::vector<std::pair<const uint8_t*, size_t>>& streams, size_t threads, int prob_code)
    : LaneCoder(streams.size(), threads, prob_code) {
  for (size_t l = 0; l < streams.size(); ++l) {
    try {
      stacks_[l] = RansStack::deserialize(streams[l].first, streams[l].second);
    } catch (const StreamError& e) {
      throw StreamError(std::string(e.what()) + " (lane " + std::to_string(l) + ")");
    }
  }
}

void LaneCoder::check_offsets(const int64_t* offsets) const {
  if (offsets[0] != 0) throw InvalidArgument("offsets must start at 0");
  for (size_t l = 0; l < stacks_.size(); ++l) {
    if (offsets[l + 1] < offsets[l]) {
      throw InvalidArgument("offsets must not decrease (lane " + std::to_string(l) + ")");
    }
  }
}

template <class Fn>
void LaneCoder::for_lanes(Fn&& fn) {
  pool_->parallel_for(stacks_.size(), [&](size_t l) { fn(l, stacks_[l]); });
}

template <class Fn>
void LaneCoder::for_lanes_atomic(Fn&& fn) {
  std::vector<RansStack::Checkpoint> saved(stacks_.size());
  for (size_t l = 0; l < stacks_.size(); ++l) saved[l] = stacks_[l].checkpoint();
  try {
    pool_->parallel_for(stacks_.size(), [&](size_t l) {
      try {
        fn(l, stacks_[l]);
      } catch (const NotEnoughBits&) {
        throw NotEnoughBits("not enough initial bits in lane " + std::to_string(l) +
                            ": a pop needs more bits than the stack holds");
      }
    });
  } catch (...) {
    for (size_t l = 0; l < stacks_.size(); ++l) stacks_[l].restore(saved[l]);
    throw;
  }
}

void LaneCoder::push_binary(const uint8_t* bits, const uint8_t* probs, const int64_t* offsets) {
  std::lock_guard<std::mutex> lock(mutex_);
  check_offsets(offsets);
  check_probs(probs, offsets, stacks_.size(), 1);
  check_bits(bits, offsets, stacks_.size(), 1);
  for_lanes([&](size_t l, RansStack& s) {
    s.reserve_words(static_cast<size_t>(offsets[l + 1] - offsets[l]) / 4 + 2);
    s.push_bits(bits + offsets[l], probs + offsets[l], static_cast<size_t>(offsets[l + 1] - offsets[l]), *code_);
  });
}

void LaneCoder::pop_binary(const uint8_t* probs, const int64_t* offsets, uint8_t* bits_out) {
  std::lock_guard<std::mutex> lock(mutex_);
  check_offsets(offsets);
  check_probs(probs, offsets, stacks_.size(), 1);
  for_lanes_atomic([&](size_t l, RansStack& s) {
    s.pop_bits(probs + offsets[l], static_cast<size_t>(offsets[l + 1] - offsets[l]), bits_out + offsets[l], *code_);
  });
}

void LaneCoder::push_rgb(const uint8_t* bits, const uint8_t* probs, const int64_t* offsets) {
  std::lock_guard<std::mutex> lock(mutex_);
  check_offsets(offsets);
  check_probs(probs, offsets, stacks_.size(), 7);
  check_bits(bits, offsets, stacks_.size(), 3);
  for_lanes([&](size_t l, RansStack& s) {
    const size_t n = static_cast<size_t>(offsets[l + 1] - offsets[l]);
    s.reserve_words(n + 2);
    s.push_rgb(bits + 3 * offsets[l], probs + 7 * offsets[l], n, *code_);
  });
}

void LaneCoder::pop_rgb(const uint8_t* probs, const int64_t* offsets, uint8_t* bits_out) {
  std::lock_guard<std::mutex> lock(mutex_);
  check_offsets(offsets);
  check_probs(probs, offsets, stacks_.size(), 7);
  for_lanes_atomic([&](size_t l, RansStack& s) {
    const size_t n = static_cast<size_t>(offsets[l + 1] - offsets[l]);
    s.pop_rgb(probs + 7 * offsets[l], n, bits_out + 3 * offsets[l], *code_);
  });
}

void LaneCoder::push_uniform(const uint32_t* values, int k, const int64_t* offsets) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (k < 1 || k > 16) throw InvalidArgument("uniform width k=" + std::to_string(k) + " is outside [1, 16]");
  check_offsets(offsets);
  for (size_t l = 0; l < stacks_.size(); ++l) {
    for (int64_t i = offsets[l]; i < offsets[l + 1]; ++i) {
      if (values[i] >> k) {
        throw InvalidArgument("value " + std::to_string(values[i]) + " does not fit in " + std::to_string(k) +
                              " bits" + at(l, i));
      }
    }
  }
  for_lanes([&](size_t l, RansStack& s) {
    for (int64_t i = offsets[l + 1]; i-- > offsets[l];) s.push_uniform(values[i], k);
  });
}

void LaneCoder::pop_uniform(int k, const int64_t* offsets, uint32_t* out) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (k < 1 || k > 16) throw InvalidArgument("uniform width k=" + std::to_string(k) + " is outside [1, 16]");
  check_offsets(offsets);
  for_lanes_atomic([&](size_t l, RansStack& s) {
    for (int64_t i = offsets[l]; i < offsets[l + 1]; ++i) out[i] = s.pop_uniform(k);
  });
}

void LaneCoder::push_latent(const uint32_t* bins, const int32_t* d_fixed, const uint8_t* qp,
                            const int64_t* offsets) {
  std::lock_guard<std::mutex> lock(mutex_);
  check_offsets(offsets);
  for (size_t l = 0; l < stacks_.size(); ++l) {
    check_qp(qp[l], l);
    for (int64_t i = offsets[l]; i < offsets[l + 1]; ++i) {
      if (bins[i] >> qp[l]) {
        throw InvalidArgument("latent bin " + std::to_string(bins[i]) + " is outside [0, 2^" +
                              std::to_string(qp[l]) + ")" + at(l, i));
      }
    }
  }
  for_lanes([&](size_t l, RansStack& s) {
    const uint64_t k_bins = uint64_t{1} << qp[l];
    for (int64_t i = offsets[l + 1]; i-- > offsets[l];) {
      const LatentWeights w = latent_weights(d_fixed[i]);
      const uint64_t lo = latent_cdf(w, k_bins, bins[i]);
      const uint64_t hi = latent_cdf(w, k_bins, uint64_t{bins[i]} + 1);
      s.push_symbol(lo, hi - lo, kLatentPrecisionBits);
    }
  });
}

void LaneCoder::pop_latent(const int32_t* d_fixed, const uint8_t* qp, const int64_t* offsets, uint32_t* out) {
  std::lock_guard<std::mutex> lock(mutex_);
  check_offsets(offsets);
  for (size_t l = 0; l < stacks_.size(); ++l) check_qp(qp[l], l);
  for_lanes_atomic(
      [&](size_t l, RansStack& s) { pop_latent_lane(s, d_fixed, qp[l], offsets[l], offsets[l + 1], out); });
}

void LaneCoder::pop_latent_partial(const int32_t* d_fixed, const uint8_t* qp, const int64_t* offsets,
                                   uint32_t* out, uint8_t* ok) {
  std::lock_guard<std::mutex> lock(mutex_);
  check_offsets(offsets);
  for (size_t l = 0; l < stacks_.size(); ++l) check_qp(qp[l], l);
  for_lanes([&](size_t l, RansStack& s) {
    const RansStack::Checkpoint saved = s.checkpoint();
    try {
      pop_latent_lane(s, d_fixed, qp[l], offsets[l], offsets[l + 1], out);
      ok[l] = 1;
    } catch (const NotEnoughBits&) {
      s.restore(saved);
      std::fill(out + offsets[l], out + offsets[l + 1], 0u);
      ok[l] = 0;
    }
  });
}

void LaneCoder::push_padding(const int64_t* words, const uint64_t* seeds) {
  std::lock_guard<std::mutex> lock(mutex_);
  check_padding_counts(words, stacks_.size());
  for_lanes([&](size_t l, RansStack& s) {
    const std::vector<uint32_t> w = padding_words(seeds[l], words[l]);
    for (size_t i = w.size(); i-- > 0;) {
      s.push_uniform(w[i] & 0xFFFFu, 16);
      s.push_uniform(w[i] >> 16, 16);
    }
  });
}

void LaneCoder::pop_padding(const int64_t* words, const uint64_t* seeds, uint8_t* ok) {
  std::lock_guard<std::mutex> lock(mutex_);
  check_padding_counts(words, stacks_.size());
  for_lanes_atomic([&](size_t l, RansStack& s) {
    const std::vector<uint32_t> w = padding_words(seeds[l], words[l]);
    bool match = true;
    for (size_t i = 0; i < w.size(); ++i) {
      const uint32_t high = s.pop_uniform(16);
      const uint32_t low = s.pop_uniform(16);
      match = match && (((high << 16) | low) == w[i]);
    }
    ok[l] = match ? 1 : 0;
  });
}

std::vector<int64_t> LaneCoder::num_bits() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<int64_t> bits(stacks_.size());
  for (size_t l = 0; l < stacks_.size(); ++l) bits[l] = stacks_[l].num_bits();
  return bits;
}

std::vector<uint8_t> LaneCoder::is_empty() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<uint8_t> empty(stacks_.size());
  for (size_t l = 0; l < stacks_.size(); ++l) empty[l] = stacks_[l].is_empty() ? 1 : 0;
  return empty;
}

void LaneCoder::seal(const uint64_t* values) {
  std::lock_guard<std::mutex> lock(mutex_);
  for (size_t l = 0; l < stacks_.size(); ++l) {
    if (!stacks_[l].is_empty()) throw InvalidArgument("seal needs empty lanes (lane " + std::to_string(l) + ")");
  }
  for (size_t l = 0; l < stacks_.size(); ++l) stacks_[l].seal(values[l]);
}

void LaneCoder::seal_values(uint64_t* values, uint8_t* ok) const {
  std::lock_guard<std::mutex> lock(mutex_);
  for (size_t l = 0; l < stacks_.size(); ++l) {
    values[l] = 0;
    ok[l] = stacks_[l].seal_value(values[l]) ? 1 : 0;
  }
}

std::vector<std::vector<uint8_t>> LaneCoder::serialize() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<std::vector<uint8_t>> out(stacks_.size());
  for (size_t l = 0; l < stacks_.size(); ++l) {
    out[l].resize(stacks_[l].serialized_size());
    stacks_[l].serialize(out[l].data());
  }
  return out;
}

size_t LaneCoder::encode_bound(size_t n, int max_bits) {
  // Every symbol adds at most max_bits + 1 bits of state growth (rounding),
  // the two states carry at most 2 x 32 bits.
  const size_t bits = n * static_cast<size_t>(max_bits + 1) + 64;
  return RansStack::kMaxHeaderBytes + 4 * (bits / 32 + 2);
}

}  // namespace arib
