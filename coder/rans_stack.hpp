// One rANS stack: the LIFO entropy coder of one lane.
//
// State: two interleaved 64-bit rANS states (symbol n of the stack is coded
// on state n mod 2, which breaks the dependency chain between consecutive
// symbols: about 1.9x encode throughput on binary symbols) and a stack of
// 32-bit words. Each state lives in [2^32, 2^64); a push whose state would
// leave that range first moves its low 32 bits to the word stack, a pop that
// drops below 2^32 moves the top word back. With 32-bit words and 64-bit
// states one renormalisation step always suffices for any precision <= 32.
//
// Why this shape: 64-bit states let latent bins use 24-bit precision (qp up to
// 16 plus headroom so that no bin has zero mass); 32-bit words keep the
// overhead at most 2 x 32 bits per lane; the binary hot path divides by a
// frequency through an exact reciprocal from a table (no hardware division).
//
// Binary symbols take a probability byte q in [1, 255]; a BinaryCode says
// what it means (the frequency of a 1 out of 2^bits). Two codes exist:
// linear (P(1) = q / 256, every file before the logit code) and logit
// (P(1) = round(2^16 sigma((q - 128) / 16)) / 2^16: steps of 1/16 in the
// logit, so that near-certain bits cost ~0.0005 bits instead of >= 0.0056).
//
// Push/pop are exact inverses: pop(push(s)) returns s and restores the state
// bit for bit, and so does push(pop()) on any valid state (bits-back).
// A pop that needs a word from an empty word stack throws NotEnoughBits
// ("not enough initial bits"); callers that batch pops save a Checkpoint
// first and restore it on failure, so a failed call changes nothing.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "errors.hpp"

namespace arib {

namespace detail {
// floor(x / f) as floor(x * m / 2^(64 + bits)) with m = ceil(2^(64 + bits) / f)
// in two 64-bit halves. Exact for f < 2^bits and x < f * 2^(64 - bits) (what
// a push guarantees after its spill): the error x * (m - 2^(64+bits)/f) /
// 2^(64+bits) < x / 2^(64+bits) < f / 2^(2 bits) < 1 / f, and x / f has a
// fractional part of at most (f - 1) / f (checked exhaustively at the edges
// and randomly in the tests).
struct Reciprocal {
  uint64_t lo;
  uint64_t hi;
};
Reciprocal reciprocal(uint64_t f, int bits);
inline uint64_t divide(uint64_t x, const Reciprocal& r, int bits) {
  using u128 = unsigned __int128;
  const u128 low = static_cast<u128>(x) * r.lo;
  const u128 high = static_cast<u128>(x) * r.hi;
  return static_cast<uint64_t>((high + static_cast<uint64_t>(low >> 64)) >> bits);
}
}  // namespace detail

// What a probability byte q in [1, 255] means: a 1 has frequency one[q] out
// of 2^bits, a 0 the rest. one[0] is unused (q = 0 is refused).
struct BinaryCode {
  int bits;
  uint32_t one[256];
  detail::Reciprocal rec_one[256];   // of one[q]
  detail::Reciprocal rec_zero[256];  // of 2^bits - one[q]
};
enum class ProbCode : int { kLinear = 0, kLogit = 1 };
// The table of a code; throws InvalidArgument for an unknown code.
const BinaryCode& binary_code(int code);

class RansStack {
 public:
  static constexpr uint64_t kLower = uint64_t{1} << 32;  // states live in [kLower, 2^64)

  struct Checkpoint {
    uint64_t state[2];
    size_t top;
    uint32_t turn;
  };

  RansStack() = default;

  // ---- binary symbols, P(bit = 1) = c.one[q] / 2^c.bits, q in [1, 255] -----
  // q outside [1, 255] is refused by the batched callers (InvalidArgument).
  inline void push_bit(uint32_t bit, uint32_t q, const BinaryCode& c);
  inline uint32_t pop_bit(uint32_t q, const BinaryCode& c);

