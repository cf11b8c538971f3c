#include "rans_stack.hpp"

#include <array>
#include <string>
#include <utility>

namespace arib {
namespace detail {

namespace {
const std::array<Reciprocal, 256> byte_reciprocal_table = [] {
    using u128 = unsigned __int128;
    std::array<Reciprocal, 256> t{};
    for (uint64_t f = 1; f < 256; ++f) {
      const u128 m = ((u128{1} << 72) + f - 1) / f;
      t[f] = {static_cast<uint64_t>(m), static_cast<uint64_t>(m >> 64)};
    }
    return t;
}();
}  // namespace

const Reciprocal* const kByteReciprocals = byte_reciprocal_table.data();

}  // namespace detail

void RansStack::push_bits(const uint8_t* bits, const uint8_t* probs, size_t n) {
  uint64_t a = state_[turn_];  // the state the next push uses
  uint64_t b = state_[turn_ ^ 1u];
  uint32_t* words = words_.data();
  size_t top = top_;
  for (size_t i = n; i-- > 0;) {
    encode_bit(a, words, top, words_, bits[i], probs[i]);
    std::swap(a, b);
  }
  turn_ ^= static_cast<uint32_t>(n & 1u);
  state_[turn_] = a;
  state_[turn_ ^ 1u] = b;
  top_ = top;
}

void RansStack::pop_bits(const uint8_t* probs, size_t n, uint8_t* bits_out) {
  // On NotEnoughBits the members are left untouched (callers restore anyway).
  uint64_t a = state_[turn_ ^ 1u];  // the state the next pop uses
  uint64_t b = state_[turn_];
  size_t top = top_;
  for (size_t i = 0; i < n; ++i) {
    bits_out[i] = static_cast<uint8_t>(decode_bit(a, top, probs[i]));
    std::swap(a, b);
  }
  turn_ ^= static_cast<uint32_t>(n & 1u);
  state_[turn_ ^ 1u] = a;
  state_[turn_] = b;
  top_ = top;
}

void RansStack::push_rgb(const uint8_t* bits, const uint8_t* probs, size_t n) {
  uint64_t a = state_[turn_];
  uint64_t b = state_[turn_ ^ 1u];
  uint32_t* words = words_.data();
  size_t top = top_;
  for (size_t i = n; i-- > 0;) {
    const uint8_t* bit = bits + 3 * i;
    const uint8_t* q = probs + 7 * i;
    encode_bit(a, words, top, words_, bit[2], q[3 + 2 * bit[0] + bit[1]]);
    encode_bit(b, words, top, words_, bit[1], q[1 + bit[0]]);
    encode_bit(a, words, top, words_, bit[0], q[0]);
    std::swap(a, b);
  }
  turn_ ^= static_cast<uint32_t>(n & 1u);  // 3n pushes flip the parity n times
  state_[turn_] = a;
  state_[turn_ ^ 1u] = b;
  top_ = top;
}

void RansStack::pop_rgb(const uint8_t* probs, size_t n, uint8_t* bits_out) {
  uint64_t a = state_[turn_ ^ 1u];
  uint64_t b = state_[turn_];
  size_t top = top_;
  for (size_t i = 0; i < n; ++i) {
    const uint8_t* q = probs + 7 * i;
    uint8_t* bit = bits_out + 3 * i;
    const uint32_t r = decode_bit(a, top, q[0]);
    const uint32_t g = decode_bit(b, top, q[1 + r]);
    const uint32_t bl = decode_bit(a, top, q[3 + 2 * r + g]);
    bit[0] = static_cast<uint8_t>(r);
    bit[1] = static_cast<uint8_t>(g);
    bit[2] = static_cast<uint8_t>(bl);
    std::swap(a, b);
  }
  turn_ ^= static_cast<uint32_t>(n & 1u);
  state_[turn_ ^ 1u] = a;
  state_[turn_] = b;
  top_ = top;
}

void RansStack::grow() {
  const size_t size = words_.size();
  words_.resize(size < 64 ? 64 : size * 2);
}

int64_t RansStack::num_bits() const {
  int64_t bits = 32 * static_cast<int64_t>(top_);
  for (uint64_t x : state_) {
    int length = 0;
    while (x != 0) {
      ++length;
      x >>= 1;
    }
    bits += length - 33;  // a state of exactly 2^32 holds nothing
  }
  return bits;
}

void RansStack::seal(uint64_t value) {
  if (!is_empty()) throw InvalidArgument("seal() needs an empty stack");
  state_[0] = kLower + (value & 0xFFFFFFFFu);
  state_[1] = kLower + (value >> 32);
}

bool RansStack::seal_value(uint64_t& value) const {
  if (top_ != 0 || turn_ != 0 || state_[0] >= 2 * kLower || state_[1] >= 2 * kLower) return false;
  value = (state_[0] - kLower) | ((state_[1] - kLower) << 32);
  return true;
}

namespace {
void put_le(uint8_t* out, uint64_t v, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint64_t get_le(const uint8_t* in, size_t n) {
  uint64_t v = 0;
  for (size_t i = 0; i < n; ++i) v |= static_cast<uint64_t>(in[i]) << (8 * i);
  return v;
}
void get_words(const uint8_t* p, size_t n, std::vector<uint32_t>& words) {
  words.resize(n);
  for (size_t i = 0; i < n; ++i, p += 4) words[i] = static_cast<uint32_t>(get_le(p, 4));
}
}  // namespace

void RansStack::serialize(uint8_t* out) const {
  const size_t n0 = state_bytes(state_[0]), n1 = state_bytes(state_[1]);
  out[0] = static_cast<uint8_t>(0x80u | (turn_ << 4) | ((n0 - 5) << 2) | (n1 - 5));
  put_le(out + 1, state_[0], n0);
  put_le(out + 1 + n0, state_[1], n1);
  uint8_t* p = out + 1 + n0 + n1;
  for (size_t i = 0; i < top_; ++i, p += 4) put_le(p, words_[i], 4);
}

RansStack RansStack::deserialize(const uint8_t* data, size_t size) {
  if (size == 0) throw StreamError("lane stream is empty: a stack needs at least 11 bytes");
  RansStack s;
  size_t header = 0;
  if (data[0] == 1) {  // layout 1
    header = kMaxHeaderBytes;
    if (size < header) {
      throw StreamError("lane stream is truncated: " + std::to_string(size) + " bytes, a stack needs at least " +
                        std::to_string(header));
    }
    if (data[1] > 1) throw StreamError("lane stream is corrupted: bad state index " + std::to_string(data[1]));
    s.turn_ = data[1];
    s.state_[0] = get_le(data + 2, 8);
    s.state_[1] = get_le(data + 10, 8);
    if (s.state_[0] < kLower || s.state_[1] < kLower) throw StreamError("lane stream is corrupted: state out of range");
  } else if ((data[0] & 0xE0u) == 0x80u) {  // layout 2
    const size_t n0 = 5 + ((data[0] >> 2) & 3u), n1 = 5 + (data[0] & 3u);
    header = 1 + n0 + n1;
    if (size < header) {
      throw StreamError("lane stream is truncated: " + std::to_string(size) + " bytes, its stack header needs " +
                        std::to_string(header));
    }
    s.turn_ = (data[0] >> 4) & 1u;
    s.state_[0] = get_le(data + 1, n0);
    s.state_[1] = get_le(data + 1 + n0, n1);
    // The last byte of each state must be nonzero: one encoding per stack, and states >= 2^32.
    if (data[n0] == 0 || data[n0 + n1] == 0) throw StreamError("lane stream is corrupted: state out of range");
  } else {
    throw StreamError("lane stream has unknown stack layout " + std::to_string(data[0]));
  }
  if ((size - header) % 4 != 0) {
    throw StreamError("lane stream is truncated or padded: " + std::to_string(size) + " bytes is not " +
                      std::to_string(header) + " + a multiple of 4");
  }
  get_words(data + header, (size - header) / 4, s.words_);
  s.top_ = s.words_.size();
  return s;
}

}  // namespace arib
