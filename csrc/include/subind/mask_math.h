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

enum MaskMode : int { kSoft = 0, kHard = 1, kNone = 2 };

SUBIND_HD bool mode_is_valid(long long mode) {
  return mode == kSoft || mode == kHard || mode == kNone;
}

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

template <typename T>
SUBIND_HD T mask_value(T s, T beta, int mode) {
  if (mode == kSoft) {
    T m, slope;
    sigmoid_and_slope(beta * s, m, slope);
    return m;
  }
  if (mode == kHard) return s > T(0) ? T(1) : T(0);
  return T(1);
}

// One element of the backward pass: from g = dL/dw_eff produce the logits
// gradient, the weight gradient and (recomputed) w_eff.
template <typename T>
SUBIND_HD void mask_backward_element(T g, T theta, T s, T beta, int mode,
                                     T& grad_s, T& grad_theta, T& w_eff) {
  T m, slope;
  if (mode == kSoft) {
    sigmoid_and_slope(beta * s, m, slope);
  } else {
    m = (mode == kHard) ? (s > T(0) ? T(1) : T(0)) : T(1);
    slope = T(0);
  }
  grad_s = g * theta * beta * slope;
  grad_theta = g * m;
  w_eff = theta * m;
}

}  // namespace subind