  // Bulk forms of the above, keeping both states in registers (about 2x the
  // speed of the one-symbol calls): push_bits pushes items n-1 .. 0, pop_bits
  // pops items 0 .. n-1. The RGB forms code 3 bits per pixel (DESIGN 1.3):
  // R with q[0], G with q[1 + r], B with q[3 + 2r + g]; pushed B, G, R.
  void push_bits(const uint8_t* bits, const uint8_t* probs, size_t n, const BinaryCode& c);
  void pop_bits(const uint8_t* probs, size_t n, uint8_t* bits_out, const BinaryCode& c);
  void push_rgb(const uint8_t* bits, const uint8_t* probs, size_t n, const BinaryCode& c);
  void pop_rgb(const uint8_t* probs, size_t n, uint8_t* bits_out, const BinaryCode& c);

  // ---- general symbols: [start, start + freq) out of 2^precision ----------
  // Requires 1 <= freq, start + freq <= 2^precision, precision in [1, 32].
  inline void push_symbol(uint64_t start, uint64_t freq, int precision);
  // Returns the slot t = state mod 2^precision; the caller finds the symbol
  // and then calls pop_commit(start, freq, precision).
  inline uint64_t pop_peek(int precision) const;
  inline void pop_commit(uint64_t start, uint64_t freq, int precision);

  // ---- uniform k-bit values (1 <= k <= 32) ----------------------------------
  inline void push_uniform(uint32_t value, int k) { push_symbol(value, 1, k); }
  inline uint32_t pop_uniform(int k) {
    const uint64_t v = pop_peek(k);
    pop_commit(v, 1, k);
    return static_cast<uint32_t>(v);
  }

  // ---- bookkeeping -----------------------------------------------------------
  // Information held, in bits: 0 for an empty stack.
  int64_t num_bits() const;
  bool is_empty() const { return top_ == 0 && state_[0] == kLower && state_[1] == kLower && turn_ == 0; }

  // ---- seals -----------------------------------------------------------------
  // An empty stack starts from the states (2^32, 2^32), whose low 32 bits
  // end up in the serialised states carrying nothing. seal(v) starts it from
  // (2^32 + low half of v, 2^32 + high half of v) instead: decoding a stream
  // to its end returns the stack to its starting states, so seal_value()
  // then gives v back. The codec seals each lane with a hash of the lane's
  // items and compares after decoding: a 64-bit check that costs no bytes.
  // seal() requires an empty stack (else InvalidArgument); seal(0) is no-op.
  void seal(uint64_t value);
  // True, with the value, when no word is left, the turn is 0 and both
  // states are below 2^33 (where a completely decoded stream must be).
  bool seal_value(uint64_t& value) const;
  Checkpoint checkpoint() const { return {{state_[0], state_[1]}, top_, turn_}; }
  void restore(const Checkpoint& c) {
    state_[0] = c.state[0];
    state_[1] = c.state[1];
    top_ = c.top;
    turn_ = c.turn;
  }
  void reserve_words(size_t n) {
    if (words_.size() < top_ + n) words_.resize(top_ + n);
  }

  // ---- serialisation ---------------------------------------------------------
  // Layout 2 (written; little-endian): u8 head = 0x80 | turn << 4 |
  // (n0 - 5) << 2 | (n1 - 5), state0 in n0 bytes, state1 in n1 bytes (n0, n1
  // in 5..8, the fewest bytes that hold the state), then the words bottom to
  // top as u32. Layout 1 (read only): u8 1, u8 turn, u64 state0, u64 state1,
  // then the words. Both: the header, then 4 bytes per word.
  size_t serialized_size() const { return 1 + state_bytes(state_[0]) + state_bytes(state_[1]) + 4 * top_; }
  void serialize(uint8_t* out) const;
  // Throws StreamError on anything that is not a valid stack.
  static RansStack deserialize(const uint8_t* data, size_t size);

  static constexpr size_t kMaxHeaderBytes = 18;  // layout 1; layout 2 needs at most 17
  // Bytes of a state in layout 2: 5..8 for a state in [2^32, 2^64).
  static size_t state_bytes(uint64_t x) {
    return 5 + static_cast<size_t>(x >= (uint64_t{1} << 40)) + static_cast<size_t>(x >= (uint64_t{1} << 48)) +
           static_cast<size_t>(x >= (uint64_t{1} << 56));
  }

