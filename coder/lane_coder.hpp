// LaneCoder: L independent rANS stacks ("lanes") coded in parallel.
//
// Every batched call takes flat arrays plus `offsets` (L + 1 non-decreasing
// int64 values, offsets[0] = 0): lane l owns items [offsets[l], offsets[l+1]).
// Lanes run in parallel on the coder's thread pool; within a lane, order is
// the order of the arrays.
//
// Order convention (LIFO made convenient): push_X(items) pushes the items
// last-first, so that a later pop_X returns them in array order. Hence
//   pop_X(push_X(a)) == a            (encode / decode), and
//   push_X(pop_X(...)) restores the stack bit for bit (bits-back sampling).
//
// Errors: every call validates all of its input before touching any lane
// (InvalidArgument, naming the lane and index). A pop that runs out of words
// throws NotEnoughBits after restoring every lane to its state before the
// call, so a failed call changes nothing.
//
// Thread safety: calls on one LaneCoder are serialised by an internal mutex.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "rans_stack.hpp"
#include "thread_pool.hpp"

namespace arib {

class LaneCoder {
 public:
  // threads: 0 = one per hardware thread; never more than `lanes` are used.
  // prob_code: what the binary calls' probability bytes mean (ProbCode,
  // rans_stack.hpp), fixed for the coder's life.
  LaneCoder(size_t lanes, size_t threads, int prob_code);
  // Rebuilds the lanes from serialised stacks; throws StreamError naming the lane.
  LaneCoder(const std::vector<std::pair<const uint8_t*, size_t>>& streams, size_t threads, int prob_code);

  size_t lanes() const { return stacks_.size(); }
  size_t threads() const { return pool_->size(); }

  // Binary symbols: bits[i] in {0, 1}, probs[i] in [1, 255] (meaning: prob_code).
  void push_binary(const uint8_t* bits, const uint8_t* probs, const int64_t* offsets);
  void pop_binary(const uint8_t* probs, const int64_t* offsets, uint8_t* bits_out);

  // RGB-coupled pixels (DESIGN 1.3): bits is n x 3 (r, g, b), probs is n x 7
  // (q_r, q_g|r=0, q_g|r=1, q_b|00, q_b|01, q_b|10, q_b|11). Offsets count pixels.
  void push_rgb(const uint8_t* bits, const uint8_t* probs, const int64_t* offsets);
  void pop_rgb(const uint8_t* probs, const int64_t* offsets, uint8_t* bits_out);

  // Uniform k-bit values, 1 <= k <= 16, values < 2^k.
  void push_uniform(const uint32_t* values, int k, const int64_t* offsets);
  void pop_uniform(int k, const int64_t* offsets, uint32_t* out);

  // Latent bins (latent.hpp): d_fixed per item, qp per lane in [kLatentMinQp, kLatentMaxQp] = [1, 16].
  void push_latent(const uint32_t* bins, const int32_t* d_fixed, const uint8_t* qp, const int64_t* offsets);
  void pop_latent(const int32_t* d_fixed, const uint8_t* qp, const int64_t* offsets, uint32_t* out);
  // Bits-back sampling that tolerates short stacks: like pop_latent, but a
  // lane that runs out of bits is restored to its state before the call and
  // reported with ok[l] = 0 (its outputs are set to 0) while the other
  // lanes pop normally. The encoder uses it to choose qp / padding per lane.
  void pop_latent_partial(const int32_t* d_fixed, const uint8_t* qp, const int64_t* offsets, uint32_t* out,
                          uint8_t* ok);

  // Pseudo-random padding: words[l] 32-bit words from a splitmix64 stream
  // seeded with seeds[l]; pop_padding pops them again and writes 1 to ok[l]
  // where they matched the same stream.
  void push_padding(const int64_t* words, const uint64_t* seeds);
  void pop_padding(const int64_t* words, const uint64_t* seeds, uint8_t* ok);

  std::vector<int64_t> num_bits() const;
  std::vector<uint8_t> is_empty() const;
  // Seals (rans_stack.hpp): values[l] seals lane l, which must be empty.
  void seal(const uint64_t* values);
  // Per lane: ok[l] = 1 and values[l] the seal when the lane is decoded to
  // its end (no word left, states back below 2^33), else ok[l] = 0.
  void seal_values(uint64_t* values, uint8_t* ok) const;
  std::vector<std::vector<uint8_t>> serialize() const;

  // Upper bound of the serialised size of one lane after pushing n symbols
  // of at most max_bits information each onto an empty stack.
  static size_t encode_bound(size_t n, int max_bits);

 private:
  void check_offsets(const int64_t* offsets) const;
  template <class Fn>
  void for_lanes(Fn&& fn);               // pushes: no rollback needed
  template <class Fn>
  void for_lanes_atomic(Fn&& fn);        // pops: rollback on any failure

  std::vector<RansStack> stacks_;
  const BinaryCode* code_;
  std::unique_ptr<ThreadPool> pool_;
  mutable std::mutex mutex_;
};

}  // namespace arib
