// The bodies of the CPU loops (cpu_loops.h), included by each capability's
// unit with SUBIND_CPU_CAPABILITY set to its name: everything here lands in
// namespace subind_cpu::isa_<capability>, so no symbol is shared between units
// compiled for different ISAs (the functions they call from mask_math.h and
// optim_math.h are always inlined).  No ATen here.
#pragma once

#if !defined(SUBIND_CPU_CAPABILITY)
#error "define SUBIND_CPU_CAPABILITY (the namespace of this unit's loops) before including"
#endif

#include <cstring>
#include <type_traits>

#include "cpu_loops.h"

#define SUBIND_LOOP_INLINE inline __attribute__((always_inline))
#define SUBIND_LAMBDA_INLINE __attribute__((always_inline))
#define SUBIND_LOOPS_CONCAT_(a, b) a##b
#define SUBIND_LOOPS_CONCAT(a, b) SUBIND_LOOPS_CONCAT_(a, b)
#define SUBIND_LOOPS_STRING_(a) #a
#define SUBIND_LOOPS_STRING(a) SUBIND_LOOPS_STRING_(a)
#define SUBIND_LOOPS_NAMESPACE SUBIND_LOOPS_CONCAT(isa_, SUBIND_CPU_CAPABILITY)

namespace subind_cpu {
namespace SUBIND_LOOPS_NAMESPACE {

using subind::MaskPass;

// ------------------------------------------------------------ 16-bit weights
// Conversions with c10's results (round to nearest even; a NaN becomes the
// quiet NaN c10 writes), written branch-free so the mask loops vectorise.

SUBIND_LOOP_INLINE float float_of_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

SUBIND_LOOP_INLINE uint32_t bits_of_float(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

SUBIND_LOOP_INLINE float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t magnitude = h & 0x7fffu;
  // A normal half moves its exponent and mantissa into fp32's fields and
  // re-biases the exponent (15 -> 127); a subnormal one is m * 2^-24, formed
  // by arithmetic that stays exact with denormals flushed; inf and NaN keep
  // their payload under fp32's all-ones exponent, a NaN made quiet.
  const uint32_t normal = (magnitude << 13) + ((127u - 15u) << 23);
  const uint32_t subnormal =
      bits_of_float(static_cast<float>(static_cast<int32_t>(magnitude)) * 5.9604644775390625e-08f);
  const uint32_t special =
      (magnitude << 13) | 0x7f800000u | (magnitude > 0x7c00u ? 0x00400000u : 0u);
  const uint32_t out = magnitude < 0x0400u ? subnormal : magnitude >= 0x7c00u ? special : normal;
  return float_of_bits(out | sign);
}

SUBIND_LOOP_INLINE uint16_t float_to_half(float f) {
  const uint32_t u = bits_of_float(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7fffffffu;
  // Normal results: re-bias and drop 13 mantissa bits, rounding half to even.
  const uint32_t normal = (a - ((127u - 15u) << 23) + 0x0fffu + ((a >> 13) & 1u)) >> 13;
  // Below 2^-14 the result is subnormal: adding 0.5 moves the value into the
  // binade whose ulp, 2^-24, is the subnormal step, so the addition rounds it.
  const uint32_t subnormal = bits_of_float(float_of_bits(a) + 0.5f) - 0x3f000000u;
  uint32_t h = a < 0x38800000u ? subnormal : normal;
  h = a >= 0x477ff000u ? 0x7c00u : h;  // >= 65520 rounds to infinity
  h = a > 0x7f800000u ? 0x7e00u : h;   // NaN
  return static_cast<uint16_t>(h | sign);
}

SUBIND_LOOP_INLINE float bfloat16_to_float(uint16_t b) {
  return float_of_bits(static_cast<uint32_t>(b) << 16);
}

SUBIND_LOOP_INLINE uint16_t float_to_bfloat16(float f) {
  const uint32_t u = bits_of_float(f);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? 0x7fc0u : rounded);
}

// A stored weight as the logits' type, and back (16-bit types through float,
// as c10's conversions go).
template <typename compute_t, typename weight_t>
SUBIND_LOOP_INLINE compute_t widen(weight_t w) {
  if constexpr (std::is_same_v<weight_t, HalfBits>) {
    return static_cast<compute_t>(half_to_float(w.bits));
  } else if constexpr (std::is_same_v<weight_t, BFloat16Bits>) {
    return static_cast<compute_t>(bfloat16_to_float(w.bits));
  } else {
    return static_cast<compute_t>(w);
  }
}

template <typename weight_t, typename compute_t>
SUBIND_LOOP_INLINE weight_t narrow(compute_t x) {
  if constexpr (std::is_same_v<weight_t, HalfBits>) {
    return HalfBits{float_to_half(static_cast<float>(x))};
  } else if constexpr (std::is_same_v<weight_t, BFloat16Bits>) {
    return BFloat16Bits{float_to_bfloat16(static_cast<float>(x))};
  } else {
    return static_cast<weight_t>(x);
  }
}

// ------------------------------------------------------------ the mask pass
// Kept branch-free (selects, unconditional loads, store choices fixed at
// compile time) so GCC vectorises it; with a data-dependent branch on sign(s)
// it ran ~10x slower on random logits.  The gradient pointers may alias g
// (the blocked linear writes ds or dtheta over dW_eff in place); every
// iteration reads g[i] before writing index i, and `omp simd` states there is
// no dependence across iterations.  kL0: the pass carries the L0 penalty — a
// backward pass (kWantS) adds grad_l0·∂p/∂s to ds, a forward pass returns Σp
// over [begin, end) (else 0).
template <typename weight_t, typename logit_t, int kMode, bool kWantS, bool kWantTheta,
          bool kWantWeff, bool kL0>
logit_t range_loop(const MaskPass<weight_t, logit_t>& p, const MaskParams<logit_t>& c,
                   int64_t begin, int64_t end) {
  const weight_t* g = p.g;
  const weight_t* __restrict__ theta = p.theta;
  const logit_t* __restrict__ s = p.s;
  logit_t* grad_s = p.grad_s;
  weight_t* grad_theta = p.grad_theta;
  weight_t* __restrict__ w_eff = p.w_eff;
  const logit_t beta = c.beta;
  const uint32_t key = c.key;
  const int64_t offset = p.offset;
  const logit_t grad_l0 = (kL0 && kWantS) ? *p.grad_l0 : logit_t(0);
  logit_t l0_sum = 0;
#pragma omp simd reduction(+ : l0_sum)
  for (int64_t i = begin; i < end; ++i) {
    logit_t m, slope;
    if constexpr (kMode == subind::kSoft) {
      subind::sigmoid_and_slope(beta * s[i], m, slope);
    } else if constexpr (kMode == subind::kHard) {
      m = s[i] > logit_t(0) ? logit_t(1) : logit_t(0);
      slope = logit_t(0);
    } else if constexpr (kMode == subind::kNone) {
      m = logit_t(1);
      slope = logit_t(0);
    } else {
      subind::sampled_mask_and_slope(s[i], beta,
                                     subind::logistic_noise<logit_t>(key, offset + i), kMode,
                                     m, slope);
    }
    logit_t penalty = 0, penalty_slope = 0;
    if constexpr (kL0) {
      subind::penalty_and_slope(s[i], beta, kMode, m, slope, penalty, penalty_slope);
      if constexpr (!kWantS) l0_sum += penalty;
    }
    const logit_t ti = widen<logit_t>(theta[i]);
    if constexpr (kWantS || kWantTheta) {
      const logit_t gi = widen<logit_t>(g[i]);
      if constexpr (kWantS) {
        grad_s[i] = kL0 ? gi * ti * beta * slope + grad_l0 * penalty_slope
                        : gi * ti * beta * slope;
      }
      if constexpr (kWantTheta) grad_theta[i] = narrow<weight_t>(gi * m);
    }
    if constexpr (kWantWeff) w_eff[i] = narrow<weight_t>(ti * m);
  }
  return l0_sum;
}

// Σp over a range accumulates in blocks of the logits' dtype (the loop stays
// vectorised) added in double, so a sum of millions of terms keeps ~1e-7.
constexpr int64_t kL0Block = 512;

// Calls f(Mode, S, T, W, L) with compile-time constants for the mode, for
// which outputs (logits gradient, weight gradient, w_eff) are wanted and for
// whether the pass carries the L0 penalty, so each combination is its own
// branch-free, vectorisable instantiation.  A logits gradient and the penalty
// exist only in the training modes.  The mode code comes from the host
// driver's parse_mode, which rejects anything but these five.
template <typename F>
void with_mode_and_outputs(int mode, bool want_s, bool want_theta, bool want_weff, bool l0,
                           F&& f) {
  using Y = std::true_type;
  using N = std::false_type;
  auto outputs = [&](auto M) {
    constexpr bool kTraining = subind::mode_is_training(decltype(M)::value);
    const int which = ((want_s && kTraining) ? 4 : 0) | (want_theta ? 2 : 0) | (want_weff ? 1 : 0);
    auto penalty = [&](auto S, auto T, auto W) {
      if constexpr (kTraining) {
        if (l0) return f(M, S, T, W, Y{});
      }
      f(M, S, T, W, N{});
    };
    switch (which) {
      case 7: if constexpr (kTraining) penalty(Y{}, Y{}, Y{}); break;
      case 6: if constexpr (kTraining) penalty(Y{}, Y{}, N{}); break;
      case 5: if constexpr (kTraining) penalty(Y{}, N{}, Y{}); break;
      case 4: if constexpr (kTraining) penalty(Y{}, N{}, N{}); break;
      case 3: penalty(N{}, Y{}, Y{}); break;
      case 2: penalty(N{}, Y{}, N{}); break;
      case 1: penalty(N{}, N{}, Y{}); break;
      default: break;
    }
  };
  switch (mode) {
    case subind::kSoft: outputs(std::integral_constant<int, subind::kSoft>{}); break;
    case subind::kHard: outputs(std::integral_constant<int, subind::kHard>{}); break;
    case subind::kNone: outputs(std::integral_constant<int, subind::kNone>{}); break;
    case subind::kConcrete: outputs(std::integral_constant<int, subind::kConcrete>{}); break;
    case subind::kGumbel: outputs(std::integral_constant<int, subind::kGumbel>{}); break;
    default: break;
  }
}

template <typename weight_t, typename logit_t>
double mask_range(const MaskPass<weight_t, logit_t>& p, const MaskParams<logit_t>& c,
                  int64_t begin, int64_t end) {
  const bool l0 = p.grad_s ? p.grad_l0 != nullptr : p.l0_sum != nullptr;
  double total = 0.0;
  with_mode_and_outputs(
      c.mode, p.grad_s != nullptr, p.grad_theta != nullptr, p.w_eff != nullptr, l0,
      [&](auto M, auto S, auto T, auto W, auto L) {
        constexpr bool kSum = decltype(L)::value && !decltype(S)::value;
        const int64_t step = kSum ? kL0Block : end - begin;
        for (int64_t b = begin; b < end; b += step) {
          const int64_t stop = end - b < step ? end : b + step;
          const logit_t part =
              range_loop<weight_t, logit_t, decltype(M)::value, decltype(S)::value,
                         decltype(T)::value, decltype(W)::value, decltype(L)::value>(p, c, b,
                                                                                      stop);
          if constexpr (kSum) total += static_cast<double>(part);
        }
      });
  return total;
}

// ------------------------------------------------------------ the separate L0 pass
// fp32 partial sums over short blocks keep the loop vectorised; the blocks are
// added in double so the total stays accurate to ~1e-7 relative.
template <typename T>
double sigmoid_sum_range(const T* __restrict__ s, T beta, int64_t begin, int64_t end) {
  constexpr int64_t kBlock = 512;
  double acc = 0.0;
  for (int64_t b = begin; b < end; b += kBlock) {
    const int64_t stop = end - b < kBlock ? end : b + kBlock;
    T local = 0;
#pragma omp simd reduction(+ : local)
    for (int64_t i = b; i < stop; ++i) {
      T m, slope;
      subind::sigmoid_and_slope(beta * s[i], m, slope);
      local += m;
    }
    acc += static_cast<double>(local);
  }
  return acc;
}

template <typename T>
void sigmoid_slope_range(const T* __restrict__ s, T beta, T scale, T* __restrict__ out,
                         int64_t begin, int64_t end) {
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) {
    T m, slope;
    subind::sigmoid_and_slope(beta * s[i], m, slope);
    out[i] = scale * slope;
  }
}

// ------------------------------------------------------------ optimizer steps
// Calls f(i, frozen) for i in [begin, end).  With a mask, whole bytes are
// walked one at a time and their 8 elements form one SIMD lane group (the
// per-element form bits[i >> 3] >> (i & 7) kept GCC from vectorising: 5x
// slower); the ragged ends of a range are done element by element.
template <typename F>
SUBIND_LOOP_INLINE void for_each_with_frozen_bit(int64_t begin, int64_t end, const uint8_t* bits,
                                                 F&& f) {
  if (bits == nullptr) {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) f(i, false);
    return;
  }
  const int64_t first_byte = (begin + 7) / 8, last_byte = end / 8;
  if (first_byte >= last_byte) {
    for (int64_t i = begin; i < end; ++i) f(i, subind::is_frozen(bits, i));
    return;
  }
  for (int64_t i = begin; i < first_byte * 8; ++i) f(i, subind::is_frozen(bits, i));
  for (int64_t j = first_byte; j < last_byte; ++j) {
    const uint32_t byte = bits[j];
#pragma omp simd
    for (int k = 0; k < 8; ++k) f(j * 8 + k, ((byte >> k) & 1u) != 0);
  }
  for (int64_t i = last_byte * 8; i < end; ++i) f(i, subind::is_frozen(bits, i));
}