 private:
  inline void emit(uint64_t& x) {
    if (top_ == words_.size()) grow();
    words_[top_++] = static_cast<uint32_t>(x);
    x >>= 32;
  }
  inline void refill(uint64_t& x) {
    if (top_ == 0) throw NotEnoughBits("not enough initial bits: a pop needs a word from an empty stack");
    x = (x << 32) | words_[--top_];
  }
  void grow();
  // One binary step on an explicit state, for the bulk loops.
  static inline void encode_bit(uint64_t& x, uint32_t*& words, size_t& top, std::vector<uint32_t>& storage,
                                uint32_t bit, uint32_t q, const BinaryCode& c);
  inline uint32_t decode_bit(uint64_t& x, size_t& top, uint32_t q, const BinaryCode& c) const;

  uint64_t state_[2] = {kLower, kLower};
  uint32_t turn_ = 0;  // index of the state the next push uses
  std::vector<uint32_t> words_;
  size_t top_ = 0;  // words_[0, top_) are on the stack
};

inline void RansStack::encode_bit(uint64_t& x, uint32_t*& words, size_t& top, std::vector<uint32_t>& storage,
                                   uint32_t bit, uint32_t q, const BinaryCode& c) {
  const uint32_t total = 1u << c.bits;
  const uint32_t one = c.one[q];
  const uint32_t mask = 0u - (bit & 1u);
  const uint32_t not_one = total - one;
  const uint32_t freq = not_one + ((2u * one - total) & mask);  // bit ? one : not_one (mod 2^32)
  const uint32_t start = not_one & mask;
  const detail::Reciprocal& r = bit ? c.rec_one[q] : c.rec_zero[q];
  if (__builtin_expect(top == storage.size(), 0)) {
    storage.resize(storage.size() < 64 ? 64 : storage.size() * 2);
    words = storage.data();
  }
  const bool spill = x >= (static_cast<uint64_t>(freq) << (64 - c.bits));
  words[top] = static_cast<uint32_t>(x);
  top += spill;
  x = spill ? (x >> 32) : x;
  const uint64_t quotient = detail::divide(x, r, c.bits);
  x = x + quotient * (total - freq) + start;
}

inline uint32_t RansStack::decode_bit(uint64_t& x, size_t& top, uint32_t q, const BinaryCode& c) const {
  const uint32_t total = 1u << c.bits;
  const uint32_t not_one = total - c.one[q];
  const uint32_t slot = static_cast<uint32_t>(x & (total - 1u));
  const uint32_t bit = slot >= not_one;
  const uint32_t freq = bit ? total - not_one : not_one;
  const uint32_t start = bit ? not_one : 0u;
  const uint64_t next = freq * (x >> c.bits) + slot - start;
  if (next < kLower) {
    if (__builtin_expect(top == 0, 0)) {
      throw NotEnoughBits("not enough initial bits: a pop needs a word from an empty stack");
    }
    x = (next << 32) | words_[--top];
  } else {
    x = next;
  }
  return bit;
}

inline void RansStack::push_bit(uint32_t bit, uint32_t q, const BinaryCode& c) {
  uint32_t* words = words_.data();
  encode_bit(state_[turn_], words, top_, words_, bit, q, c);
  turn_ ^= 1u;
}

inline uint32_t RansStack::pop_bit(uint32_t q, const BinaryCode& c) {
  // decode_bit changes nothing when it throws, so the stack stays as it was.
  const uint32_t bit = decode_bit(state_[turn_ ^ 1u], top_, q, c);
  turn_ ^= 1u;
  return bit;
}

inline void RansStack::push_symbol(uint64_t start, uint64_t freq, int precision) {
  uint64_t& x = state_[turn_];
  turn_ ^= 1u;
  if (x >= (freq << (64 - precision))) emit(x);
  x = ((x / freq) << precision) + (x % freq) + start;
}

inline uint64_t RansStack::pop_peek(int precision) const {
  return state_[turn_ ^ 1u] & ((uint64_t{1} << precision) - 1u);
}

inline void RansStack::pop_commit(uint64_t start, uint64_t freq, int precision) {
  const uint32_t index = turn_ ^ 1u;
  uint64_t x = state_[index];
  const uint64_t slot = x & ((uint64_t{1} << precision) - 1u);
  x = freq * (x >> precision) + slot - start;
  if (x < kLower) {
    if (top_ == 0) throw NotEnoughBits("not enough initial bits: a pop needs a word from an empty stack");
    x = (x << 32) | words_[--top_];
  }
  state_[index] = x;
  turn_ = index;
}

}  // namespace arib
