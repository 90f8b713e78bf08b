// Per-element math of continuous-sparsification masks, shared by the CPU
// (csrc/cpu) and CUDA (csrc/cuda) kernels so both compute bit-for-bit the
// same formulas.
//
//   z = beta * s
//   soft:  m = sigmoid(z)      slope = dm/dz = m * (1 - m)
//   hard:  m = 1[s > 0]        slope = 0 (no gradient reaches s)
//   none:  m = 1               slope = 0
//
//   forward:   w_eff  = theta * m
//   backward:  ds     = g * theta * beta * slope      (g = dL/dw_eff)
//              dtheta = g * m
//
// sigmoid is evaluated through e = exp(-|z|), which lies in (0, 1] for every
// finite z, so nothing overflows; m * (1 - m) is formed as
// sigmoid(|z|) * sigmoid(-|z|) = e / (1 + e)^2, which keeps full relative
// precision where 1 - m would cancel and underflows to exactly 0 (not NaN)
// for |z| beyond ~88 (fp32) or ~745 (fp64).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define SUBIND_HD __host__ __device__ __forceinline__
#else
#define SUBIND_HD inline __attribute__((always_inline))
#endif

namespace subind {

// The mask mode: one definition for the whole stack.  The op schemas take
// the name (a `str`), the host driver parses it once per call
// (mask_driver.h: parse_mode), device loops take the code, and Python reads
// both from the built extension (subind_fast/ops/modes.py checks that its
// table equals this one).
enum MaskMode : int { kSoft = 0, kHard = 1, kNone = 2, kConcrete = 3, kGumbel = 4 };
constexpr int kModeCount = 5;
constexpr const char* kModeNames[kModeCount] = {"soft", "hard", "none", "concrete", "gumbel"};

SUBIND_HD constexpr bool mode_is_sampled(int mode) { return mode == kConcrete || mode == kGumbel; }

// Modes whose mask passes a gradient to the logits.
SUBIND_HD constexpr bool mode_is_training(int mode) { return mode == kSoft || mode_is_sampled(mode); }

// exp(x) for x <= 0 in fp32.  On the CPU a branch-free polynomial (Cody-Waite
// range reduction, degree-6 minimax) so the compiler can vectorise the
// element-wise loops; max relative error ~2 ulp, and exact 0 below -87.3.
SUBIND_HD float exp_nonpositive(float x) {
#if defined(__CUDA_ARCH__)
  return ::expf(x);
#else
  const float kLog2e = 1.44269504088896341f;
  const float kLn2Hi = 0.693359375f;
  const float kLn2Lo = -2.12194440e-4f;
  const bool underflow = x < -87.3f;
  x = underflow ? -87.3f : x;
  // Round to nearest by adding and removing 1.5 * 2^23 (valid for |v| < 2^22),
  // which vectorises where nearbyint() would be a library call.
  const float kRoundMagic = 12582912.0f;
  const float n = (x * kLog2e + kRoundMagic) - kRoundMagic;
  float r = x - n * kLn2Hi;
  r = r - n * kLn2Lo;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return underflow ? 0.0f : p * scale;
#endif
}

SUBIND_HD double exp_nonpositive(double x) { return ::exp(x); }

// m = sigmoid(z) and slope = sigmoid(z) * sigmoid(-z), overflow-free.
template <typename T>
SUBIND_HD void sigmoid_and_slope(T z, T& m, T& slope) {
  const T e = exp_nonpositive(-(z < T(0) ? -z : z));
  const T big = T(1) / (T(1) + e);  // sigmoid(|z|)
  const T small = e * big;          // sigmoid(-|z|)
  m = z >= T(0) ? big : small;
  slope = big * small;
}

// ---------------------------------------------------------------- sampled masks
// Hard-concrete (Louizos et al.) and Gumbel-sigmoid with a straight-through
// estimator (Csordas et al.), from logistic noise L of element i:
//
//   z = beta * (s + L),  y = sigmoid(z),  y' = y * (1 - y)
//   concrete: t = y * (1 + 2 eps) - eps,  m = clamp(t, 0, 1)   (eps = kStretch)
//             slope = 1[0 < t < 1] * (1 + 2 eps) * y'
//   gumbel:   m = 1[z > 0]  (= 1[y > 1/2]),  slope = y'  (straight through)
//
// with ds = g * theta * beta * slope as in soft mode.  The noise is a pure
// function of (seed, stream, i) -- subind_fast/ops/noise.py states the hash --
// so backward regenerates it instead of storing it.
constexpr double kStretch = 0.1;

SUBIND_HD uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

SUBIND_HD uint32_t noise_key_hash(int64_t seed, int64_t stream) {
  const uint64_t s = static_cast<uint64_t>(seed);
  const uint32_t k = mix32(mix32(static_cast<uint32_t>(s)) ^ static_cast<uint32_t>(s >> 32));
  return mix32(k ^ static_cast<uint32_t>(static_cast<uint64_t>(stream)));
}

// log(x) for a normal positive fp32 x.  On the CPU branch-free (exponent
// from the bits, the mantissa folded into [sqrt(1/2), sqrt(2)), a degree-9
// polynomial in t = m - 1; ~1 ulp) so the sampled loops vectorise.
SUBIND_HD float log_positive(float x) {
#if defined(__CUDA_ARCH__)
  return ::logf(x);
#else
  int32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  float e = static_cast<float>(((bits >> 23) & 0xff) - 126);  // x = m * 2^e, m in [1/2, 1)
  bits = (bits & 0x007fffff) | 0x3f000000;
  float m;
  std::memcpy(&m, &bits, sizeof(m));
  const bool fold = m < 0.70710678f;
  e = fold ? e - 1.0f : e;
  const float t = fold ? m + m - 1.0f : m - 1.0f;
  const float z = t * t;
  float p = 7.0376836292e-2f;
  p = p * t - 1.1514610310e-1f;
  p = p * t + 1.1676998740e-1f;
  p = p * t - 1.2420140846e-1f;
  p = p * t + 1.4249322787e-1f;
  p = p * t - 1.6668057665e-1f;
  p = p * t + 2.0000714765e-1f;
  p = p * t - 2.4999993993e-1f;
  p = p * t + 3.3333331174e-1f;
  float r = p * t * z + e * -2.12194440e-4f - 0.5f * z;
  return t + r + e * 0.693359375f;
#endif
}

SUBIND_HD double log_positive(double x) { return ::log(x); }

// u in (0, 1) of element i (an odd multiple of 2^-25), then the logistic
// noise log(u / (1 - u)).
template <typename T>
SUBIND_HD T logistic_noise(uint32_t key, int64_t i) {
  const uint64_t index = static_cast<uint64_t>(i);
  const uint32_t h = mix32(mix32(key ^ static_cast<uint32_t>(index)) ^
                           static_cast<uint32_t>(index >> 32));
  const T u = (static_cast<T>(h >> 8) + T(0.5)) * T(5.9604644775390625e-08);  // 2^-24
  return log_positive(u) - log_positive(T(1) - u);
}

template <typename T>
SUBIND_HD void sampled_mask_and_slope(T s, T beta, T noise, int mode, T& m, T& slope) {
  const T z = beta * (s + noise);
  T y, dy;
  sigmoid_and_slope(z, y, dy);
  if (mode == kConcrete) {
    const T stretch = T(1) + T(2) * T(kStretch);
    const T t = y * stretch - T(kStretch);
    const T low = t > T(0) ? t : T(0);
    m = low < T(1) ? low : T(1);
    slope = (m == t) ? stretch * dy : T(0);  // zero where the clamp is active
  } else {
    m = z > T(0) ? T(1) : T(0);
    slope = dy;
  }
}

// ---------------------------------------------------------------- the L0 penalty
// Each training mode's sparsity penalty per logit, p(s), and its derivative:
//
//   soft:      p = sigmoid(beta * s)            dp/ds = beta * slope (the mask's own)
//   concrete:  p = sigmoid(s + kZeroGate/beta)  dp/ds = sigmoid'(s + kZeroGate/beta)
//              = P(m != 0), the expected L0 (kZeroGate = -log(eps/(1+eps)))
//   gumbel:    p = s                            dp/ds = 1
//
// The layer's penalty is the sum of p over its logits.  A mask pass that takes
// part in it adds p to a sum (forward) or grad_l0 * dp/ds to ds (backward); in
// soft mode both come from the mask's sigmoid, so fusing costs no extra exp.
constexpr double kZeroGateLogOdds = 2.397895272798370544;  // log(11) = -log(0.1 / 1.1)

template <typename T>
SUBIND_HD void penalty_and_slope(T s, T beta, int mode, T m, T slope, T& p, T& dp) {
  if (mode == kSoft) {
    p = m;
    dp = beta * slope;
  } else if (mode == kConcrete) {
    sigmoid_and_slope(s + T(kZeroGateLogOdds) / beta, p, dp);
  } else {
    p = s;
    dp = T(1);
  }
}

}  // namespace subind
