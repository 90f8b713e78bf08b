// The CPU element-wise mask loop, shared by the mask ops and convolutions
// (through the host driver, subind/mask_driver.h) and by the blocked masked
// linear (masked_linear.cpp).  Math: subind/mask_math.h.
#pragma once

#include <ATen/Parallel.h>

#include <type_traits>
#include <unordered_map>

#include "subind/mask_driver.h"

namespace subind_cpu {

using subind::MaskPass;

constexpr int64_t kGrain = 16384;

// beta, the mode and the hashed noise key as values (reading a CPU scalar
// costs nothing); made once per op call.
template <typename logit_t>
struct MaskParams {
  int mode;
  logit_t beta;
  uint32_t key;
};

// beta's value for a CPU loop outside the mask pass (the L0 penalty).
inline double host_beta(const char* op, const at::Tensor& beta) {
  TORCH_CHECK(beta.numel() == 1 && beta.is_floating_point() && beta.device().is_cpu(), op,
              ": beta must be a one-element floating CPU tensor, got shape ", beta.sizes(),
              " of ", beta.scalar_type(), " on ", beta.device());
  return beta.item<double>();
}

inline uint32_t key_hash(const at::Tensor& key) {
  if (!key.defined()) return 0;
  const int64_t* k = key.data_ptr<int64_t>();
  return subind::noise_key_hash(k[0], k[1]);
}

// beta's value, read straight from a CPU float or double (item() costs two
// dispatches, which a small layer notices).
template <typename logit_t>
logit_t beta_value(const at::Tensor& beta) {
  TORCH_CHECK(beta.device().is_cpu(), "subind: beta must be on the CPU with CPU logits, got ",
              beta.device());
  if (beta.scalar_type() == at::kFloat) return static_cast<logit_t>(*beta.const_data_ptr<float>());
  if (beta.scalar_type() == at::kDouble) {
    return static_cast<logit_t>(*beta.const_data_ptr<double>());
  }
  return beta.item<logit_t>();
}

template <typename logit_t>
MaskParams<logit_t> params_of(const subind::MaskArgs& args) {
  return {args.mode, beta_value<logit_t>(args.beta), key_hash(args.key)};
}

// The loops below are kept branch-free (selects, unconditional loads, store
// choices fixed at compile time) so GCC vectorises them; with a data-dependent
// branch on sign(s) they ran ~10x slower on random logits.  The gradient
// pointers may alias g (the blocked linear writes ds or dtheta over dW_eff in
// place); every iteration reads g[i] before writing index i, and `omp simd`
// states there is no dependence across iterations.  kL0: the pass carries the
// L0 penalty — a backward pass (kWantS) adds grad_l0·∂p/∂s to ds, a forward
// pass returns Σp over [begin, end) (else 0).
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
    const logit_t ti = static_cast<logit_t>(theta[i]);
    if constexpr (kWantS || kWantTheta) {
      const logit_t gi = static_cast<logit_t>(g[i]);
      if constexpr (kWantS) {
        grad_s[i] = kL0 ? gi * ti * beta * slope + grad_l0 * penalty_slope
                        : gi * ti * beta * slope;
      }
      if constexpr (kWantTheta) grad_theta[i] = static_cast<weight_t>(gi * m);
    }
    if constexpr (kWantWeff) w_eff[i] = static_cast<weight_t>(ti * m);
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
// exist only in the training modes.
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
    default: TORCH_CHECK(false, "mask pass: unknown mode code ", mode);
  }
}

// Elements [begin, end) of the pass on the calling thread; returns the
// penalty's Σp over them in a forward pass that carries it (else 0).
template <typename weight_t, typename logit_t>
double pass_range(const MaskPass<weight_t, logit_t>& p, const MaskParams<logit_t>& c,
                  int64_t begin, int64_t end) {
  const bool l0 = p.grad_s ? p.grad_l0 != nullptr : p.l0_sum != nullptr;
  double total = 0.0;
  with_mode_and_outputs(
      c.mode, p.grad_s != nullptr, p.grad_theta != nullptr, p.w_eff != nullptr, l0,
      [&](auto M, auto S, auto T, auto W, auto L) {
        constexpr bool kSum = decltype(L)::value && !decltype(S)::value;
        const int64_t step = kSum ? kL0Block : end - begin;
        for (int64_t b = begin; b < end; b += step) {
          const logit_t part =
              range_loop<weight_t, logit_t, decltype(M)::value, decltype(S)::value,
                         decltype(T)::value, decltype(W)::value, decltype(L)::value>(
                  p, c, b, std::min(end, b + step));
          if constexpr (kSum) total += static_cast<double>(part);
        }
      });
  return total;
}

// The whole pass, split over the intra-op threads; a forward pass that
// carries the penalty adds its Σp to *p.l0_sum.
template <typename weight_t, typename logit_t>
void pass_parallel(const MaskPass<weight_t, logit_t>& p, const MaskParams<logit_t>& c) {
  if (p.l0_sum != nullptr && p.grad_s == nullptr) {
    *p.l0_sum += at::parallel_reduce(
        int64_t(0), p.n, kGrain, 0.0,
        [&](int64_t begin, int64_t end, double acc) { return acc + pass_range(p, c, begin, end); },
        std::plus<double>());
    return;
  }
  at::parallel_for(0, p.n, kGrain,
                   [&](int64_t begin, int64_t end) { pass_range(p, c, begin, end); });
}

// Per-thread scratch, grown to the largest layer seen and reused, so no step
// pays for page-faulting fresh weight-sized memory (a fresh multi-MB buffer
// comes from mmap: every page faults on first touch).  Slots: the blocked
// linear's W_eff and dW_eff blocks, and transient whole weights.
enum ScratchSlot : int { kWeffSlot = 0, kGradSlot = 1, kTransientSlot = 2 };

inline at::Tensor scratch(int slot, at::ScalarType dtype, int64_t numel) {
  thread_local std::unordered_map<int, at::Tensor> buffers;
  auto& buf = buffers[slot * 64 + static_cast<int>(dtype)];
  if (!buf.defined() || buf.numel() < numel) {
    buf = at::empty({std::max<int64_t>(numel, 1)}, at::TensorOptions().dtype(dtype));
  }
  return buf;
}

struct CpuKernels {
  template <typename weight_t, typename logit_t>
  static void pass(const MaskPass<weight_t, logit_t>& p, const subind::MaskArgs& args) {
    pass_parallel(p, params_of<logit_t>(args));
  }

  // A weight-shaped W_eff that lives only within one op call (a convolution
  // consumes it): in this thread's scratch.
  static at::Tensor transient_like(const at::Tensor& dense) {
    auto buf = scratch(kTransientSlot, dense.scalar_type(), dense.numel());
    return at::from_blob(buf.data_ptr(), dense.sizes(), dense.strides(), buf.options());
  }
};

}  // namespace subind_cpu
