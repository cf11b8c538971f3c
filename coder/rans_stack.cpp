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

namespace {
void put_u64(uint8_t* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint64_t get_u64(const uint8_t* in) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(in[i]) << (8 * i);
  return v;
}
}  // namespace

void RansStack::serialize(uint8_t* out) const {
  out[0] = 1;
  out[1] = static_cast<uint8_t>(turn_);
  put_u64(out + 2, state_[0]);
  put_u64(out + 10, state_[1]);
  uint8_t* p = out + kHeaderBytes;
  for (size_t i = 0; i < top_; ++i, p += 4) {
    const uint32_t w = words_[i];
    p[0] = static_cast<uint8_t>(w);
    p[1] = static_cast<uint8_t>(w >> 8);
    p[2] = static_cast<uint8_t>(w >> 16);
    p[3] = static_cast<uint8_t>(w >> 24);
  }
}

RansStack RansStack::deserialize(const uint8_t* data, size_t size) {
  if (size < kHeaderBytes) {
    throw StreamError("lane stream is truncated: " + std::to_string(size) + " bytes, a stack needs at least " +
                      std::to_string(kHeaderBytes));
  }
  if ((size - kHeaderBytes) % 4 != 0) {
    throw StreamError("lane stream is truncated or padded: " + std::to_string(size) +
                      " bytes is not 18 + a multiple of 4");
  }
  if (data[0] != 1) throw StreamError("lane stream has unknown stack version " + std::to_string(data[0]));
  if (data[1] > 1) throw StreamError("lane stream is corrupted: bad state index " + std::to_string(data[1]));
  RansStack s;
  s.turn_ = data[1];
  s.state_[0] = get_u64(data + 2);
  s.state_[1] = get_u64(data + 10);
  if (s.state_[0] < kLower || s.state_[1] < kLower) throw StreamError("lane stream is corrupted: state out of range");
  const size_t n = (size - kHeaderBytes) / 4;
  s.words_.resize(n);
  const uint8_t* p = data + kHeaderBytes;
  for (size_t i = 0; i < n; ++i, p += 4) {
    s.words_[i] = static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
                  (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
  }
  s.top_ = n;
  return s;
}

}  // namespace arib
