// Discretised logistic latent bins with integer-only, platform-independent CDFs.
//
// DESIGN 1.5: the latent axis is cut into K = 2^qp bins of equal mass under the
// prior Logistic(mu_p, 1). Under the posterior Logistic(mu_q, 1) the CDF at the
// boundary u_i = i/K is  F(i) = sigma(logit(i/K) - d) = i / (i + (K - i) e^d),
// d = mu_q - mu_p.  The coder receives d in fixed point, D = round(d * 2^8),
// clamped to [-kLatentDMax, kLatentDMax] (|d| <= 9.5), and uses
//
//   cdf(i) = i + floor(a*i*(M - K) / (a*i + b*(K - i))),   M = 2^24,
//   (a, b) = (1024, E[D]) for D >= 0,  (E[-D], 1024) for D < 0,
//   E[j]   = e^(j/256) * 1024 rounded, computed by integer arithmetic only.
//
// Contract (what the rANS coder needs, see tests):
//   * cdf(0) = 0, cdf(K) = M: the masses sum to exactly M;
//   * cdf(i+1) - cdf(i) >= 1 for every bin: no bin has zero mass;
//   * every value is computed with unsigned 64-bit integer operations that
//     cannot overflow (a < 2^24, i < 2^16, M - K < 2^24), so the encoder and
//     the decoder on any platform get the same table.
#pragma once
#include <cstdint>
#include <string>

namespace arib {

constexpr int kLatentPrecisionBits = 24;               // M = 2^24
constexpr uint64_t kLatentTotal = uint64_t{1} << kLatentPrecisionBits;
constexpr int kLatentDFracBits = 8;                    // d is quantised to 1/256
constexpr int32_t kLatentDMax = 2432;                  // |d| <= 9.5
constexpr int kLatentMinQp = 1;  // K = 2 bins: the CDF contract holds for every K >= 2
constexpr int kLatentMaxQp = 16;

// The (a, b) weights of the posterior for a fixed-point offset D (clamped).
struct LatentWeights {
  uint64_t a;
  uint64_t b;
};
LatentWeights latent_weights(int32_t d_fixed);

// cdf(i) as defined above, for 0 <= i <= K = 2^qp.
inline uint64_t latent_cdf(const LatentWeights& w, uint64_t k_bins, uint64_t i) {
  const uint64_t num = w.a * i;
  const uint64_t den = num + w.b * (k_bins - i);
  return i + (num * (kLatentTotal - k_bins)) / den;
}

// Finds the bin whose [cdf(i), cdf(i+1)) holds t (0 <= t < M). Exact: a
// floating-point guess is verified and corrected with integer CDF values.
uint64_t latent_find_bin(const LatentWeights& w, uint64_t k_bins, uint64_t t);

// Why a qp is refused: "latent precision qp=Q is outside [1, 16]"; empty if valid.
std::string latent_qp_error(int qp);

// Frequency (out of M) of bin `bin` for offset D at precision qp; throws
// InvalidArgument if qp or bin is out of range.
uint32_t latent_freq(int32_t d_fixed, int qp, uint32_t bin);

}  // namespace arib
