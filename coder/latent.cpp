#include "latent.hpp"

#include <array>
#include <string>

#include "errors.hpp"

namespace arib {
namespace {

using u128 = unsigned __int128;

// e^(1/256) in Q50, i.e. round(exp(1/256) * 2^50); generated with exact
// decimal arithmetic. The table below is built from it with integer products
// only, so it is identical on every platform.
constexpr uint64_t kExpStepQ50 = 1130306554484062ULL;

std::array<uint32_t, kLatentDMax + 1> build_exp_table() {
  std::array<uint32_t, kLatentDMax + 1> table{};
  uint64_t value_q50 = uint64_t{1} << 50;
  for (int32_t j = 0; j <= kLatentDMax; ++j) {
    table[static_cast<size_t>(j)] =
        static_cast<uint32_t>((value_q50 + (uint64_t{1} << 39)) >> 40);  // Q10
    value_q50 = static_cast<uint64_t>(
        (static_cast<u128>(value_q50) * kExpStepQ50 + (u128{1} << 49)) >> 50);
  }
  return table;
}

const std::array<uint32_t, kLatentDMax + 1>& exp_table() {
  static const std::array<uint32_t, kLatentDMax + 1> table = build_exp_table();
  return table;
}

}  // namespace

LatentWeights latent_weights(int32_t d_fixed) {
  if (d_fixed > kLatentDMax) d_fixed = kLatentDMax;
  if (d_fixed < -kLatentDMax) d_fixed = -kLatentDMax;
  const auto& e = exp_table();
  if (d_fixed >= 0) return {1024, e[static_cast<size_t>(d_fixed)]};
  return {e[static_cast<size_t>(-d_fixed)], 1024};
}

uint64_t latent_find_bin(const LatentWeights& w, uint64_t k_bins, uint64_t t) {
  // Guess from the continuous inverse, twice (the second pass accounts for
  // the +i term), then verify; the answer does not depend on the guess.
  const double a = static_cast<double>(w.a);
  const double b = static_cast<double>(w.b);
  const double k = static_cast<double>(k_bins);
  auto inverse = [&](double f) {
    if (f < 0.0) f = 0.0;
    if (f > 1.0) f = 1.0;
    double i = k * b * f / (a * (1.0 - f) + b * f);
    if (!(i >= 0.0)) i = 0.0;
    if (i > k - 1.0) i = k - 1.0;
    return static_cast<uint64_t>(i);
  };
  uint64_t guess = inverse(static_cast<double>(t) / static_cast<double>(kLatentTotal));
  guess = inverse((static_cast<double>(t) - static_cast<double>(guess)) /
                  static_cast<double>(kLatentTotal - k_bins));

  // Invariant of the search below: cdf(lo) <= t < cdf(hi).
  uint64_t lo = 0;
  uint64_t hi = k_bins;
  if (latent_cdf(w, k_bins, guess) <= t) {
    lo = guess;
    if (t < latent_cdf(w, k_bins, guess + 1)) return guess;
    lo = guess + 1;
    if (lo + 1 < hi && t < latent_cdf(w, k_bins, lo + 1)) return lo;
  } else {
    hi = guess;
    if (guess > 0 && latent_cdf(w, k_bins, guess - 1) <= t) return guess - 1;
    if (guess > 0) hi = guess - 1;
  }
  while (hi - lo > 1) {
    const uint64_t mid = lo + (hi - lo) / 2;
    if (latent_cdf(w, k_bins, mid) <= t) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return lo;
}

std::string latent_qp_error(int qp) {
  if (qp >= kLatentMinQp && qp <= kLatentMaxQp) return {};
  return "latent precision qp=" + std::to_string(qp) + " is outside [" + std::to_string(kLatentMinQp) + ", " +
         std::to_string(kLatentMaxQp) + "]";
}

uint32_t latent_freq(int32_t d_fixed, int qp, uint32_t bin) {
  const std::string qp_error = latent_qp_error(qp);
  if (!qp_error.empty()) throw InvalidArgument(qp_error);
  const uint64_t k_bins = uint64_t{1} << qp;
  if (bin >= k_bins) {
    throw InvalidArgument("latent bin " + std::to_string(bin) + " is outside [0, 2^" +
                          std::to_string(qp) + ")");
  }
  const LatentWeights w = latent_weights(d_fixed);
  return static_cast<uint32_t>(latent_cdf(w, k_bins, bin + 1) - latent_cdf(w, k_bins, bin));
}

}  // namespace arib
