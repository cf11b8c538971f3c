#include "rans_stack.hpp"

#include <string>
#include <utility>

namespace arib {
namespace detail {

Reciprocal reciprocal(uint64_t f, int bits) {
  using u128 = unsigned __int128;
  const u128 m = ((u128{1} << (64 + bits)) + f - 1) / f;
  return {static_cast<uint64_t>(m), static_cast<uint64_t>(m >> 64)};
}

}  // namespace detail

namespace {

// round(65536 / (1 + exp(-(q - 128) / 16))) for q = 1..255 (entry 0 unused).
// Written out so that no libm can round an entry differently; every value
// lies at least 0.001 away from a rounding boundary, and tests/test_coder.py
// recomputes them.
constexpr uint32_t kLogitOne[256] = {
        0,    23,    25,    27,    28,    30,    32,    34,    36,    39,    41,    44,
       47,    50,    53,    56,    60,    64,    68,    72,    77,    82,    87,    92,
       98,   105,   111,   119,   126,   134,   143,   152,   162,   172,   184,   195,
      208,   221,   236,   251,   267,   284,   302,   321,   342,   364,   387,   412,
      439,   467,   497,   528,   562,   598,   636,   677,   720,   766,   815,   867,
      922,   980,  1042,  1109,  1179,  1253,  1333,  1417,  1506,  1601,  1701,  1808,
     1921,  2041,  2168,  2303,  2446,  2598,  2758,  2928,  3108,  3298,  3500,  3713,
     3938,  4176,  4427,  4692,  4971,  5266,  5577,  5904,  6249,  6611,  6992,  7392,
     7812,  8252,  8714,  9197,  9702, 10230, 10782, 11357, 11955, 12579, 13226, 13898,
    14595, 15316, 16062, 16832, 17625, 18442, 19282, 20143, 21025, 21928, 22849, 23788,
    24743, 25712, 26695, 27689, 28693, 29705, 30723, 31744, 32768, 33792, 34813, 35831,
    36843, 37847, 38841, 39824, 40793, 41748, 42687, 43608, 44511, 45393, 46254, 47094,
    47911, 48704, 49474, 50220, 50941, 51638, 52310, 52957, 53581, 54179, 54754, 55306,
    55834, 56339, 56822, 57284, 57724, 58144, 58544, 58925, 59287, 59632, 59959, 60270,
    60565, 60844, 61109, 61360, 61598, 61823, 62036, 62238, 62428, 62608, 62778, 62938,
    63090, 63233, 63368, 63495, 63615, 63728, 63835, 63935, 64030, 64119, 64203, 64283,
    64357, 64427, 64494, 64556, 64614, 64669, 64721, 64770, 64816, 64859, 64900, 64938,
    64974, 65008, 65039, 65069, 65097, 65124, 65149, 65172, 65194, 65215, 65234, 65252,
    65269, 65285, 65300, 65315, 65328, 65341, 65352, 65364, 65374, 65384, 65393, 65402,
    65410, 65417, 65425, 65431, 65438, 65444, 65449, 65454, 65459, 65464, 65468, 65472,
    65476, 65480, 65483, 65486, 65489, 65492, 65495, 65497, 65500, 65502, 65504, 65506,
    65508, 65509, 65511, 65513
};

BinaryCode make_code(int bits, const uint32_t* one) {
  BinaryCode c{};
  c.bits = bits;
  for (uint32_t q = 1; q < 256; ++q) {
    c.one[q] = one[q];
    c.rec_one[q] = detail::reciprocal(one[q], bits);
    c.rec_zero[q] = detail::reciprocal((uint64_t{1} << bits) - one[q], bits);
  }
  return c;
}

const BinaryCode linear_code = [] {
  uint32_t one[256];
  for (uint32_t q = 0; q < 256; ++q) one[q] = q;
  return make_code(8, one);
}();
const BinaryCode logit_code = make_code(16, kLogitOne);

}  // namespace

const BinaryCode& binary_code(int code) {
  if (code == static_cast<int>(ProbCode::kLinear)) return linear_code;
  if (code == static_cast<int>(ProbCode::kLogit)) return logit_code;
  throw InvalidArgument("unknown probability code " + std::to_string(code) + " (0 = linear, 1 = logit)");
}

void RansStack::push_bits(const uint8_t* bits, const uint8_t* probs, size_t n, const BinaryCode& c) {
  uint64_t a = state_[turn_];  // the state the next push uses
  uint64_t b = state_[turn_ ^ 1u];
  uint32_t* words = words_.data();
  size_t top = top_;
  for (size_t i = n; i-- > 0;) {
    encode_bit(a, words, top, words_, bits[i], probs[i], c);
    std::swap(a, b);
  }
  turn_ ^= static_cast<uint32_t>(n & 1u);
  state_[turn_] = a;
  state_[turn_ ^ 1u] = b;
  top_ = top;
}

void RansStack::pop_bits(const uint8_t* probs, size_t n, uint8_t* bits_out, const BinaryCode& c) {
  // On NotEnoughBits the members are left untouched (callers restore anyway).
  uint64_t a = state_[turn_ ^ 1u];  // the state the next pop uses
  uint64_t b = state_[turn_];
  size_t top = top_;
  for (size_t i = 0; i < n; ++i) {
    bits_out[i] = static_cast<uint8_t>(decode_bit(a, top, probs[i], c));
    std::swap(a, b);
  }
  turn_ ^= static_cast<uint32_t>(n & 1u);
  state_[turn_ ^ 1u] = a;
  state_[turn_] = b;
  top_ = top;
}

void RansStack::push_rgb(const uint8_t* bits, const uint8_t* probs, size_t n, const BinaryCode& c) {
  uint64_t a = state_[turn_];
  uint64_t b = state_[turn_ ^ 1u];
  uint32_t* words = words_.data();
  size_t top = top_;
  for (size_t i = n; i-- > 0;) {
    const uint8_t* bit = bits + 3 * i;
    const uint8_t* q = probs + 7 * i;
    encode_bit(a, words, top, words_, bit[2], q[3 + 2 * bit[0] + bit[1]], c);
    encode_bit(b, words, top, words_, bit[1], q[1 + bit[0]], c);
    encode_bit(a, words, top, words_, bit[0], q[0], c);
    std::swap(a, b);
  }
  turn_ ^= static_cast<uint32_t>(n & 1u);  // 3n pushes flip the parity n times
  state_[turn_] = a;
  state_[turn_ ^ 1u] = b;
  top_ = top;
}

void RansStack::pop_rgb(const uint8_t* probs, size_t n, uint8_t* bits_out, const BinaryCode& c) {
  uint64_t a = state_[turn_ ^ 1u];
  uint64_t b = state_[turn_];
  size_t top = top_;
  for (size_t i = 0; i < n; ++i) {
    const uint8_t* q = probs + 7 * i;
    uint8_t* bit = bits_out + 3 * i;
    const uint32_t r = decode_bit(a, top, q[0], c);
    const uint32_t g = decode_bit(b, top, q[1 + r], c);
    const uint32_t bl = decode_bit(a, top, q[3 + 2 * r + g], c);
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