template <typename T>
void adamw_range(T* p, const T* g, T* m, T* v, T* vmax, const uint8_t* bits,
                 const subind::AdamWScalars& scalars, int64_t begin, int64_t end) {
  const subind::AdamWScalars c = scalars;
  if (vmax != nullptr) {
    for_each_with_frozen_bit(begin, end, bits, [=](int64_t i, bool frozen) SUBIND_LAMBDA_INLINE {
      subind::adamw_element<T>(p[i], g[i], m[i], v[i], vmax + i, c, frozen);
    });
  } else {
    for_each_with_frozen_bit(begin, end, bits, [=](int64_t i, bool frozen) SUBIND_LAMBDA_INLINE {
      subind::adamw_element<T>(p[i], g[i], m[i], v[i], nullptr, c, frozen);
    });
  }
}

template <typename T>
void sgd_range(T* p, const T* g, T* buf, const uint8_t* bits, const subind::SGDScalars& scalars,
               int64_t begin, int64_t end) {
  const subind::SGDScalars c = scalars;
  if (buf != nullptr) {
    for_each_with_frozen_bit(begin, end, bits, [=](int64_t i, bool frozen) SUBIND_LAMBDA_INLINE {
      subind::sgd_element<T>(p[i], g[i], buf + i, c, frozen);
    });
  } else {
    for_each_with_frozen_bit(begin, end, bits, [=](int64_t i, bool frozen) SUBIND_LAMBDA_INLINE {
      subind::sgd_element<T>(p[i], g[i], nullptr, c, frozen);
    });
  }
}

// This unit's table (constant-initialised: no code runs to build it).
const CpuLoops& loops() {
  static constexpr CpuLoops table{
      SUBIND_LOOPS_STRING(SUBIND_CPU_CAPABILITY),
      {&mask_range<float, float>, &mask_range<float, double>, &mask_range<double, float>,
       &mask_range<double, double>, &mask_range<HalfBits, float>, &mask_range<HalfBits, double>,
       &mask_range<BFloat16Bits, float>, &mask_range<BFloat16Bits, double>},
      {&sigmoid_sum_range<float>, &sigmoid_sum_range<double>},
      {&sigmoid_slope_range<float>, &sigmoid_slope_range<double>},
      {&adamw_range<float>, &adamw_range<double>},
      {&sgd_range<float>, &sgd_range<double>},
  };
  return table;
}

}  // namespace SUBIND_LOOPS_NAMESPACE
}  // namespace subind_cpu
