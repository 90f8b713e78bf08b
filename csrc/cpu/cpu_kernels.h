// The CPU element-wise loops, shared by the mask ops (mask_ops.cpp) and the
// blocked masked linear (masked_linear.cpp).  Math: subind/mask_math.h.
#pragma once

#include <ATen/Parallel.h>

#include <type_traits>

#include "subind/mask_driver.h"

namespace subind_cpu {

constexpr int64_t kGrain = 16384;

// The loops below are kept branch-free (selects, unconditional loads, store
// choices fixed at compile time) so GCC vectorises them; with a data-dependent
// branch on sign(s) they ran ~10x slower on random logits.  The gradient
// pointers may alias g (the blocked linear writes ds or dtheta over dW_eff in
// place); every iteration reads g[i] before writing index i, and `omp simd`
// states there is no dependence across iterations.
template <typename weight_t, typename logit_t, bool kWantS, bool kWantTheta,
          bool kWantWeff>
void soft_backward_range(const weight_t* g, const weight_t* __restrict__ theta,
                         const logit_t* __restrict__ s, logit_t beta,
                         logit_t* grad_s, weight_t* grad_theta,
                         weight_t* __restrict__ w_eff, int64_t begin,
                         int64_t end) {
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) {
    logit_t m, slope;
    subind::sigmoid_and_slope(beta * s[i], m, slope);
    const logit_t gi = static_cast<logit_t>(g[i]);
    const logit_t ti = static_cast<logit_t>(theta[i]);
    if constexpr (kWantS) grad_s[i] = gi * ti * beta * slope;
    if constexpr (kWantTheta) grad_theta[i] = static_cast<weight_t>(gi * m);
    if constexpr (kWantWeff) w_eff[i] = static_cast<weight_t>(ti * m);
  }
}

// Hard (m = 1[s > 0]) and none (m = 1): no logits gradient.
template <typename weight_t, typename logit_t, bool kWantTheta, bool kWantWeff>
void binary_backward_range(const weight_t* g, const weight_t* __restrict__ theta,
                           const logit_t* __restrict__ s, bool hard,
                           weight_t* grad_theta, weight_t* __restrict__ w_eff,
                           int64_t begin, int64_t end) {
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) {
    const bool keep = !hard || s[i] > logit_t(0);
    const weight_t gi = g[i];
    const weight_t ti = theta[i];
    if constexpr (kWantTheta) grad_theta[i] = keep ? gi : weight_t(0);
    if constexpr (kWantWeff) w_eff[i] = keep ? ti : weight_t(0);
  }
}

// Calls f(S, T, W) with std::bool_constant arguments for which of the three
// outputs (logits gradient, weight gradient, w_eff) are wanted, so each
// combination is its own branch-free, vectorisable instantiation.
template <typename F>
void with_outputs(bool want_s, bool want_theta, bool want_weff, F&& f) {
  using Y = std::true_type;
  using N = std::false_type;
  switch ((want_s ? 4 : 0) | (want_theta ? 2 : 0) | (want_weff ? 1 : 0)) {
    case 7: f(Y{}, Y{}, Y{}); break;
    case 6: f(Y{}, Y{}, N{}); break;
    case 5: f(Y{}, N{}, Y{}); break;
    case 4: f(Y{}, N{}, N{}); break;
    case 3: f(N{}, Y{}, Y{}); break;
    case 2: f(N{}, Y{}, N{}); break;
    case 1: f(N{}, N{}, Y{}); break;
    default: break;
  }
}

// beta's value for the CPU loops (reading a CPU scalar costs nothing).
inline double host_beta(const char* op, const at::Tensor& beta) {
  TORCH_CHECK(beta.numel() == 1 && beta.is_floating_point() && beta.device().is_cpu(), op,
              ": beta must be a one-element floating CPU tensor, got shape ", beta.sizes(),
              " of ", beta.scalar_type(), " on ", beta.device());
  return beta.item<double>();
}

struct CpuKernels {
  template <typename logit_t>
  static logit_t beta_arg(const at::Tensor& beta) {
    return beta.item<logit_t>();
  }

  template <typename weight_t, typename logit_t>
  static void forward(const weight_t* theta, const logit_t* s, weight_t* out,
                      logit_t beta, int mode, int64_t n) {
    at::parallel_for(0, n, kGrain, [=](int64_t begin, int64_t end) {
      if (mode == subind::kSoft) {
        const weight_t* __restrict__ th = theta;
        const logit_t* __restrict__ sp = s;
        weight_t* __restrict__ o = out;
#pragma omp simd
        for (int64_t i = begin; i < end; ++i) {
          logit_t m, slope;
          subind::sigmoid_and_slope(beta * sp[i], m, slope);
          o[i] = static_cast<weight_t>(static_cast<logit_t>(th[i]) * m);
        }
      } else {
        binary_backward_range<weight_t, logit_t, false, true>(
            theta, theta, s, mode == subind::kHard, nullptr, out, begin, end);
      }
    });
  }

  template <typename weight_t, typename logit_t>
  static void backward(const weight_t* g, const weight_t* theta,
                       const logit_t* s, logit_t beta, int mode,
                       logit_t* grad_s, weight_t* grad_theta, weight_t* w_eff,
                       int64_t n) {
    at::parallel_for(0, n, kGrain, [=](int64_t begin, int64_t end) {
      if (mode == subind::kSoft) {
        with_outputs(grad_s, grad_theta, w_eff, [&](auto S, auto T, auto W) {
          soft_backward_range<weight_t, logit_t, decltype(S)::value, decltype(T)::value,
                              decltype(W)::value>(g, theta, s, beta, grad_s, grad_theta,
                                                  w_eff, begin, end);
        });
      } else {
        const bool hard = mode == subind::kHard;
        if (grad_theta && w_eff) {
          binary_backward_range<weight_t, logit_t, true, true>(
              g, theta, s, hard, grad_theta, w_eff, begin, end);
        } else if (grad_theta) {
          binary_backward_range<weight_t, logit_t, true, false>(
              g, theta, s, hard, grad_theta, nullptr, begin, end);
        } else if (w_eff) {
          binary_backward_range<weight_t, logit_t, false, true>(
              g, theta, s, hard, nullptr, w_eff, begin, end);
        }
      }
    });
  }
};

}  // namespace subind_cpu
